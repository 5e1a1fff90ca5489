from django.db import migrations, models

PAID_PLANS = ("pro", "unlimited")  # docs/decisions.md: "Hosted web search is a plan allowance"


def include_web_search_in_paid_plans(apps, schema_editor):
    apps.get_model("accounts", "Plan").objects.filter(slug__in=PAID_PLANS).update(includes_web_search=True)


class Migration(migrations.Migration):
    dependencies = [("accounts", "0005_openrouter_key_verification")]
    operations = [
        migrations.AddField(
            model_name="plan",
            name="includes_web_search",
            field=models.BooleanField(
                default=False,
                help_text="Hosted web search (OpenAI's web_search tool, Claude's web search and web fetch server "
                "tools) is served; without it those tools are left out of the upstream call.",
            ),
        ),
        migrations.RunPython(include_web_search_in_paid_plans, migrations.RunPython.noop),
    ]
