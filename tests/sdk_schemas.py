"""Validate Responses payloads against the `openai` SDK's own pydantic types: the current wire contract.

The shared OpenAPI spec (tests/openapi_schemas.py) is older and lacks newer items (namespaced and
custom tool calls, compaction); the SDK's types have them.
"""

from __future__ import annotations

import functools
from typing import Any

import pydantic
from openai.types.responses import CompactedResponse, Response, ResponseStreamEvent


@functools.cache
def _adapter(name: str) -> pydantic.TypeAdapter:
    kinds: dict[str, Any] = {
        "Response": Response,
        "ResponseStreamEvent": ResponseStreamEvent,
        "CompactedResponse": CompactedResponse,
    }
    return pydantic.TypeAdapter(kinds[name])


def assert_sdk_conforms(name: str, payload: dict) -> Any:
    """The payload parsed as the SDK type `name`; fails with pydantic's errors if it does not fit.

    Extra fields are allowed by the SDK's models (they are forward-compatible), so this checks that
    every field the type defines has the right shape, and that unions pick the intended member.
    """
    parsed = _adapter(name).validate_python(payload)
    if name == "ResponseStreamEvent":
        assert parsed.type == payload["type"], f"parsed as {type(parsed).__name__}"
    return parsed
