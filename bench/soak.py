"""A bounded soak run: steady mixed traffic against the gateway (+ fake upstream), then an exact ledger check.

    .venv/bin/python bench/soak.py --seconds 120 --rate 40

Open loop: requests start on a fixed schedule whatever the latency, half of them streams (half of those
asking for the usage chunk). Reports the error rate, latency percentiles per time window, the memory of
every server process over time, and reconciles the ledger: the sum of `counted_messages` of the soak's
workspace must equal the requests that succeeded (each fake reply is small, so one message each), and
there must be one usage event per request sent. Loopback only; every child is stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import harness
from bench.harness import log
from bench.loadgen import Outcome, chat_body, one_completion, one_stream, percentile, session_for


def memory_snapshot(children: harness.Children) -> dict[str, float]:
    snapshot = {}
    for child in children.children:
        for pid in harness.server_pids(child):
            snapshot[f"{child.name}[{pid}]"] = round(harness.memory_kb(pid)["rss_kb"] / 1024, 1)
    return snapshot


async def drive(
    url: str,
    key: str,
    *,
    seconds: float,
    rate: float,
    stream_fraction: float,
    children: harness.Children,
    window_seconds: float,
    seed: int,
) -> tuple[list[Outcome], list[dict[str, Any]]]:
    rng = random.Random(seed)
    total = int(seconds * rate)
    bodies = {
        "json": chat_body(stream=False),
        "stream": chat_body(stream=True),
        "stream+usage": chat_body(stream=True, include_usage=True),
    }
    outcomes: list[Outcome] = []
    memory: list[dict[str, Any]] = []
    started = time.monotonic()

    async def sample_memory() -> None:
        while True:
            snapshot = await asyncio.to_thread(memory_snapshot, children)
            memory.append({"t": round(time.monotonic() - started, 1), "rss_mb": snapshot})
            await asyncio.sleep(window_seconds)

    async def one(session: Any, kind: str) -> None:
        if kind == "json":
            outcome = await one_completion(session, url, bodies[kind], timeout=60)
        else:
            outcome = await one_stream(session, url, bodies[kind], timeout=60)
            outcome.kind = kind
        outcomes.append(outcome)

    sampler = asyncio.create_task(sample_memory())
    tasks = []
    async with session_for(key, limit=0) as session:
        for i in range(total):
            delay = started + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            roll = rng.random()
            kind = "json" if roll >= stream_fraction else ("stream" if roll < stream_fraction / 2 else "stream+usage")
            tasks.append(asyncio.create_task(one(session, kind)))
        await asyncio.wait(tasks, timeout=90)
    sampler.cancel()
    memory.append({"t": round(time.monotonic() - started, 1), "rss_mb": memory_snapshot(children)})
    for outcome in outcomes:
        outcome.started -= started
    return outcomes, memory


def windows(outcomes: list[Outcome], *, window_seconds: float, seconds: float) -> list[dict[str, Any]]:
    rows = []
    start = 0.0
    while start < seconds:
        # The last window also takes the few requests the scheduler started a hair after the end.
        end = start + window_seconds if start + window_seconds < seconds else float("inf")
        inside = [o for o in outcomes if start <= o.started < end]
        ok = [o for o in inside if o.ok]
        json_ms = [o.total_ms for o in ok if o.kind == "json"]
        ttft_ms = [o.ttft_ms for o in ok if o.kind != "json" and o.ttft_ms is not None]
        rows.append(
            {
                "from_s": start,
                "requests": len(inside),
                "errors": len(inside) - len(ok),
                "json_p50_ms": percentile(json_ms, 50),
                "json_p95_ms": percentile(json_ms, 95),
                "json_p99_ms": percentile(json_ms, 99),
                "ttft_p50_ms": percentile(ttft_ms, 50),
                "ttft_p99_ms": percentile(ttft_ms, 99),
            }
        )
        start += window_seconds
    return rows


def reconcile(env: dict[str, str], *, workspace_id: int, expected: int, timeout: float = 60) -> dict[str, int]:
    """Poll the ledger until it holds `expected` events (finalizers and group commit may lag a little)."""
    deadline = time.monotonic() + timeout
    totals = harness.ledger_totals(env, workspace_id=workspace_id)
    while totals["events"] < expected and time.monotonic() < deadline:
        time.sleep(2)
        totals = harness.ledger_totals(env, workspace_id=workspace_id)
    return totals


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def report(results: dict[str, Any]) -> str:
    meta, summary = results["meta"], results["summary"]
    lines = [
        f"Soak {meta['started_at']}: `{meta['command']}`; {meta['machine']}.",
        f"{meta['seconds']} s at {meta['rate']} req/s ({int(meta['stream_fraction'] * 100)}% streams), fake upstream "
        f"latency {meta['latency_ms']} ms, chunks {meta['chunk_delay_ms']} ms apart; gateway {meta['workers']} "
        f"workers; PostgreSQL + Redis; niceness {meta['niceness']}.",
        "",
        f"- requests sent: {summary['sent']}, succeeded: {summary['ok']}, failed: {summary['failed']} "
        f"(error rate {summary['error_rate_pct']:.3f}%)",
        f"- ledger: {summary['ledger_events']} usage events, {summary['ledger_messages']} counted messages for the "
        f"soak workspace; expected {summary['ok']} messages and {summary['sent']} events: "
        f"**{'reconciled exactly' if summary['reconciled'] else 'MISMATCH'}**",
        f"- latency over the whole run: non-streaming p50 {fmt(summary['json_p50_ms'])} / p99 "
        f"{fmt(summary['json_p99_ms'])} ms; streams TTFT p50 {fmt(summary['ttft_p50_ms'])} / p99 "
        f"{fmt(summary['ttft_p99_ms'])} ms",
    ]
    if summary["errors"]:
        lines.append(f"- errors: {summary['errors']}")
    lines += [
        "",
        "| window from s | requests | errors | non-stream p50 / p95 / p99 ms | TTFT p50 / p99 ms |",
        "|---:|---:|---:|---|---|",
    ]
    for row in results["windows"]:
        lines.append(
            f"| {row['from_s']:.0f} | {row['requests']} | {row['errors']} | {fmt(row['json_p50_ms'])} / "
            f"{fmt(row['json_p95_ms'])} / {fmt(row['json_p99_ms'])} | {fmt(row['ttft_p50_ms'])} / "
            f"{fmt(row['ttft_p99_ms'])} |"
        )
    memory = results["memory"]
    first, warm, last = memory[0], memory[min(1, len(memory) - 1)], memory[-1]
    lines += [
        "",
        f"| process | RSS MB at start | after the first window ({warm['t']} s) | at the end ({last['t']} s) |",
        "|---|---:|---:|---:|",
    ]
    for name in last["rss_mb"]:
        lines.append(
            f"| {name} | {first['rss_mb'].get(name, '-')} | {warm['rss_mb'].get(name, '-')} | {last['rss_mb'][name]} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=120)
    parser.add_argument("--rate", type=float, default=40, help="requests started per second")
    parser.add_argument("--stream-fraction", type=float, default=0.5)
    parser.add_argument("--window", type=float, default=10, help="seconds per reporting window")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--latency-ms", type=float, default=20)
    parser.add_argument("--chunk-delay-ms", type=float, default=5)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--nice", type=int, default=-10, help="niceness of the soak and its processes (see run.py)")
    args = parser.parse_args()
    if args.seconds > 3600:
        sys.exit("a soak here is bounded: at most 3600 s")

    started = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out_dir = harness.RESULTS / f"soak-{started}"
    out_dir.mkdir(parents=True, exist_ok=True)
    harness.raise_nofile()
    niceness = harness.set_niceness(args.nice)
    database_url = os.environ.get("DATABASE_URL") or harness.DEFAULT_DATABASE_URL
    redis_url = os.environ.get("REDIS_URL") or harness.DEFAULT_REDIS_URL
    log(f"soak results in {out_dir}; DATABASE_URL={database_url} REDIS_URL={redis_url}")

    with harness.managed_children(out_dir) as children:
        fake_port = harness.free_port()
        harness.start_fake(
            children,
            name="fake-upstream",
            port=fake_port,
            latency_ms=args.latency_ms,
            chunk_delay_ms=args.chunk_delay_ms,
        )
        env = harness.gateway_env(
            upstream_base_url=f"http://127.0.0.1:{fake_port}/api/v1", database_url=database_url, redis_url=redis_url
        )
        harness.ensure_database(database_url)
        seeded = harness.migrate_and_seed(env, email=f"soak-{started.lower()}@example.com")
        port = harness.free_port()
        harness.start_gateway(children, name="gateway", port=port, workers=args.workers, env=env)
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        log(f"driving {args.rate} req/s for {args.seconds} s")
        outcomes, memory = asyncio.run(
            drive(
                url,
                seeded["key"],
                seconds=args.seconds,
                rate=args.rate,
                stream_fraction=args.stream_fraction,
                children=children,
                window_seconds=args.window,
                seed=args.seed,
            )
        )
        ok = [o for o in outcomes if o.ok]
        log(f"sent {len(outcomes)}, ok {len(ok)}; reconciling the ledger")
        totals = reconcile(env, workspace_id=seeded["workspace_id"], expected=len(outcomes))

    errors: dict[str, int] = {}
    for o in outcomes:
        if not o.ok:
            label = f"{o.kind} {o.status} {o.error[:80]}"
            errors[label] = errors.get(label, 0) + 1
    json_ms = [o.total_ms for o in ok if o.kind == "json"]
    ttft_ms = [o.ttft_ms for o in ok if o.kind != "json" and o.ttft_ms is not None]
    results = {
        "meta": {
            "started_at": started,
            "command": " ".join(["python", *sys.argv]),
            "machine": f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}",
            "seconds": args.seconds,
            "rate": args.rate,
            "stream_fraction": args.stream_fraction,
            "latency_ms": args.latency_ms,
            "chunk_delay_ms": args.chunk_delay_ms,
            "workers": args.workers,
            "niceness": niceness,
        },
        "summary": {
            "sent": len(outcomes),
            "ok": len(ok),
            "failed": len(outcomes) - len(ok),
            "error_rate_pct": 100 * (len(outcomes) - len(ok)) / max(1, len(outcomes)),
            "errors": errors,
            "ledger_messages": totals["messages"],
            "ledger_events": totals["events"],
            "reconciled": totals["messages"] == len(ok) and totals["events"] == len(outcomes),
            "json_p50_ms": percentile(json_ms, 50),
            "json_p99_ms": percentile(json_ms, 99),
            "ttft_p50_ms": percentile(ttft_ms, 50),
            "ttft_p99_ms": percentile(ttft_ms, 99),
        },
        "windows": windows(outcomes, window_seconds=args.window, seconds=args.seconds),
        "memory": memory,
    }
    text = report(results)
    (out_dir / "results.json").write_text(json.dumps(results, indent=2))
    (out_dir / "summary.md").write_text(text)
    print(text)
    log(f"wrote {out_dir / 'summary.md'}")
    return 0 if results["summary"]["reconciled"] and not errors else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        log("interrupted; child processes stopped")
        sys.exit(130)
