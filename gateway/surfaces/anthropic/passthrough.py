"""A Messages request body read once, member by member, so it can go to a Claude upstream as it came.

Thinking blocks are signed and cache breakpoints are matched by content: the history must reach
Anthropic exactly as the client sent it. So the body is never re-serialised: each top-level member
keeps its bytes, only `model` is replaced (by the upstream's name) and members the upstream must not
see are left out.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from gateway.errors import invalid_request
from writingmate import wire_json

_decoder = json.JSONDecoder()
_SPACE = re.compile(r"[ \t\n\r]*")


def _skip_space(text: str, index: int) -> int:
    match = _SPACE.match(text, index)
    return match.end() if match else index  # the pattern matches the empty string, so always a match


@dataclass(slots=True)
class RawBody:
    text: str
    spans: list[tuple[str, int, int, int]]  # (key, member start, value start, value end) in `text`, in order

    @property
    def members(self) -> dict[str, tuple[int, int, int]]:
        """Each key's (member start, value start, value end), in the text's order; a repeated key's last
        occurrence, as json.loads keeps (only a Claude body, sent on as bytes, needs them)."""
        members: dict[str, tuple[int, int, int]] = {}
        for key, start, value_start, end in self.spans:
            members.pop(key, None)
            members[key] = (start, value_start, end)
        return members

    def with_model(
        self, model: str, *, leave_out: frozenset[str] = frozenset(), replace: dict[str, object] | None = None
    ) -> bytes:
        """The body with `model` and the `replace` members' values replaced and `leave_out` members gone;
        every other byte as it came."""
        replace = {**(replace or {}), "model": model}
        ordered = list(self.members.items())
        text = self.text
        if not ordered:
            return text.encode()
        kept = [(i, key, span) for i, (key, span) in enumerate(ordered) if key not in leave_out]
        parts = [text[: ordered[0][1][0]]]
        for position, (i, key, (start, value_start, end)) in enumerate(kept):
            if key in replace:
                parts.append(text[start:value_start] + wire_json.dumps(replace[key]).decode())
            else:
                parts.append(text[start:end])
            if position + 1 < len(kept):
                parts.append(text[end : ordered[i + 1][1][0]])  # the separator that followed this member
        parts.append(text[ordered[-1][1][2] :])
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


def parse_body(raw: bytes) -> tuple[dict, RawBody]:
    """(the body as a dict, where each member is) from one pass of the JSON decoder."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _invalid_json() from None
    body: dict = {}
    spans: list[tuple[str, int, int, int]] = []
    try:
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
    except (ValueError, StopIteration, RecursionError):
        raise _invalid_json() from None
    return body, RawBody(text=text, spans=spans)
