"""Prometheus metrics of the /v1 path, and their exposition view.

With several worker processes, set the environment variable PROMETHEUS_MULTIPROC_DIR (an empty
directory, wiped before the server starts): each process then writes its samples to files there and
the exposition sums them. Without it, metrics live in this process's default registry.
Every record_* call is a dict lookup and a lock-free-ish increment: cheap enough for the hot path.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Iterator
from contextlib import contextmanager

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe

MULTIPROC_DIR = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or os.environ.get("prometheus_multiproc_dir")
if MULTIPROC_DIR:
    # prometheus_client opens its files there on the first sample; a missing directory would be a 500.
    os.makedirs(MULTIPROC_DIR, exist_ok=True)

from prometheus_client import (  # noqa: E402 -- must see the directory above before its first import
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

UPSTREAM_ERROR_KINDS = ("timeout", "connect", "status_5xx", "status_4xx", "stream_dropped", "malformed")
# Model names come from clients; past this many distinct ones the rest are counted as "other" so a
# client sending random names cannot grow every process's memory and the scrape without bound.
MAX_MODEL_LABELS = 500
_MAX_LABEL_CHARS = 100

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_FIRST_TOKEN_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60)

REQUESTS = Counter("writingmate_api_requests", "Finished /v1 requests.", ("endpoint", "model", "status"))
REQUEST_DURATION = Histogram(
    "writingmate_api_request_duration_seconds",
    "Time from request to the last byte of the response.",
    ("endpoint", "model"),
    buckets=_LATENCY_BUCKETS,
)
FIRST_TOKEN = Histogram(
    "writingmate_api_time_to_first_token_seconds",
    "Time from request to the first streamed chunk sent to the client.",
    ("endpoint", "model"),
    buckets=_FIRST_TOKEN_BUCKETS,
)
UPSTREAM_ERRORS = Counter("writingmate_upstream_errors", "Failed upstream calls by kind.", ("kind",))
MESSAGES = Counter("writingmate_messages_counted", "Messages counted for billing.", ("byok",))
OPEN_STREAMS = Gauge("writingmate_open_streams", "Streams being relayed to clients now.", multiprocess_mode="livesum")

_model_labels: dict[str, str] = {}
# labels() validates and locks on every call; the children it returns never change, so keep them.
_request_children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}
_first_token_children: dict[tuple[str, str], Histogram] = {}
_status_labels: dict[int, str] = {}
_upstream_error_children = {kind: UPSTREAM_ERRORS.labels(kind) for kind in UPSTREAM_ERROR_KINDS}
_message_children = {True: MESSAGES.labels("true"), False: MESSAGES.labels("false")}


def _model_label(model: str) -> str:
    label = _model_labels.get(model)
    if label is None:
        if len(_model_labels) >= MAX_MODEL_LABELS:
            return "other"
        label = _model_labels.setdefault(model, model[:_MAX_LABEL_CHARS] or "none")
    return label


def _status_label(status: int) -> str:
    label = _status_labels.get(status)
    if label is None:
        label = _status_labels.setdefault(status, str(status)) if 100 <= status < 600 else "invalid"
    return label


def record_request(*, endpoint: str, model: str, status: int, duration_seconds: float) -> None:
    """One finished /v1 request. `endpoint` is a route name ("chat.completions"), not the raw path."""
    children = _request_children.get((endpoint, model, status))
    if children is None:
        model_label = _model_label(model)
        children = (
            REQUESTS.labels(endpoint, model_label, _status_label(status)),
            REQUEST_DURATION.labels(endpoint, model_label),
        )
        if model_label == model:
            _request_children[(endpoint, model, status)] = children
    children[0].inc()
    children[1].observe(duration_seconds)


def record_first_token(*, endpoint: str, model: str, seconds: float) -> None:
    child = _first_token_children.get((endpoint, model))
    if child is None:
        model_label = _model_label(model)
        child = FIRST_TOKEN.labels(endpoint, model_label)
        if model_label == model:
            _first_token_children[(endpoint, model)] = child
    child.observe(seconds)


def record_upstream_error(*, kind: str) -> None:
    """`kind` is one of UPSTREAM_ERROR_KINDS; anything else raises, so a typo fails in tests, not silently."""
    _upstream_error_children[kind].inc()


def record_messages(*, count: int, byok: bool) -> None:
    if count:
        _message_children[byok].inc(count)


def stream_opened() -> None:
    OPEN_STREAMS.inc()


def stream_closed() -> None:
    OPEN_STREAMS.dec()


@contextmanager
def open_stream() -> Iterator[None]:
    """Counts a stream as open for the duration of the block, however it ends."""
    OPEN_STREAMS.inc()
    try:
        yield
    finally:
        OPEN_STREAMS.dec()


def mark_process_dead(pid: int | None = None) -> None:
    """Drop a stopped worker's live gauges (open streams) from the sum; call at worker shutdown."""
    if MULTIPROC_DIR:
        multiprocess.mark_process_dead(pid if pid is not None else os.getpid(), MULTIPROC_DIR)


def render_latest() -> bytes:
    """The exposition text of every process (multiprocess mode) or of this one."""
    if MULTIPROC_DIR:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=MULTIPROC_DIR)
        return generate_latest(registry)
    return generate_latest(REGISTRY)


def _authorized(request: HttpRequest) -> bool:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), settings.METRICS_TOKEN.encode())


@never_cache
@require_safe
def metrics_view(request: HttpRequest) -> HttpResponse:
    """Prometheus scrape target. Without METRICS_TOKEN it does not exist (404); with it, bearer auth."""
    if not settings.METRICS_TOKEN:
        return HttpResponse("Not Found", status=404, content_type="text/plain")
    if not _authorized(request):
        response = HttpResponse("Unauthorized", status=401, content_type="text/plain")
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    return HttpResponse(render_latest(), content_type=CONTENT_TYPE_LATEST)
