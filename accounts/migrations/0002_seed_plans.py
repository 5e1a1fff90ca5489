from django.db import migrations

PLANS = [
    {"slug": "free", "name": "Free", "daily_message_limit": 25, "allowed_model_tiers": ["basic"]},
    {"slug": "pro", "name": "Pro", "daily_message_limit": 500, "allowed_model_tiers": ["basic", "premium"]},
    {"slug": "unlimited", "name": "Unlimited", "daily_message_limit": None, "allowed_model_tiers": ["basic", "premium"]},
]
APPSUMO_TIERS = [
    {"slug": "appsumo-tier-1", "name": "AppSumo Tier 1", "daily_message_limit": 100, "monthly_message_limit": 1500},
    {"slug": "appsumo-tier-2", "name": "AppSumo Tier 2", "daily_message_limit": 250, "monthly_message_limit": 5000},
    {"slug": "appsumo-tier-3", "name": "AppSumo Tier 3", "daily_message_limit": 500, "monthly_message_limit": 12000},
]


def seed(apps, schema_editor):
    Plan = apps.get_model("accounts", "Plan")
    AppSumoTier = apps.get_model("accounts", "AppSumoTier")
    for plan in PLANS:
        Plan.objects.update_or_create(slug=plan["slug"], defaults=plan)
    for tier in APPSUMO_TIERS:
        AppSumoTier.objects.update_or_create(slug=tier["slug"], defaults=tier)


class Migration(migrations.Migration):
    dependencies = [("accounts", "0001_initial")]
    operations = [migrations.RunPython(seed, migrations.RunPython.noop)]
