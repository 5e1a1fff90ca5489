"""CPU per request of the gateway, this tree against another source tree, in one run (A/B, interleaved).

    git archive <commit> | tar -x -C /tmp/before
    python bench/cpu_per_request.py --other /tmp/before --rounds 2

Each variant runs as one uvicorn worker (uvloop, httptools) against the fake upstream on loopback,
sharing this tree's database and Redis. Per round and variant: `GET /v1/models` under wrk (8
connections) and streamed chat completions from bench/loadgen.py (8 concurrent), each measured as
the server's CPU seconds (utime + stime from /proc) divided by the requests it served. Prints one
JSON document; the medians over rounds are what docs/decisions.md quotes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import (
    PYTHON,
    REPO,
    WRK_LUA,
    Child,
    Children,
    cpu_seconds,
    ensure_database,
    free_port,
    gateway_env,
    lua_string,
    managed_children,
    migrate_and_seed,
    run_loadgen,
    run_wrk,
    server_pids,
    start_fake,
    wait_for_http,
)


def get_script(path: Path, key: str) -> Path:
    done = WRK_LUA[WRK_LUA.index("function done") :].replace("{{", "{").replace("}}", "}")
    path.write_text(f'wrk.method = "GET"\nwrk.headers["Authorization"] = {lua_string("Bearer " + key)}\n{done}')
    return path


def start_variant(children: Children, *, name: str, tree: Path, env: dict[str, str]) -> tuple[Child, int]:
    port = free_port()
    argv = [PYTHON, "-m", "uvicorn", "writingmate.asgi:application", "--host", "127.0.0.1", "--port", str(port)]
    child = children.start(name, [*argv, "--loop", "uvloop", "--http", "httptools"], env=env, cwd=tree)
    wait_for_http(f"http://127.0.0.1:{port}/v1/models", timeout=60, child=child)
    return child, port


def measure(child: Child, run: Any) -> dict[str, float]:
    pids = server_pids(child)
    before = cpu_seconds(pids)
    requests = run()
    used = cpu_seconds(pids) - before
    return {"requests": requests, "cpu_ms_per_request": round(1000 * used / max(1, requests), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--other", required=True, type=Path, help="the source tree to compare with")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--database-url", default="postgres://postgres@127.0.0.1:5432/wm_cpu_bench")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/9")
    args = parser.parse_args()
    variants = {"this": REPO, "other": args.other.resolve()}
    results: dict[str, dict[str, list[dict[str, float]]]] = {name: {"models": [], "streams": []} for name in variants}
    log_dir = Path(tempfile.mkdtemp(prefix="cpu-bench-"))
    with managed_children(log_dir) as children:
        fake_port = free_port()
        start_fake(children, name="fake", port=fake_port, latency_ms=0)
        env = gateway_env(
            upstream_base_url=f"http://127.0.0.1:{fake_port}/api/v1",
            database_url=args.database_url,
            redis_url=args.redis_url,
        )
        ensure_database(args.database_url)
        key = migrate_and_seed(env, email="cpu-bench@example.com")["key"]
        script = get_script(log_dir / "get.lua", key)
        for _ in range(args.rounds):
            for name, tree in variants.items():
                child, port = start_variant(children, name=name, tree=tree, env=env)
                base = f"http://127.0.0.1:{port}/v1"
                run_wrk(f"{base}/models", script, connections=8, seconds=2)  # warm up
                results[name]["models"].append(
                    measure(
                        child,
                        lambda: run_wrk(f"{base}/models", script, connections=8, seconds=args.seconds)["requests"],  # noqa: B023
                    )
                )
                stream_args = ["streams", "--url", f"{base}/chat/completions", "--key", key, "--concurrency", "8"]
                results[name]["streams"].append(
                    measure(
                        child,
                        lambda: run_loadgen([*stream_args, "--seconds", str(args.seconds)])["ok"],  # noqa: B023
                    )
                )
                children.stop(child)
                time.sleep(1)
    summary = {
        name: {kind: statistics.median(r["cpu_ms_per_request"] for r in runs) for kind, runs in per_kind.items()}
        for name, per_kind in results.items()
    }
    json.dump({"median_cpu_ms_per_request": summary, "rounds": results}, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
