"""The gateway benchmark: fake upstream direct vs the gateway in front of it vs LiteLLM Proxy, in one run.

    .venv/bin/python bench/run.py                      # everything, ~6 minutes
    .venv/bin/python bench/run.py --seconds 5 --skip-litellm

Loopback only; every child process is killed at the end (also on Ctrl-C). Results go to
bench/results/<timestamp>/ (results.json, summary.md, and one log per process). See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import harness
from bench.harness import Child, Children, log
from bench.loadgen import chat_body

LITELLM_VENV = harness.BENCH / ".litellm-venv"
LITELLM_VERSIONS = ("1.108.7", "1.106.0", "1.106.10")  # tried in order; the first that installs here wins
LITELLM_MASTER_KEY = "sk-litellm-bench-master-key"


# ---- LiteLLM -------------------------------------------------------------------------------------------


def ensure_litellm(versions: tuple[str, ...], log_path: Path) -> str | None:
    """A throwaway virtualenv with litellm[proxy]; returns the installed version, or None if impossible."""
    litellm = LITELLM_VENV / "bin" / "litellm"
    pip = LITELLM_VENV / "bin" / "pip"
    if litellm.exists():
        return installed_litellm_version()
    if not (LITELLM_VENV / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(LITELLM_VENV)], check=True, timeout=120)
    with log_path.open("a") as out:
        for version in versions:
            log(f"installing litellm[proxy]=={version} into {LITELLM_VENV} (log: {log_path})")
            result = subprocess.run(
                [str(pip), "install", "-q", f"litellm[proxy]=={version}"],
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=900,
                check=False,
            )
            if result.returncode == 0 and litellm.exists():
                return installed_litellm_version()
    return None


def installed_litellm_version() -> str:
    result = subprocess.run(
        [str(LITELLM_VENV / "bin" / "python"), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return result.stdout.strip() or "unknown"


def litellm_config(path: Path, *, fast_base: str, slow_base: str) -> Path:
    # The openai/ provider prefix makes LiteLLM treat api_base as an OpenAI-compatible server; the
    # rest of the name is what it sends upstream. No database: the master key is the only key.
    path.write_text(
        f"""model_list:
  - model_name: {harness.MODEL}
    litellm_params:
      model: openai/{harness.MODEL}
      api_base: {fast_base}
      api_key: sk-or-bench-server-key
  - model_name: bench-slow
    litellm_params:
      model: openai/{harness.MODEL}
      api_base: {slow_base}
      api_key: sk-or-bench-server-key
litellm_settings:
  drop_params: true
  telemetry: false
general_settings:
  master_key: {LITELLM_MASTER_KEY}
"""
    )
    return path


def start_litellm(children: Children, *, port: int, config: Path, workers: int) -> Child:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(
        LITELLM_LOCAL_MODEL_COST_MAP="True",
        LITELLM_LOG="ERROR",
        LITELLM_TELEMETRY="False",
        DISABLE_ADMIN_UI="True",
        PYTHONUNBUFFERED="1",
        NO_PROXY="*",
    )
    argv = [
        str(LITELLM_VENV / "bin" / "litellm"),
        "--config",
        str(config),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--num_workers",
        str(workers),
    ]
    child = children.start("litellm", argv, env=env)
    harness.wait_for_http(f"http://127.0.0.1:{port}/health/liveliness", timeout=180, child=child)
    deadline = time.monotonic() + 60
    while len(harness.server_pids(child)) < workers + 1 and time.monotonic() < deadline:
        time.sleep(0.5)
    return child


# ---- targets and phases -----------------------------------------------------------------------------


class Target:
    def __init__(self, name: str, child: Child, url: str, key: str, slow_model: str = harness.MODEL) -> None:
        self.name = name
        self.child = child
        self.url = url
        self.key = key
        self.slow_model = slow_model


def sanity_check(target: Target) -> None:
    """One non-streaming and one streaming request that must succeed before any load."""
    headers = {"Authorization": f"Bearer {target.key}"}
    status, body = harness.http_json("POST", target.url, body=chat_body(stream=False), headers=headers)
    if status != 200 or not isinstance(body, dict) or "choices" not in body:
        raise RuntimeError(f"{target.name}: non-streaming request failed: {status} {str(body)[:500]}")
    result = harness.run_loadgen(
        ["streams", "--url", target.url, "--key", target.key, "--concurrency", "1", "--seconds", "0.2"], timeout=60
    )
    if result["errors"] or not result["ok"]:
        raise RuntimeError(f"{target.name}: streaming request failed: {result['errors']}")


def measure_wrk(
    target: Target, script: Path, *, connections: int, seconds: float, meter: harness.CpuMeter
) -> dict[str, Any]:
    pids = harness.server_pids(target.child)
    cpu_before = harness.cpu_seconds(pids)
    meter.start()
    data = harness.run_wrk(target.url, script, connections=connections, seconds=seconds)
    data.update(meter.stop())
    cpu = harness.cpu_seconds(pids) - cpu_before
    data["server_cpu_s"] = round(cpu, 3)
    data["cpu_ms_per_request"] = round(cpu * 1000 / data["requests"], 3) if data["requests"] else None
    log(
        f"  {target.name:8} c={connections:<4} {data['rps']:8.0f} req/s  p50 {data['p50_us'] / 1000:7.2f} ms  "
        f"p99 {data['p99_us'] / 1000:7.2f} ms  errors {data['errors']}  cpu {data['cpu_ms_per_request']} ms/req  "
        f"(other processes: {data['other_cores']} cores)"
    )
    return data


def measure_streams(
    target: Target, *, concurrency: int, seconds: float, processes: int, meter: harness.CpuMeter
) -> dict[str, Any]:
    per_process = max(1, concurrency // processes)
    args = [
        "streams",
        "--url",
        target.url,
        "--key",
        target.key,
        "--concurrency",
        str(per_process),
        "--seconds",
        str(seconds),
    ]
    pids = harness.server_pids(target.child)
    cpu_before = harness.cpu_seconds(pids)
    meter.start()
    result = harness.run_loadgen(args, processes=processes, timeout=seconds + 120)
    result.update(meter.stop())
    cpu = harness.cpu_seconds(pids) - cpu_before
    result["cpu_ms_per_request"] = round(cpu * 1000 / result["requests"], 3) if result["requests"] else None
    log(
        f"  {target.name:8} streams c={concurrency:<4} {result['rps']:7.0f} streams/s  TTFT p50 "
        f"{fmt_ms(result['ttft_ms'][50])} ms p99 {fmt_ms(result['ttft_ms'][99])} ms  "
        f"errors {sum(result['errors'].values())}"
    )
    return result


def measure_hold(target: Target, *, streams: int, ramp_seconds: float) -> dict[str, Any]:
    """Open `streams` slow streams at once; sample the server's memory while they are open."""
    peak = {"rss_mb": 0.0, "pss_mb": 0.0}
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.5):
            memory = harness.memory_of(target.child)
            peak["rss_mb"] = max(peak["rss_mb"], memory["rss_mb"])
            peak["pss_mb"] = max(peak["pss_mb"], memory["pss_mb"])

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        result = harness.run_loadgen(
            [
                "hold",
                "--url",
                target.url,
                "--key",
                target.key,
                "--model",
                target.slow_model,
                "--streams",
                str(streams),
                "--ramp-seconds",
                str(ramp_seconds),
            ],
            timeout=300,
        )
    finally:
        stop.set()
        sampler.join()
    result["peak_memory"] = peak
    log(
        f"  {target.name:8} held {result['ok']}/{streams} streams (peak open {result.get('peak_open')}), "
        f"errors {sum(result['errors'].values())}, TTFT p50 {fmt_ms(result['ttft_ms'][50])} ms, "
        f"peak RSS {peak['rss_mb']} MB"
    )
    return result


def git_state() -> str:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=harness.REPO, capture_output=True, text=True, timeout=30, check=False
        ).stdout.strip()

    dirty = len([line for line in git("status", "--porcelain", "--untracked-files=no").splitlines() if line])
    return f"{git('rev-parse', '--short', 'HEAD')}" + (f" + {dirty} uncommitted files" if dirty else "")


def fmt_ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


# ---- report ------------------------------------------------------------------------------------------


def summary_markdown(results: dict[str, Any]) -> str:
    lines: list[str] = []
    meta = results["meta"]
    lines.append(f"Run {meta['started_at']} on {meta['machine']}; `{meta['command']}`; code at {meta['git']}.")
    lines.append(
        f"Fake upstream latency {meta['latency_ms']} ms; gateway: {meta['gateway_workers']} uvicorn workers; "
        f"LiteLLM: {meta.get('litellm_version') or 'skipped'} with {meta['litellm_workers']} workers; "
        f"{meta['seconds']} s per load point (wrk {meta['wrk_version']}); every benchmark process at niceness "
        f"{meta.get('niceness', 0)}; other processes used {meta.get('other_cores_at_start')} cores at the start."
    )
    lines.append("")
    lines.append("### Non-streaming chat completions (wrk)")
    lines.append("")
    variants = sorted(n for n in results["targets"] if n.startswith("gateway-"))
    names = [n for n in ("direct", "gateway", *variants, "litellm") if n in results["targets"]]
    lines.append("| concurrency | target | req/s | p50 ms | p99 ms | errors | server CPU ms/req | other procs' cores |")
    lines.append("|---|---|---:|---:|---:|---:|---:|---:|")
    for point in results["non_streaming"]:
        for name in names:
            data = point.get(name)
            if data:
                lines.append(
                    f"| {point['connections']} | {name} | {data['rps']:.0f} | {data['p50_us'] / 1000:.2f} | "
                    f"{data['p99_us'] / 1000:.2f} | {data['errors']} | {data['cpu_ms_per_request']} | "
                    f"{data['other_cores']} |"
                )
    lines.append("")
    lines.append(
        "| concurrency | gateway overhead p50 / p99 ms | LiteLLM overhead p50 / p99 ms | req/s gateway ÷ LiteLLM |"
    )
    lines.append("|---|---|---|---:|")
    for point in results["non_streaming"]:
        direct, ours, theirs = point.get("direct"), point.get("gateway"), point.get("litellm")
        ours_overhead = overhead(direct, ours)
        theirs_overhead = overhead(direct, theirs)
        ratio = f"{ours['rps'] / theirs['rps']:.1f}×" if ours and theirs and theirs["rps"] else "-"
        lines.append(f"| {point['connections']} | {ours_overhead} | {theirs_overhead} | {ratio} |")
    lines.append("")
    lines.append("### Streams: time to first token (asyncio + aiohttp clients)")
    lines.append("")
    lines.append(
        "| concurrency | target | streams/s | TTFT p50 ms | TTFT p99 ms | TTFT overhead p50 ms | errors "
        "| server CPU ms/stream | other procs' cores |"
    )
    lines.append("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for point in results["streaming"]:
        direct = point.get("direct")
        for name in names:
            data = point.get(name)
            if not data:
                continue
            extra = "-"
            if direct and name != "direct" and data["ttft_ms"][50] is not None:
                extra = f"{data['ttft_ms'][50] - direct['ttft_ms'][50]:.2f}"
            lines.append(
                f"| {point['concurrency']} | {name} | {data['rps']:.0f} | {fmt_ms(data['ttft_ms'][50])} | "
                f"{fmt_ms(data['ttft_ms'][99])} | {extra} | {sum(data['errors'].values())} | "
                f"{data['cpu_ms_per_request']} | {data['other_cores']} |"
            )
    lines.append("")
    hold = results.get("hold") or {}
    if hold:
        lines.append("### Concurrent open streams")
        lines.append("")
        lines.append(f"{meta['hold']}; the gateway here is a single uvicorn process.")
        lines.append("")
        lines.append(
            "| target | streams opened | completed with [DONE] | peak open at once | errors | TTFT p50 / p99 ms "
            "| peak RSS MB |"
        )
        lines.append("|---|---:|---:|---:|---:|---|---:|")
        for name, data in hold.items():
            lines.append(
                f"| {name} | {data['requests']} | {data['ok']} | {data.get('peak_open')} | "
                f"{sum(data['errors'].values())} | {fmt_ms(data['ttft_ms'][50])} / {fmt_ms(data['ttft_ms'][99])} | "
                f"{data['peak_memory']['rss_mb']} |"
            )
        lines.append("")
    if results.get("idle_cpu_cores"):
        idle = ", ".join(f"{name} {cores}" for name, cores in results["idle_cpu_cores"].items())
        lines.append(f"CPU each server used while idle (5 s after warm-up, in cores): {idle}.")
        lines.append("")
    lines.append("### Memory of all server processes after the load")
    lines.append("")
    lines.append("| target | processes | RSS MB (sum) | PSS MB (sum) |")
    lines.append("|---|---:|---:|---:|")
    for name, memory in results["memory"].items():
        lines.append(f"| {name} | {memory['processes']} | {memory['rss_mb']} | {memory['pss_mb']} |")
    lines.extend(target_checks(results))
    errors = [f"{k}: {v}" for k, v in results.get("notes", {}).items()]
    if errors:
        lines.append("")
        lines.extend(f"- {e}" for e in errors)
    return "\n".join(lines) + "\n"


def target_checks(results: dict[str, Any]) -> list[str]:
    """The speed targets (issue #11 point 6, tightening issue #3's), each with the figures and whether it is met."""
    checks: list[str] = []

    def check(label: str, met: bool | None, figures: str) -> None:
        verdict = "n/a" if met is None else ("met" if met else "NOT met")
        checks.append(f"| {label} | {figures} | {verdict} |")

    by_c = {p["connections"]: p for p in results["non_streaming"]}
    streams = {p["concurrency"]: p for p in results["streaming"]}
    if 32 in by_c and "gateway" in by_c[32]:
        ours, theirs = by_c[32]["gateway"], by_c[32].get("litellm")
        ratio = ours["rps"] / theirs["rps"] if theirs and theirs["rps"] else None
        figures = (
            f"{ours['rps']:.0f} vs {theirs['rps']:.0f} req/s = {ratio:.1f}×" if ratio else f"{ours['rps']:.0f} req/s"
        )
        check("≥ 8× LiteLLM's req/s at concurrency 32", None if ratio is None else ratio >= 8, figures)
    if 1 in by_c and "gateway" in by_c[1] and "direct" in by_c[1]:
        value = (by_c[1]["gateway"]["p50_us"] - by_c[1]["direct"]["p50_us"]) / 1000
        check("overhead at concurrency 1 ≤ 2.5 ms at p50", value <= 2.5, f"{value:.2f} ms")
    hold = (results.get("hold") or {}).get("gateway (1 process)")
    if hold:
        met = hold["ok"] == hold["requests"] and not hold["errors"] and hold["requests"] >= 1000
        check(
            "1,000 concurrent open streams in one process, no error",
            met,
            f"{hold['ok']}/{hold['requests']} completed, peak {hold.get('peak_open')} open at once",
        )
    for concurrency, point in sorted(streams.items()):
        direct, ours, theirs = point.get("direct"), point.get("gateway"), point.get("litellm")
        if direct and ours and theirs and direct["ttft_ms"][50] is not None and theirs["ttft_ms"][50] is not None:
            our_overhead = ours["ttft_ms"][50] - direct["ttft_ms"][50]
            their_overhead = theirs["ttft_ms"][50] - direct["ttft_ms"][50]
            check(
                f"TTFT overhead p50 ≤ LiteLLM's ÷ 10 (concurrency {concurrency})",
                our_overhead * 10 <= their_overhead,
                f"{our_overhead:.2f} ms vs {their_overhead:.2f} ms",
            )
    memory = results["memory"]
    if "gateway" in memory and "litellm" in memory:
        ours, theirs = memory["gateway"]["rss_mb"], memory["litellm"]["rss_mb"]
        check("server memory ≤ ¼ of LiteLLM's (RSS, all processes)", ours * 4 <= theirs, f"{ours} MB vs {theirs} MB")
    if not checks:
        return []
    return ["", "### Targets (issue #11 point 6)", "", "| target | measured | verdict |", "|---|---|---|", *checks]


def overhead(direct: dict | None, other: dict | None) -> str:
    if not direct or not other:
        return "-"
    return f"{(other['p50_us'] - direct['p50_us']) / 1000:.2f} / {(other['p99_us'] - direct['p99_us']) / 1000:.2f}"


# ---- main ----------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10, help="duration of each load point")
    parser.add_argument("--latency-ms", type=float, default=0, help="fake upstream latency before responding")
    parser.add_argument("--workers", type=int, default=2, help="gateway uvicorn workers")
    parser.add_argument("--concurrency", default="1,32,128", help="non-streaming concurrency levels")
    parser.add_argument("--stream-concurrency", default="1,32")
    parser.add_argument("--hold-streams", type=int, default=1000, help="0 skips the open-streams test")
    parser.add_argument("--hold-chunk-delay-ms", type=float, default=500)
    parser.add_argument("--hold-chunks", type=int, default=40)
    parser.add_argument("--hold-ramp-seconds", type=float, default=10, help="open the streams over this long")
    parser.add_argument("--skip-litellm", action="store_true")
    parser.add_argument("--litellm-workers", type=int, default=4)
    parser.add_argument("--litellm-version", default="", help="try this version first")
    parser.add_argument(
        "--wait-for-quiet", type=float, default=300, help="wait up to this long for other processes to go idle"
    )
    parser.add_argument(
        "--nice",
        type=int,
        default=-10,
        help="niceness for the benchmark and every process it starts (negative needs root): the machine is "
        "shared, and this keeps other people's test runs from deciding the figures; 0 leaves it alone",
    )
    parser.add_argument("--skip", default="", help="comma-separated targets to leave out: direct,gateway,litellm")
    parser.add_argument(
        "--gateway-variant",
        action="append",
        default=[],
        metavar="NAME:VAR=VALUE[,VAR=VALUE]",
        help="also measure a gateway started with these environment variables, as target gateway-NAME "
        "(an A/B in the same run; repeatable)",
    )
    args = parser.parse_args()

    started = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out_dir = harness.RESULTS / started
    out_dir.mkdir(parents=True, exist_ok=True)
    nofile = harness.raise_nofile()
    database_url = os.environ.get("DATABASE_URL") or harness.DEFAULT_DATABASE_URL
    redis_url = os.environ.get("REDIS_URL") or harness.DEFAULT_REDIS_URL
    skip = {s for s in args.skip.split(",") if s}
    if args.skip_litellm:
        skip.add("litellm")
    wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False).stdout.split("\n")[0]
    results: dict[str, Any] = {
        "meta": {
            "started_at": started,
            "machine": f"{os.cpu_count()} CPUs, {os.uname().sysname} {os.uname().release}, "
            f"Python {sys.version.split()[0]}",
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "latency_ms": args.latency_ms,
            "gateway_workers": args.workers,
            "litellm_workers": args.litellm_workers,
            "seconds": args.seconds,
            "hold": f"{args.hold_streams} streams opened over {args.hold_ramp_seconds:.0f} s, each "
            f"{args.hold_chunks} chunks {args.hold_chunk_delay_ms:.0f} ms apart",
            "wrk_version": wrk_version.strip(),
            "nofile": nofile,
            "git": git_state(),
            "database_url": database_url,
            "redis_url": redis_url,
        },
        "targets": {},
        "non_streaming": [],
        "streaming": [],
        "hold": {},
        "memory": {},
        "notes": {},
    }
    log(f"results in {out_dir}; DATABASE_URL={database_url} REDIS_URL={redis_url}; open files limit {nofile}")

    litellm_version: str | None = None
    if "litellm" not in skip:
        versions = tuple(v for v in (args.litellm_version, *LITELLM_VERSIONS) if v)
        try:
            litellm_version = ensure_litellm(versions, out_dir / "litellm-install.log")
        except (subprocess.SubprocessError, OSError) as exc:
            log(f"LiteLLM install failed: {exc}")
        if not litellm_version:
            message = f"LiteLLM skipped: litellm[proxy] ({', '.join(versions)}) could not be installed here"
            log(message)
            results["notes"]["litellm"] = message
            skip.add("litellm")
    results["meta"]["litellm_version"] = litellm_version

    niceness = harness.set_niceness(args.nice)
    results["meta"]["niceness"] = niceness
    idle = harness.wait_for_quiet(max_wait_seconds=args.wait_for_quiet)
    results["meta"]["other_cores_at_start"] = idle
    log(f"other processes use {idle} cores; starting")
    with harness.managed_children(out_dir) as children:
        fast_port, slow_port = harness.free_port(), harness.free_port()
        fake = harness.start_fake(children, name="fake-upstream", port=fast_port, latency_ms=args.latency_ms)
        fast_base = f"http://127.0.0.1:{fast_port}/api/v1"
        slow_base = f"http://127.0.0.1:{slow_port}/api/v1"
        targets: list[Target] = []
        if "direct" not in skip:
            targets.append(Target("direct", fake, f"{fast_base}/chat/completions", "sk-bench-direct"))

        gateway_key = None
        env = harness.gateway_env(upstream_base_url=fast_base, database_url=database_url, redis_url=redis_url)
        if "gateway" not in skip:
            harness.ensure_database(database_url)
            seeded = harness.migrate_and_seed(env, email=f"bench-{started.lower()}@example.com")
            gateway_key = seeded["key"]
            gateway_port = harness.free_port()
            gateway = harness.start_gateway(children, name="gateway", port=gateway_port, workers=args.workers, env=env)
            targets.append(
                Target("gateway", gateway, f"http://127.0.0.1:{gateway_port}/v1/chat/completions", gateway_key)
            )
            for variant in args.gateway_variant:
                name, _, assignments = variant.partition(":")
                variant_env = {**env, **dict(item.split("=", 1) for item in assignments.split(",") if item)}
                variant_port = harness.free_port()
                child = harness.start_gateway(
                    children, name=f"gateway-{name}", port=variant_port, workers=args.workers, env=variant_env
                )
                url = f"http://127.0.0.1:{variant_port}/v1/chat/completions"
                targets.append(Target(f"gateway-{name}", child, url, gateway_key))

        if "litellm" not in skip:
            litellm_port = harness.free_port()
            config = litellm_config(out_dir / "litellm-config.yaml", fast_base=fast_base, slow_base=slow_base)
            try:
                litellm = start_litellm(children, port=litellm_port, config=config, workers=args.litellm_workers)
                targets.append(
                    Target(
                        "litellm",
                        litellm,
                        f"http://127.0.0.1:{litellm_port}/v1/chat/completions",
                        LITELLM_MASTER_KEY,
                        slow_model="bench-slow",
                    )
                )
            except RuntimeError as exc:
                message = f"LiteLLM skipped: it did not start ({str(exc).splitlines()[0]})"
                log(message)
                results["notes"]["litellm"] = message

        for target in targets:
            sanity_check(target)
            results["targets"][target.name] = {"url": target.url, "pids": harness.server_pids(target.child)}
        log("every target answered a non-streaming and a streaming request")

        scripts = {
            t.name: harness.write_wrk_script(out_dir / f"chat-{t.name}.lua", body=chat_body(stream=False), key=t.key)
            for t in targets
        }
        log("warm-up")
        meter = harness.CpuMeter(children)
        for target in targets:
            harness.run_wrk(target.url, scripts[target.name], connections=32, seconds=min(3, args.seconds))
            harness.run_loadgen(
                ["streams", "--url", target.url, "--key", target.key, "--concurrency", "8", "--seconds", "2"],
                timeout=120,
            )

        idle_pids = {t.name: harness.server_pids(t.child) for t in targets}
        idle_before = {name: harness.cpu_seconds(pids) for name, pids in idle_pids.items()}
        time.sleep(5)
        results["idle_cpu_cores"] = {
            name: round((harness.cpu_seconds(pids) - idle_before[name]) / 5, 3) for name, pids in idle_pids.items()
        }
        log(f"CPU used by each server while idle, in cores: {results['idle_cpu_cores']}")

        log("non-streaming (wrk)")
        for connections in [int(c) for c in args.concurrency.split(",") if c]:
            point: dict[str, Any] = {"connections": connections}
            for target in targets:
                point[target.name] = measure_wrk(
                    target, scripts[target.name], connections=connections, seconds=args.seconds, meter=meter
                )
            results["non_streaming"].append(point)

        log("streams (time to first token)")
        for concurrency in [int(c) for c in args.stream_concurrency.split(",") if c]:
            point = {"concurrency": concurrency}
            for target in targets:
                point[target.name] = measure_streams(
                    target,
                    concurrency=concurrency,
                    seconds=args.seconds,
                    processes=1 if concurrency == 1 else 2,
                    meter=meter,
                )
            results["streaming"].append(point)

        for target in targets:
            results["memory"][target.name] = harness.memory_of(target.child)

        if args.hold_streams:
            log(
                f"open streams: {args.hold_streams} opened over {args.hold_ramp_seconds:.0f} s, each "
                f"{args.hold_chunks} chunks {args.hold_chunk_delay_ms:.0f} ms apart"
            )
            harness.start_fake(
                children,
                name="fake-upstream-slow",
                port=slow_port,
                latency_ms=0,
                chunk_delay_ms=args.hold_chunk_delay_ms,
                chunks=args.hold_chunks,
            )
            slow_fake = children.children[-1]
            hold_targets: list[Target] = []
            if "direct" not in skip:
                hold_targets.append(Target("direct", slow_fake, f"{slow_base}/chat/completions", "sk-bench-direct"))
            if "gateway" not in skip:
                env_slow = harness.gateway_env(
                    upstream_base_url=slow_base, database_url=database_url, redis_url=redis_url
                )
                port = harness.free_port()
                single = harness.start_gateway(children, name="gateway-1-worker", port=port, workers=1, env=env_slow)
                hold_targets.append(
                    Target("gateway (1 process)", single, f"http://127.0.0.1:{port}/v1/chat/completions", gateway_key)
                )
            hold_targets.extend(t for t in targets if t.name == "litellm")
            for target in hold_targets:
                results["hold"][target.name] = measure_hold(
                    target, streams=args.hold_streams, ramp_seconds=args.hold_ramp_seconds
                )

    summary = summary_markdown(results)
    (out_dir / "results.json").write_text(json.dumps(results, indent=2, default=str))
    (out_dir / "summary.md").write_text(summary)
    print(summary)
    log(f"wrote {out_dir / 'results.json'} and {out_dir / 'summary.md'}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        log("interrupted; child processes stopped")
        sys.exit(130)
