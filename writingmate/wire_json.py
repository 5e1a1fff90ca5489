"""JSON on the request path, with orjson: upstream events read, upstream bodies written.

orjson parses a stream's chunk in about a third of `json.loads`' time, and that parse runs for every
event a translated stream turns into another surface's events. Where orjson refuses what the
standard library accepts (a lone surrogate escape, which an upstream that splits an emoji between
two chunks sends; NaN; a number too big for a double; an integer past 64 bits to write), the
standard library answers instead, so nothing that was read or written before is refused now. The
one difference left: orjson reads an integer past 64 bits as a float.
"""

from __future__ import annotations

import json
from typing import Any

import orjson


def loads(data: bytes | str) -> Any:
    """json.loads, faster; a ValueError for what json.loads refuses, nesting too deep for it included."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        try:
            return json.loads(data)
        except RecursionError:
            raise ValueError("JSON nested too deeply") from None


def dumps(value: Any) -> bytes:
    """Compact JSON as UTF-8 bytes (non-ASCII text as itself, not escaped)."""
    try:
        return orjson.dumps(value)
    except TypeError:  # orjson.JSONEncodeError: an integer past 64 bits, a key that is not a string, a lone surrogate
        # ASCII escapes: a lone surrogate (half an emoji, as a client or upstream sent it) has no UTF-8 form.
        return json.dumps(value, separators=(",", ":")).encode()
