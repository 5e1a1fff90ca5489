"""Validate gateway responses and stream events against OpenAI's published OpenAPI spec.

The spec lives outside the repository (../shared/openai-openapi/openapi.yaml, see its README); a test
that asks for it is skipped with a clear reason when it is absent. Loading and compiling takes a few
seconds, once per process.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator
from referencing import Registry
from referencing.jsonschema import DRAFT202012

SPEC_PATH = Path(__file__).resolve().parents[2] / "shared" / "openai-openapi" / "openapi.yaml"
_URI = "urn:openai-openapi"


def require_spec() -> None:
    if not SPEC_PATH.exists():
        pytest.skip(f"OpenAI's OpenAPI spec is not at {SPEC_PATH} (see shared/openai-openapi/README.md)")


def _nullable_to_null(node: Any) -> Any:
    """Rewrite OpenAPI 3.0's `nullable: true`, which JSON Schema 2020-12 ignores, into a null alternative."""
    if isinstance(node, list):
        return [_nullable_to_null(x) for x in node]
    if not isinstance(node, dict):
        return node
    node = {k: _nullable_to_null(v) for k, v in node.items()}
    if node.pop("nullable", False) is True:
        if isinstance(node.get("type"), str) and "enum" not in node:
            node["type"] = [node["type"], "null"]
        else:
            node = {"anyOf": [node, {"type": "null"}]}
    return node


@functools.lru_cache(maxsize=1)
def _registry() -> Registry:
    require_spec()
    with SPEC_PATH.open() as handle:
        raw = yaml.load(handle, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    # YAML turns some unquoted dates into date objects; JSON Schema wants strings.
    spec = _nullable_to_null(json.loads(json.dumps(raw, default=str)))
    return Registry().with_resource(_URI, DRAFT202012.create_resource(spec))


@functools.cache
def _validator(schema: str) -> Draft202012Validator:
    return Draft202012Validator({"$ref": f"{_URI}#/components/schemas/{schema}"}, registry=_registry())


@functools.lru_cache(maxsize=1)
def responses_event_schemas() -> dict[str, str]:
    """'response.output_text.delta' -> 'ResponseTextDeltaEvent', and so on for every Responses event."""
    schemas = _registry().contents(_URI)["components"]["schemas"]
    out = {}
    for ref in schemas["ResponseStreamEvent"]["anyOf"]:
        name = ref["$ref"].rsplit("/", 1)[1]
        for kind in schemas[name]["properties"]["type"].get("enum", []):
            out[kind] = name
    return out


def errors(schema: str, obj: object) -> list[str]:
    """Where `obj` breaks `#/components/schemas/<schema>`; [] when it conforms. Skips without the spec."""
    if schema == "ResponseStreamEvent" and isinstance(obj, dict):
        # The concrete event schema gives readable messages; the 58-way anyOf does not.
        schema = responses_event_schemas().get(obj.get("type"), schema)
    return [
        f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message[:300]}"
        for e in _validator(schema).iter_errors(obj)
    ]


def assert_conforms(schema: str, obj: object) -> None:
    problems = errors(schema, obj)
    assert problems == [], f"{schema} violations: {problems}\nin {json.dumps(obj)[:2000]}"


def sse_data(body: str) -> Iterator[Any]:
    """The JSON payload of each SSE event, skipping `: comment` lines, stopping at `[DONE]`."""
    for block in body.replace("\r\n", "\n").split("\n\n"):
        data = "\n".join(line[5:].lstrip() for line in block.split("\n") if line.startswith("data:"))
        if data == "[DONE]":
            return
        if data:
            yield json.loads(data)
