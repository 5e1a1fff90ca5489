"""A Messages request body read once, member by member, so it can go to a Claude upstream as it came.

Thinking blocks are signed and cache breakpoints are matched by content: the history must reach
Anthropic exactly as the client sent it. So the body is never re-serialised: each top-level member
keeps its bytes, only `model` is replaced (by the upstream's name) and members the upstream must not
see are left out.

Only a Claude body needs those places, and finding them costs several times what orjson takes to read
the values alone. So a body that names a model that does not look like Claude's (a client that picks
`openai/gpt-5`) is read by orjson, and its places are found only if a Claude model serves it after all
(a staff alias); any other body, or one orjson refuses, is read member by member.
"""

from __future__ import annotations

import json
import re

import orjson

from gateway.errors import invalid_request
from writingmate import wire_json

_decoder = json.JSONDecoder()
_SPACE = re.compile(r"[ \t\n\r]*")
Span = tuple[str, int, int, int]


def _skip_space(text: str, index: int) -> int:
    match = _SPACE.match(text, index)
    return match.end() if match else index  # the pattern matches the empty string, so always a match


class RawBody:
    """The body's text and where each top-level member is in it."""

    __slots__ = ("_raw", "_spans", "_text")

    def __init__(self, raw: bytes, text: str | None, spans: list[Span] | None) -> None:
        """`text` and `spans` None: found when first needed."""
        self._raw = raw
        self._text = text
        self._spans = spans

    @property
    def text(self) -> str:
        if self._text is None:
            self._text = self._raw.decode("utf-8")  # orjson read it: valid UTF-8
        return self._text

    @property
    def spans(self) -> list[Span]:
        """(key, member start, value start, value end) in `text`, in order."""
        if self._spans is None:
            try:
                self._spans = _scan(self.text)[1]
            except (ValueError, StopIteration, RecursionError):  # nested deeper than json reads, orjson did
                raise _invalid_json() from None
        return self._spans

    def with_model(
        self, model: str, *, leave_out: frozenset[str] = frozenset(), replace: dict[str, object] | None = None
    ) -> bytes:
        """The body with `model` and the `replace` members' values replaced and `leave_out` members gone;
        every other byte as it came. A repeated key keeps only its last occurrence, the one json.loads
        read (so an earlier copy of a member left out cannot slip through)."""
        text, spans = self.text, self.spans
        keys = {span[0] for span in spans}
        if not replace and "model" in keys and len(keys) == len(spans) and leave_out.isdisjoint(keys):
            # The usual body: each key once, nothing to leave out: only the model's value changes.
            for key, _, value_start, end in spans:
                if key == "model":
                    if len(self._raw) == len(text):  # ASCII: the text's offsets are the bytes'
                        return self._raw[:value_start] + wire_json.dumps(model) + self._raw[end:]
                    return (text[:value_start] + wire_json.dumps(model).decode() + text[end:]).encode()
        replace = {**(replace or {}), "model": model}
        if not spans:
            return text.encode()
        last = {span[0]: i for i, span in enumerate(spans)}
        kept = [i for i, span in enumerate(spans) if last[span[0]] == i and span[0] not in leave_out]
        parts = [text[: spans[0][1]]]
        for position, i in enumerate(kept):
            key, start, value_start, end = spans[i]
            if key in replace:
                parts.append(text[start:value_start] + wire_json.dumps(replace[key]).decode())
            else:
                parts.append(text[start:end])
            if position + 1 < len(kept):
                parts.append(text[end : spans[i + 1][1]])  # the separator that followed this member
        parts.append(text[spans[-1][3] :])
        return "".join(parts).encode()


def _invalid_json() -> Exception:
    return invalid_request("The request body is not valid JSON: send one JSON object.", code="invalid_json")


# From the body's `{`, or from the end of a member's value, to the next member's value: the `{` or `,`,
# the key and its colon, as one match (the whitespace around them too); or the `}` that ends the body.
# A key with an escape (or a control character, which json.loads refuses) is read by scanstring instead.
_KEY = r'"([^"\\\x00-\x1f]*)"[ \t\n\r]*:[ \t\n\r]*'
_FIRST = re.compile(r"[ \t\n\r]*\{[ \t\n\r]*(?:" + _KEY + r"|(\}))")
_NEXT = re.compile(r"[ \t\n\r]*(?:,[ \t\n\r]*" + _KEY + r"|(\}))")
# raw_decode without its Python frame: (value, end), or StopIteration. Public, but not in the stubs.
_scan_value = _decoder.scan_once  # type: ignore[attr-defined]


def _escaped_key(text: str, index: int) -> tuple[str, int, int]:
    """(key, where its quote is, where its value starts) for a key _KEY does not read."""
    start = _skip_space(text, index)
    if text[start : start + 1] != '"':
        raise ValueError("expected a key")
    key, index = json.decoder.scanstring(text, start + 1)  # type: ignore[attr-defined]  # public, untyped
    index = _skip_space(text, index)
    if text[index : index + 1] != ":":
        raise ValueError("expected ':'")
    return key, start, _skip_space(text, index + 1)


def _next_member_escaped(opening: str, text: str, index: int) -> tuple[str, int, int]:
    """(key, where its quote is, where its value starts) after `index` where _FIRST or _NEXT found none:
    the key has an escape, or the body is not JSON."""
    index = _skip_space(text, index)
    if text[index : index + 1] != opening:
        raise ValueError(f"expected {opening!r}")
    return _escaped_key(text, index + 1)


# The first "model" key with a plain string value, and whether that value looks like Claude's (group 1):
# the one thing read before choosing how to read the rest. Usually it is the top-level member; if a
# nested one comes first, the guess costs time, never correctness.
_MODEL = re.compile(rb'"model"[ \t\n\r]*:[ \t\n\r]*"(?:(anthropic/|[^"\\]*claude)|[^"\\]*")')


def parse_body(raw: bytes) -> tuple[dict, RawBody]:
    """(the body as a dict, where each member is), or a 400 invalid_json if it is not one JSON object."""
    named = _MODEL.search(raw)
    if named is not None and named.lastindex is None:  # a model that is not Claude's
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass  # the scan below gives json's answer (NaN, a lone surrogate escape) or the 400
        else:
            if type(body) is dict:
                return body, RawBody(raw, None, None)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _invalid_json() from None
    try:
        body, spans = _scan(text)
    except (ValueError, StopIteration, RecursionError):
        raise _invalid_json() from None
    return body, RawBody(raw, text, spans)


def _scan(text: str) -> tuple[dict, list[Span]]:
    """The body and its members' places, from one pass of the JSON decoder (ValueError, StopIteration or
    RecursionError if it is not one JSON object)."""
    body: dict = {}
    spans: list[Span] = []
    found, opening, index = _FIRST.match(text), "{", 0
    while True:
        if found is None:
            key, start, value_start = _next_member_escaped(opening, text, index)
        else:
            whole, key_span, closing = found.regs  # spans, read as an attribute: no call per member
            if closing[0] != -1:
                index = whole[1]
                break
            key, start, value_start = text[key_span[0] : key_span[1]], key_span[0] - 1, whole[1]
        value, index = _scan_value(text, value_start)
        body[key] = value
        spans.append((key, start, value_start, index))
        found, opening = _NEXT.match(text, index), ","
    if index != len(text) and text[index:].strip(" \t\n\r"):
        raise ValueError("extra data")
    return body, spans
