"""Fill daily_key_model_count for the days the ledger had before the table existed (once, from the ledger)."""

from django.db import migrations
from django.db.models import Count, Q, Sum, Value
from django.db.models.functions import Coalesce


def fill(apps, schema_editor):
    usage_event = apps.get_model("billing", "UsageEvent")
    daily = apps.get_model("billing", "DailyKeyModelCount")
    if daily.objects.exists():
        return
    zero = Value(0)
    request = Q(kind="request")
    figures = (
        usage_event.objects.values("workspace_id", "user_id", "key_id", "model", "day")
        .annotate(
            count=Coalesce(Sum("counted_messages", filter=Q(byok=False)), zero),
            byok_count=Coalesce(Sum("counted_messages", filter=Q(byok=True)), zero),
            input_tokens=Coalesce(Sum("prompt_tokens"), zero),
            output_tokens=Coalesce(Sum("completion_tokens"), zero),
            cached_tokens=Coalesce(Sum("cached_tokens"), zero),
            requests=Count("id", filter=request),
            failed_requests=Count("id", filter=request & ~Q(status="succeeded")),
        )
        .order_by()
    )
    batch = []
    for row in figures.iterator(chunk_size=2000):
        batch.append(daily(**row))
        if len(batch) == 2000:
            daily.objects.bulk_create(batch)
            batch = []
    daily.objects.bulk_create(batch)


class Migration(migrations.Migration):
    dependencies = [("billing", "0004_daily_key_model_count")]

    operations = [migrations.RunPython(fill, migrations.RunPython.noop)]
