"""Workspace rules: who may add and remove members, the last owner, switching, and isolation."""

from __future__ import annotations

import pytest
from django.urls import reverse
from django.utils import timezone

from accounts import access, services
from accounts.models import Membership, User, Workspace


def user(email: str) -> User:
    # No password: hashing one costs a second here, and these users sign in with force_login.
    return User.objects.create_user(email)


def join(user: User, workspace: Workspace, role: str) -> Membership:
    return Membership.objects.create(user=user, workspace=workspace, role=role)


@pytest.fixture
def team(db) -> dict:
    """A team workspace with an owner, an admin and a member, plus an outsider with only their own."""
    owner = user("owner@example.com")
    workspace = services.create_workspace(user=owner, name="Team")
    admin_user, member, outsider = user("admin@example.com"), user("member@example.com"), user("outsider@example.com")
    join(admin_user, workspace, Membership.Role.ADMIN)
    join(member, workspace, Membership.Role.MEMBER)
    return {"workspace": workspace, "owner": owner, "admin": admin_user, "member": member, "outsider": outsider}


def membership(team: dict, who: str) -> Membership:
    return Membership.objects.get(user=team[who], workspace=team["workspace"])


def test_create_workspace_makes_the_creator_owner_on_free_and_keeps_the_current_one(
    db, django_capture_on_commit_callbacks
) -> None:
    someone = user("someone@example.com")
    personal = someone.current_workspace
    epoch = access.local_access_epoch()

    with django_capture_on_commit_callbacks(execute=True):
        workspace = services.create_workspace(user=someone, name="  Side project ")

    assert workspace.name == "Side project"
    assert workspace.plan.slug == "free"
    assert Membership.objects.get(user=someone, workspace=workspace).role == Membership.Role.OWNER
    someone.refresh_from_db()
    assert someone.current_workspace == personal
    assert access.local_access_epoch() > epoch


@pytest.mark.parametrize("actor", ["owner", "admin"])
def test_owners_and_admins_add_existing_users_by_email(
    team: dict, actor: str, django_capture_on_commit_callbacks
) -> None:
    epoch = access.local_access_epoch()

    with django_capture_on_commit_callbacks(execute=True):
        added = services.add_member_by_email(
            actor=team[actor], workspace=team["workspace"], email=" OUTSIDER@example.com "
        )

    assert added.user == team["outsider"] and added.role == Membership.Role.MEMBER
    assert access.local_access_epoch() > epoch
    # Joining does not change the joiner's current workspace.
    team["outsider"].refresh_from_db()
    assert team["outsider"].current_workspace != team["workspace"]


def test_members_and_outsiders_cannot_add(team: dict) -> None:
    for actor in ("member", "outsider"):
        with pytest.raises(services.NotAllowed):
            services.add_member_by_email(actor=team[actor], workspace=team["workspace"], email="new@example.com")


def test_only_owners_add_owners(team: dict) -> None:
    with pytest.raises(services.NotAllowed):
        services.add_member_by_email(
            actor=team["admin"], workspace=team["workspace"], email="outsider@example.com", role="owner"
        )
    added = services.add_member_by_email(
        actor=team["owner"], workspace=team["workspace"], email="outsider@example.com", role="owner"
    )
    assert added.role == Membership.Role.OWNER


def test_adding_an_unknown_email_or_an_existing_member_fails(team: dict) -> None:
    with pytest.raises(services.UserNotFound):
        services.add_member_by_email(actor=team["owner"], workspace=team["workspace"], email="nobody@example.com")
    with pytest.raises(services.AlreadyMember):
        services.add_member_by_email(actor=team["owner"], workspace=team["workspace"], email="member@example.com")
    assert Membership.objects.filter(workspace=team["workspace"]).count() == 3


@pytest.mark.parametrize(("actor", "target"), [("owner", "member"), ("owner", "admin"), ("admin", "member")])
def test_owners_and_admins_remove_members(
    team: dict, actor: str, target: str, django_capture_on_commit_callbacks
) -> None:
    epoch = access.local_access_epoch()

    with django_capture_on_commit_callbacks(execute=True):
        services.remove_member(actor=team[actor], membership=membership(team, target))

    assert not Membership.objects.filter(user=team[target], workspace=team["workspace"]).exists()
    assert access.local_access_epoch() > epoch


def test_admins_cannot_remove_owners_and_members_cannot_remove_anyone(team: dict) -> None:
    with pytest.raises(services.NotAllowed):
        services.remove_member(actor=team["admin"], membership=membership(team, "owner"))
    with pytest.raises(services.NotAllowed):
        services.remove_member(actor=team["member"], membership=membership(team, "admin"))
    with pytest.raises(services.NotAllowed):
        services.remove_member(actor=team["outsider"], membership=membership(team, "member"))
    assert Membership.objects.filter(workspace=team["workspace"]).count() == 3


def test_the_last_owner_cannot_be_removed_but_one_of_two_owners_can(team: dict) -> None:
    with pytest.raises(services.LastOwner):
        services.remove_member(actor=team["owner"], membership=membership(team, "owner"))

    services.add_member_by_email(
        actor=team["owner"], workspace=team["workspace"], email="outsider@example.com", role="owner"
    )
    services.remove_member(actor=team["outsider"], membership=membership(team, "owner"))

    owners = Membership.objects.filter(workspace=team["workspace"], role=Membership.Role.OWNER)
    assert list(owners.values_list("user__email", flat=True)) == ["outsider@example.com"]


def test_a_removed_member_falls_back_to_another_workspace(team: dict) -> None:
    member = team["member"]
    personal = member.current_workspace
    services.switch_current_workspace(user=member, workspace_id=team["workspace"].pk)

    services.remove_member(actor=team["owner"], membership=membership(team, "member"))

    member.refresh_from_db()
    assert member.current_workspace == personal


def test_switching_needs_membership(team: dict, django_capture_on_commit_callbacks) -> None:
    epoch = access.local_access_epoch()
    with django_capture_on_commit_callbacks(execute=True):
        services.switch_current_workspace(user=team["member"], workspace_id=team["workspace"].pk)
    team["member"].refresh_from_db()
    assert team["member"].current_workspace == team["workspace"]
    assert access.local_access_epoch() > epoch

    with pytest.raises(services.NotAllowed):
        services.switch_current_workspace(user=team["outsider"], workspace_id=team["workspace"].pk)


# ---- the pages ---------------------------------------------------------------------------------


def login(client, who: User) -> None:
    client.force_login(who)


def test_settings_page_lists_workspaces_with_switch_and_create_forms(client, team: dict) -> None:
    login(client, team["owner"])

    response = client.get(reverse("settings"))

    body = response.content.decode()
    assert response.status_code == 200
    assert "Team" in body and "Personal workspace" in body
    assert reverse("workspace-switch", args=[team["workspace"].pk]) in body
    assert reverse("workspace-create") in body
    assert body.count("csrfmiddlewaretoken") == body.count("<form")
    for section in ("API Keys", "Workspaces", "OpenRouter key", "/settings/usage/"):
        assert section in body


def test_create_and_switch_through_the_page(client, team: dict) -> None:
    login(client, team["member"])

    response = client.post(reverse("workspace-create"), {"name": "Mine"})
    created = Workspace.objects.get(name="Mine")
    assert response.status_code == 302
    assert client.post(reverse("workspace-create"), {"name": ""}).status_code == 400

    client.post(reverse("workspace-switch", args=[created.pk]))
    team["member"].refresh_from_db()
    assert team["member"].current_workspace == created


def test_a_deactivated_workspace_is_marked_and_cannot_become_current(client, team: dict) -> None:
    Workspace.objects.filter(pk=team["workspace"].pk).update(deactivated_at=timezone.now())
    login(client, team["member"])

    body = client.get(reverse("settings")).content.decode()
    assert "Deactivated" in body and "The API does not serve it" in body
    assert reverse("workspace-switch", args=[team["workspace"].pk]) not in body

    response = client.post(reverse("workspace-switch", args=[team["workspace"].pk]), follow=True)
    assert "is deactivated" in response.content.decode()
    team["member"].refresh_from_db()
    assert team["member"].current_workspace != team["workspace"]


def test_someone_elses_workspace_is_404_everywhere(client, team: dict) -> None:
    login(client, team["outsider"])
    workspace_id = team["workspace"].pk
    target = membership(team, "member")

    assert client.get(reverse("workspace-detail", args=[workspace_id])).status_code == 404
    assert client.post(reverse("workspace-switch", args=[workspace_id])).status_code == 404
    assert (
        client.post(reverse("workspace-member-add", args=[workspace_id]), {"email": "x@example.com"}).status_code == 404
    )
    assert client.post(reverse("workspace-member-remove", args=[workspace_id, target.pk])).status_code == 404
    assert Membership.objects.filter(workspace_id=workspace_id).count() == 3


def test_add_and_remove_members_through_the_pages(client, team: dict) -> None:
    login(client, team["admin"])
    workspace_id = team["workspace"].pk

    detail = client.get(reverse("workspace-detail", args=[workspace_id]))
    assert b"Add a member" in detail.content
    response = client.post(
        reverse("workspace-member-add", args=[workspace_id]), {"email": "outsider@example.com", "role": "member"}
    )
    assert response.status_code == 302
    unknown = client.post(
        reverse("workspace-member-add", args=[workspace_id]), {"email": "no@example.com", "role": "member"}
    )
    assert unknown.status_code == 400 and b"Ask them to sign up first" in unknown.content

    added = membership(team, "outsider")
    confirm = client.get(reverse("workspace-member-remove", args=[workspace_id, added.pk]))
    assert confirm.status_code == 200 and b"Remove outsider@example.com?" in confirm.content
    assert Membership.objects.filter(pk=added.pk).exists()
    client.post(reverse("workspace-member-remove", args=[workspace_id, added.pk]))
    assert not Membership.objects.filter(pk=added.pk).exists()

    owner_row = membership(team, "owner")
    response = client.post(reverse("workspace-member-remove", args=[workspace_id, owner_row.pk]), follow=True)
    assert b"Only owners can remove an owner." in response.content
    assert Membership.objects.filter(pk=owner_row.pk).exists()


def test_members_see_members_but_cannot_manage(client, team: dict) -> None:
    login(client, team["member"])
    workspace_id = team["workspace"].pk

    detail = client.get(reverse("workspace-detail", args=[workspace_id]))
    assert b"owner@example.com" in detail.content and b"Add a member" not in detail.content
    response = client.post(
        reverse("workspace-member-add", args=[workspace_id]), {"email": "outsider@example.com", "role": "member"}
    )
    assert response.status_code == 403
    assert not Membership.objects.filter(user=team["outsider"], workspace=team["workspace"]).exists()


def test_the_sole_owner_gets_no_remove_button_for_themselves(client, team: dict) -> None:
    login(client, team["owner"])
    workspace_id = team["workspace"].pk

    body = client.get(reverse("workspace-detail", args=[workspace_id])).content.decode()

    assert reverse("workspace-member-remove", args=[workspace_id, membership(team, "owner").pk]) not in body
    assert reverse("workspace-member-remove", args=[workspace_id, membership(team, "member").pk]) in body
