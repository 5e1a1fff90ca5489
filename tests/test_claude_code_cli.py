"""The real Claude Code CLI (pinned) against a live server and the fake upstream, all on loopback.

Claude Code runs non-interactively (`claude -p`) with only ANTHROPIC_BASE_URL and the key set, every
switch that stops it calling home or updating, HOME in a temporary folder, and a proxy on loopback
that answers nothing: any connection it tried to make past loopback would show up there.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.npm_clients import install_npm_client
from tests.support import make_user, wait_for_usage_events

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(600)]  # the first run installs the CLI

CLAUDE_CODE = {"@anthropic-ai/claude-code": "2.1.328", "node": "22.23.3"}  # it needs Node >= 22
OFFLINE = {
    "DISABLE_TELEMETRY": "1",
    "DISABLE_AUTOUPDATER": "1",
    "DISABLE_ERROR_REPORTING": "1",
    "DISABLE_BUG_COMMAND": "1",
    "DISABLE_NON_ESSENTIAL_MODEL_CALLS": "1",
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    "CLAUDE_CODE_DISABLE_FEEDBACK_SURVEY": "1",
}


@pytest.fixture(scope="session")
def claude_code() -> Path:
    folder = install_npm_client("claude-code", CLAUDE_CODE, binary="claude")
    return folder / "node_modules" / ".bin"


class _Blackhole:
    """A loopback 'proxy' that records who connected and answers nothing."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.seen: list[bytes] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self.server.accept()
            except OSError:
                return
            with connection:
                connection.settimeout(2)
                try:
                    self.seen.append(connection.recv(200))
                except OSError:
                    self.seen.append(b"")

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def blackhole() -> Iterator[_Blackhole]:
    hole = _Blackhole()
    yield hole
    hole.close()


@pytest.fixture
def caller():
    return make_user("dev@example.com", plan="unlimited")


def _run_claude(bin_dir: Path, *, base_url: str, key: str, home: Path, proxy: int, args: list[str]) -> dict:
    home.mkdir(parents=True, exist_ok=True)
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "HOME": str(home),
        "CLAUDE_CONFIG_DIR": str(home / ".claude"),
        "ANTHROPIC_BASE_URL": base_url,
        "ANTHROPIC_API_KEY": key,
        "HTTPS_PROXY": f"http://127.0.0.1:{proxy}",
        "HTTP_PROXY": f"http://127.0.0.1:{proxy}",
        "NO_PROXY": "127.0.0.1,localhost",
        "TERM": "dumb",
        **OFFLINE,
    }
    completed = subprocess.run(
        [str(bin_dir / "claude"), "-p", *args, "--output-format", "json"],
        env=env,
        cwd=home,
        capture_output=True,
        timeout=180,
        stdin=subprocess.DEVNULL,
    )
    assert completed.returncode == 0, completed.stderr.decode(errors="replace") + completed.stdout.decode()
    return json.loads(completed.stdout)


def test_claude_code_answers_through_the_gateway(claude_code, live_server, fake_upstream, caller, tmp_path, blackhole):
    result = _run_claude(
        claude_code,
        base_url=f"{live_server.url}/api/anthropic",
        key=caller.key,
        home=tmp_path,
        proxy=blackhole.port,
        args=["Say hello"],
    )

    assert result["result"] == "Hello from the fake upstream."
    [sent, *_] = fake_upstream.requests_to("/messages")
    assert sent.json["model"] == "anthropic/claude-sonnet-4.5"  # claude-opus-5-5 by its alias
    assert sent.json["stream"] is True
    # Its default model, claude-opus-5-5, stands in as Sonnet 4.5: settings only newer models take are adapted.
    assert sent.json["max_tokens"] <= 64000 and "output_config" not in sent.json
    assert sent.json.get("thinking", {}).get("type") != "adaptive"
    assert "claude-code-20250219" in sent.headers["anthropic-beta"]
    assert sent.headers["authorization"] == "Bearer sk-or-server-key"
    lines = wait_for_usage_events(len(fake_upstream.requests_to("/messages")))
    assert {line.endpoint for line in lines} == {"messages"} and all(line.status == "succeeded" for line in lines)
    assert blackhole.seen == []


def test_claude_code_uses_one_of_its_tools(claude_code, live_server, fake_upstream, caller, tmp_path, blackhole):
    note = tmp_path / "note.txt"
    note.write_text("the secret word is aubergine\n")
    fake_upstream.messages_tool_call = ("Read", {"file_path": str(note)})

    result = _run_claude(
        claude_code,
        base_url=f"{live_server.url}/api/anthropic",
        key=caller.key,
        home=tmp_path,
        proxy=blackhole.port,
        args=["What is in note.txt?", "--allowedTools", "Read"],
    )

    assert "The tool returned:" in result["result"] and "aubergine" in result["result"]
    turns = fake_upstream.requests_to("/messages")
    [tool_use] = [b for b in turns[-1].json["messages"][-2]["content"] if b["type"] == "tool_use"]
    [tool_result] = [b for b in turns[-1].json["messages"][-1]["content"] if b["type"] == "tool_result"]
    assert tool_use["name"] == "Read" and tool_result["tool_use_id"] == tool_use["id"]
    assert blackhole.seen == []
    assert os.path.exists(note)


def test_claude_code_runs_on_a_translated_model_offline(
    claude_code, live_server, caller, tmp_path, blackhole, settings
):
    """`make run`'s demo provider speaks chat completions: Claude Code's whole request goes through the translation."""
    settings.DEMO_PROVIDER_ENABLED = True
    settings.DEMO_STREAM_DELAY_SECONDS = 0
    settings.OPENROUTER_API_KEY = ""

    result = _run_claude(
        claude_code,
        base_url=f"{live_server.url}/api/anthropic",
        key=caller.key,
        home=tmp_path,
        proxy=blackhole.port,
        args=["Say hello", "--model", "demo/echo"],
    )

    assert result["result"].startswith("Echo: ") and "Say hello" in result["result"]
    lines = wait_for_usage_events(1)
    assert {(line.endpoint, line.model, line.status) for line in lines} == {("messages", "demo/echo", "succeeded")}
    assert blackhole.seen == []


def test_claude_code_runs_its_tool_on_a_translated_model(
    claude_code, live_server, fake_upstream, caller, tmp_path, blackhole
):
    """`--model openai/gpt-5-mini`: Claude Code's tools and its tool_result go through chat completions."""
    from tests.fake_upstream import FakeReply

    note = tmp_path / "note.txt"
    note.write_text("the secret word is clementine\n")

    def reply(body: dict) -> FakeReply | None:
        messages = body.get("messages") or []
        if any(m.get("role") == "tool" for m in messages):
            return None  # the default: "The tool returned: ..."
        if any(t["function"]["name"] == "Read" for t in body.get("tools") or []):
            return FakeReply(tool=("Read", json.dumps({"file_path": str(note)})))
        return None

    fake_upstream.respond_with = reply
    result = _run_claude(
        claude_code,
        base_url=f"{live_server.url}/api/anthropic",
        key=caller.key,
        home=tmp_path,
        proxy=blackhole.port,
        args=["What is in note.txt?", "--allowedTools", "Read", "--model", "openai/gpt-5-mini"],
    )

    assert "clementine" in result["result"]
    chats = fake_upstream.requests_to("/chat/completions")
    last = chats[-1].json["messages"]
    [call] = [c for m in last if m["role"] == "assistant" for c in m.get("tool_calls") or []]
    [tool] = [m for m in last if m["role"] == "tool"]
    assert call["function"]["name"] == "Read" and tool["tool_call_id"] == call["id"]
    assert "clementine" in tool["content"]
    assert fake_upstream.requests_to("/messages") == []
    assert blackhole.seen == []
