"""Liveness and readiness probes: unauthenticated, cheap, and silent about the configuration."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from django.test import override_settings

from writingmate import health

REPO = Path(__file__).resolve().parent.parent


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_healthz_answers_without_auth_or_database(client):
    response = client.get("/healthz")

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert "no-cache" in response["Cache-Control"]
    assert client.post("/healthz").status_code == 405


@pytest.mark.django_db
@override_settings(REDIS_URL="")
def test_readyz_is_ok_when_the_database_answers(client):
    response = client.get("/readyz")

    assert response.status_code == 200
    assert response.json() == {"status": "ok", "checks": {"database": "ok"}}


@pytest.mark.django_db
def test_readyz_names_a_stopped_redis_without_leaking_its_address(client):
    port = closed_port()
    with override_settings(REDIS_URL=f"redis://127.0.0.1:{port}/13"):
        started = time.monotonic()
        response = client.get("/readyz")
        elapsed = time.monotonic() - started

    assert response.status_code == 503
    assert response.json() == {"status": "unavailable", "checks": {"database": "ok", "redis": "unavailable"}}
    assert str(port) not in response.content.decode()
    assert elapsed < 3


@pytest.mark.django_db
def test_readyz_gives_up_on_a_stalled_database_within_the_timeout(client, monkeypatch):
    monkeypatch.setattr(health, "_query_database", lambda: time.sleep(0.5))
    with override_settings(REDIS_URL="", READINESS_TIMEOUT_SECONDS=0.05):
        started = time.monotonic()
        first = client.get("/readyz")
        # The stalled check still holds its thread: the next probe fails at once instead of queueing.
        second = client.get("/readyz")
        elapsed = time.monotonic() - started
        time.sleep(0.6)
        monkeypatch.setattr(health, "_query_database", lambda: None)
        third = client.get("/readyz")

    assert first.status_code == second.status_code == 503
    assert first.json()["checks"] == {"database": "unavailable"}
    assert elapsed < 0.4
    assert third.status_code == 200


@pytest.mark.redis
@pytest.mark.django_db
def test_readyz_checks_a_running_redis(client):
    response = client.get("/readyz")

    assert response.status_code == 200
    assert response.json()["checks"] == {"database": "ok", "redis": "ok"}


@pytest.mark.slow
def test_a_server_whose_database_is_down_is_alive_but_not_ready(tmp_path):
    port, db_port = closed_port(), closed_port()
    env = {
        **os.environ,
        "DEBUG": "1",
        "DATABASE_URL": f"postgres://nobody:secret-password@127.0.0.1:{db_port}/wm_nowhere",
        "REDIS_URL": "",
        "PYTHONPATH": str(REPO),
    }
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "writingmate.asgi:application",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        env=env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                alive = requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
                break
            except requests.ConnectionError:
                assert server.poll() is None, server.stderr.read().decode()
                assert time.monotonic() < deadline, "the server did not start"
                time.sleep(0.1)
        ready = requests.get(f"http://127.0.0.1:{port}/readyz", timeout=5)
    finally:
        server.terminate()
        server.wait(timeout=10)

    assert alive.status_code == 200
    assert ready.status_code == 503
    assert ready.json() == {"status": "unavailable", "checks": {"database": "unavailable"}}
    assert "secret-password" not in ready.text and str(db_port) not in ready.text
