"""Stored responses (`store: true`): keep a Response and its input for the workspace, continue it with
`previous_response_id`, resolve `item_reference` input items, read, list and delete it, purge it.

A stored response is one row holding the whole input the model saw (the previous response's input and
output included) and the Response as the client received it, as JSON text: continuing a chain reads
one row, and deleting or purging one response never breaks another (docs/decisions.md). The row is
written before the client gets the final event or body, so any process can read it once the client
has it. Every read is scoped to the caller's workspace; anything else is the 404 of an unknown id.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import re
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.db import DatabaseError, connection, transaction
from django.db.models import QuerySet
from django.utils import timezone

from apikeys.authentication import ApiCaller
from gateway.errors import ApiError, invalid_request
from gateway.models import StoredResponse, StoredResponseItem
from writingmate.background import GroupCommitter, one_per_event_loop
from writingmate.db import run_db

logger = logging.getLogger(__name__)

_INPUT_PARAM = re.compile(r"^input\[(\d+)\]")
_LIST_LIMIT_MAX = 100
_LIST_LIMIT_DEFAULT = 20
_PURGE_BATCH = 1000
_MAX_KEEP_BATCH = 200
# Prefixes of the ids we give input items that came without one, by item type (OpenAI's spelling).
_ID_PREFIXES = {
    "message": "msg",
    "function_call": "fc",
    "function_call_output": "fco",
    "reasoning": "rs",
    "custom_tool_call": "ctc",
    "custom_tool_call_output": "ctco",
    "compaction": "cmp",
}


def not_found(response_id: str) -> ApiError:
    """The one 404 for an id that never existed, expired, was deleted or belongs to another workspace."""
    return ApiError(f"Response with id '{response_id}' not found.", status=404)


def _previous_not_found(response_id: str) -> ApiError:
    return ApiError(
        f"Previous response with id '{response_id}' not found.",
        status=404,
        param="previous_response_id",
        code="previous_response_not_found",
    )


def _mint(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(24)}"


# ---- request side -------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoragePlan:
    """What a create request keeps and continues: the body the translator sees, and what to store."""

    store: bool
    previous_response_id: str | None
    body: dict  # the request with `input` = the whole context, without previous_response_id
    context_length: int = 0  # how many items of body["input"] came from the previous response
    input_json: str = ""  # body["input"] as stored (store only)
    input_count: int = 0
    # (position in body["input"], item) of this request's own items, to index by id for item_reference
    new_items: list[tuple[int, dict]] = field(default_factory=list)

    def remap_error(self, error: ApiError) -> ApiError:
        """A translator error about input[k] names the client's own index, not one shifted by the context."""
        match = _INPUT_PARAM.match(error.param or "")
        if not self.context_length or match is None:
            return error
        index = int(match.group(1)) - self.context_length
        if index < 0:
            return error
        error.param = f"input[{index}]" + error.param[match.end() :]  # type: ignore[index]
        error.message = error.message.replace(match.group(0), f"input[{index}]")
        return error


def _text_parts(content: object, part_type: str) -> object:
    if isinstance(content, str):
        part: dict = {"type": part_type, "text": content}
        if part_type == "output_text":
            part["annotations"] = []
        return [part]
    if isinstance(content, list) and part_type == "output_text":
        # An assistant turn replayed with input_text parts is stored as OpenAI lists it: output_text.
        return [
            {"type": "output_text", "text": p.get("text"), "annotations": p.get("annotations") or []}
            if isinstance(p, dict) and p.get("type") in ("input_text", "output_text")
            else p
            for p in content
        ]
    return content


def normalize_item(item: object) -> object:
    """An input item as a stored item: typed, with an id, status and list content (OpenAI's list shape).

    Anything malformed is left as it is, for the translator to refuse with its own 400.
    """
    if not isinstance(item, dict):
        return item
    kind = item.get("type")
    if kind is None and "role" in item:
        kind = "message"
    if not isinstance(kind, str) or kind == "item_reference":
        return item
    stored = {**item, "type": kind}
    if not isinstance(stored.get("id"), str) or not stored["id"]:
        stored["id"] = _mint(_ID_PREFIXES.get(kind, "item"))
    if kind == "message":
        role = stored.get("role")
        stored["content"] = _text_parts(stored.get("content"), "output_text" if role == "assistant" else "input_text")
        stored.setdefault("status", "completed")
    elif kind in ("function_call", "function_call_output", "custom_tool_call_output"):
        stored.setdefault("status", "completed")
    elif kind == "reasoning":
        stored.setdefault("summary", [])
    return stored


def _input_items(body: dict) -> list:
    items = body.get("input")
    if isinstance(items, str):
        return [{"type": "message", "role": "user", "content": items}]
    return list(items) if isinstance(items, list) else []


def _store_flag(body: dict) -> bool:
    store = body.get("store")
    if store is None:
        return True  # OpenAI's default
    if not isinstance(store, bool):
        raise invalid_request(
            f"Invalid type for 'store': expected a boolean, but got {type(store).__name__}.",
            param="store",
            code="invalid_type",
        )
    return store


@functools.cache
def _previous_sql() -> str:
    table = StoredResponse._meta.db_table
    return f"SELECT input_items, response FROM {table} WHERE id = %s AND workspace_id = %s AND expires_at > %s"  # noqa: S608


def _load_previous(workspace_id: int, response_id: str) -> tuple[str, list, list] | None:
    """(input items as stored JSON, the same decoded, output items) of a live stored response of this
    workspace, or None.

    One fixed statement on a plain cursor: building and compiling the ORM query cost more CPU than
    the read itself (~0.5 ms per continuation).
    """
    now = connection.ops.adapt_datetimefield_value(timezone.now())
    with connection.cursor() as cursor:
        cursor.execute(_previous_sql(), [response_id, workspace_id, now])
        row = cursor.fetchone()
    if row is None:
        return None
    return row[0], json.loads(row[0]), json.loads(row[1]).get("output") or []


def _join_json_arrays(head: str, tail: str) -> str:
    """Two JSON arrays as json.dumps would write them, as one, without decoding and encoding `head` again."""
    if head == "[]":
        return tail
    if tail == "[]":
        return head
    return f"{head[:-1]}, {tail[1:]}"


def _load_items(workspace_id: int, item_ids: list[str]) -> dict[str, dict]:
    """The stored items of this workspace with these ids, from live responses."""
    places = list(
        StoredResponseItem.objects.filter(
            workspace_id=workspace_id, item_id__in=item_ids, response__expires_at__gt=timezone.now()
        ).values_list("item_id", "response_id", "position")
    )
    rows = StoredResponse.objects.filter(pk__in={response_id for _, response_id, _ in places}).values_list(
        "pk", "input_items", "response"
    )
    items_by_response = {pk: json.loads(inputs) + (json.loads(out).get("output") or []) for pk, inputs, out in rows}
    found: dict[str, dict] = {}
    for item_id, response_id, position in places:
        items = items_by_response.get(response_id) or []
        if position < len(items) and isinstance(items[position], dict) and items[position].get("id") == item_id:
            found[item_id] = items[position]
    return found


def _resolve_references(workspace_id: int, items: list) -> list:
    references = {
        index: item["id"]
        for index, item in enumerate(items)
        if isinstance(item, dict) and item.get("type") == "item_reference"
    }
    if not references:
        return items
    for index, item_id in references.items():
        if not isinstance(item_id, str) or not item_id:
            raise invalid_request(
                f"Missing required parameter: 'input[{index}].id'.",
                param=f"input[{index}].id",
                code="missing_required_parameter",
            )
    found = _load_items(workspace_id, sorted(set(references.values())))
    resolved = list(items)
    for index, item_id in references.items():
        if item_id not in found:
            raise ApiError(f"Item with id '{item_id}' not found.", status=404, param=f"input[{index}].id")
        resolved[index] = found[item_id]
    return resolved


def _plan(workspace_id: int, body: dict, store: bool, previous_id: str | None) -> StoragePlan:
    context: list = []
    outputs: list = []
    context_json = "[]"
    if previous_id is not None:
        previous = _load_previous(workspace_id, previous_id)
        if previous is None:
            raise _previous_not_found(previous_id)
        context_json, context, outputs = previous
        context = context + outputs
    items = _resolve_references(workspace_id, _input_items(body))
    new_items = [normalize_item(item) for item in items] if store else items
    whole = context + new_items
    rest = {name: value for name, value in body.items() if name != "previous_response_id"}
    translated_body = {**rest, "input": whole}
    if not store:
        return StoragePlan(
            store=False, previous_response_id=previous_id, body=translated_body, context_length=len(context)
        )
    # The previous input is kept as it was stored; only the previous output and the new items are encoded.
    input_json = _join_json_arrays(context_json, json.dumps(outputs + new_items))
    limit = settings.RESPONSES_STORE_MAX_BYTES
    if len(input_json) > limit:
        what = "this input together with the previous response" if previous_id else "this input"
        raise invalid_request(
            f"The response cannot be stored: {what} is {len(input_json)} bytes, above the limit of {limit} bytes "
            "per stored response. Start a new conversation, or send 'store': false with the whole conversation "
            "in 'input'.",
            param="previous_response_id" if previous_id else "input",
            code="stored_response_too_large",
        )
    return StoragePlan(
        store=True,
        previous_response_id=previous_id,
        body=translated_body,
        context_length=len(context),
        input_json=input_json,
        input_count=len(whole),
        new_items=[
            (len(context) + offset, item)
            for offset, item in enumerate(new_items)
            if isinstance(item, dict) and isinstance(item.get("id"), str)
        ],
    )


async def plan_storage(*, caller: ApiCaller, body: dict) -> StoragePlan:
    """The request as the translator should see it; reads the database only to continue or resolve."""
    store = _store_flag(body)
    previous_id = body.get("previous_response_id")
    if previous_id is not None and (not isinstance(previous_id, str) or not previous_id):
        raise invalid_request(
            "Invalid type for 'previous_response_id': expected a response id string.",
            param="previous_response_id",
            code="invalid_type",
        )
    if not isinstance(body.get("input"), (str, list)):
        # Nothing to keep or continue: the translator refuses the input itself, with its own 400.
        rest = {name: value for name, value in body.items() if name != "previous_response_id"}
        return StoragePlan(store=store, previous_response_id=previous_id, body=rest)
    needs_database = previous_id is not None or any(
        isinstance(item, dict) and item.get("type") == "item_reference" for item in _input_items(body)
    )
    if not store and not needs_database:
        return StoragePlan(store=False, previous_response_id=None, body=body)
    workspace_id = caller.workspace.workspace_id
    if needs_database:
        return await run_db(_plan, workspace_id, body, store, previous_id)
    return _plan(workspace_id, body, store, previous_id)


# ---- keeping a response -------------------------------------------------------------------------


_ROW_COLUMNS = (
    "id",
    "workspace_id",
    "user_id",
    "key_id",
    "request_id",
    "model",
    "status",
    "previous_response_id",
    "input_items",
    "response",
    "input_bytes",
    "response_bytes",
    "created_at",
    "expires_at",
)
_ITEM_COLUMNS = ("workspace_id", "item_id", "response_id", "position")


def _values(count: int, width: int) -> str:
    return ", ".join(["(" + ", ".join(["%s"] * width) + ")"] * count)


def _save(rows: list[StoredResponse], index: list[StoredResponseItem]) -> None:
    """The responses and their item index in one transaction; an item id already indexed keeps its place.

    On PostgreSQL one statement (an INSERT inside a WITH) is the transaction: one round trip and no
    model or query compiling, where bulk_create twice inside atomic() took four and ~0.9 ms of CPU.
    """
    if connection.vendor != "postgresql":
        with transaction.atomic():
            StoredResponse.objects.bulk_create(rows)
            StoredResponseItem.objects.bulk_create(index, ignore_conflicts=True)
        return
    response_table, item_table = StoredResponse._meta.db_table, StoredResponseItem._meta.db_table
    insert_rows = (
        f"INSERT INTO {response_table} ({', '.join(_ROW_COLUMNS)}) "  # noqa: S608 - fixed names, values bound
        f"VALUES {_values(len(rows), len(_ROW_COLUMNS))}"
    )
    params = [getattr(row, column) for row in rows for column in _ROW_COLUMNS]
    if index:
        sql = (
            f"WITH kept AS ({insert_rows}) INSERT INTO {item_table} ({', '.join(_ITEM_COLUMNS)}) "  # noqa: S608
            f"VALUES {_values(len(index), len(_ITEM_COLUMNS))} ON CONFLICT (workspace_id, item_id) DO NOTHING"
        )
        params += [getattr(item, column) for item in index for column in _ITEM_COLUMNS]
    else:
        sql = insert_rows
    with connection.cursor() as cursor:
        cursor.execute(sql, params)


@dataclass
class _Pending:
    row: StoredResponse
    index: list[StoredResponseItem]
    done: asyncio.Future[bool]


class _ResponseCommitter(GroupCommitter[_Pending]):
    """Responses that finish while a write is in flight share the next transaction (one WAL flush)."""

    max_batch = _MAX_KEEP_BATCH

    async def commit(self, batch: list[_Pending]) -> None:
        outcomes = [False] * len(batch)
        try:
            await run_db(_save, [p.row for p in batch], [item for p in batch for item in p.index])
            outcomes = [True] * len(batch)
        except DatabaseError:
            if len(batch) == 1:
                logger.warning("could not store response %s", batch[0].row.id, exc_info=True)
            else:  # one bad row must not cost the others their storing: write them one by one
                outcomes = [await _save_alone(p) for p in batch]
        except Exception:
            logger.exception("unexpected failure storing %d responses", len(batch))
        finally:
            for pending, stored in zip(batch, outcomes, strict=True):
                if not pending.done.done():
                    pending.done.set_result(stored)


async def _save_alone(pending: _Pending) -> bool:
    try:
        await run_db(_save, [pending.row], pending.index)
        return True
    except DatabaseError:
        logger.warning("could not store response %s", pending.row.id, exc_info=True)
        return False


_committer = one_per_event_loop(_ResponseCommitter)


async def keep_response(*, plan: StoragePlan, caller: ApiCaller, response: dict, request_id: str) -> bool:
    """Store a finished Response before the client gets it; False (logged) if the database refused it."""
    if not plan.store:
        return False
    response_json = json.dumps(response)
    now = timezone.now()
    workspace_id = caller.workspace.workspace_id
    row = StoredResponse(
        id=response["id"],
        workspace_id=workspace_id,
        user_id=caller.user_id,
        key_id=caller.key_id,
        request_id=request_id,
        model=str(response.get("model") or ""),
        status=str(response.get("status") or ""),
        previous_response_id=plan.previous_response_id or "",
        input_items=plan.input_json,
        response=response_json,
        input_bytes=len(plan.input_json),
        response_bytes=len(response_json),
        created_at=now,
        expires_at=now + timedelta(days=settings.RESPONSES_RETENTION_DAYS),
    )
    output = [
        (plan.input_count + offset, item)
        for offset, item in enumerate(response.get("output") or [])
        if isinstance(item, dict) and isinstance(item.get("id"), str)
    ]
    index = [
        StoredResponseItem(workspace_id=workspace_id, item_id=item["id"], response_id=row.id, position=position)
        for position, item in plan.new_items + output
    ]
    pending = _Pending(row=row, index=index, done=asyncio.get_running_loop().create_future())
    _committer().submit(pending)
    # Shielded: a client that leaves now does not stop the write other requests share.
    return await asyncio.shield(pending.done)


# ---- reading, listing, deleting -----------------------------------------------------------------


def _live(caller: ApiCaller, response_id: str) -> QuerySet[StoredResponse]:
    return StoredResponse.objects.filter(
        pk=response_id, workspace_id=caller.workspace.workspace_id, expires_at__gt=timezone.now()
    )


async def retrieve_response(*, caller: ApiCaller, response_id: str) -> bytes:
    """The stored Response's JSON, exactly as its client received it."""
    body = await run_db(lambda: _live(caller, response_id).values_list("response", flat=True).first())
    if body is None:
        raise not_found(response_id)
    return body.encode()


async def delete_response(*, caller: ApiCaller, response_id: str) -> dict:
    def delete() -> int:
        with transaction.atomic():
            deleted, _ = _live(caller, response_id).delete()
            if deleted:
                StoredResponseItem.objects.filter(response_id=response_id).delete()
            return deleted

    if not await run_db(delete):
        raise not_found(response_id)
    return {"id": response_id, "object": "response", "deleted": True}


@dataclass(frozen=True)
class ListQuery:
    after: str | None
    before: str | None
    limit: int
    order: str


def list_query(params: dict[str, list[str]]) -> ListQuery:
    """`after` / `before` / `limit` / `order` of an input_items request (`include` is accepted as is)."""

    def one(name: str) -> str | None:
        values = params.get(name) or []
        return values[-1] if values else None

    limit_text = one("limit")
    limit = _LIST_LIMIT_DEFAULT
    if limit_text is not None:
        if not limit_text.isdigit() or not 1 <= int(limit_text) <= _LIST_LIMIT_MAX:
            raise invalid_request(
                f"Invalid 'limit': {limit_text!r}. Expected an integer from 1 to {_LIST_LIMIT_MAX}.",
                param="limit",
                code="invalid_value",
            )
        limit = int(limit_text)
    order = one("order") or "desc"  # the SDK documents desc as the default
    if order not in ("asc", "desc"):
        raise invalid_request(
            f"Invalid value for 'order': {order!r}. Supported values: asc, desc.", param="order", code="invalid_value"
        )
    return ListQuery(after=one("after"), before=one("before"), limit=limit, order=order)


def _cursor(items: list[dict], item_id: str, param: str) -> int:
    for index, item in enumerate(items):
        if item.get("id") == item_id:
            return index
    raise invalid_request(f"Invalid '{param}': no input item with id '{item_id}' in this response.", param=param)


async def list_input_items(*, caller: ApiCaller, response_id: str, query: ListQuery) -> dict:
    """One page of the stored response's input items, in OpenAI's list shape."""
    stored = await run_db(lambda: _live(caller, response_id).values_list("input_items", flat=True).first())
    if stored is None:
        raise not_found(response_id)
    items = [item for item in json.loads(stored) if isinstance(item, dict)]
    if query.order == "desc":
        items.reverse()
    start, end = 0, len(items)
    if query.after is not None:
        start = _cursor(items, query.after, "after") + 1
    if query.before is not None:
        end = _cursor(items, query.before, "before")
    window = items[start:end]
    page = window[: query.limit]
    return {
        "object": "list",
        "data": page,
        "first_id": page[0]["id"] if page else None,
        "last_id": page[-1]["id"] if page else None,
        "has_more": len(window) > len(page),
    }


# ---- retention ----------------------------------------------------------------------------------


def purge_expired_responses(*, now: datetime | None = None) -> int:
    """Delete stored responses past their expiry, in batches; idempotent. Returns how many went."""
    now = now or timezone.now()
    purged = 0
    while True:
        ids = list(StoredResponse.objects.filter(expires_at__lte=now).values_list("pk", flat=True)[:_PURGE_BATCH])
        if not ids:
            return purged
        with transaction.atomic():
            StoredResponseItem.objects.filter(response_id__in=ids).delete()
            purged += StoredResponse.objects.filter(pk__in=ids).delete()[0]
