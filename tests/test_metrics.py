"""Prometheus metrics: what the gateway records, the restricted exposition view, several processes."""

from __future__ import annotations

import os
import subprocess
import sys
import timeit
from pathlib import Path

import pytest
import requests
from django.test import override_settings
from prometheus_client import REGISTRY

from gateway import metrics
from tests.support import make_user, wait_for_idle_server, wait_for_usage_events

REPO = Path(__file__).resolve().parent.parent


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_record_request_counts_by_endpoint_model_status_and_observes_latency():
    labels = {"endpoint": "chat.completions", "model": "test/metrics-model"}
    before = sample("writingmate_api_requests_total", **labels, status="200")
    before_count = sample("writingmate_api_request_duration_seconds_count", **labels)

    metrics.record_request(endpoint="chat.completions", model="test/metrics-model", status=200, duration_seconds=0.2)
    metrics.record_request(endpoint="chat.completions", model="test/metrics-model", status=200, duration_seconds=0.3)
    metrics.record_request(endpoint="chat.completions", model="test/metrics-model", status=429, duration_seconds=0.01)

    assert sample("writingmate_api_requests_total", **labels, status="200") == before + 2
    assert sample("writingmate_api_requests_total", **labels, status="429") >= 1
    assert sample("writingmate_api_request_duration_seconds_count", **labels) == before_count + 3
    assert sample("writingmate_api_request_duration_seconds_bucket", **labels, le="0.25") >= 1


def test_first_token_upstream_errors_messages_and_open_streams():
    before_ttft = sample("writingmate_api_time_to_first_token_seconds_count", endpoint="responses", model="m/x")
    before_timeouts = sample("writingmate_upstream_errors_total", kind="timeout")
    before_byok = sample("writingmate_messages_counted_total", byok="true")
    before_open = sample("writingmate_open_streams")

    metrics.record_first_token(endpoint="responses", model="m/x", seconds=0.4)
    metrics.record_upstream_error(kind="timeout")
    metrics.record_messages(count=3, byok=True)
    metrics.stream_opened()
    assert sample("writingmate_open_streams") == before_open + 1
    metrics.stream_closed()
    with pytest.raises(RuntimeError), metrics.open_stream():
        assert sample("writingmate_open_streams") == before_open + 1
        raise RuntimeError("client went away")

    assert sample("writingmate_open_streams") == before_open
    assert sample("writingmate_api_time_to_first_token_seconds_count", endpoint="responses", model="m/x") == (
        before_ttft + 1
    )
    assert sample("writingmate_upstream_errors_total", kind="timeout") == before_timeouts + 1
    assert sample("writingmate_messages_counted_total", byok="true") == before_byok + 3


def test_an_unknown_upstream_error_kind_is_a_programming_error():
    with pytest.raises(KeyError):
        metrics.record_upstream_error(kind="timed_out")


def test_client_chosen_model_names_cannot_grow_the_label_set_without_bound(monkeypatch):
    monkeypatch.setattr(metrics, "MAX_MODEL_LABELS", len(metrics._model_labels) + 1)
    metrics.record_request(endpoint="chat.completions", model="first/new-model", status=404, duration_seconds=0.001)
    for n in range(20):
        metrics.record_request(endpoint="chat.completions", model=f"random/{n}", status=404, duration_seconds=0.001)

    assert sample("writingmate_api_requests_total", endpoint="chat.completions", model="first/new-model", status="404")
    assert sample("writingmate_api_requests_total", endpoint="chat.completions", model="other", status="404") >= 20
    assert not sample("writingmate_api_requests_total", endpoint="chat.completions", model="random/3", status="404")


def test_recording_stays_cheap_on_the_hot_path():
    calls = 20_000
    seconds = timeit.timeit(
        lambda: metrics.record_request(
            endpoint="chat.completions", model="openai/gpt-5-mini", status=200, duration_seconds=0.05
        ),
        number=calls,
    )
    # About 2 µs here in one process (5 µs with PROMETHEUS_MULTIPROC_DIR); the bound leaves room for a busy CI.
    assert seconds / calls < 50e-6


def test_exposition_does_not_exist_without_a_token(client):
    with override_settings(METRICS_TOKEN=""):
        assert client.get("/metrics").status_code == 404


@override_settings(METRICS_TOKEN="scrape-token-123")
def test_exposition_needs_the_bearer_token(client):
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong-token").status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION="Basic scrape-token-123").status_code == 401

    metrics.record_request(endpoint="models", model="", status=200, duration_seconds=0.001)
    response = client.get("/metrics", HTTP_AUTHORIZATION="Bearer scrape-token-123")

    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain; version=")
    assert "no-cache" in response["Cache-Control"]
    body = response.content.decode()
    for name in (
        "writingmate_api_requests_total",
        "writingmate_api_request_duration_seconds_bucket",
        "writingmate_upstream_errors_total",
        "writingmate_messages_counted_total",
        "writingmate_open_streams",
    ):
        assert name in body
    assert client.post("/metrics", HTTP_AUTHORIZATION="Bearer scrape-token-123").status_code == 405


_WORKER = """
import sys
from gateway import metrics
for _ in range(int(sys.argv[1])):
    metrics.record_request(endpoint="chat.completions", model="openai/gpt-5-mini", status=200, duration_seconds=0.1)
metrics.record_messages(count=2, byok=False)
metrics.stream_opened()
if sys.argv[2] == "exit":
    metrics.mark_process_dead()
"""

_SCRAPE = "from gateway import metrics; print(metrics.render_latest().decode())"


def test_several_processes_are_summed_with_prometheus_multiproc_dir(tmp_path):
    env = {
        **os.environ,
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prom"),
        "DJANGO_SETTINGS_MODULE": "writingmate.settings",
        "PYTHONPATH": str(REPO),
    }

    def run(*args: str) -> str:
        result = subprocess.run([sys.executable, *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        return result.stdout

    run("-c", _WORKER, "3", "stay")  # a worker still running: its open stream counts
    run("-c", _WORKER, "4", "exit")  # a worker that shut down: its open stream no longer does
    exposition = run("-c", _SCRAPE)

    lines = exposition.splitlines()
    assert (
        'writingmate_api_requests_total{endpoint="chat.completions",model="openai/gpt-5-mini",status="200"} 7.0'
        in lines
    )
    assert 'writingmate_messages_counted_total{byok="false"} 4.0' in lines
    assert "writingmate_open_streams 1.0" in lines


# --- the gateway's wiring, through a live server in this process ------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_v1_request_is_counted_with_its_endpoint_model_status_and_messages(live_server, fake_upstream):
    caller = make_user("metrics@example.com")
    labels = {"endpoint": "chat.completions", "model": "openai/gpt-5-mini"}
    before = {
        "ok": sample("writingmate_api_requests_total", **labels, status="200"),
        "unauthorized": sample(
            "writingmate_api_requests_total", endpoint="chat.completions", model="none", status="401"
        ),
        "messages": sample("writingmate_messages_counted_total", byok="false"),
        "first_token": sample("writingmate_api_time_to_first_token_seconds_count", **labels),
    }
    body = {"model": "openai/gpt-5-mini", "messages": [{"role": "user", "content": "hi"}]}

    ok = requests.post(
        f"{live_server.v1_base}/chat/completions", json=body, headers={"Authorization": f"Bearer {caller.key}"}
    )
    streamed = requests.post(
        f"{live_server.v1_base}/chat/completions",
        json={**body, "stream": True},
        headers={"Authorization": f"Bearer {caller.key}"},
    )
    refused = requests.post(f"{live_server.v1_base}/chat/completions", json=body, headers={"Authorization": "Bearer x"})
    wait_for_usage_events(2)
    wait_for_idle_server()  # metrics are recorded after the ledger line, once each request is done

    assert ok.status_code == streamed.status_code == 200 and refused.status_code == 401
    assert sample("writingmate_api_requests_total", **labels, status="200") == before["ok"] + 2
    # Refused before the body is read: no model yet.
    assert sample("writingmate_api_requests_total", endpoint="chat.completions", model="none", status="401") == (
        before["unauthorized"] + 1
    )
    assert sample("writingmate_messages_counted_total", byok="false") == before["messages"] + 2
    assert sample("writingmate_api_time_to_first_token_seconds_count", **labels) == before["first_token"] + 1


@pytest.mark.django_db(transaction=True)
def test_the_open_streams_gauge_counts_a_stream_while_it_is_relayed(live_server, fake_upstream):
    caller = make_user("metrics-streams@example.com")
    fake_upstream.chunks = 10
    fake_upstream.chunk_delay_ms = 100
    before = sample("writingmate_open_streams")
    body = {"model": "openai/gpt-5-mini", "messages": [{"role": "user", "content": "hi"}], "stream": True}

    with requests.post(
        f"{live_server.v1_base}/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {caller.key}"},
        stream=True,
    ) as response:
        pieces = response.iter_content(chunk_size=None)  # one iterator: dropping it closes the stream
        next(pieces)
        during = sample("writingmate_open_streams")
        for _ in pieces:
            pass
    wait_for_usage_events(1)

    assert during == before + 1
    assert sample("writingmate_open_streams") == before
