"""Start an N-process job on this machine, as a cluster would start one process per host.

    python tools/local_job.py --processes 2 --devices 2 -- -m train.autoencoder --dataset phantom-cxr \
        --image-size 32 --batch-size 8 --steps 20 --run-dir runs/two-process

Every process runs ``python <args> --coordinator-address localhost:PORT --num-processes N --process-id I``
with ``--devices`` virtual CPU devices of its own (``XLA_FLAGS=--xla_force_host_platform_device_count``);
``jax.distributed`` connects them (gloo collectives on the CPU). Process I's output goes to stdout prefixed
with ``[I]``. When one process fails, the others are stopped after ``--grace`` seconds (a real cluster's
scheduler does the same), and the exit status is the first non-zero one.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import threading
import time


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _relay(index: int, stream) -> None:
    for line in stream:
        sys.stdout.write(f"[{index}] {line}")
        sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--devices", type=int, default=1, help="virtual CPU devices per process")
    parser.add_argument("--port", type=int, help="coordinator port (default: a free one)")
    parser.add_argument("--grace", type=float, default=30.0, help="seconds the others get after one fails")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the python arguments")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command or args.processes < 1 or args.devices < 1:
        parser.error("give --processes >= 1, --devices >= 1 and, after --, the python arguments")
    port = args.port or _free_port()
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={args.devices}", JAX_PLATFORMS="cpu")
    procs = []
    for i in range(args.processes):
        dist = ["--coordinator-address", f"localhost:{port}", "--num-processes", str(args.processes),
                "--process-id", str(i)]
        p = subprocess.Popen([sys.executable, *command, *dist], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
        threading.Thread(target=_relay, args=(i, p.stdout), daemon=True).start()
        procs.append(p)
    status, failed_at = 0, None
    while any(p.poll() is None for p in procs):
        for i, p in enumerate(procs):
            if p.returncode not in (None, 0) and status == 0:
                status, failed_at = p.returncode, time.monotonic()
                print(f"local_job: process {i} exited with status {p.returncode}; stopping the others in "
                      f"{args.grace:.0f} s", file=sys.stderr)
        if failed_at is not None and time.monotonic() - failed_at > args.grace:
            for p in procs:
                if p.poll() is None:
                    p.terminate()
        time.sleep(0.2)
    for p in procs:
        if p.returncode and not status:
            status = p.returncode
    return status


if __name__ == "__main__":
    sys.exit(main())
