"""The real Codex CLI (`codex exec`, pinned) against a live server and the fake upstream.

Codex runs with its default configuration: the only settings are a custom model provider pointing at
the live server (`wire_api = "responses"`, the key from an environment variable) and the switches that
stop it calling home (update check, analytics, feedback, OpenTelemetry). Everything else it tries to
reach (its plugin marketplace on GitHub, chatgpt.com) goes to a loopback proxy that refuses, so no
traffic leaves the machine. HOME and CODEX_HOME are temporary directories.
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

from billing.models import UsageEvent
from gateway.models import CatalogueModel
from tests.fake_upstream import FakeReply
from tests.npm_clients import install_npm_client
from tests.support import make_user, wait_for_usage_events

CODEX_VERSION = "0.171.0"
# A model Codex knows: its bundled metadata gives it the default tool set (freeform apply_patch,
# exec_command, web search, tool search) and its 272k context window.
MODEL = "openai/gpt-5.5"
CONTEXT_WINDOW = 272_000
COMPACTION_MARKER = "CONTEXT CHECKPOINT COMPACTION"  # Codex's own summarisation prompt says this

live = pytest.mark.django_db(transaction=True, serialized_rollback=True)


@pytest.fixture(scope="session")
def codex_binary() -> Path:
    return (
        install_npm_client("codex", {"@openai/codex": CODEX_VERSION}, binary="codex")
        / "node_modules"
        / ".bin"
        / "codex"
    )


class RefusingProxy:
    """A loopback 'proxy' that records every connection and closes it: where Codex's other traffic goes."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.attempts: list[bytes] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(1)
                try:
                    self.attempts.append(conn.recv(1024).split(b"\r\n", 1)[0])
                    conn.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                except OSError:
                    pass

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def refusing_proxy() -> Iterator[RefusingProxy]:
    proxy = RefusingProxy()
    yield proxy
    proxy.close()


@pytest.fixture
def caller():
    CatalogueModel.objects.create(slug=MODEL, display_name="GPT-5.5", tier="basic", context_length=CONTEXT_WINDOW)
    return make_user("codex@example.com", plan="unlimited")


@pytest.fixture
def run_codex(codex_binary, live_server, fake_upstream, caller, refusing_proxy, tmp_path):
    home = tmp_path / "home"
    codex_home = home / ".codex"
    codex_home.mkdir(parents=True)
    workdir = tmp_path / "work"
    workdir.mkdir()
    (codex_home / "config.toml").write_text(
        f'model = "{MODEL}"\n'
        'model_provider = "writingmate"\n'
        "check_for_update_on_startup = false\n"
        "\n[model_providers.writingmate]\n"
        'name = "Writingmate"\n'
        f'base_url = "{live_server.api_base}"\n'
        'env_key = "WRITINGMATE_API_KEY"\n'
        'wire_api = "responses"\n'
        "\n[analytics]\nenabled = false\n"
        "\n[feedback]\nenabled = false\n"
        '\n[otel]\nexporter = "none"\n'
    )
    proxy = f"http://127.0.0.1:{refusing_proxy.port}"
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(home),
        "CODEX_HOME": str(codex_home),
        "WRITINGMATE_API_KEY": caller.key,
        "HTTP_PROXY": proxy,
        "HTTPS_PROXY": proxy,
        "ALL_PROXY": proxy,
        "http_proxy": proxy,
        "https_proxy": proxy,
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
        "GIT_TERMINAL_PROMPT": "0",
    }

    def run(prompt: str, *options: str) -> subprocess.CompletedProcess:
        result = subprocess.run(
            [str(codex_binary), "exec", "--skip-git-repo-check", "-C", str(workdir), *options, prompt],
            env=env,
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=180,
        )
        # What Codex tried beyond the live server (its plugin marketplace, chatgpt.com) came to the
        # refusing proxy as proxy requests, so it never left loopback.
        assert all(
            attempt.split(b" ", 1)[0] in (b"CONNECT", b"GET", b"POST", b"") for attempt in refusing_proxy.attempts
        )
        return result

    run.workdir = workdir
    return run


def _chat_requests(fake_upstream) -> list[dict]:
    return [r.json for r in fake_upstream.requests_to("/chat/completions")]


def _text(message: dict) -> str:
    content = message.get("content")
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return content or ""


def _tool_names(body: dict) -> list[str]:
    return [tool["function"]["name"] for tool in body.get("tools") or []]


@live
def test_codex_answers_a_plain_prompt(run_codex, fake_upstream, caller):
    fake_upstream.respond_with = lambda body: FakeReply(text="Pong from Writingmate.")

    result = run_codex("Say pong")

    assert result.returncode == 0, result.stderr
    assert "Pong from Writingmate." in result.stdout
    [body] = _chat_requests(fake_upstream)
    assert body["stream"] is True and body["model"] == MODEL
    # Codex's default tools all arrive as functions; its hosted ones were left out, not refused.
    names = _tool_names(body)
    assert "exec_command" in names and "apply_patch" in names
    assert not {"web_search", "tool_search"} & set(names)
    assert "client_metadata" not in body and "include" not in body
    [event] = wait_for_usage_events(1, workspace_id=caller.workspace.pk)
    assert event.endpoint == "responses" and event.status == "succeeded" and event.counted_messages == 1


@live
def test_codex_on_a_model_it_does_not_know_sends_its_namespace_tools_and_gets_an_answer(
    run_codex, fake_upstream, caller
):
    # The first failure: for a model outside its bundled list Codex adds the multi_agent_v1
    # namespace (and web_search), which used to be a 400 on tools[4].type.
    fake_upstream.respond_with = lambda body: FakeReply(text="Pong from a model Codex does not know.")

    result = run_codex("Say pong", "-m", "openai/gpt-5-mini")

    assert result.returncode == 0, result.stderr
    assert "Pong from a model Codex does not know." in result.stdout
    [body] = _chat_requests(fake_upstream)
    assert body["model"] == "openai/gpt-5-mini"
    assert {"multi_agent_v1__spawn_agent", "multi_agent_v1__wait_agent"} <= set(_tool_names(body))
    wait_for_usage_events(1, workspace_id=caller.workspace.pk)


@live
def test_codex_runs_a_shell_command_and_reads_its_output(run_codex, fake_upstream, caller):
    def respond(body: dict) -> FakeReply:
        results = [m for m in body["messages"] if m["role"] == "tool"]
        if results:
            return FakeReply(text=f"The command printed: {_text(results[-1]).strip()}")
        return FakeReply(tool=("exec_command", json.dumps({"cmd": "printf codex-round-%s trip"})))

    fake_upstream.respond_with = respond

    result = run_codex("Run a command")

    assert result.returncode == 0, result.stderr
    _, second = _chat_requests(fake_upstream)
    assert second["messages"][-1]["role"] == "tool" and "codex-round-trip" in _text(second["messages"][-1])
    [call] = second["messages"][-2]["tool_calls"]
    assert call["function"]["name"] == "exec_command" and call["id"] == second["messages"][-1]["tool_call_id"]
    assert "The command printed:" in result.stdout and "codex-round-trip" in result.stdout
    events = wait_for_usage_events(2, workspace_id=caller.workspace.pk)
    assert [e.status for e in events] == ["succeeded", "succeeded"]


PATCH = """*** Begin Patch
*** Add File: hello.txt
+Hello from apply_patch through Writingmate.
*** End Patch"""


@live
def test_codex_edits_a_file_with_its_freeform_apply_patch_tool(run_codex, fake_upstream, caller):
    def respond(body: dict) -> FakeReply:
        if any(m["role"] == "tool" for m in body["messages"]):
            return FakeReply(text="Created hello.txt.")
        [tool] = [t for t in body["tools"] if t["function"]["name"] == "apply_patch"]
        # The custom tool arrives as a function taking its raw text as `input`, its grammar described.
        assert tool["function"]["parameters"]["required"] == ["input"]
        assert "Begin Patch" in tool["function"]["description"]
        return FakeReply(tool=("apply_patch", json.dumps({"input": PATCH})))

    fake_upstream.respond_with = respond

    result = run_codex("Create hello.txt", "--sandbox", "workspace-write")

    assert result.returncode == 0, result.stderr
    assert (run_codex.workdir / "hello.txt").read_text() == "Hello from apply_patch through Writingmate.\n"
    assert "Created hello.txt." in result.stdout
    second = _chat_requests(fake_upstream)[1]
    [call] = [c for m in second["messages"] for c in m.get("tool_calls") or []]
    # Codex replayed our custom_tool_call; it went back upstream as the same function call.
    assert call["function"]["name"] == "apply_patch" and json.loads(call["function"]["arguments"]) == {"input": PATCH}
    wait_for_usage_events(2, workspace_id=caller.workspace.pk)


@live
def test_a_long_codex_session_compacts_and_carries_on_from_the_summary(run_codex, fake_upstream, caller):
    nearly_full = {
        "prompt_tokens": CONTEXT_WINDOW - 5_000,
        "completion_tokens": 20,
        "total_tokens": CONTEXT_WINDOW - 4_980,
        "prompt_tokens_details": {"cached_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0},
    }

    def respond(body: dict) -> FakeReply:
        last = _text(body["messages"][-1])
        if COMPACTION_MARKER in last:
            return FakeReply(text="SUMMARY-7731: ran printf, output seen; nothing left but to report.")
        if any("SUMMARY-7731" in _text(m) for m in body["messages"]):
            return FakeReply(text="Finished after compaction.")
        return FakeReply(tool=("exec_command", json.dumps({"cmd": "printf filling-the-context"})), usage=nearly_full)

    fake_upstream.respond_with = respond

    result = run_codex("Fill the context, then finish")

    assert result.returncode == 0, result.stderr
    assert "Finished after compaction." in result.stdout
    bodies = _chat_requests(fake_upstream)
    summarising = [b for b in bodies if COMPACTION_MARKER in _text(b["messages"][-1])]
    assert len(summarising) == 1
    after = bodies[bodies.index(summarising[0]) + 1]
    assert any("SUMMARY-7731" in _text(m) for m in after["messages"])
    events = wait_for_usage_events(len(bodies), workspace_id=caller.workspace.pk)
    assert all(e.status == "succeeded" for e in events)
    assert UsageEvent.objects.filter(workspace_id=caller.workspace.pk, endpoint="responses").count() == len(bodies)
