"""An upstream that answers with broken HTTP, or reads the body and hangs up, through the whole gateway.

Issue #10 point 2: a body the upstream may have received is never sent again (one upstream call, a
502, nothing billed twice). Issue #11 point 2: a fuzz test feeds malformed responses through the
upstream client; the client always gets OpenAI's error shape with a 502, never a 500 or a hang.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator

import pytest
import requests
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from billing.models import UsageEvent
from tests.fault_support import HELLO, MODEL, REQUEST_ID, assert_ledger_reconciles, auth, settle_ledger
from tests.support import make_user

pytestmark = pytest.mark.django_db(transaction=True)


class RawUpstream:
    """A loopback TCP server that reads each request whole, then does what `answer` says with the socket.

    `answer(conn)` writes what it likes; the connection is closed afterwards unless it returns True.
    """

    def __init__(self) -> None:
        self.answer: Callable[[socket.socket], bool] = lambda conn: False
        self.bodies: list[bytes] = []
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self._sock.settimeout(0.2)
        self.port = self._sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/v1"

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(10)
        buffer = b""
        try:
            while True:
                while b"\r\n\r\n" not in buffer:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buffer += data
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                while len(buffer) < length:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buffer += data
                self.bodies.append(buffer[:length])
                buffer = buffer[length:]
                if not self.answer(conn):
                    return
        except OSError:
            return
        finally:
            conn.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._sock.close()


def ok_answer(conn: socket.socket) -> bool:
    body = (
        b'{"id":"gen-raw-1","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,'
        b'"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],'
        b'"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}'
    )
    conn.sendall(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    return True  # keep-alive: the gateway pools this connection


def read_then_hang_up(conn: socket.socket) -> bool:
    return False  # the body was read in full; no answer, the connection closes


@pytest.fixture
def raw_upstream(settings) -> Iterator[RawUpstream]:
    upstream = RawUpstream()
    settings.OPENROUTER_BASE_URL = upstream.base_url
    settings.OPENROUTER_API_KEY = "sk-or-server-key"
    settings.DEMO_PROVIDER_ENABLED = False
    settings.UPSTREAM_RETRY_BACKOFF_SECONDS = 0.01
    try:
        yield upstream
    finally:
        upstream.stop()


@pytest.fixture
def url(live_server, raw_upstream) -> str:
    return f"{live_server.v1_base}/chat/completions"


def assert_openai_502(response: requests.Response) -> dict:
    assert response.status_code == 502, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    assert REQUEST_ID.match(response.headers.get("x-request-id", ""))
    error = response.json()["error"]
    assert set(response.json()) == {"error"} and set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "server_error" and error["code"].startswith("upstream_")
    assert "Traceback" not in response.text
    return error


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("reused", [False, True], ids=["fresh-connection", "pooled-connection"])
def test_a_body_the_upstream_read_before_hanging_up_is_sent_once_502_and_billed_once(url, raw_upstream, stream, reused):
    caller = make_user("double@example.com", plan="pro")
    if reused:
        raw_upstream.answer = ok_answer
        assert requests.post(url, json={"model": MODEL, "messages": HELLO}, headers=auth(caller.key), timeout=20).ok
    sent_before = len(raw_upstream.bodies)
    raw_upstream.answer = read_then_hang_up

    response = requests.post(
        url, json={"model": MODEL, "messages": HELLO, "stream": stream}, headers=auth(caller.key), timeout=20
    )

    assert_openai_502(response)
    assert len(raw_upstream.bodies) - sent_before == 1  # exactly one upstream call
    events = settle_ledger(2 if reused else 1)
    failed = [e for e in events if e.status == UsageEvent.Status.FAILED]
    assert len(failed) == 1 and failed[0].counted_messages == 0
    assert_ledger_reconciles()


# ---- the fuzz test -----------------------------------------------------------------------------

_TOKEN = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=12)
_JUNK = st.binary(min_size=0, max_size=300)


def _status_line(status: int) -> bytes:
    return b"HTTP/1.1 %d X\r\n" % status


malformed_responses = st.one_of(
    # not HTTP at all
    _JUNK.filter(lambda raw: not raw.startswith(b"HTTP/")),
    # a broken status line
    st.builds(lambda junk: b"HTTP/1.1 " + junk + b"\r\n\r\n", _JUNK.filter(lambda j: b"\r\n" not in j)),
    # a header line that is not a header
    st.builds(
        lambda status, junk: _status_line(status) + b"Content-Length: 2\r\n" + junk + b"\r\n\r\n{}",
        st.sampled_from([200, 500, 502]),
        st.binary(min_size=1, max_size=80).filter(lambda j: b":" not in j and b"\r" not in j and b"\n" not in j),
    ),
    # a body shorter than its Content-Length, then the connection closes
    st.builds(
        lambda status, body, missing: (
            _status_line(status) + b"Content-Length: %d\r\n\r\n" % (len(body) + missing) + body
        ),
        st.sampled_from([200, 500, 503]),
        _JUNK,
        st.integers(min_value=1, max_value=10_000),
    ),
    # chunked encoding with a chunk size that is not hexadecimal, or a chunk cut short
    st.builds(
        lambda status, size, data: _status_line(status) + b"Transfer-Encoding: chunked\r\n\r\n" + size + b"\r\n" + data,
        st.sampled_from([200, 502]),
        st.one_of(_TOKEN.map(lambda t: ("zz" + t).encode()), st.just(b"ffff")),
        _JUNK,
    ),
    # both a length and chunked (request smuggling's favourite)
    st.builds(
        lambda body: _status_line(200) + b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n" + body,
        _JUNK,
    ),
    # well-formed HTTP whose body is not the JSON object a completion must be
    st.builds(
        lambda status, body: _status_line(status) + b"Content-Length: %d\r\n\r\n" % len(body) + body,
        st.sampled_from([200, 500, 502, 503]),
        _JUNK.filter(lambda b: not b.strip().startswith(b"{")),
    ),
)


@pytest.fixture
def fuzz_key() -> str:
    # Made once per test: every hypothesis example of it runs within the same database.
    return make_user("fuzz@example.com", plan="unlimited").key


@hypothesis_settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(raw=malformed_responses)
def test_malformed_upstream_responses_always_become_an_openai_shaped_502(url, raw_upstream, fuzz_key, raw):

    def answer(conn: socket.socket) -> bool:
        conn.sendall(raw)
        return False

    raw_upstream.answer = answer
    sent_before = len(raw_upstream.bodies)

    response = requests.post(url, json={"model": MODEL, "messages": HELLO}, headers=auth(fuzz_key), timeout=30)

    assert_openai_502(response)
    assert len(raw_upstream.bodies) - sent_before == 1
