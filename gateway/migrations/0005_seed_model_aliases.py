"""Anthropic's model ids for the catalogue's Claude models, and Claude Code's defaults.

An id whose model the catalogue has points at it; one it lacks (Claude Code's defaults
`claude-{opus,sonnet,haiku}-5-5`, Haiku 4.5) points at the closest Claude model the catalogue has,
with a basic-tier fallback for plans without it. Staff change any of them in admin.
"""

from django.db import migrations

# Anthropic's dated snapshot ids, by undated id.
DATED = {
    "claude-opus-4-5": ["claude-opus-4-5-20251101"],
    "claude-opus-4-1": ["claude-opus-4-1-20250805"],
    "claude-opus-4": ["claude-opus-4-20250514", "claude-opus-4-0"],
    "claude-sonnet-4-5": ["claude-sonnet-4-5-20250929"],
    "claude-sonnet-4": ["claude-sonnet-4-20250514", "claude-sonnet-4-0"],
    "claude-haiku-4-5": ["claude-haiku-4-5-20251001"],
    "claude-3-7-sonnet": ["claude-3-7-sonnet-20250219", "claude-3-7-sonnet-latest"],
    "claude-3-5-haiku": ["claude-3-5-haiku-20241022", "claude-3-5-haiku-latest"],
}
# Ids clients send by default that need a stand-in when the catalogue lacks their model.
CLIENT_DEFAULTS = [
    "claude-opus-5-5",
    "claude-sonnet-5-5",
    "claude-haiku-5-5",
    "claude-opus-4-5",
    "claude-sonnet-4-5",
    "claude-haiku-4-5",
]
FALLBACK_PREFERENCE = ["openai/gpt-5-mini", "google/gemini-2.5-flash"]


def _anthropic_id(slug):
    """anthropic/claude-sonnet-4.5 -> claude-sonnet-4-5"""
    return slug.split("/", 1)[1].replace(".", "-")


def _family(anthropic_id):
    for family in ("opus", "sonnet", "haiku"):
        if family in anthropic_id:
            return family
    return ""


def seed(apps, schema_editor):
    CatalogueModel = apps.get_model("gateway", "CatalogueModel")
    ModelAlias = apps.get_model("gateway", "ModelAlias")
    chat = CatalogueModel.objects.filter(kind="chat", enabled=True)
    claude = {_anthropic_id(m.slug): m for m in chat.filter(slug__startswith="anthropic/claude-").order_by("slug")}
    if not claude:
        return
    fallback = next(
        (m for slug in FALLBACK_PREFERENCE for m in chat.filter(slug=slug, tier="basic")),
        chat.filter(tier="basic").exclude(provider="demo").first(),
    )

    def add(alias, target, note, *, with_fallback):
        ModelAlias.objects.get_or_create(
            alias=alias,
            defaults={
                "target": target,
                "fallback": fallback if with_fallback and fallback and fallback.pk != target.pk else None,
                "note": note,
            },
        )

    newest = claude[max(claude)]  # ids sort by family then version; any Claude model is a fair stand-in
    for anthropic_id, model in claude.items():
        add(anthropic_id, model, "Anthropic's id for this model", with_fallback=False)
        for dated in DATED.get(anthropic_id, []):
            add(dated, model, "Anthropic's dated id for this model", with_fallback=False)
    for default in CLIENT_DEFAULTS:
        if default in claude:
            continue
        same_family = [m for i, m in sorted(claude.items()) if _family(i) == _family(default)]
        target = same_family[-1] if same_family else newest
        note = f"Not in the catalogue: the closest Claude model stands in ({target.slug})"
        add(default, target, note, with_fallback=True)
        for dated in DATED.get(default, []):
            add(dated, target, note, with_fallback=True)


class Migration(migrations.Migration):
    dependencies = [("gateway", "0004_model_alias")]
    operations = [migrations.RunPython(seed, migrations.RunPython.noop)]
