"""Response objects: usage, output items and whole Responses (and compactions) shaped from chat results."""

from __future__ import annotations

import uuid

from gateway.core import sealing
from gateway.core.reasoning import merge_reasoning_details, reasoning_text
from gateway.core.streaming import web_search_requests
from gateway.surfaces.openai.responses import compaction
from gateway.surfaces.openai.responses.tools import ToolMap, custom_input


def new_response_id() -> str:
    return f"resp_{uuid.uuid4().hex}"


def new_item_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def response_usage(usage: object) -> dict:
    """Chat `usage` as Responses `usage`, every detail present (Codex ends a turn whose usage lacks one).

    OpenRouter counts reasoning tokens inside completion_tokens, so output_tokens includes them, and
    output_tokens_details says how many of them were reasoning: they are billed once, as output.
    """
    usage = usage if isinstance(usage, dict) else {}
    prompt, completion = _count(usage.get("prompt_tokens")), _count(usage.get("completion_tokens"))
    prompt_details = found if isinstance(found := usage.get("prompt_tokens_details"), dict) else {}
    completion_details = found if isinstance(found := usage.get("completion_tokens_details"), dict) else {}
    return {
        "input_tokens": prompt,
        "input_tokens_details": {
            "cached_tokens": min(_count(prompt_details.get("cached_tokens")), prompt),
            "cache_write_tokens": _count(prompt_details.get("cache_write_tokens")),
        },
        "output_tokens": completion,
        "output_tokens_details": {
            "reasoning_tokens": min(_count(completion_details.get("reasoning_tokens")), completion)
        },
        "total_tokens": _count(usage.get("total_tokens")) or prompt + completion,
    }


def text_part(text: str, annotations: list[dict] | None = None) -> dict:
    return {"type": "output_text", "text": text, "annotations": list(annotations or []), "logprobs": []}


def url_citations(annotations: object) -> list[dict]:
    """Chat `annotations` (OpenRouter's web results: `{"type": "url_citation", "url_citation": {...}}`)
    as Responses url_citation annotations; anything else, or without a URL, is dropped."""
    citations = []
    for annotation in annotations if isinstance(annotations, list) else []:
        if not isinstance(annotation, dict) or annotation.get("type") != "url_citation":
            continue
        found = annotation.get("url_citation")
        cited = found if isinstance(found, dict) else annotation  # some providers send the fields flat
        url = cited.get("url")
        if not isinstance(url, str) or not url:
            continue
        citations.append(
            {
                "type": "url_citation",
                "start_index": _count(cited.get("start_index")),
                "end_index": _count(cited.get("end_index")),
                "url": url,
                "title": cited.get("title") if isinstance(cited.get("title"), str) else url,
            }
        )
    return citations


def web_search_item(*, item_id: str, status: str, citations: list[dict], sources: bool) -> dict:
    """The upstream's searches as one web_search_call item: OpenRouter reports neither the queries nor
    which search found which result, so there is one item, its action without a query, and (when the
    client asked for them) the cited URLs as its sources."""
    action: dict = {"type": "search"}
    if sources:
        action["sources"] = [{"type": "url", "url": url} for url in dict.fromkeys(c["url"] for c in citations)]
    return {"id": item_id, "type": "web_search_call", "status": status, "action": action}


def refusal_part(refusal: str) -> dict:
    return {"type": "refusal", "refusal": refusal}


def call_item(
    *, tools: ToolMap, upstream_name: str, call_id: str, arguments: str, status: str, item_id: str | None = None
) -> dict:
    """The upstream's function call as the client's item: a function_call or a custom_tool_call."""
    tool = tools.client_tool(upstream_name)
    if tool.kind == "custom":
        item = {
            "id": item_id or new_item_id("ctc"),
            "type": "custom_tool_call",
            "status": status,
            "call_id": call_id,
            "name": tool.name,
            "input": custom_input(arguments),
        }
    else:
        item = {
            "id": item_id or new_item_id("fc"),
            "type": "function_call",
            "status": status,
            "call_id": call_id,
            "name": tool.name,
            # OpenAI sends "{}" for a call without arguments; "" breaks clients that parse it.
            "arguments": arguments or "{}",
        }
    if tool.namespace is not None:
        item["namespace"] = tool.namespace
    return item


def reasoning_item(*, item_id: str, text: str, status: str, details: list | None = None) -> dict:
    """The upstream's visible reasoning as a reasoning item with one summary part (what Codex shows).

    OpenRouter's `reasoning_details` (the provider's reasoning blocks, signatures and encrypted
    reasoning included) travel sealed in `encrypted_content`, so a replayed item gives them back to
    the upstream on the next turn (a provider that checks its own reasoning blocks gets them intact).
    """
    item = {
        "id": item_id,
        "type": "reasoning",
        "status": status,
        "summary": [{"type": "summary_text", "text": text}] if text else [],
    }
    if details:
        item["encrypted_content"] = sealing.seal("reasoning", details)
    return item


def outcome_of(finish_reason: object) -> tuple[str, dict | None]:
    """(Response status, incomplete_details) for a chat finish_reason."""
    if finish_reason == "length":
        return "incomplete", {"reason": "max_output_tokens"}
    if finish_reason == "content_filter":
        return "incomplete", {"reason": "content_filter"}
    return "completed", None


def response_object(
    *,
    response_id: str,
    created_at: int,
    model: str,
    echo: dict,
    status: str,
    output: list[dict],
    usage: dict | None = None,
    error: dict | None = None,
    incomplete_details: dict | None = None,
    completed_at: int | None = None,
) -> dict:
    response = {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "status": status,
        "completed_at": completed_at,
        "error": error,
        "incomplete_details": incomplete_details,
        "model": model,
        "output": output,
        **echo,
    }
    if usage is not None:
        response["usage"] = usage  # optional but not nullable in the spec: absent until known
    return response


def _message_text(message: dict) -> str:
    text = message.get("content")
    return text if isinstance(text, str) else ""


def response_from_chat(
    completion: dict,
    *,
    response_id: str,
    created_at: int,
    completed_at: int,
    model: str,
    echo: dict,
    tools: ToolMap | None = None,
    compact: bool = False,
    input_items: list | None = None,
) -> dict:
    """A whole chat completion as a Response object (for a compaction: one compaction item)."""
    tools = tools or ToolMap()
    choices = found if isinstance(found := completion.get("choices"), list) else []
    choice = choices[0] if choices and isinstance(choices[0], dict) else {}
    message = found if isinstance(found := choice.get("message"), dict) else {}
    finish_reason = choice.get("finish_reason")
    status, incomplete = outcome_of(finish_reason)
    item_status = "incomplete" if status == "incomplete" else "completed"
    error = None
    if finish_reason == "error":
        status, item_status = "failed", "incomplete"
        error = {"code": "server_error", "message": "The upstream model stopped with an error."}

    output: list[dict] = []
    if compact:
        output.append(compaction.compaction_item(summary=_message_text(message), input_items=input_items or []))
        return response_object(
            response_id=response_id,
            created_at=created_at,
            model=model,
            echo=echo,
            status=status,
            output=output,
            usage=response_usage(completion.get("usage")),
            error=error,
            incomplete_details=incomplete,
            completed_at=completed_at if status == "completed" else None,
        )
    reasoning = reasoning_text(message)
    details: list[dict] = []
    merge_reasoning_details(details, message.get("reasoning_details"))
    if reasoning or details:
        output.append(reasoning_item(item_id=new_item_id("rs"), text=reasoning, status=item_status, details=details))
    text, refusal = message.get("content"), message.get("refusal")
    tool_calls = [c for c in message.get("tool_calls") or [] if isinstance(c, dict)]
    citations = url_citations(message.get("annotations")) if tools.web_search else []
    if citations or (tools.web_search and web_search_requests(completion.get("usage"))):
        output.append(
            web_search_item(
                item_id=new_item_id("ws"), status="completed", citations=citations, sources=tools.search_sources
            )
        )
    content: list[dict] = []
    if isinstance(text, str) and (text or not tool_calls):
        content.append(text_part(text, citations))
    if isinstance(refusal, str) and refusal:
        content.append(refusal_part(refusal))
    if content or not tool_calls:
        output.append(
            {
                "id": new_item_id("msg"),
                "type": "message",
                "status": item_status,
                "role": "assistant",
                "content": content or [text_part("")],
            }
        )
    for call in tool_calls:
        function = found if isinstance(found := call.get("function"), dict) else {}
        output.append(
            call_item(
                tools=tools,
                upstream_name=str(function.get("name") or ""),
                call_id=str(call.get("id") or new_item_id("call")),
                arguments=str(function.get("arguments") or ""),
                status=item_status,
            )
        )
    return response_object(
        response_id=response_id,
        created_at=created_at,
        model=model,
        echo=echo,
        status=status,
        output=output,
        usage=response_usage(completion.get("usage")),
        error=error,
        incomplete_details=incomplete,
        completed_at=completed_at if status == "completed" else None,
    )


def compacted_response(completion: dict, *, created_at: int, input_items: list) -> dict:
    """POST /responses/compact's answer: one compaction item (the user's messages are sealed inside it)."""
    choices = found if isinstance(found := completion.get("choices"), list) else []
    choice = choices[0] if choices and isinstance(choices[0], dict) else {}
    message = found if isinstance(found := choice.get("message"), dict) else {}
    return {
        "id": new_item_id("cmp"),
        "object": "response.compaction",
        "created_at": created_at,
        "output": [compaction.compaction_item(summary=_message_text(message), input_items=input_items)],
        "usage": response_usage(completion.get("usage")),
    }
