"""Throughput and latency of ``seq2seq serve``: dynamic batching against ``--max-batch 1``.

    python scripts/serve_benchmark.py [--workdir W] [--seconds 30] [--warmup-seconds 5] [--clients 1,8,64]
        [--out benchmarks/serve.json] [--max-batches 64,1] [--max-wait-ms 10]
        [--server-options "--refill-share 0"] [--shared-pool]

The served model is ``scripts/benchmark.py``'s main configuration (embedding 256, bidirectional LSTM 512, decoder
512, additive attention 512, vocabulary 8000 on both sides) with freshly initialised weights, written as a
workdir without training (``Workdir`` layout: config, word tokenizers of 7996 made-up words, one checkpoint at
step 0) unless ``--workdir`` names one that exists. The decode settings are the workdir's defaults (greedy,
``max_len = ceil(1.5 * source tokens + 10)``); untrained weights rarely choose EOS, so most outputs run to that
bound: the slowest case per sentence.

For each server setting (``--max-batch 64``, then ``--max-batch 1``) the script starts ``seq2seq serve`` on a free
loopback port, waits until ``/health`` reports ready (the warm-up compiles the search programs), and then, for each
client count, runs that many concurrent clients for ``--warmup-seconds`` and then ``--seconds``: each client sends
single-sentence ``POST /v1/translate`` requests (random sentences of 20-30 words) one after the other. Reported: the
requests per second that complete in the measurement window (the ``--seconds`` after the warm-up, which takes the
clients' first, uneven searches out of the figures) and the 50th / 99th percentile latency of those requests, and
the texts per search the server merged in the window. Clients are asyncio tasks in this process, which shares the
machine with the server, each with its own ``httpx.AsyncClient`` (one keep-alive connection, as separate users
have). ``--shared-pool`` puts them all on one client's pool of as many connections: httpx then checks every connection
of the pool on each request, which makes the benchmark's own process the slowest part of a round trip at 64
clients (docs/benchmarks.md, Serving).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
for entry in (ROOT, ROOT / "scripts"):
    if str(entry) not in sys.path:
        sys.path.insert(0, str(entry))

WORDS = 7996  # + 4 specials = vocabulary 8000


def build_workdir(path: Path) -> None:
    """The benchmark's main model with initial weights as a workdir ``seq2seq serve`` (and translate) reads."""
    import dataclasses

    from benchmark import model_configs

    from seq2seq_jax.core.config import DataConfig, ExperimentConfig
    from seq2seq_jax.core.tokenizer import VocabularyTokenizer
    from seq2seq_jax.training.workdir import Workdir, fresh_train_state

    model, _ = model_configs(quick=False)["main"]
    tokenizer = VocabularyTokenizer("word", [f"w{i}" for i in range(WORDS)])
    assert tokenizer.vocab_size == model.src_vocab_size == model.tgt_vocab_size
    config = ExperimentConfig(model=model, data=DataConfig(tokenizer="word", vocab_size=tokenizer.vocab_size))
    config = dataclasses.replace(config, train=dataclasses.replace(config.train, seed=0))
    run = Workdir(path)
    run.tokenizer_dir.mkdir(parents=True)
    tokenizer.save(run.tokenizer_dir, "src")
    tokenizer.save(run.tokenizer_dir, "tgt")
    _, state = fresh_train_state(config)
    with run.checkpointer(config) as checkpoints:
        checkpoints.save(0, state, force=True)
    config.save(run.config_path)


def sentences(count: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(f"w{i}" for i in rng.integers(0, WORDS, rng.integers(20, 31))) for _ in range(count)]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(workdir: Path, max_batch: int, max_wait_ms: float, log: Path,
                 options: Sequence[str] = (), warmed_up: bool = True) -> tuple[subprocess.Popen, str, float]:
    """``seq2seq serve`` (with extra ``options``) on a free port; returns (process, URL, seconds until ready).

    The server is ready after its first program; with ``warmed_up`` this also waits until the rest of its
    warm-up is done (``/health`` says ``warm_up: done``), so that a measurement after it times no compilation."""
    import httpx

    port = free_port()
    command = [sys.executable, "-m", "seq2seq_jax", "serve", "--workdir", str(workdir), "--port", str(port),
               "--max-batch", str(max_batch), "--max-wait-ms", str(max_wait_ms), "--warmup-src-len", "32", *options]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    url, start, ready = f"http://127.0.0.1:{port}", time.perf_counter(), None
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}: {log.read_text()}")
        try:
            health = httpx.get(f"{url}/health", timeout=5)
            if health.status_code == 200:
                ready = ready if ready is not None else time.perf_counter() - start
                if not warmed_up or health.json().get("warm_up") in ("done", "failed"):
                    return process, url, ready
        except httpx.TransportError:
            pass
        time.sleep(0.05)  # fine enough to time start-up (startup_benchmark.py)


async def drive(url: str, clients: int, seconds: float, pool: list[str], shared_pool: bool = False,
                warmup: float = 0.0) -> dict:
    """``clients`` concurrent loops of single-sentence requests, each on its own connection (its own
    ``httpx.AsyncClient``), or with ``shared_pool`` on one client's pool of ``clients`` connections: for ``warmup``
    seconds not counted, then for the ``seconds`` of the measurement window. Counted: the requests that complete
    in the window, those answered 429 (an overload run: ``--server-options '--max-queue Q'`` with more clients than
    Q; a shed client waits ``Retry-After``, at most 1 s, and sends again), and the searches the server ran in the
    window (``/health`` at its start and end)."""
    import httpx

    latencies: list[float] = []
    rejected = [0]  # 429 answers in the window: past the server's --max-queue
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    shared = httpx.AsyncClient(timeout=600, limits=limits) if shared_pool else None
    own = [] if shared_pool else [httpx.AsyncClient(timeout=600) for _ in range(clients)]
    observer = httpx.AsyncClient(timeout=600)
    begin = time.perf_counter()
    window_start = begin + warmup
    end = window_start + seconds

    async def loop(index: int) -> None:
        client = shared or own[index]
        rng = np.random.default_rng(index)
        while time.perf_counter() < end:
            text = pool[int(rng.integers(len(pool)))]
            start = time.perf_counter()
            answer = await client.post(f"{url}/v1/translate", json={"texts": [text]})
            done = time.perf_counter()
            if answer.status_code == 429:  # shed: wait as told (at most 1 s), then send again
                rejected[0] += window_start <= done <= end
                await asyncio.sleep(min(float(answer.headers.get("Retry-After", 1)), 1.0))
                continue
            answer.raise_for_status()
            if window_start <= done <= end:
                latencies.append(done - start)

    async def health_at(moment: float) -> dict:
        await asyncio.sleep(max(0.0, moment - time.perf_counter()))
        return (await observer.get(f"{url}/health")).json()

    try:
        at_start, at_end, *_ = await asyncio.gather(health_at(window_start), health_at(end),
                                                    *(loop(i) for i in range(clients)))
    finally:
        for client in [*own, *([shared] if shared is not None else []), observer]:
            await client.aclose()
    elapsed = time.perf_counter() - begin
    return {"clients": clients, "seconds": seconds, "warmup_s": warmup, "wall_s": elapsed,
            "requests": len(latencies), "requests_per_s": len(latencies) / seconds, "rejected": rejected[0],
            "rejected_share": rejected[0] / max(1, rejected[0] + len(latencies)),
            "p50_s": float(np.percentile(latencies, 50)) if latencies else None,
            "p99_s": float(np.percentile(latencies, 99)) if latencies else None,
            **{key: at_end[key] - at_start[key] for key in ("merged_batches", "merged_requests")}}


def main(argv: list[str] | None = None) -> int:
    import httpx

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=ROOT / "runs" / "serve-benchmark",
                        help="built here when absent (about 360 MB: parameters and Adam state)")
    parser.add_argument("--seconds", type=float, default=30.0, help="measurement window per client count")
    parser.add_argument("--warmup-seconds", type=float, default=5.0,
                        help="load before each window, not counted (the clients' first searches)")
    parser.add_argument("--clients", default="1,8,64")
    parser.add_argument("--max-batches", default="64,1", help="server --max-batch settings to compare")
    parser.add_argument("--max-wait-ms", type=float, default=10.0, help="the server's --max-wait-ms")
    parser.add_argument("--server-options", default="", help="more `seq2seq serve` options, e.g. '--refill-share 0'")
    parser.add_argument("--shared-pool", action="store_true",
                        help="all clients on one httpx.AsyncClient's connection pool (the earlier measurements)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "serve.json")
    args = parser.parse_args(argv)
    if not (args.workdir / "config.json").is_file():
        print(f"building {args.workdir} (main config, initial weights)", flush=True)
        build_workdir(args.workdir)
    pool = sentences(512)
    results = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                           "load_average_at_start": os.getloadavg()},
               "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "runs": []}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for max_batch in [int(b) for b in args.max_batches.split(",")]:
        log = args.workdir / f"serve-max-batch-{max_batch}.log"
        process, url, ready_s = start_server(args.workdir, max_batch, args.max_wait_ms, log,
                                             args.server_options.split())
        try:
            health = httpx.get(f"{url}/health").json()
            print(f"--max-batch {max_batch}: ready after {ready_s:.0f} s, {health['compiled_programs']} programs",
                  flush=True)
            for clients in [int(c) for c in args.clients.split(",")]:
                run = asyncio.run(drive(url, clients, args.seconds, pool, args.shared_pool, args.warmup_seconds))
                run.update(max_batch=max_batch, max_wait_ms=args.max_wait_ms, server_options=args.server_options,
                           shared_pool=args.shared_pool, ready_s=ready_s, load_average=os.getloadavg())
                results["runs"].append(run)
                p50 = "-" if run["p50_s"] is None else f"{run['p50_s']:.3f}"
                p99 = "-" if run["p99_s"] is None else f"{run['p99_s']:.3f}"
                print(f"  {clients:3d} clients: {run['requests_per_s']:7.2f} requests/s, p50 {p50} s, "
                      f"p99 {p99} s ({run['requests']} requests, "
                      f"{run['merged_requests'] / max(1, run['merged_batches']):.1f} per search, "
                      f"load {run['load_average'][0]:.1f})"
                      + (f"; 429 to {run['rejected']} ({100 * run['rejected_share']:.0f}%)" if run["rejected"] else ""),
                      flush=True)
        finally:
            process.terminate()
            process.wait(timeout=120)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
