"""Asyncio + aiohttp load clients for what wrk cannot measure: streams (time to first token) and open streams.

Run as a separate process by bench/run.py and bench/soak.py (one JSON document on stdout), so several
client processes can share the load and the client is not the bottleneck:

    python bench/loadgen.py streams --url URL --key KEY --concurrency 32 --seconds 10
    python bench/loadgen.py hold --url URL --key KEY --streams 1000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import time
from dataclasses import dataclass
from typing import Any

import aiohttp

REPLY = "Hello from the fake upstream."
MODEL = "openai/gpt-5-mini"


@dataclass
class Outcome:
    ok: bool
    started: float  # monotonic seconds
    ttft_ms: float | None  # to the first content-bearing data event
    total_ms: float
    status: int
    error: str = ""
    kind: str = "stream"


def chat_body(*, stream: bool, include_usage: bool = False, model: str = MODEL) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": "Say hello to the benchmark."}],
        "max_tokens": 32,
    }
    if stream:
        body["stream"] = True
        if include_usage:
            body["stream_options"] = {"include_usage": True}
    return body


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def one_stream(session: aiohttp.ClientSession, url: str, body: dict[str, Any], *, timeout: float) -> Outcome:
    started = time.monotonic()
    ttft: float | None = None
    text: list[str] = []
    done = False
    try:
        async with asyncio.timeout(timeout):
            async with session.post(url, json=body) as response:
                if response.status != 200:
                    detail = (await response.read())[:200].decode(errors="replace")
                    return Outcome(False, started, None, (time.monotonic() - started) * 1000, response.status, detail)
                async for raw in response.content:
                    line = raw.strip()
                    if not line.startswith(b"data: "):
                        continue
                    payload = line[6:]
                    if payload == b"[DONE]":
                        done = True
                        continue  # read on to the end of the body, so the connection is reused as SDKs do
                    chunk = json.loads(payload)
                    if chunk.get("error"):
                        return Outcome(False, started, ttft, (time.monotonic() - started) * 1000, 200, "error event")
                    for choice in chunk.get("choices") or ():
                        piece = (choice.get("delta") or {}).get("content")
                        if piece:
                            if ttft is None:
                                ttft = (time.monotonic() - started) * 1000
                            text.append(piece)
        total = (time.monotonic() - started) * 1000
        if not done:
            return Outcome(False, started, ttft, total, 200, "stream ended without [DONE]")
        if not "".join(text).startswith("Hello"):
            return Outcome(False, started, ttft, total, 200, f"unexpected text {''.join(text)[:60]!r}")
        return Outcome(True, started, ttft, total, 200)
    except (TimeoutError, aiohttp.ClientError, ValueError, OSError) as exc:
        return Outcome(False, started, ttft, (time.monotonic() - started) * 1000, 0, f"{type(exc).__name__}: {exc}")


async def one_completion(session: aiohttp.ClientSession, url: str, body: dict[str, Any], *, timeout: float) -> Outcome:
    started = time.monotonic()
    try:
        async with asyncio.timeout(timeout):
            async with session.post(url, json=body) as response:
                raw = await response.read()
        total = (time.monotonic() - started) * 1000
        if response.status != 200:
            return Outcome(False, started, None, total, response.status, raw[:200].decode(errors="replace"), "json")
        content = json.loads(raw)["choices"][0]["message"]["content"]
        if not content.startswith("Hello"):
            return Outcome(False, started, None, total, 200, f"unexpected text {content[:60]!r}", "json")
        return Outcome(True, started, total, total, 200, "", "json")
    except (TimeoutError, aiohttp.ClientError, ValueError, KeyError, OSError) as exc:
        elapsed = (time.monotonic() - started) * 1000
        return Outcome(False, started, None, elapsed, 0, f"{type(exc).__name__}: {exc}", "json")


def session_for(key: str, *, limit: int) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=limit, limit_per_host=limit, force_close=False)
    headers = {"Authorization": f"Bearer {key}"}
    return aiohttp.ClientSession(connector=connector, headers=headers, timeout=aiohttp.ClientTimeout(total=None))


async def closed_loop_streams(
    url: str, key: str, *, concurrency: int, seconds: float, include_usage: bool, model: str
) -> list[Outcome]:
    """`concurrency` workers, each sending one stream after another for `seconds`."""
    body = chat_body(stream=True, include_usage=include_usage, model=model)
    outcomes: list[Outcome] = []
    deadline = time.monotonic() + seconds
    async with session_for(key, limit=concurrency) as session:

        async def worker() -> None:
            while time.monotonic() < deadline:
                outcomes.append(await one_stream(session, url, body, timeout=30))

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return outcomes


async def hold_streams(url: str, key: str, *, streams: int, ramp_seconds: float, model: str) -> dict[str, Any]:
    """Open `streams` streams within `ramp_seconds` and keep them all open; how many stayed open at once."""
    body = chat_body(stream=True, model=model)
    open_now = 0
    peak_open = 0

    async def tracked(session: aiohttp.ClientSession, delay: float) -> Outcome:
        nonlocal open_now, peak_open
        await asyncio.sleep(delay)
        started = time.monotonic()
        ttft: float | None = None
        counted = False
        try:
            async with asyncio.timeout(120):
                async with session.post(url, json=body) as response:
                    if response.status != 200:
                        detail = (await response.read())[:200].decode(errors="replace")
                        return Outcome(
                            False, started, None, (time.monotonic() - started) * 1000, response.status, detail
                        )
                    done = False
                    async for raw in response.content:
                        line = raw.strip()
                        if line == b"data: [DONE]":
                            done = True
                            break
                        if line.startswith(b"data: {") and ttft is None:
                            ttft = (time.monotonic() - started) * 1000
                            open_now += 1
                            counted = True
                            peak_open = max(peak_open, open_now)
                    total = (time.monotonic() - started) * 1000
                    return Outcome(done, started, ttft, total, 200, "" if done else "no [DONE]")
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            elapsed = (time.monotonic() - started) * 1000
            return Outcome(False, started, ttft, elapsed, 0, f"{type(exc).__name__}: {exc}")
        finally:
            if counted:
                open_now -= 1

    async with session_for(key, limit=0) as session:
        outcomes = await asyncio.gather(*(tracked(session, ramp_seconds * i / streams) for i in range(streams)))
    result = summarise(list(outcomes))
    result["peak_open"] = peak_open
    return result


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


def summarise(outcomes: list[Outcome]) -> dict[str, Any]:
    ok = [o for o in outcomes if o.ok]
    errors: dict[str, int] = {}
    for o in outcomes:
        if not o.ok:
            label = f"{o.status} {o.error[:80]}"
            errors[label] = errors.get(label, 0) + 1
    ttft = [o.ttft_ms for o in ok if o.ttft_ms is not None]
    total = [o.total_ms for o in ok]
    return {
        "requests": len(outcomes),
        "ok": len(ok),
        "errors": errors,
        "ttft_ms": {q: percentile(ttft, q) for q in (50, 90, 99)},
        "total_ms": {q: percentile(total, q) for q in (50, 90, 99)},
        "ttft_raw": ttft,
        "total_raw": total,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["streams", "hold"])
    parser.add_argument("--url", required=True, help="the chat/completions URL")
    parser.add_argument("--key", default="sk-bench")
    parser.add_argument("--model", default=MODEL)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--include-usage", action="store_true")
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--ramp-seconds", type=float, default=3)
    args = parser.parse_args()
    if not args.url.startswith("http://127.0.0.1:"):
        sys.exit("loopback only: --url must start with http://127.0.0.1:")
    raise_nofile()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    started = time.monotonic()
    if args.mode == "streams":
        outcomes = asyncio.run(
            closed_loop_streams(
                args.url,
                args.key,
                concurrency=args.concurrency,
                seconds=args.seconds,
                include_usage=args.include_usage,
                model=args.model,
            )
        )
        result = summarise(outcomes)
    else:
        result = asyncio.run(
            hold_streams(args.url, args.key, streams=args.streams, ramp_seconds=args.ramp_seconds, model=args.model)
        )
    result["elapsed_s"] = time.monotonic() - started
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
