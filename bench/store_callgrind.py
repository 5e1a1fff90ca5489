"""Instructions per /v1/responses request under callgrind: the store_cost variants, repeatable on a busy machine.

CPU times from /proc move with whatever else the shared machine runs; instruction counts do not (within
a few per cent). Starts the fake upstream and one gateway process under `valgrind --tool=callgrind`
(uvloop, httptools, DEBUG=0, PostgreSQL and Redis as bench/store_cost.py), sends each variant `--warmup`
times, then per variant zeroes the counters, sends `--requests` requests one at a time and dumps: the
instructions of every thread of the gateway process (its database threads included) divided by the
requests. The database and Redis servers are other processes and not counted.

    DATABASE_URL=... REDIS_URL=... .venv/bin/python bench/store_callgrind.py --requests 100
    git archive <commit> | tar -x -C /tmp/before && ... bench/store_callgrind.py --tree /tmp/before
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import harness, store_cost


def _dumped_instructions(paths: list[str]) -> int:
    total = 0
    for path in paths:
        with open(path) as dump:
            for line in dump:
                if line.startswith(("summary:", "totals:")):
                    total = max(total, int(line.split()[1]))
    return total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tree", type=Path, default=harness.REPO, help="the source tree the gateway runs from")
    parser.add_argument("--requests", type=int, default=100, help="per variant")
    parser.add_argument("--warmup", type=int, default=20, help="per variant, before any is counted")
    args = parser.parse_args()

    started = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out = harness.RESULTS / f"store-callgrind-{started}"
    database_url = os.environ.get("DATABASE_URL", store_cost.DEFAULT_DATABASE_URL)
    redis_url = os.environ.get("REDIS_URL", harness.DEFAULT_REDIS_URL)
    harness.ensure_database(database_url)
    with harness.managed_children(out) as children:
        fake_port, gateway_port = harness.free_port(), harness.free_port()
        harness.start_fake(children, name="fake", port=fake_port, latency_ms=0)
        env = harness.gateway_env(
            upstream_base_url=f"http://127.0.0.1:{fake_port}/api/v1", database_url=database_url, redis_url=redis_url
        )
        seeded = harness.migrate_and_seed(env, email="store-callgrind@example.com")
        dump = out / "callgrind.out"
        argv = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={dump}", harness.PYTHON, "-m", "uvicorn"]
        argv += ["writingmate.asgi:application", "--host", "127.0.0.1", "--port", str(gateway_port)]
        gateway = children.start("gateway", [*argv, "--loop", "uvloop", "--http", "httptools"], env=env, cwd=args.tree)
        base = f"http://127.0.0.1:{gateway_port}/v1"
        harness.wait_for_http(f"{base}/models", timeout=600, child=gateway)
        headers = {"Authorization": f"Bearer {seeded['key']}"}
        variants = store_cost._variants(store_cost._seed_chain(base, seeded["key"]))

        def send(body: dict, times: int) -> None:
            for _ in range(times):
                status, answer = harness.http_json("POST", f"{base}/responses", body=body, headers=headers)
                if status != 200:
                    raise RuntimeError(f"{status} {answer}")

        for body in variants.values():
            send(body, args.warmup)
        results: dict[str, float] = {}
        for name, body in variants.items():
            subprocess.run(["callgrind_control", "-z", str(gateway.pid)], check=True, capture_output=True)
            send(body, args.requests)
            before = set(glob.glob(f"{dump}*"))
            subprocess.run(["callgrind_control", "-d", str(gateway.pid)], check=True, capture_output=True)
            deadline = time.monotonic() + 60
            while not (instructions := _dumped_instructions(sorted(set(glob.glob(f"{dump}*")) - before))):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{name}: callgrind wrote no dump")
                time.sleep(0.2)  # the dump is complete once its totals line is there
            results[name] = instructions / args.requests
            harness.log(f"{name}: {results[name] / 1e6:.2f} M instructions per request")
    (out / "results.json").write_text(json.dumps({"started": started, "tree": str(args.tree), **results}, indent=2))
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
