"""The ledger as CSV for staff: the lines a filtered admin list shows, with names beside the ids."""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator
from typing import Any

from django.db.models import QuerySet
from django.http import StreamingHttpResponse

from accounts.models import User, Workspace
from apikeys.models import DeveloperKey
from billing.models import UsageEvent

CSV_COLUMNS = (
    "created_at",
    "day",
    "request_id",
    "kind",
    "workspace",
    "user",
    "key_name",
    "key_prefix",
    "model",
    "endpoint",
    "status",
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "counted_messages",
    "byok",
    "tokens_estimated",
    "generation_id",
    "web_search_requests",
    "latency_ms",
    "workspace_id",
    "user_id",
    "key_id",
)
_CSV_FIELDS = tuple(
    c for c in CSV_COLUMNS if c not in ("workspace", "user", "key_name", "key_prefix")
)  # read from the ledger; names are looked up per chunk


class _Echo:
    def write(self, value: str) -> str:
        return value


def _names(model: Any, ids: Iterable[int | None], *fields: str) -> dict[int, tuple]:
    return {row[0]: row[1:] for row in model.objects.filter(pk__in={i for i in ids if i}).values_list("pk", *fields)}


def _csv_rows(queryset: QuerySet[UsageEvent]) -> Iterator[str]:
    writer = csv.writer(_Echo())
    yield writer.writerow(CSV_COLUMNS)
    position = {name: index for index, name in enumerate(_CSV_FIELDS)}
    chunk: list[tuple] = []

    def flush() -> Iterator[str]:
        workspaces = _names(Workspace, (r[position["workspace_id"]] for r in chunk), "name")
        users = _names(User, (r[position["user_id"]] for r in chunk), "email")
        developer_keys = _names(DeveloperKey, (r[position["key_id"]] for r in chunk), "name", "prefix")
        for row in chunk:
            values = dict(zip(_CSV_FIELDS, row, strict=True))
            name, prefix = developer_keys.get(values["key_id"], ("", ""))
            values |= {
                "workspace": workspaces.get(values["workspace_id"], ("",))[0],
                "user": users.get(values["user_id"], ("",))[0],
                "key_name": name,
                "key_prefix": prefix,
            }
            yield writer.writerow([values[column] for column in CSV_COLUMNS])
        chunk.clear()

    for row in queryset.values_list(*_CSV_FIELDS).iterator(chunk_size=2000):
        chunk.append(row)
        if len(chunk) == 2000:
            yield from flush()
    yield from flush()


def csv_response(queryset: QuerySet[UsageEvent], *, filename: str = "usage-events.csv") -> StreamingHttpResponse:
    plain = queryset.order_by("created_at", "id").select_related(None).prefetch_related(None)
    response = StreamingHttpResponse(_csv_rows(plain), content_type="text/csv")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response
