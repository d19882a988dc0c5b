"""Start-up time, side by side with torch_ref: what a user waits for before the first output.

    python scripts/startup_benchmark.py [--workdir W] [--rounds 5] [--serve-workdir S] [--out benchmarks/startup.json]

1. One sentence translated with beam 5 as a whole process (``seq2seq translate``, wall time from exec to exit):
   with an empty compilation cache (first call), with the cache the first call filled (second call), and
   ``python -m torch_ref.translate`` on the same model's export. ``--workdir`` is a trained workdir (default:
   ``runs/startup-demo``, trained here with the demo's defaults for 200 steps if missing); its export is written
   beside it. Rounds are paired (JAX first call, second call, torch_ref, in turn; with ``--compare-root``
   another checkout's ``seq2seq translate`` first); medians are reported.
2. ``seq2seq serve`` on scripts/benchmark.py's main configuration (``serve_benchmark.build_workdir``): seconds from
   exec until ``/health`` answers 200 (the warm-up done), first start on an empty cache, then a second start.
3. ``seq2seq train`` resuming that main-configuration workdir (a copy at step 0, the built-in dates task as data) for
   one step: wall seconds from exec to exit, on an empty cache and then on the cache the first run filled; the
   difference is the compilation the cache saves.
Every JAX run gets its own cache directory through ``SEQ2SEQ_JAX_CACHE_DIR``, so nothing outside it is reused.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for entry in (ROOT, ROOT / "scripts"):
    if str(entry) not in sys.path:
        sys.path.insert(0, str(entry))

SENTENCE = "March 3, 2021\n"


def environment(cache: Path | str, root: Path = ROOT) -> dict[str, str]:
    """A user's environment: no cache directory of jax's own, and Python writing bytecode as it does by default
    (without, every process compiles the checkout's modules from source: both sides' imports slower)."""
    env = {key: value for key, value in os.environ.items()
           if key not in ("JAX_COMPILATION_CACHE_DIR", "PYTHONDONTWRITEBYTECODE")}
    env["PYTHONPATH"] = os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])
    env["SEQ2SEQ_JAX_CACHE_DIR"] = str(cache)
    return env


def timed(command: list[str], env: dict[str, str]) -> tuple[float, str]:
    """Wall seconds of ``command`` fed one sentence, and its output."""
    start = time.perf_counter()
    done = subprocess.run(command, input=SENTENCE, capture_output=True, text=True, env=env, timeout=600)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {done.stderr[-2000:]}")
    return elapsed, done.stdout


def prepare(workdir: Path) -> Path:
    """The trained workdir (trained here if missing) and its PyTorch export."""
    seq2seq = [sys.executable, "-m", "seq2seq_jax"]
    env = environment("off")
    if not (workdir / "config.json").is_file():
        subprocess.run([*seq2seq, "train", "--workdir", str(workdir), "--set", "train.max_steps=200"], env=env,
                       check=True, capture_output=True)
    export = workdir.parent / (workdir.name + "-export")
    if not (export / "meta.json").is_file():
        subprocess.run([*seq2seq, "export-torch", "--workdir", str(workdir), "--out", str(export)], env=env,
                       check=True, capture_output=True)
    return export


def translate_rounds(workdir: Path, export: Path, rounds: int, scratch: Path, compare_root: Path | None) -> dict:
    jax_command = [sys.executable, "-m", "seq2seq_jax", "translate", "--workdir", str(workdir), "--beam-size", "5"]
    torch_command = [sys.executable, "-m", "torch_ref.translate", str(export), "--beam-size", "5"]
    first, second, torch_s, other, outputs = [], [], [], [], set()
    for index in range(rounds):
        if compare_root is not None:  # another checkout's seq2seq, e.g. before the cache existed
            other.append(timed(jax_command, environment(scratch / f"other-{index}", compare_root))[0])
        cache = scratch / f"translate-{index}"
        for into in (first, second):
            seconds, out = timed(jax_command, environment(cache))
            into.append(seconds)
            outputs.add(out)
        seconds, out = timed(torch_command, environment("off"))
        torch_s.append(seconds)
        outputs.add(out)
        print(f"round {index + 1}: JAX first {first[-1]:.2f} s, second {second[-1]:.2f} s, torch_ref "
              f"{torch_s[-1]:.2f} s", flush=True)
    compared = {"compare_root_s": statistics.median(other), "compare_commit": subprocess.run(
        ["git", "-C", str(compare_root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    } if other else {}
    return {**compared, "jax_first_s": statistics.median(first), "jax_second_s": statistics.median(second),
            "torch_ref_s": statistics.median(torch_s), "rounds": {"jax_first": first, "jax_second": second,
                                                                  "torch_ref": torch_s},
            "second_over_torch": statistics.median(second) / statistics.median(torch_s),
            "first_over_torch": statistics.median(first) / statistics.median(torch_s),
            "same_output": len(outputs) == 1}


def serve_starts(workdir: Path, scratch: Path) -> dict:
    from serve_benchmark import build_workdir, start_server

    if not (workdir / "config.json").is_file():
        build_workdir(workdir)
    cache, ready = scratch / "serve", []
    for start in ("first", "second"):
        os.environ["SEQ2SEQ_JAX_CACHE_DIR"] = str(cache)
        os.environ.pop("JAX_COMPILATION_CACHE_DIR", None)
        process, _, seconds = start_server(workdir, 64, 10.0, scratch / f"serve-{start}.log",
                                             warmed_up=False)
        process.terminate()
        process.wait(timeout=60)
        ready.append(seconds)
        print(f"serve, {start} start: ready after {seconds:.1f} s", flush=True)
    return {"first_start_s": ready[0], "second_start_s": ready[1]}


def train_resumes(workdir: Path, scratch: Path) -> dict:
    from serve_benchmark import build_workdir

    if not (workdir / "config.json").is_file():
        build_workdir(workdir)
    cache, seconds = scratch / "train", []
    for attempt in ("first", "second"):
        copy = scratch / f"train-{attempt}"
        shutil.copytree(workdir, copy)
        command = [sys.executable, "-m", "seq2seq_jax", "train", "--workdir", str(copy), "--set",
                   "train.max_steps=1", "--set", "train.eval_every=1000"]
        start = time.perf_counter()
        subprocess.run(command, env=environment(cache), check=True, capture_output=True, timeout=900)
        seconds.append(time.perf_counter() - start)
        print(f"train resume, {attempt} run: {seconds[-1]:.1f} s to one step and exit", flush=True)
    return {"first_run_s": seconds[0], "second_run_s": seconds[1]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=ROOT / "runs" / "startup-demo")
    parser.add_argument("--serve-workdir", type=Path, default=ROOT / "runs" / "serve-benchmark")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--skip-serve", action="store_true")
    parser.add_argument("--compare-root", type=Path, help="also time this checkout's seq2seq translate in each round")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "startup.json")
    args = parser.parse_args(argv)
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)  # every process run here writes bytecode, as Python does by default
    scratch = Path(tempfile.mkdtemp(prefix="startup-benchmark-"))
    try:
        export = prepare(args.workdir)
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True).stdout.strip()
        results = {"commit": commit, "date": time.strftime("%Y-%m-%d"),
                   "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                   "python_bytecode": "written (PYTHONDONTWRITEBYTECODE unset)",
                   "translate_one_sentence_beam5": translate_rounds(args.workdir, export, args.rounds, scratch,
                                                                     args.compare_root)}
        if not args.skip_serve:
            results["serve_main_config"] = serve_starts(args.serve_workdir, scratch)
            results["train_resume_main_config"] = train_resumes(args.serve_workdir, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    print(json.dumps({key: value for key, value in results["translate_one_sentence_beam5"].items()
                      if key != "rounds"}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
