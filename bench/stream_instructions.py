"""Instructions per request (streamed, or whole with --whole), by kind, with the gateway under callgrind.

Loopback only, bounded.

/proc CPU figures on a shared machine move by 10-30 % between rounds; instruction counts do not (they
count user-space work only: no kernel time, no cache misses). The gateway (one worker, production
settings, PostgreSQL and Redis as in bench/messages.py) runs under `valgrind --tool=callgrind`; after
a warm-up, each round zeroes the counters, drives N streams of one kind (bench/messages.py's KINDS) at
the given concurrency, and dumps them. The catalogue's 5-second reload is switched off: a gateway 50
times slower would otherwise pay it per request many times over. Python's cyclic GC runs when
allocations say so, so a round that hits a full collection is ~0.25 M instructions a request dearer:
the table shows the total and the total without the GC's own functions.

    .venv/bin/python bench/stream_instructions.py --requests 200 --warmup 100
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import harness
from bench.harness import log
from bench.messages import KINDS, start_fake_and_seed

_GC_FUNCTIONS = ("visit_", "gc_collect", "traverse", "_PyObject_VisitInstanceAttributes", "type_is_gc", "IS_GC")


async def _streams(url: str, body: dict, key: str, *, requests: int, concurrency: int, stream: bool) -> int:
    import aiohttp

    payload = json.dumps({**body, "stream": stream}).encode()
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    left, errors = requests, 0

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal left, errors
        while left > 0:
            left -= 1
            async with session.post(url, data=payload, headers=headers) as response:
                await response.read()
                errors += response.status != 200

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    return errors


def self_costs(dump: Path) -> collections.Counter[str]:
    """Instructions spent in each function itself (an uncompressed callgrind dump)."""
    costs: collections.Counter[str] = collections.Counter()
    function, call_line_next = "", False
    for line in dump.read_text(errors="replace").splitlines():
        if line.startswith("fn="):
            function, call_line_next = line[3:], False
        elif line.startswith("calls="):
            call_line_next = True  # the next cost line is the callee's, not this function's
        elif line[:1].isdigit() or line[:1] in "+-*":
            parts = line.split()
            if len(parts) >= 2 and function:
                if call_line_next:
                    call_line_next = False
                else:
                    costs[function] += int(parts[1])
    return costs


def _dump(pid: int, run_dir: Path, name: str) -> Path:
    subprocess.run(["callgrind_control", "-d", name, str(pid)], check=True, capture_output=True)
    time.sleep(1)
    newest = max(run_dir.glob("callgrind.out.*"), key=lambda path: path.stat().st_mtime)
    return newest.rename(run_dir / f"{name}.callgrind")


def serve(uvicorn_args: list[str]) -> None:
    """The gateway as `python -m uvicorn ...` would run it, without the catalogue's periodic reload."""
    import runpy

    import django

    sys.path.insert(0, os.getcwd())
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "writingmate.settings")
    django.setup()
    from gateway import catalogue

    catalogue.CATALOGUE_REFRESH_SECONDS = 1e9
    sys.argv = ["uvicorn", *uvicorn_args]
    runpy.run_module("uvicorn", run_name="__main__")


def main() -> int:
    if sys.argv[1:2] == ["--serve"]:
        serve(sys.argv[2:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=200, help="streams per kind and round")
    parser.add_argument("--warmup", type=int, default=100, help="streams per kind before measuring")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--whole", action="store_true", help="whole requests instead of streams")
    args = parser.parse_args()
    stream = not args.whole

    run_dir = harness.RESULTS / time.strftime("stream-instructions-%Y%m%dT%H%M%SZ", time.gmtime())
    run_dir.mkdir(parents=True, exist_ok=True)
    rows: list[tuple[str, int, float, float]] = []
    with harness.managed_children(run_dir) as children:
        env, info = start_fake_and_seed(children)
        # The quota counters' periodic merge with the ledger reads every line of its last 8 minutes:
        # the same for every kind, but a round that takes one in pays hundreds of millions of
        # instructions more. Left out of the rounds, so they compare the request paths.
        env["BILLING_QUOTA_RECONCILE_SECONDS"] = str(24 * 3600)
        gateway_port = harness.free_port()
        argv = [
            "valgrind",
            "--tool=callgrind",
            "--compress-strings=no",
            "--compress-pos=no",
            f"--callgrind-out-file={run_dir}/callgrind.out.%p",
            harness.PYTHON,
            str(Path(__file__).resolve()),
            "--serve",
            "writingmate.asgi:application",
            "--host",
            "127.0.0.1",
            "--port",
            str(gateway_port),
            "--loop",
            "uvloop",
            "--http",
            "httptools",
        ]
        gateway = children.start("gateway", argv, env=env)
        harness.wait_for_http(f"http://127.0.0.1:{gateway_port}/v1/models", timeout=600, child=gateway)
        base = f"http://127.0.0.1:{gateway_port}"
        for kind, (path, body) in KINDS.items():
            log(f"warm-up: {args.warmup} {kind} streams")
            asyncio.run(
                _streams(
                    base + path, body, info["key"], requests=args.warmup, concurrency=args.concurrency, stream=stream
                )
            )
        for round_number in range(args.rounds):
            for kind, (path, body) in KINDS.items():
                subprocess.run(["callgrind_control", "-z", str(gateway.pid)], check=True, capture_output=True)
                errors = asyncio.run(
                    _streams(
                        base + path,
                        body,
                        info["key"],
                        requests=args.requests,
                        concurrency=args.concurrency,
                        stream=stream,
                    )
                )
                costs = self_costs(_dump(gateway.pid, run_dir, f"{kind}-{round_number + 1}"))
                total = sum(costs.values()) / args.requests
                gc = sum(v for f, v in costs.items() if any(g in f for g in _GC_FUNCTIONS)) / args.requests
                log(f"  round {round_number + 1} {kind:10} errors {errors}  {total / 1e6:.3f} M instructions a request")
                rows.append((kind, round_number + 1, total, total - gc))
    print(
        f"\n| {'stream' if stream else 'whole request'} | round | instructions a request (M) | without the cyclic GC (M) |"
    )
    print("|---|---|---|---|")
    for kind, round_number, total, without_gc in sorted(rows):
        print(f"| {kind} | {round_number} | {total / 1e6:.3f} | {without_gc / 1e6:.3f} |")
    # Whatever else the process does in a round (a full collection, a key's cache refreshed by every
    # request in flight) only adds to it: each kind's lowest round is its request path's cost.
    lowest = {kind: min(without_gc for k, _, _, without_gc in rows if k == kind) for kind in KINDS}
    print("\n| kind | lowest round without the GC (M) | against chat |")
    print("|---|---|---|")
    for kind, value in lowest.items():
        print(f"| {kind} | {value / 1e6:.3f} | {(value / lowest['chat'] - 1) * 100:+.1f} % |")
    print(f"\ndumps: {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
