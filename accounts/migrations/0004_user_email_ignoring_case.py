from django.db import migrations, models
from django.db.models.functions import Lower

OLD_DEFAULT_SUFFIX = "'s workspace"
PERSONAL_WORKSPACE_NAME = "Personal workspace"


def lowercase_emails_and_rename_personal_workspaces(apps, schema_editor):
    """Emails become lowercase (refused, naming them, if two accounts differ only by case), and a
    workspace still called "<its owner's email>'s workspace" gets the default name without the email."""
    User = apps.get_model("accounts", "User")
    Workspace = apps.get_model("accounts", "Workspace")
    Membership = apps.get_model("accounts", "Membership")
    seen: dict[str, str] = {}
    for email in User.objects.values_list("email", flat=True):
        lowered = email.strip().lower()
        if lowered in seen:
            raise RuntimeError(
                f"Accounts {seen[lowered]!r} and {email!r} differ only by case; merge or rename one, then migrate again."
            )
        seen[lowered] = email
    for user in User.objects.exclude(email=Lower("email")).only("id", "email"):
        User.objects.filter(pk=user.pk).update(email=user.email.strip().lower())
    for workspace in Workspace.objects.filter(name__endswith=OLD_DEFAULT_SUFFIX).only("id", "name"):
        owner_email = workspace.name[: -len(OLD_DEFAULT_SUFFIX)]
        owned = Membership.objects.filter(workspace_id=workspace.pk, role="owner", user__email__iexact=owner_email)
        if owned.exists():
            Workspace.objects.filter(pk=workspace.pk).update(name=PERSONAL_WORKSPACE_NAME)


class Migration(migrations.Migration):
    dependencies = [("accounts", "0003_workspace_deactivated_at")]

    operations = [
        migrations.RunPython(lowercase_emails_and_rename_personal_workspaces, migrations.RunPython.noop),
        migrations.AddConstraint(
            model_name="user",
            constraint=models.UniqueConstraint(
                Lower("email"), name="user_email_unique_ignoring_case"
            ),
        ),
    ]
