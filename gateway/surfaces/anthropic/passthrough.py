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

_decoder = json.JSONDecoder()
_SPACE = re.compile(r"[ \t\n\r]*")


def _skip_space(text: str, index: int) -> int:
    match = _SPACE.match(text, index)
    return match.end() if match else index  # the pattern matches the empty string, so always a match


@dataclass(frozen=True)
class RawBody:
    text: str
    members: dict[str, tuple[int, int, int]]  # key -> (member start, value start, value end) in `text`

    def with_model(
        self, model: str, *, leave_out: frozenset[str] = frozenset(), replace: dict[str, object] | None = None
    ) -> bytes:
        """The body with `model` and the `replace` members' values replaced and `leave_out` members gone;
        every other byte as it came."""
        replace = {**(replace or {}), "model": model}
        ordered = sorted(self.members.items(), key=lambda item: item[1][0])
        kept = [(i, key, span) for i, (key, span) in enumerate(ordered) if key not in leave_out]
        text = self.text
        if not ordered:
            return text.encode()
        parts = [text[: ordered[0][1][0]]]
        for position, (i, key, (start, value_start, end)) in enumerate(kept):
            if key in replace:
                parts.append(text[start:value_start] + json.dumps(replace[key], separators=(",", ":")))
            else:
                parts.append(text[start:end])
            if position + 1 < len(kept):
                parts.append(text[end : ordered[i + 1][1][0]])  # the separator that followed this member
        parts.append(text[ordered[-1][1][2] :])
        return "".join(parts).encode()


def _invalid_json() -> Exception:
    return invalid_request("The request body is not valid JSON: send one JSON object.", code="invalid_json")


# A member's key up to its value (the whitespace before it too), and what follows a value: one regex
# each rather than a whitespace skip around every token. A key with an escape (or a control character,
# which json.loads refuses) is read by scanstring instead.
_KEY = re.compile(r'[ \t\n\r]*"([^"\\\x00-\x1f]*)"[ \t\n\r]*:[ \t\n\r]*')
_AFTER_VALUE = re.compile(r"[ \t\n\r]*([,}])")


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


def parse_body(raw: bytes) -> tuple[dict, RawBody]:
    """(the body as a dict, where each member is) from one pass of the JSON decoder."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _invalid_json() from None
    body: dict = {}
    members: dict[str, tuple[int, int, int]] = {}
    try:
        index = _skip_space(text, 0)
        if text[index : index + 1] != "{":
            raise ValueError("not an object")
        empty = _AFTER_VALUE.match(text, index + 1)
        if empty is not None and empty.group(1) == "}":
            index = empty.end()
        else:
            index += 1
            while True:
                found = _KEY.match(text, index)
                if found is not None:
                    key, start, value_start = found.group(1), found.start(1) - 1, found.end()
                else:
                    key, start, value_start = _escaped_key(text, index)
                value, index = _decoder.raw_decode(text, value_start)
                body[key] = value
                members.pop(key, None)  # a repeated key: the last one wins, as in json.loads
                members[key] = (start, value_start, index)
                after = _AFTER_VALUE.match(text, index)
                if after is None:
                    raise ValueError("expected ',' or '}'")
                index = after.end()
                if after.group(1) == "}":
                    break
        if _skip_space(text, index) != len(text):
            raise ValueError("extra data")
    except (ValueError, RecursionError):
        raise _invalid_json() from None
    return body, RawBody(text=text, members=members)
