"""Every site page: one h1, a label for every field, CSRF in every POST form, nothing loaded from elsewhere."""

from __future__ import annotations

import re
from html.parser import HTMLParser

from django.urls import reverse

from accounts import services
from accounts.models import Membership, User
from apikeys.services import create_api_key


class PageAudit(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.h1 = 0
        self.labels: set[str] = set()
        self.fields: list[str] = []
        self.forms: list[dict] = []
        self.external: list[str] = []
        self.lang = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "html":
            self.lang = attributes.get("lang")
        if tag == "h1":
            self.h1 += 1
        if tag == "label" and attributes.get("for"):
            self.labels.add(attributes["for"])
        if tag in ("input", "select", "textarea") and attributes.get("type") not in ("hidden", "submit"):
            self.fields.append(attributes.get("id") or f"<{tag} name={attributes.get('name')} without id>")
        if tag == "form":
            self.forms.append({"method": (attributes.get("method") or "get").lower(), "csrf": False})
        if tag == "input" and attributes.get("name") == "csrfmiddlewaretoken" and self.forms:
            self.forms[-1]["csrf"] = True
        for name in ("src", "href", "action"):
            value = attributes.get(name) or ""
            if re.match(r"^(https?:)?//", value):
                self.external.append(value)


def client_pages(client) -> list[str]:
    """Signs `client` in as a workspace owner with a key and a BYOK key; the pages they can see."""
    owner = User.objects.create_user("owner@example.com")
    member = User.objects.create_user("member@example.com")
    workspace = services.create_workspace(user=owner, name="Team")
    target = Membership.objects.create(user=member, workspace=workspace, role=Membership.Role.MEMBER)
    services.set_openrouter_key(user=owner, key="sk-or-v1-abcdef0123456789-1234")
    key = create_api_key(user=owner, name="k").key
    client.force_login(owner)
    return [
        reverse("settings"),
        reverse("password_change"),
        reverse("apikey-list"),
        reverse("apikey-revoke", args=[key.pk]),
        reverse("workspace-detail", args=[workspace.pk]),
        reverse("workspace-member-remove", args=[workspace.pk, target.pk]),
        reverse("workspace-leave", args=[workspace.pk]),
        reverse("openrouter-key-remove"),
        reverse("email-change"),
        reverse("usage"),
    ]


def audit(body: str) -> PageAudit:
    parser = PageAudit()
    parser.feed(body)
    return parser


def test_every_page_is_labelled_protected_and_local(client, db, fake_upstream) -> None:
    anonymous = (reverse("login"), reverse("signup"), reverse("password_reset"), reverse("password_reset_done"))
    responses = {url: client.get(url) for url in anonymous}
    responses |= {url: client.get(url) for url in client_pages(client)}
    responses["key reveal"] = client.post(reverse("apikey-create"), {"name": "audit"})

    for url, response in responses.items():
        assert response.status_code == 200, url
        page = audit(response.content.decode())
        assert page.lang == "en", url
        assert page.h1 == 1, url
        unlabelled = [field for field in page.fields if field not in page.labels]
        assert unlabelled == [], url
        assert all(form["csrf"] for form in page.forms if form["method"] == "post"), url
        assert page.external == [], url
