"""What bench/run.py and bench/soak.py share: child processes (all killed at the end), the fake upstream,
the gateway under uvicorn, seeding a developer key, wrk, and CPU/memory readings from /proc.

Loopback only. Every child runs in its own process group, which is killed on exit, on Ctrl-C and on errors.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
RESULTS = BENCH / "results"
PYTHON = str(REPO / ".venv" / "bin" / "python")
DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/wm_bench"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/9"
MODEL = "openai/gpt-5-mini"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---- child processes -----------------------------------------------------------------------------


@dataclass
class Child:
    name: str
    process: subprocess.Popen
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass
class Children:
    """Every long-running process the bench starts; `stop_all` ends each one's process group by id."""

    log_dir: Path
    children: list[Child] = field(default_factory=list)

    def start(self, name: str, argv: list[str], *, env: dict[str, str] | None = None, cwd: Path = REPO) -> Child:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{name}.log"
        log_file = log_path.open("wb")
        log(f"start {name}: {shlex.join(argv)}")
        process = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log_file.close()
        child = Child(name, process, log_path)
        self.children.append(child)
        return child

    def stop(self, child: Child, *, grace_seconds: float = 8) -> None:
        if child.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.process.pid, signal.SIGTERM)
            try:
                child.process.wait(grace_seconds)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.process.pid, signal.SIGKILL)
                child.process.wait(5)
        # Workers that outlived their parent are still in the group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.process.pid, signal.SIGKILL)
        if child in self.children:
            self.children.remove(child)

    def stop_all(self) -> None:
        for child in reversed(list(self.children)):
            try:
                self.stop(child)
            except Exception as exc:  # keep stopping the others
                log(f"could not stop {child.name}: {exc}")


@contextlib.contextmanager
def managed_children(log_dir: Path) -> Iterator[Children]:
    """Children that are all stopped on exit, including on Ctrl-C and SIGTERM."""
    children = Children(log_dir)

    def on_sigterm(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield children
    finally:
        children.stop_all()
        signal.signal(signal.SIGTERM, previous)


def wait_for_http(
    url: str, *, timeout: float, child: Child | None = None, headers: dict[str, str] | None = None
) -> int:
    """Poll `url` until it answers with any HTTP status; returns the status."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if child is not None and child.process.poll() is not None:
            raise RuntimeError(f"{child.name} exited with {child.process.returncode}:\n{child.tail()}")
        try:
            request = urllib.request.Request(url, headers=headers or {})
            with urllib.request.urlopen(request, timeout=2) as response:
                return response.status
        except urllib.error.HTTPError as exc:
            return exc.code
        except (urllib.error.URLError, OSError) as exc:
            last = exc
            time.sleep(0.2)
    tail = child.tail() if child else ""
    raise RuntimeError(f"{url} did not answer within {timeout}s ({last})\n{tail}")


def http_json(method: str, url: str, *, body: Any = None, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json", **(headers or {})}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            raw = response.read()
            status = response.status
    except urllib.error.HTTPError as exc:
        raw, status = exc.read(), exc.code
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode(errors="replace")


# ---- the processes under test -----------------------------------------------------------------------


def start_fake(
    children: Children, *, name: str, port: int, latency_ms: float, chunk_delay_ms: float = 0, chunks: int = 5
) -> Child:
    argv = [
        PYTHON,
        "-m",
        "tests.fake_upstream",
        "--port",
        str(port),
        "--latency-ms",
        str(latency_ms),
        "--chunk-delay-ms",
        str(chunk_delay_ms),
        "--chunks",
        str(chunks),
    ]
    child = children.start(name, argv)
    wait_for_http(f"http://127.0.0.1:{port}/api/v1/models", timeout=20, child=child)
    return child


def gateway_env(*, upstream_base_url: str, database_url: str, redis_url: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        DATABASE_URL=database_url,
        REDIS_URL=redis_url,
        OPENROUTER_BASE_URL=upstream_base_url,
        OPENROUTER_API_KEY="sk-or-bench-server-key",
        DEMO_PROVIDER_ENABLED="0",
        DEBUG="0",
        SECRET_KEY=env.get("SECRET_KEY") or "bench-secret-key-not-for-production-0123456789abcdef",
        ALLOWED_HOSTS="127.0.0.1",
        SECURE_SSL_REDIRECT="0",
        PYTHONUNBUFFERED="1",
    )
    return env


def manage(args: list[str], *, env: dict[str, str], timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "manage.py", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def ensure_database(database_url: str) -> None:
    """Create the PostgreSQL database named in the URL if it is missing (a no-op for other engines)."""
    if not database_url.startswith(("postgres://", "postgresql://")):
        return
    from urllib.parse import urlparse

    parsed = urlparse(database_url)
    name = parsed.path.lstrip("/")
    createdb = shutil.which("createdb")
    if not createdb:
        return
    argv = [
        createdb,
        "-h",
        parsed.hostname or "127.0.0.1",
        "-p",
        str(parsed.port or 5432),
        "-U",
        parsed.username or "postgres",
        name,
    ]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    if result.returncode != 0 and "already exists" not in result.stderr:
        raise RuntimeError(f"createdb failed: {result.stderr.strip()}")


SEED_SNIPPET = """
import json
from accounts import access
from accounts.models import Plan, User
email = {email!r}
user = User.objects.filter(email=email).first() or User.objects.create_user(email, "bench-password-123456")
workspace = user.current_workspace
# A real daily limit (too large to reach), so every request reserves and settles a message.
plan, _ = Plan.objects.update_or_create(
    slug="bench-limited",
    defaults={{"name": "Bench (limited)", "daily_message_limit": 10**9, "allowed_model_tiers": ["basic", "premium"]}},
)
workspace.plan = plan
workspace.save(update_fields=["plan"])
access.bump_access_epoch()
key = None
if {create_key!r}:
    from apikeys.services import create_api_key
    key = create_api_key(user=user, name="bench").plaintext
print(json.dumps({{"workspace_id": workspace.id, "user_id": user.id, "key": key}}))
"""


def migrate_and_seed(env: dict[str, str], *, email: str) -> dict[str, Any]:
    """Migrate, then a user on a plan with a (huge) daily limit and a developer key: {"key", "workspace_id", "user_id"}."""
    migrated = manage(["migrate", "--noinput"], env=env, timeout=300)
    if migrated.returncode != 0:
        raise RuntimeError(f"migrate failed:\n{migrated.stdout[-2000:]}\n{migrated.stderr[-4000:]}")
    seeded = manage(["shell", "-c", SEED_SNIPPET.format(email=email, create_key=False)], env=env)
    if seeded.returncode != 0:
        raise RuntimeError(f"seeding failed:\n{seeded.stdout[-2000:]}\n{seeded.stderr[-4000:]}")
    info = json.loads(seeded.stdout.strip().splitlines()[-1])
    created = manage(["create_developer_key", email, "--name", "bench"], env=env)
    if created.returncode == 0 and created.stdout.strip():
        info["key"] = created.stdout.strip().splitlines()[-1].strip()
        log("developer key made by `manage.py create_developer_key`")
        return info
    log("`manage.py create_developer_key` did not work; making the key with `manage.py shell`")
    seeded = manage(["shell", "-c", SEED_SNIPPET.format(email=email, create_key=True)], env=env)
    if seeded.returncode != 0:
        raise RuntimeError(f"seeding failed:\n{seeded.stdout[-2000:]}\n{seeded.stderr[-4000:]}")
    return json.loads(seeded.stdout.strip().splitlines()[-1])


LEDGER_SNIPPET = """
import json
from django.db.models import Count, Sum
from billing.models import UsageEvent
rows = UsageEvent.objects.filter(workspace_id={workspace_id})
print(json.dumps(rows.aggregate(messages=Sum("counted_messages"), events=Count("id"))))
"""


def ledger_totals(env: dict[str, str], *, workspace_id: int) -> dict[str, int]:
    result = manage(["shell", "-c", LEDGER_SNIPPET.format(workspace_id=workspace_id)], env=env)
    if result.returncode != 0:
        raise RuntimeError(f"ledger query failed:\n{result.stderr[-3000:]}")
    totals = json.loads(result.stdout.strip().splitlines()[-1])
    return {"messages": totals["messages"] or 0, "events": totals["events"] or 0}


def start_gateway(children: Children, *, name: str, port: int, workers: int, env: dict[str, str]) -> Child:
    argv = [
        PYTHON,
        "-m",
        "uvicorn",
        "writingmate.asgi:application",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--loop",
        "uvloop",
        "--http",
        "httptools",
        "--workers",
        str(workers),
        "--backlog",
        "4096",
    ]
    child = children.start(name, argv, env=env)
    wait_for_http(f"http://127.0.0.1:{port}/v1/models", timeout=60, child=child)
    # Every worker must be up before measuring: uvicorn's supervisor answers once the first one is.
    deadline = time.monotonic() + 30
    while len(server_pids(child)) < workers + 1 and time.monotonic() < deadline:
        time.sleep(0.2)
    return child


# ---- wrk ---------------------------------------------------------------------------------------------

WRK_LUA = """
wrk.method = "POST"
wrk.body = {body}
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = {authorization}

function done(summary, latency, requests)
  io.write(string.format(
    'WRKJSON {{"requests":%d,"duration_us":%d,"bytes":%d,"connect":%d,"read":%d,"write":%d,"status":%d,' ..
    '"timeout":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"p999_us":%d,"mean_us":%.1f,"max_us":%d}}\\n',
    summary.requests, summary.duration, summary.bytes, summary.errors.connect, summary.errors.read,
    summary.errors.write, summary.errors.status, summary.errors.timeout, latency:percentile(50),
    latency:percentile(90), latency:percentile(99), latency:percentile(99.9), latency.mean, latency.max))
end
"""


def lua_string(value: str) -> str:
    return "[==[" + value + "]==]"


def write_wrk_script(path: Path, *, body: dict[str, Any], key: str) -> Path:
    path.write_text(WRK_LUA.format(body=lua_string(json.dumps(body)), authorization=lua_string(f"Bearer {key}")))
    return path


def run_wrk(url: str, script: Path, *, connections: int, seconds: float, threads: int = 2) -> dict[str, Any]:
    wrk = shutil.which("wrk")
    if not wrk:
        raise RuntimeError("wrk is not installed (apt-get install -y wrk)")
    threads = max(1, min(threads, connections))
    argv = [
        wrk,
        "-t",
        str(threads),
        "-c",
        str(connections),
        "-d",
        f"{max(1, round(seconds))}s",
        "--timeout",
        "30s",
        "-s",
        str(script),
        url,
    ]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, check=False)
    for line in result.stdout.splitlines():
        if line.startswith("WRKJSON "):
            data = json.loads(line[len("WRKJSON ") :])
            data["rps"] = data["requests"] / (data["duration_us"] / 1e6)
            data["errors"] = data["connect"] + data["read"] + data["write"] + data["status"] + data["timeout"]
            return data
    raise RuntimeError(f"wrk gave no summary (rc {result.returncode}):\n{result.stdout}\n{result.stderr}")


# ---- /proc readings ----------------------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2 :].split()


def descendants(root: int) -> list[int]:
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields:
                parents.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(parents.get(pid, ()))
    return found


def server_pids(child: Child) -> list[int]:
    return [pid for pid in descendants(child.pid) if _stat_fields(pid) is not None]


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields:
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / CLK_TCK


def memory_kb(pid: int) -> dict[str, int]:
    """RSS and PSS (shared pages split between the processes that share them) of one process, in kB."""
    values = {"rss_kb": 0, "pss_kb": 0}
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Rss:"):
                values["rss_kb"] = int(line.split()[1])
            elif line.startswith("Pss:"):
                values["pss_kb"] = int(line.split()[1])
    except OSError:
        fields = _stat_fields(pid)
        if fields:
            values["rss_kb"] = int(fields[21]) * PAGE_KB
    return values


def memory_of(child: Child) -> dict[str, Any]:
    per_process = {pid: memory_kb(pid) for pid in server_pids(child)}
    return {
        "processes": len(per_process),
        "rss_mb": round(sum(v["rss_kb"] for v in per_process.values()) / 1024, 1),
        "pss_mb": round(sum(v["pss_kb"] for v in per_process.values()) / 1024, 1),
        "per_process_rss_mb": {str(pid): round(v["rss_kb"] / 1024, 1) for pid, v in per_process.items()},
    }


def run_loadgen(args: list[str], *, processes: int = 1, timeout: float = 300) -> dict[str, Any]:
    """Run bench/loadgen.py in `processes` processes at once and merge their results."""
    argv = [PYTHON, str(BENCH / "loadgen.py"), *args]
    running = [
        subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        for _ in range(processes)
    ]
    outputs = []
    try:
        for process in running:
            out, err = process.communicate(timeout=timeout)
            if process.returncode != 0:
                raise RuntimeError(f"loadgen failed ({process.returncode}): {err[-3000:]}")
            outputs.append(json.loads(out))
    finally:
        for process in running:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(5)
    return merge_loadgen(outputs)


def merge_loadgen(outputs: list[dict[str, Any]]) -> dict[str, Any]:
    from bench.loadgen import percentile

    ttft = [v for o in outputs for v in o["ttft_raw"]]
    total = [v for o in outputs for v in o["total_raw"]]
    errors: dict[str, int] = {}
    for o in outputs:
        for label, count in o["errors"].items():
            errors[label] = errors.get(label, 0) + count
    merged = {
        "requests": sum(o["requests"] for o in outputs),
        "ok": sum(o["ok"] for o in outputs),
        "errors": errors,
        "elapsed_s": max(o["elapsed_s"] for o in outputs),
        "ttft_ms": {q: percentile(ttft, q) for q in (50, 90, 99)},
        "total_ms": {q: percentile(total, q) for q in (50, 90, 99)},
    }
    if any("peak_open" in o for o in outputs):
        merged["peak_open"] = sum(o.get("peak_open", 0) for o in outputs)
    merged["rps"] = merged["ok"] / merged["elapsed_s"] if merged["elapsed_s"] else 0
    return merged


def system_busy_seconds() -> float:
    """CPU seconds all processes on the machine have spent busy since boot (from /proc/stat)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


class CpuMeter:
    """How busy the machine was during a measurement, and how much of that was not the benchmark's doing.

    The machine is shared (other people's test runs show up here): `other_cores` is the CPU used by
    processes outside this benchmark, in cores, which says how far to trust a figure.
    """

    def __init__(self, children: Children) -> None:
        self.children = children

    def _ours(self) -> float:
        servers = sum(cpu_seconds(server_pids(child)) for child in self.children.children)
        waited = resource.getrusage(resource.RUSAGE_CHILDREN)
        me = resource.getrusage(resource.RUSAGE_SELF)
        return servers + waited.ru_utime + waited.ru_stime + me.ru_utime + me.ru_stime

    def start(self) -> None:
        self._wall = time.monotonic()
        self._busy = system_busy_seconds()
        self._ours_before = self._ours()

    def stop(self) -> dict[str, float]:
        wall = time.monotonic() - self._wall
        busy = system_busy_seconds() - self._busy
        ours = self._ours() - self._ours_before
        return {"busy_cores": round(busy / wall, 2), "other_cores": round(max(0.0, busy - ours) / wall, 2)}


def wait_for_quiet(*, max_wait_seconds: float, threshold_cores: float = 0.3, sample_seconds: float = 3) -> float:
    """Wait (at most `max_wait_seconds`) until the rest of the machine uses less than `threshold_cores`.

    Call it before starting the benchmark's own processes. Returns the last reading, in cores.
    """
    deadline = time.monotonic() + max_wait_seconds
    while True:
        before = system_busy_seconds()
        time.sleep(sample_seconds)
        busy = (system_busy_seconds() - before) / sample_seconds
        if busy < threshold_cores or time.monotonic() >= deadline:
            return round(busy, 2)
        log(f"the machine is busy ({busy:.2f} cores used by other processes); waiting for it to quieten")


def set_niceness(target: int) -> int:
    """Set this process's niceness (inherited by every child it starts); returns the niceness in force."""
    current = os.nice(0)
    if target != current:
        try:
            os.nice(target - current)
        except PermissionError:
            log(f"cannot change niceness to {target} (not root); staying at {current}")
    return os.nice(0)
