from django.db import migrations

MODELS = [
    ("openai/gpt-5-mini", "GPT-5 mini", "openrouter", "chat", "", "basic", "openai", 400000),
    ("openai/gpt-5", "GPT-5", "openrouter", "chat", "", "premium", "openai", 400000),
    ("anthropic/claude-sonnet-4.5", "Claude Sonnet 4.5", "openrouter", "chat", "", "premium", "anthropic", 1000000),
    ("google/gemini-2.5-pro", "Gemini 2.5 Pro", "openrouter", "chat", "", "premium", "google", 1048576),
    ("google/gemini-2.5-flash", "Gemini 2.5 Flash", "openrouter", "chat", "", "basic", "google", 1048576),
    ("openai/whisper-1", "Whisper", "transcription", "transcription", "whisper-1", "basic", "openai", None),
    ("openai/gpt-4o-mini-transcribe", "GPT-4o mini Transcribe", "transcription", "transcription", "gpt-4o-mini-transcribe", "basic", "openai", None),
    ("demo/echo", "Demo: echo (offline demo model)", "demo", "chat", "", "basic", "writingmate-demo", 32768),
    ("demo/assistant", "Demo: assistant with tools (offline demo model)", "demo", "chat", "", "basic", "writingmate-demo", 32768),
    ("demo/transcribe", "Demo: transcription (offline demo model)", "demo", "transcription", "", "basic", "writingmate-demo", None),
]


def seed(apps, schema_editor):
    CatalogueModel = apps.get_model("gateway", "CatalogueModel")
    for slug, name, provider, kind, upstream, tier, owned_by, context in MODELS:
        CatalogueModel.objects.update_or_create(
            slug=slug,
            defaults={
                "display_name": name,
                "provider": provider,
                "kind": kind,
                "upstream_model": upstream,
                "tier": tier,
                "owned_by": owned_by,
                "context_length": context,
            },
        )


class Migration(migrations.Migration):
    dependencies = [("gateway", "0001_initial")]
    operations = [migrations.RunPython(seed, migrations.RunPython.noop)]
