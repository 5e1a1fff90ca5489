"""What `store: true` costs a /v1/responses request: A/B against `store: false` in one run, interleaved.

Starts the fake upstream and the gateway as bench/run.py does (uvicorn, uvloop, DEBUG=0, PostgreSQL and
Redis, auth, limits and billing on), then measures with wrk, in rounds that alternate the variants so
drift on the shared machine hits each alike:

- `store:false` - nothing is written;
- `store:true`  - the Response and its input are written before the body leaves;
- `chained`     - `store:true` with `previous_response_id` (one read of the previous response, then the
                  write), against `inline`, the same context sent whole with `store:false`.

Per variant: requests/s, p50/p99 latency and the server's CPU time per request. Loopback only; every
process it starts is stopped at the end.

    .venv/bin/python bench/store_cost.py --seconds 5 --rounds 2 --concurrency 1,16
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import harness

DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/wm_bench_store"
CONTEXT_TURNS = 8  # turns in the conversation the chained variants continue


def _conversation() -> list[dict[str, Any]]:
    turns: list[dict[str, Any]] = []
    for turn in range(CONTEXT_TURNS):
        turns.append({"role": "user", "content": f"Question {turn}: " + "tell me more about it. " * 20})
        turns.append({"role": "assistant", "content": f"Answer {turn}: " + "here is what I know. " * 40})
    return turns


def _seed_chain(base: str, key: str) -> str:
    """A stored response whose input is the conversation: what the chained variant continues."""
    status, body = harness.http_json(
        "POST",
        f"{base}/responses",
        body={"model": harness.MODEL, "input": _conversation(), "store": True},
        headers={"Authorization": f"Bearer {key}"},
    )
    if status != 200:
        raise RuntimeError(f"could not store the seed response: {status} {body}")
    return body["id"]


def _variants(previous_id: str) -> dict[str, dict[str, Any]]:
    question = {"role": "user", "content": "And one more thing?"}
    return {
        "store:false": {"model": harness.MODEL, "input": "Say hello", "store": False},
        "store:true": {"model": harness.MODEL, "input": "Say hello", "store": True},
        "inline": {"model": harness.MODEL, "input": [*_conversation(), question], "store": False},
        "chained": {"model": harness.MODEL, "input": [question], "store": True, "previous_response_id": previous_id},
    }


def measure(
    gateway: harness.Child, url: str, script: Path, *, connections: int, seconds: float
) -> dict[str, float | int]:
    pids = harness.server_pids(gateway)
    cpu_before = harness.cpu_seconds(pids)
    result = harness.run_wrk(url, script, connections=connections, seconds=seconds)
    cpu = harness.cpu_seconds(pids) - cpu_before
    return {
        "requests": result["requests"],
        "errors": result["errors"],
        "rps": result["rps"],
        "p50_ms": result["p50_us"] / 1000,
        "p99_ms": result["p99_us"] / 1000,
        "cpu_ms_per_request": 1000 * cpu / max(1, result["requests"]),
    }


def _combine(samples: list[dict[str, float | int]]) -> dict[str, float | int]:
    return {
        "requests": sum(int(s["requests"]) for s in samples),
        "errors": sum(int(s["errors"]) for s in samples),
        "rps": statistics.median(float(s["rps"]) for s in samples),
        "p50_ms": statistics.median(float(s["p50_ms"]) for s in samples),
        "p99_ms": statistics.median(float(s["p99_ms"]) for s in samples),
        "cpu_ms_per_request": statistics.median(float(s["cpu_ms_per_request"]) for s in samples),
    }


def report(results: dict[str, Any]) -> str:
    lines = [
        f"store cost, {results['started']}: {results['rounds']} interleaved rounds of {results['seconds']} s per "
        f"variant and concurrency, {results['workers']} worker(s), medians over rounds",
        "",
        "| variant | concurrency | req/s | p50 ms | p99 ms | server CPU ms/req | errors |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in results["rows"]:
        lines.append(
            f"| {row['variant']} | {row['concurrency']} | {row['rps']:.0f} | {row['p50_ms']:.2f} | "
            f"{row['p99_ms']:.2f} | {row['cpu_ms_per_request']:.2f} | {row['errors']} |"
        )
    lines.append("")
    lines.append(f"other processes' cores during the run: {results['other_cores']}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="per variant, concurrency and round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", default="1,16")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--latency-ms", type=float, default=0)
    args = parser.parse_args()
    concurrencies = [int(c) for c in args.concurrency.split(",")]

    started = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out = harness.RESULTS / f"store-{started}"
    database_url = os.environ.get("DATABASE_URL", DEFAULT_DATABASE_URL)
    redis_url = os.environ.get("REDIS_URL", harness.DEFAULT_REDIS_URL)
    harness.ensure_database(database_url)
    with harness.managed_children(out) as children:
        fake_port, gateway_port = harness.free_port(), harness.free_port()
        harness.start_fake(children, name="fake", port=fake_port, latency_ms=args.latency_ms)
        env = harness.gateway_env(
            upstream_base_url=f"http://127.0.0.1:{fake_port}/api/v1", database_url=database_url, redis_url=redis_url
        )
        seeded = harness.migrate_and_seed(env, email="store-bench@example.com")
        gateway = harness.start_gateway(children, name="gateway", port=gateway_port, workers=args.workers, env=env)
        base = f"http://127.0.0.1:{gateway_port}/v1"
        variants = _variants(_seed_chain(base, seeded["key"]))
        scripts = {
            name: harness.write_wrk_script(out / f"{name.replace(':', '-')}.lua", body=body, key=seeded["key"])
            for name, body in variants.items()
        }
        for name, body in variants.items():  # every variant answers 200 before it is measured
            status, answer = harness.http_json(
                "POST", f"{base}/responses", body=body, headers={"Authorization": f"Bearer {seeded['key']}"}
            )
            if status != 200:
                raise RuntimeError(f"{name}: {status} {answer}")
        for script in scripts.values():  # warm-up
            measure(gateway, f"{base}/responses", script, connections=4, seconds=1)

        meter = harness.CpuMeter(children)
        meter.start()
        samples: dict[tuple[str, int], list[dict[str, float | int]]] = {}
        for round_number in range(args.rounds):
            for connections in concurrencies:
                order = list(scripts) if round_number % 2 == 0 else list(reversed(scripts))
                for name in order:
                    sample = measure(
                        gateway, f"{base}/responses", scripts[name], connections=connections, seconds=args.seconds
                    )
                    samples.setdefault((name, connections), []).append(sample)
                    harness.log(f"round {round_number + 1} {name} c={connections}: {sample}")
        load = meter.stop()

    rows = [
        {"variant": name, "concurrency": connections, **_combine(samples[(name, connections)])}
        for connections in concurrencies
        for name in variants
    ]
    results = {
        "started": started,
        "seconds": args.seconds,
        "rounds": args.rounds,
        "workers": args.workers,
        "other_cores": load["other_cores"],
        "rows": rows,
    }
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print(report(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
