#!/usr/bin/env python3
"""Start one ``seq2seq train`` process per host (or several on this machine) as one multi-host JAX run.

Every process gets ``--coordinator HOST0:PORT --num-processes N --process-id I``; everything after ``--`` is
passed to ``seq2seq train`` unchanged (the workdir must be on a filesystem every host sees). Output lines are
prefixed with ``[I]``. When a process fails, the others are stopped (SIGTERM, then SIGKILL after a grace
period, since collectives with a dead peer never return) and the launcher exits with its status.

    # GPU hosts reachable by ssh (same checkout and environment at the same path on each):
    python scripts/launch_multihost.py --hosts gpu-a,gpu-b --port 12355 --cd /shared/seq2seq-jax \\
        --train-command ".venv/bin/seq2seq train" -- --workdir /shared/runs/wmt --config wmt.json

    # this machine, N processes on CPU with D fake devices each (loopback; what the tests run):
    python scripts/launch_multihost.py --local 2 --devices-per-process 2 -- --workdir runs/mh --set train.max_steps=50

    # this machine, one process per GPU (the usual single-host setup is one process for all GPUs; this is
    # for trying the multi-process path on one box):
    python scripts/launch_multihost.py --local 8 --gpus-per-process 1 -- --workdir runs/mh

Cloud TPU pods, SLURM, Open MPI and Kubernetes need no launcher: run ``seq2seq train --distributed ...`` on
every host (``gcloud compute tpus tpu-vm ssh NAME --worker=all --command=...``, ``srun``, ``mpirun``) and
``jax.distributed.initialize`` detects the coordinator, process count and id. See docs/scaling.md.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time

GRACE_SECONDS = 30


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def local_commands(args, train_args: list[str]) -> list[tuple[list[str], dict[str, str]]]:
    port = args.port or free_port()
    commands = []
    for process_id in range(args.local):
        env = dict(os.environ)
        if args.gpus_per_process:
            first = process_id * args.gpus_per_process
            env["CUDA_VISIBLE_DEVICES"] = ",".join(str(first + i) for i in range(args.gpus_per_process))
        else:
            env["JAX_PLATFORMS"] = "cpu"
            flags = env.get("XLA_FLAGS", "")
            env["XLA_FLAGS"] = (f"{flags} --xla_force_host_platform_device_count={args.devices_per_process}").strip()
        command = [sys.executable, "-m", "seq2seq_jax", "train", "--coordinator", f"127.0.0.1:{port}",
                   "--num-processes", str(args.local), "--process-id", str(process_id), *train_args]
        commands.append((command, env))
    return commands


def ssh_commands(args, train_args: list[str]) -> list[tuple[list[str], dict[str, str]]]:
    hosts = [h for h in (args.hosts.split(",") if args.hosts else open(args.hostfile).read().split()) if h]
    if not hosts:
        raise SystemExit("launch_multihost: no hosts given")
    coordinator = f"{args.coordinator_host or hosts[0]}:{args.port or 12355}"
    commands = []
    for process_id, host in enumerate(hosts):
        remote = (f"{args.train_command} --coordinator {shlex.quote(coordinator)} --num-processes {len(hosts)} "
                  f"--process-id {process_id} " + " ".join(shlex.quote(a) for a in train_args))
        if args.cd:
            remote = f"cd {shlex.quote(args.cd)} && {remote}"
        if args.env:
            remote = " ".join(shlex.quote(e) for e in args.env) + " " + remote
        commands.append((["ssh", "-o", "BatchMode=yes", host, remote], dict(os.environ)))
    return commands


def stream(prefix: str, pipe, lock: threading.Lock) -> None:
    for line in pipe:
        with lock:
            sys.stdout.write(f"{prefix} {line}")
            sys.stdout.flush()


def run_all(commands: list[tuple[list[str], dict[str, str]]]) -> int:
    lock = threading.Lock()
    processes, threads = [], []
    for index, (command, env) in enumerate(commands):
        process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                   bufsize=1)
        processes.append(process)
        thread = threading.Thread(target=stream, args=(f"[{index}]", process.stdout, lock), daemon=True)
        thread.start()
        threads.append(thread)

    def forward(signum, frame):  # a SIGTERM/SIGINT to the launcher goes to every process (they save and stop)
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    status = 0
    while any(process.poll() is None for process in processes):
        failed = [p for p in processes if p.poll() not in (None, 0)]
        if failed:
            status = failed[0].returncode
            print(f"launch_multihost: a process exited with status {status}; stopping the others", file=sys.stderr)
            forward(None, None)
            deadline = time.time() + GRACE_SECONDS
            while time.time() < deadline and any(p.poll() is None for p in processes):
                time.sleep(0.5)
            for process in processes:
                if process.poll() is None:
                    process.kill()
            break
        time.sleep(0.2)
    for process in processes:
        process.wait()
    for thread in threads:
        thread.join(timeout=5)
    return status or next((p.returncode for p in processes if p.returncode), 0)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--" in argv:
        split = argv.index("--")
        argv, train_args = argv[:split], argv[split + 1:]
    else:
        train_args = []
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--hosts", help="comma-separated hosts, process 0 first (ssh)")
    where.add_argument("--hostfile", help="file with one host per line, process 0 first (ssh)")
    where.add_argument("--local", type=int, metavar="N", help="N processes on this machine (loopback)")
    parser.add_argument("--port", type=int, help="coordinator port (default: 12355 over ssh, a free one locally)")
    parser.add_argument("--coordinator-host", help="address of process 0 as the other hosts reach it "
                                                   "(default: the first host)")
    parser.add_argument("--train-command", default="seq2seq train", help="command on each host (ssh)")
    parser.add_argument("--cd", help="directory to run in on each host (ssh)")
    parser.add_argument("--env", action="append", metavar="KEY=VALUE", help="environment on each host (ssh)")
    parser.add_argument("--devices-per-process", type=int, default=1, help="fake CPU devices per local process")
    parser.add_argument("--gpus-per-process", type=int, default=0,
                        help="local processes on GPUs: CUDA_VISIBLE_DEVICES slices of this size")
    args = parser.parse_args(argv)
    if args.local is not None and args.local < 1:
        parser.error("--local needs at least 1 process")
    commands = local_commands(args, train_args) if args.local else ssh_commands(args, train_args)
    return run_all(commands)


if __name__ == "__main__":
    sys.exit(main())
