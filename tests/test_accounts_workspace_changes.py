"""Renaming, leaving and role changes: who may, the owner a workspace always keeps, what the API sees,
and another workspace's people, who can neither see nor change any of it."""

from __future__ import annotations

import threading

import pytest
from django.db import connection
from django.test import Client
from django.urls import reverse

from accounts import access, services
from accounts.access import load_user_access
from accounts.models import PERSONAL_WORKSPACE_NAME, Membership, User, Workspace


def user(email: str) -> User:
    return User.objects.create_user(email)


@pytest.fixture
def team(db) -> dict:
    """ "Team" with an owner, an admin and a member; an outsider owns only their own workspace."""
    owner = user("owner@example.com")
    workspace = services.create_workspace(user=owner, name="Team")
    people = {"owner": owner, "admin": user("admin@example.com"), "member": user("member@example.com")}
    Membership.objects.create(user=people["admin"], workspace=workspace, role=Membership.Role.ADMIN)
    Membership.objects.create(user=people["member"], workspace=workspace, role=Membership.Role.MEMBER)
    return {"workspace": workspace, "outsider": user("outsider@example.com"), **people}


def membership(team: dict, who: str) -> Membership:
    return Membership.objects.get(user=team[who], workspace=team["workspace"])


def signed_in(who: User) -> Client:
    client = Client(enforce_csrf_checks=True)
    client.force_login(who)
    return client


def csrf_post(client: Client, url: str, data: dict | None = None, **kwargs):
    """POST the way the page does: with the CSRF token its form carries."""
    client.get(reverse("settings"))
    return client.post(url, {**(data or {}), "csrfmiddlewaretoken": client.cookies["csrftoken"].value}, **kwargs)


# ---- the default name ---------------------------------------------------------------------------


def test_the_personal_workspace_name_does_not_contain_the_email(db) -> None:
    someone = User.objects.create_user("Private.Person@Example.com")

    assert someone.current_workspace.name == PERSONAL_WORKSPACE_NAME
    assert "private.person" not in someone.current_workspace.name.lower()


# ---- rename -------------------------------------------------------------------------------------


@pytest.mark.parametrize("actor", ["owner", "admin"])
def test_owners_and_admins_rename_and_the_api_snapshot_follows(
    team: dict, actor: str, django_capture_on_commit_callbacks
) -> None:
    epoch = access.local_access_epoch()

    with django_capture_on_commit_callbacks(execute=True):
        services.rename_workspace(actor=team[actor], workspace=team["workspace"], name="  Research  ")

    team["workspace"].refresh_from_db()
    assert team["workspace"].name == "Research"
    assert access.local_access_epoch() > epoch
    snapshot = load_user_access(user_id=team["member"].pk)
    assert snapshot.workspaces[team["workspace"].pk].workspace_name == "Research"


@pytest.mark.parametrize("actor", ["member", "outsider"])
def test_members_and_outsiders_cannot_rename(team: dict, actor: str) -> None:
    with pytest.raises(services.NotAllowed):
        services.rename_workspace(actor=team[actor], workspace=team["workspace"], name="Mine now")

    team["workspace"].refresh_from_db()
    assert team["workspace"].name == "Team"


def test_rename_through_the_page(team: dict) -> None:
    client = signed_in(team["admin"])
    url = reverse("workspace-rename", args=[team["workspace"].pk])

    assert client.post(url, {"name": "No token"}).status_code == 403  # CSRF
    empty = csrf_post(client, url, {"name": "   "})
    assert empty.status_code == 400 and b"This field is required" in empty.content
    response = csrf_post(client, url, {"name": "Renamed"}, follow=True)

    assert "Renamed the workspace to “Renamed”" in response.content.decode()
    team["workspace"].refresh_from_db()
    assert team["workspace"].name == "Renamed"
    member_page = signed_in(team["member"]).get(reverse("workspace-detail", args=[team["workspace"].pk]))
    assert b"Rename workspace" not in member_page.content
    assert csrf_post(signed_in(team["member"]), url, {"name": "Nope"}).status_code == 403


# ---- leave --------------------------------------------------------------------------------------


def test_a_member_leaves_and_falls_back_to_their_own_workspace(team: dict, django_capture_on_commit_callbacks) -> None:
    member = team["member"]
    member.current_workspace = team["workspace"]
    member.save(update_fields=["current_workspace"])
    epoch = access.local_access_epoch()

    with django_capture_on_commit_callbacks(execute=True):
        services.leave_workspace(user=member, workspace_id=team["workspace"].pk)

    assert not Membership.objects.filter(user=member, workspace=team["workspace"]).exists()
    member.refresh_from_db()
    assert member.current_workspace.name == PERSONAL_WORKSPACE_NAME
    assert access.local_access_epoch() > epoch
    assert team["workspace"].pk not in load_user_access(user_id=member.pk).workspaces


def test_the_last_owner_cannot_leave_but_one_of_two_owners_can(team: dict) -> None:
    with pytest.raises(services.LastOwner):
        services.leave_workspace(user=team["owner"], workspace_id=team["workspace"].pk)
    assert membership(team, "owner").role == Membership.Role.OWNER

    services.change_member_role(actor=team["owner"], membership=membership(team, "admin"), role="owner")
    services.leave_workspace(user=team["owner"], workspace_id=team["workspace"].pk)

    assert list(Membership.objects.filter(workspace=team["workspace"], role="owner").values_list("user__email")) == [
        ("admin@example.com",)
    ]


def test_leaving_a_workspace_you_are_not_in_is_refused(team: dict) -> None:
    with pytest.raises(services.NotAllowed):
        services.leave_workspace(user=team["outsider"], workspace_id=team["workspace"].pk)
    assert Membership.objects.filter(workspace=team["workspace"]).count() == 3


def test_leave_through_the_pages_asks_first(team: dict) -> None:
    client = signed_in(team["member"])
    url = reverse("workspace-leave", args=[team["workspace"].pk])

    confirm = client.get(url)
    assert confirm.status_code == 200 and "Leave “Team”?" in confirm.content.decode()
    assert Membership.objects.filter(user=team["member"], workspace=team["workspace"]).exists()
    assert client.post(url).status_code == 403  # CSRF
    response = csrf_post(client, url, follow=True)

    assert "You left “Team”." in response.content.decode()
    assert not Membership.objects.filter(user=team["member"], workspace=team["workspace"]).exists()

    sole_owner = signed_in(team["owner"])
    assert b"make another member an owner" in sole_owner.get(url).content
    refused = csrf_post(sole_owner, url, follow=True)
    assert b"You are the only owner" in refused.content
    assert Membership.objects.filter(user=team["owner"], workspace=team["workspace"]).exists()


# ---- roles --------------------------------------------------------------------------------------


def test_owners_change_roles_and_the_api_snapshot_follows(team: dict, django_capture_on_commit_callbacks) -> None:
    epoch = access.local_access_epoch()

    with django_capture_on_commit_callbacks(execute=True):
        services.change_member_role(actor=team["owner"], membership=membership(team, "member"), role="admin")

    assert membership(team, "member").role == Membership.Role.ADMIN
    assert access.local_access_epoch() > epoch
    assert load_user_access(user_id=team["member"].pk).workspaces[team["workspace"].pk].role == "admin"


@pytest.mark.parametrize("actor", ["admin", "member", "outsider"])
def test_only_owners_change_roles(team: dict, actor: str) -> None:
    with pytest.raises(services.NotAllowed):
        services.change_member_role(actor=team[actor], membership=membership(team, "member"), role="owner")
    assert membership(team, "member").role == Membership.Role.MEMBER


def test_the_last_owner_is_never_demoted_but_one_of_two_owners_is(team: dict) -> None:
    with pytest.raises(services.LastOwner):
        services.change_member_role(actor=team["owner"], membership=membership(team, "owner"), role="admin")
    assert membership(team, "owner").role == Membership.Role.OWNER

    services.change_member_role(actor=team["owner"], membership=membership(team, "admin"), role="owner")
    services.change_member_role(actor=team["owner"], membership=membership(team, "owner"), role="member")

    assert membership(team, "owner").role == Membership.Role.MEMBER
    assert membership(team, "admin").role == Membership.Role.OWNER


def test_an_unknown_role_is_refused(team: dict) -> None:
    with pytest.raises(services.NotAllowed):
        services.change_member_role(actor=team["owner"], membership=membership(team, "member"), role="superuser")


def test_roles_through_the_page(team: dict) -> None:
    owner = signed_in(team["owner"])
    target = membership(team, "member")
    url = reverse("workspace-member-role", args=[team["workspace"].pk, target.pk])

    page = owner.get(reverse("workspace-detail", args=[team["workspace"].pk])).content.decode()
    assert url in page and "(the only owner)" in page
    assert owner.post(url, {"role": "admin"}).status_code == 403  # CSRF
    response = csrf_post(owner, url, {"role": "admin"}, follow=True)
    assert "member@example.com is now admin." in response.content.decode()
    assert membership(team, "member").role == Membership.Role.ADMIN

    bad = csrf_post(owner, url, {"role": "root"}, follow=True)
    assert b"Choose one of the roles" in bad.content
    own = reverse("workspace-member-role", args=[team["workspace"].pk, membership(team, "owner").pk])
    refused = csrf_post(owner, own, {"role": "member"}, follow=True)
    assert b"A workspace needs at least one owner" in refused.content

    admin_page = signed_in(team["admin"]).get(reverse("workspace-detail", args=[team["workspace"].pk]))
    assert url.encode() not in admin_page.content
    forbidden = csrf_post(signed_in(team["admin"]), url, {"role": "owner"}, follow=True)
    assert b"Only owners can change roles" in forbidden.content
    assert membership(team, "member").role == Membership.Role.ADMIN


def test_another_workspaces_user_sees_and_changes_nothing(team: dict) -> None:
    outsider = signed_in(team["outsider"])
    workspace_id = team["workspace"].pk
    target = membership(team, "member")

    assert outsider.get(reverse("workspace-leave", args=[workspace_id])).status_code == 404
    for url, data in (
        (reverse("workspace-rename", args=[workspace_id]), {"name": "Taken over"}),
        (reverse("workspace-leave", args=[workspace_id]), {}),
        (reverse("workspace-member-role", args=[workspace_id, target.pk]), {"role": "owner"}),
    ):
        assert csrf_post(outsider, url, data).status_code == 404, url
    # A membership of another workspace cannot be reached through one's own workspace's URL either.
    own = team["outsider"].current_workspace
    crossed = reverse("workspace-member-role", args=[own.pk, target.pk])
    assert csrf_post(outsider, crossed, {"role": "member"}).status_code == 404

    team["workspace"].refresh_from_db()
    assert team["workspace"].name == "Team"
    assert {m.user.email: m.role for m in Membership.objects.filter(workspace=team["workspace"])} == {
        "owner@example.com": "owner",
        "admin@example.com": "admin",
        "member@example.com": "member",
    }
    assert "Team" not in outsider.get(reverse("settings")).content.decode()


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_two_owners_demoting_each_other_at_once_leave_one_owner() -> None:
    first, second = user("first@example.com"), user("second@example.com")
    workspace = services.create_workspace(user=first, name="Pair")
    Membership.objects.create(user=second, workspace=workspace, role=Membership.Role.OWNER)
    rows = {who.email: Membership.objects.get(user=who, workspace=workspace) for who in (first, second)}
    start = threading.Barrier(2)
    outcomes: list[str] = []

    def demote(actor: User, target: Membership) -> None:
        try:
            start.wait(timeout=10)
            services.change_member_role(actor=actor, membership=target, role=Membership.Role.MEMBER)
            outcomes.append("demoted")
        except services.WorkspaceRuleError as error:
            outcomes.append(type(error).__name__)
        finally:
            connection.close()

    threads = [
        threading.Thread(target=demote, args=(first, rows["second@example.com"])),
        threading.Thread(target=demote, args=(second, rows["first@example.com"])),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert Workspace.objects.get(pk=workspace.pk).memberships.filter(role="owner").count() == 1
    # Whoever went second was either no longer an owner or would have demoted the last one.
    assert sorted(outcomes) in (["NotAllowed", "demoted"], ["LastOwner", "demoted"])
