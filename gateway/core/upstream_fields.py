"""Body fields that would name an upstream, a credential or a proxy: never sent upstream, on any surface.

Proxies such as LiteLLM honour fields like these from the request body (CVE-2024-6587 was exactly
`api_base`): harmless to OpenRouter today, an SSRF or a credential swap the day the upstream honours
them. A client never chooses where we send its traffic, so they are dropped before any upstream call
(`gateway.core.calls.send_upstream`); every surface (chat, completions, Responses, audio, Messages)
reuses this one list.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from gateway.providers.base import UpstreamCall

# The response header naming the tools a surface left out of the upstream call (docs/decisions.md).
OMITTED_TOOLS_HEADER = "x-writingmate-omitted-tools"

UPSTREAM_CONTROL_FIELDS: frozenset[str] = frozenset(
    {
        # where the request goes
        "api_base",
        "base_url",
        "api_host",
        "endpoint",
        "url",
        "custom_llm_provider",
        "deployment_id",
        "api_type",
        "api_version",
        # with whose credentials
        "api_key",
        "api_token",
        "organization",
        "project",
        "azure_ad_token",
        "aws_access_key_id",
        "aws_secret_access_key",
        "aws_session_token",
        "aws_region_name",
        "aws_profile_name",
        "vertex_project",
        "vertex_location",
        "vertex_credentials",
        # through which proxy, with which extra headers or parameters
        "proxy",
        "proxies",
        "http_proxy",
        "https_proxy",
        "headers",
        "extra_headers",
        "extra_body",
        "extra_query",
        "litellm_params",
    }
)


def without_upstream_control_fields(body: dict) -> dict:
    """`body` itself when it holds none of the fields (the usual case: no copy), else a copy without them."""
    if UPSTREAM_CONTROL_FIELDS.isdisjoint(body):
        return body
    return {name: value for name, value in body.items() if name not in UPSTREAM_CONTROL_FIELDS}


def strip_upstream_control_fields(call: UpstreamCall) -> UpstreamCall:
    """The call with those fields gone from its JSON body and its form fields; the rest untouched, in order."""
    changes: dict[str, Any] = {}
    if call.json_body is not None and not UPSTREAM_CONTROL_FIELDS.isdisjoint(call.json_body):
        changes["json_body"] = without_upstream_control_fields(call.json_body)
    if call.form_fields and not UPSTREAM_CONTROL_FIELDS.isdisjoint(call.form_fields):
        changes["form_fields"] = without_upstream_control_fields(dict(call.form_fields))
    return dataclasses.replace(call, **changes) if changes else call
