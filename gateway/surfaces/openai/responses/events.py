"""The Responses event stream: chat completion chunks in, Responses stream events out, in OpenAI's order."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from typing import Any

from gateway.core.reasoning import merge_reasoning_details, reasoning_text
from gateway.core.streaming import web_search_requests
from gateway.surfaces.openai.responses import compaction
from gateway.surfaces.openai.responses.output import (
    call_item,
    new_item_id,
    outcome_of,
    reasoning_item,
    refusal_part,
    response_object,
    response_usage,
    text_part,
    url_citations,
    web_search_item,
)
from gateway.surfaces.openai.responses.tools import CustomInputStream, ToolMap


def sse_frame(event: dict) -> bytes:
    """One Responses event as OpenAI frames it: the `event:` line repeats the JSON's `type`."""
    return f"event: {event['type']}\ndata: {json.dumps(event, separators=(',', ':'))}\n\n".encode()


@dataclass
class _OpenPart:
    kind: str  # "output_text" | "refusal"
    content_index: int
    text: str = ""
    annotations: list[dict] = field(default_factory=list)

    def part(self) -> dict:
        return text_part(self.text, self.annotations) if self.kind == "output_text" else refusal_part(self.text)


@dataclass
class _OpenMessage:
    item_id: str
    output_index: int
    parts: dict[str, _OpenPart] = field(default_factory=dict)


@dataclass
class _OpenReasoning:
    item_id: str
    output_index: int
    text: str = ""
    part_open: bool = False  # the summary part is announced with the first text
    details: list[dict] = field(default_factory=list)


@dataclass
class _OpenSearch:
    item_id: str
    output_index: int
    citations: list[dict] = field(default_factory=list)


@dataclass
class _OpenCall:
    item_id: str
    output_index: int
    call_id: str
    upstream_name: str
    custom: bool
    arguments: str = ""
    custom_input: CustomInputStream = field(default_factory=CustomInputStream)


class ResponseEventStream:
    """Chat completion chunks (parsed) in, Responses stream events (dicts) out.

    Call `start()` once, `feed()` per chunk, and then exactly one of `finish()` (the upstream ended
    normally) or `fail()`. Every event carries the next `sequence_number`, starting at 0. With
    `compact`, the text is gathered instead of streamed and the output is one compaction item.
    """

    def __init__(
        self,
        *,
        response_id: str,
        created_at: int,
        model: str,
        echo: dict,
        tools: ToolMap | None = None,
        compact: bool = False,
        input_items: list | None = None,
    ) -> None:
        self.response_id = response_id
        self.created_at = created_at
        self.model = model
        self.echo = echo
        self.tools = tools or ToolMap()
        self.compact = compact
        self.input_items = input_items or []
        self._summary = ""  # the compaction's text, when compacting
        self._sequence = 0
        self._output: list[dict] = []  # finished items, and placeholders for open ones, by output_index
        self._reasoning: _OpenReasoning | None = None
        self._message: _OpenMessage | None = None
        self._calls: dict[int, _OpenCall] = {}  # by the chat tool call's index
        self._search: _OpenSearch | None = None
        self._searched = False  # a web_search_call item was added (one per response)
        self._pending_citations: list[dict] = []  # citations waiting for the message text they annotate
        self._finish_reason: object = None
        self._usage: dict | None = None
        self.ended = False

    # -- events --

    def _event(self, kind: str, **fields: object) -> dict:
        event = {"type": kind, "sequence_number": self._sequence, **fields}
        self._sequence += 1
        return event

    def _response(self, status: str, **fields: Any) -> dict:
        return response_object(
            response_id=self.response_id,
            created_at=self.created_at,
            model=self.model,
            echo=self.echo,
            status=status,
            output=copy.deepcopy(self._output),
            **fields,
        )

    def _item_event(self, kind: str, output_index: int, item: dict) -> dict:
        return self._event(kind, output_index=output_index, item=copy.deepcopy(item))

    def start(self) -> list[dict]:
        return [
            self._event("response.created", response=self._response("in_progress")),
            self._event("response.in_progress", response=self._response("in_progress")),
        ]

    # -- reasoning items: the upstream's reasoning text as one summary part --

    def _open_reasoning(self) -> tuple[_OpenReasoning, list[dict]]:
        if self._reasoning is not None:
            return self._reasoning, []
        events = self._close_message("completed")
        reasoning = _OpenReasoning(item_id=new_item_id("rs"), output_index=len(self._output))
        self._reasoning = reasoning
        item = reasoning_item(item_id=reasoning.item_id, text="", status="in_progress")
        self._output.append(item)
        events.append(self._item_event("response.output_item.added", reasoning.output_index, item))
        return reasoning, events

    def _reasoning_delta(self, delta: str) -> list[dict]:
        reasoning, events = self._open_reasoning()
        where = {"item_id": reasoning.item_id, "output_index": reasoning.output_index, "summary_index": 0}
        if not reasoning.part_open:
            reasoning.part_open = True
            events.append(
                self._event("response.reasoning_summary_part.added", **where, part={"type": "summary_text", "text": ""})
            )
        reasoning.text += delta
        events.append(self._event("response.reasoning_summary_text.delta", **where, delta=delta))
        return events

    def _reasoning_details(self, entries: list) -> list[dict]:
        reasoning, events = self._open_reasoning()
        merge_reasoning_details(reasoning.details, entries)
        return events

    def _close_reasoning(self, status: str) -> list[dict]:
        reasoning, self._reasoning = self._reasoning, None
        if reasoning is None:
            return []
        where = {"item_id": reasoning.item_id, "output_index": reasoning.output_index, "summary_index": 0}
        item = reasoning_item(item_id=reasoning.item_id, text=reasoning.text, status=status, details=reasoning.details)
        self._output[reasoning.output_index] = item
        events = []
        if reasoning.part_open:
            events.append(self._event("response.reasoning_summary_text.done", **where, text=reasoning.text))
            events.append(
                self._event(
                    "response.reasoning_summary_part.done",
                    **where,
                    part={"type": "summary_text", "text": reasoning.text},
                )
            )
        events.append(self._item_event("response.output_item.done", reasoning.output_index, item))
        return events

    # -- message items --

    def _open_message(self) -> tuple[_OpenMessage, list[dict]]:
        if self._message is not None:
            return self._message, []
        events = self._close_reasoning("completed")  # the reasoning is over once the answer starts
        events.extend(self._close_search("completed"))  # and so are the searches it was based on
        message = _OpenMessage(item_id=new_item_id("msg"), output_index=len(self._output))
        item = {"id": message.item_id, "type": "message", "status": "in_progress", "role": "assistant", "content": []}
        self._output.append(item)
        self._message = message
        events.append(self._item_event("response.output_item.added", message.output_index, item))
        return message, events

    def _message_delta(self, kind: str, delta: str) -> list[dict]:
        message, events = self._open_message()
        part = message.parts.get(kind)
        if part is None:
            part = _OpenPart(kind=kind, content_index=len(message.parts))
            message.parts[kind] = part
            events.append(
                self._event(
                    "response.content_part.added",
                    item_id=message.item_id,
                    output_index=message.output_index,
                    content_index=part.content_index,
                    part=part.part(),
                )
            )
        part.text += delta
        where = {"item_id": message.item_id, "output_index": message.output_index, "content_index": part.content_index}
        if kind == "output_text":
            events.append(self._event("response.output_text.delta", **where, delta=delta, logprobs=[]))
        else:
            events.append(self._event("response.refusal.delta", **where, delta=delta))
        return events

    def _close_message(self, status: str) -> list[dict]:
        message, self._message = self._message, None
        if message is None:
            return []
        events = []
        for part in message.parts.values():
            where = {
                "item_id": message.item_id,
                "output_index": message.output_index,
                "content_index": part.content_index,
            }
            if part.kind == "output_text" and self._pending_citations:
                events.extend(self._annotate(part, where, self._pending_citations))
                self._pending_citations = []
            if part.kind == "output_text":
                events.append(self._event("response.output_text.done", **where, text=part.text, logprobs=[]))
            else:
                events.append(self._event("response.refusal.done", **where, refusal=part.text))
            events.append(self._event("response.content_part.done", **where, part=part.part()))
        item = {
            "id": message.item_id,
            "type": "message",
            "status": status,
            "role": "assistant",
            "content": [part.part() for part in message.parts.values()],
        }
        self._output[message.output_index] = item
        events.append(self._item_event("response.output_item.done", message.output_index, item))
        return events

    # -- web searches: one web_search_call item, and the citations they produced on the message text --

    def _open_search(self) -> list[dict]:
        if self._searched:
            return []
        self._searched = True
        search = _OpenSearch(item_id=new_item_id("ws"), output_index=len(self._output))
        self._search = search
        item = web_search_item(item_id=search.item_id, status="in_progress", citations=[], sources=False)
        self._output.append(item)
        where = {"item_id": search.item_id, "output_index": search.output_index}
        return [
            self._item_event("response.output_item.added", search.output_index, item),
            self._event("response.web_search_call.in_progress", **where),
            self._event("response.web_search_call.searching", **where),
        ]

    def _close_search(self, status: str) -> list[dict]:
        search, self._search = self._search, None
        if search is None:
            return []
        item = web_search_item(
            item_id=search.item_id, status=status, citations=search.citations, sources=self.tools.search_sources
        )
        self._output[search.output_index] = item
        events = []
        if status == "completed":
            where = {"item_id": search.item_id, "output_index": search.output_index}
            events.append(self._event("response.web_search_call.completed", **where))
        events.append(self._item_event("response.output_item.done", search.output_index, item))
        return events

    def _annotate(self, part: _OpenPart, where: dict, citations: list[dict]) -> list[dict]:
        events = []
        for citation in citations:
            part.annotations.append(citation)
            events.append(
                self._event(
                    "response.output_text.annotation.added",
                    **where,
                    annotation_index=len(part.annotations) - 1,
                    annotation=dict(citation),
                )
            )
        return events

    def _citations(self, citations: list[dict]) -> list[dict]:
        events = self._open_search()
        if self._search is not None:
            self._search.citations.extend(citations)
        message = self._message
        part = message.parts.get("output_text") if message is not None else None
        if message is None or part is None:
            self._pending_citations.extend(citations)  # annotated once the message's text is there
            return events
        where = {"item_id": message.item_id, "output_index": message.output_index, "content_index": part.content_index}
        events.extend(self._annotate(part, where, citations))
        return events

    # -- call items: function calls, and custom tool calls whose input streams as text --

    def _call(self, call: _OpenCall, status: str) -> dict:
        return call_item(
            tools=self.tools,
            upstream_name=call.upstream_name,
            call_id=call.call_id,
            arguments=call.arguments,
            status=status,
            item_id=call.item_id,
        )

    def _call_delta(self, delta: dict) -> list[dict]:
        index = found if isinstance(found := delta.get("index"), int) else 0
        function = found if isinstance(found := delta.get("function"), dict) else {}
        events: list[dict] = []
        call = self._calls.get(index)
        if call is None:
            # A call after text: the text is finished (OpenAI closes the message before the call).
            events.extend(self._close_reasoning("completed"))
            events.extend(self._close_message("completed"))
            upstream_name = str(function.get("name") or "")
            custom = self.tools.client_tool(upstream_name).kind == "custom"
            call = _OpenCall(
                item_id=new_item_id("ctc" if custom else "fc"),
                output_index=len(self._output),
                call_id=str(delta.get("id") or new_item_id("call")),
                upstream_name=upstream_name,
                custom=custom,
            )
            self._calls[index] = call
            item = self._call(call, "in_progress")
            item["input" if custom else "arguments"] = ""
            self._output.append(item)
            events.append(self._item_event("response.output_item.added", call.output_index, item))
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            call.arguments += arguments
            where = {"item_id": call.item_id, "output_index": call.output_index}
            if not call.custom:
                events.append(self._event("response.function_call_arguments.delta", **where, delta=arguments))
            elif text := call.custom_input.feed(arguments):
                events.append(self._event("response.custom_tool_call_input.delta", **where, delta=text))
        return events

    def _close_calls(self, status: str) -> list[dict]:
        # Parallel calls may arrive interleaved, so all stay open until the upstream is done with them.
        events = []
        for call in self._calls.values():
            item = self._call(call, status)
            where = {"item_id": call.item_id, "output_index": call.output_index}
            if call.custom:
                events.append(self._event("response.custom_tool_call_input.done", **where, input=item["input"]))
            else:
                events.append(
                    self._event(
                        "response.function_call_arguments.done", **where, name=item["name"], arguments=item["arguments"]
                    )
                )
            self._output[call.output_index] = item
            events.append(self._item_event("response.output_item.done", call.output_index, item))
        self._calls = {}
        return events

    # -- chunks --

    def feed(self, chunk: dict) -> list[dict]:
        if self.ended:
            return []
        if isinstance(chunk.get("usage"), dict):
            self._usage = chunk["usage"]
        events: list[dict] = []
        for choice in chunk.get("choices") or []:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue  # Responses has one output; we never ask for n > 1
            delta = found if isinstance(found := choice.get("delta"), dict) else {}
            if choice.get("finish_reason") is not None:
                self._finish_reason = choice["finish_reason"]
            if self.compact:
                if isinstance(delta.get("content"), str):
                    self._summary += delta["content"]
                continue
            if isinstance(delta.get("reasoning_details"), list) and delta["reasoning_details"]:
                events.extend(self._reasoning_details(delta["reasoning_details"]))
            reasoning = reasoning_text(delta)
            if reasoning:
                events.extend(self._reasoning_delta(reasoning))
            if isinstance(delta.get("content"), str) and delta["content"]:
                events.extend(self._message_delta("output_text", delta["content"]))
            if isinstance(delta.get("refusal"), str) and delta["refusal"]:
                events.extend(self._message_delta("refusal", delta["refusal"]))
            for call_delta in delta.get("tool_calls") or []:
                if isinstance(call_delta, dict):
                    events.extend(self._call_delta(call_delta))
            if self.tools.web_search:
                # OpenRouter sends the results in the delta; some providers put them on the choice.
                citations = url_citations(delta.get("annotations")) + url_citations(choice.get("annotations"))
                if citations:
                    events.extend(self._citations(citations))
        return events

    def finish(self, *, completed_at: int) -> list[dict]:
        """The terminal events once the upstream ended: response.completed or response.incomplete."""
        if self.ended:
            return []
        if self._finish_reason is None or self._finish_reason == "error":
            return self.fail("The upstream closed the stream before it finished.")
        status, incomplete = outcome_of(self._finish_reason)
        item_status = "incomplete" if status == "incomplete" else "completed"
        events = []
        if self.compact:
            item = compaction.compaction_item(summary=self._summary, input_items=self.input_items)
            self._output.append(item)
            events.append(self._item_event("response.output_item.added", 0, item))
            events.append(self._item_event("response.output_item.done", 0, item))
        else:
            events.extend(self._close_reasoning(item_status))
            if self.tools.web_search and web_search_requests(self._usage):
                events.extend(self._open_search())  # searches the usage reports, with no citations to show
            events.extend(self._close_search(item_status))
            if self._message is None and not any(
                item["type"] not in ("reasoning", "web_search_call") for item in self._output
            ):
                events.extend(self._open_message()[1])
                events.extend(self._message_delta_empty())
            events.extend(self._close_message(item_status))
            events.extend(self._close_calls(item_status))
        self.ended = True
        fields: dict = {"usage": response_usage(self._usage), "incomplete_details": incomplete}
        if status == "completed":
            fields["completed_at"] = completed_at
        kind = "response.completed" if status == "completed" else "response.incomplete"
        events.append(self._event(kind, response=self._response(status, **fields)))
        return events

    def _message_delta_empty(self) -> list[dict]:
        """The content part of a reply that was empty: OpenAI still sends the part, with no deltas."""
        message = self._message
        assert message is not None
        part = _OpenPart(kind="output_text", content_index=0)
        message.parts["output_text"] = part
        return [
            self._event(
                "response.content_part.added",
                item_id=message.item_id,
                output_index=message.output_index,
                content_index=0,
                part=part.part(),
            )
        ]

    def fail(self, message: str, *, code: str = "server_error") -> list[dict]:
        """The terminal response.failed after an upstream failure mid-stream; open items end incomplete."""
        if self.ended:
            return []
        self.ended = True
        if self._reasoning is not None:
            self._output[self._reasoning.output_index] = reasoning_item(
                item_id=self._reasoning.item_id,
                text=self._reasoning.text,
                status="incomplete",
                details=self._reasoning.details,
            )
        if self._message is not None:
            item = self._output[self._message.output_index]
            item["status"] = "incomplete"
            item["content"] = [part.part() for part in self._message.parts.values()]
        for call in self._calls.values():
            self._output[call.output_index] = self._call(call, "incomplete")
        self._close_search("incomplete")  # its item, as it stands; a failed stream sends no item events
        self._reasoning, self._message, self._calls = None, None, {}
        response = self._response("failed", usage=response_usage(self._usage), error={"code": code, "message": message})
        return [self._event("response.failed", response=response)]
