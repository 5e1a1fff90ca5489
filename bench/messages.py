"""Does a Messages request cost the gateway more CPU than a chat completion? Loopback only, bounded.

Starts the fake upstream and the gateway (one worker, production settings, PostgreSQL and Redis as in
bench/run.py), then, in alternating rounds, drives three request kinds at the same concurrency and
reads the gateway's CPU time per request from /proc:

- chat:       POST /v1/chat/completions, openai/gpt-5-mini (the baseline)
- claude:     POST /api/anthropic/v1/messages, anthropic/claude-sonnet-4.5 (bytes passed through)
- translated: POST /api/anthropic/v1/messages, openai/gpt-5-mini (translated to chat and back)

each both whole (wrk) and streamed (an aiohttp client that reads every stream to its end).

    .venv/bin/python bench/messages.py --seconds 5 --rounds 2
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import harness
from bench.harness import log

HELLO = [{"role": "user", "content": "Say hello"}]
KINDS: dict[str, tuple[str, dict[str, Any]]] = {
    "chat": ("/v1/chat/completions", {"model": "openai/gpt-5-mini", "messages": HELLO}),
    "claude": (
        "/api/anthropic/v1/messages",
        {"model": "anthropic/claude-sonnet-4.5", "max_tokens": 256, "messages": HELLO},
    ),
    "translated": ("/api/anthropic/v1/messages", {"model": "openai/gpt-5-mini", "max_tokens": 256, "messages": HELLO}),
}


async def _stream_load(url: str, body: dict[str, Any], key: str, *, concurrency: int, seconds: float) -> dict:
    import aiohttp

    deadline = time.monotonic() + seconds
    done = errors = 0
    payload = json.dumps({**body, "stream": True}).encode()
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal done, errors
        while time.monotonic() < deadline:
            async with session.post(url, data=payload, headers=headers) as response:
                await response.read()
                if response.status == 200:
                    done += 1
                else:
                    errors += 1

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    return {"requests": done, "errors": errors}


def measure(
    gateway: harness.Child, kind: str, *, base: str, key: str, stream: bool, concurrency: int, seconds: float, tmp: Path
) -> dict:
    path, body = KINDS[kind]
    pids = harness.server_pids(gateway)
    before = harness.cpu_seconds(pids)
    if stream:
        data = asyncio.run(_stream_load(base + path, body, key, concurrency=concurrency, seconds=seconds))
    else:
        script = harness.write_wrk_script(tmp / f"{kind}.lua", body=body, key=key)
        data = harness.run_wrk(base + path, script, connections=concurrency, seconds=seconds)
    cpu = harness.cpu_seconds(pids) - before
    data["cpu_ms_per_request"] = round(cpu * 1000 / data["requests"], 3) if data["requests"] else None
    log(
        f"  {kind:10} {'stream' if stream else 'whole ':6} {data['requests']:6d} requests  "
        f"errors {data['errors']}  cpu {data['cpu_ms_per_request']} ms/request"
    )
    return data


def start_fake_and_seed(children: harness.Children) -> tuple[dict[str, str], dict[str, Any]]:
    """The fake upstream started; the gateway's environment (DATABASE_URL, REDIS_URL) and a seeded key."""
    database_url = os.environ.get("DATABASE_URL", harness.DEFAULT_DATABASE_URL)
    redis_url = os.environ.get("REDIS_URL", harness.DEFAULT_REDIS_URL)
    harness.ensure_database(database_url)
    fake_port = harness.free_port()
    harness.start_fake(children, name="fake", port=fake_port, latency_ms=0)
    env = harness.gateway_env(
        upstream_base_url=f"http://127.0.0.1:{fake_port}/api/v1", database_url=database_url, redis_url=redis_url
    )
    return env, harness.migrate_and_seed(env, email="bench-messages@example.com")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()

    run_dir = harness.RESULTS / time.strftime("messages-%Y%m%dT%H%M%SZ", time.gmtime())
    run_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, list[float]]] = {}
    with harness.managed_children(run_dir) as children:
        env, info = start_fake_and_seed(children)
        gateway_port = harness.free_port()
        gateway = harness.start_gateway(children, name="gateway", port=gateway_port, workers=1, env=env)
        base = f"http://127.0.0.1:{gateway_port}"
        for kind in KINDS:  # warm up every path once
            measure(gateway, kind, base=base, key=info["key"], stream=False, concurrency=2, seconds=1, tmp=run_dir)
        for round_number in range(args.rounds):
            log(f"round {round_number + 1} of {args.rounds}")
            for stream in (False, True):
                for kind in KINDS:
                    data = measure(
                        gateway,
                        kind,
                        base=base,
                        key=info["key"],
                        stream=stream,
                        concurrency=args.concurrency,
                        seconds=args.seconds,
                        tmp=run_dir,
                    )
                    label = f"{kind} {'stream' if stream else 'whole'}"
                    results.setdefault(label, {"cpu_ms": [], "errors": []})
                    results[label]["cpu_ms"].append(data["cpu_ms_per_request"] or 0)
                    results[label]["errors"].append(data["errors"])
    (run_dir / "results.json").write_text(json.dumps(results, indent=2))
    print("\n| request | gateway CPU per request (ms), each round | errors |\n|---|---|---|")
    for label, data in results.items():
        print(f"| {label} | {' / '.join(f'{v:.3f}' for v in data['cpu_ms'])} | {sum(data['errors'])} |")
    print(f"\nresults: {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
