"""The dashboard's Users and Tokens pages in headless Chromium against a real Host (no
Runner): an admin adds a user, changes their role and deletes them; a user makes a token
(its secret shown once, and it works), lists and revokes it; an admin manages another
user's tokens; and a user is offered none of the admin's parts, whose calls the Host
refuses to their tab anyway. Pages without streams (Tokens, Docker) follow a change of
role as they read their lists again."""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from playwright.sync_api import Browser, Route, expect

from hakuriver_common.proto.hakuriver.v1 import (
    access_service_pb2 as apb,
    access_service_pb2_grpc,
)
from hakuriver_common.roles import API_TOKEN_PREFIX, Role
from tests.e2e.browser import NO_CLIPBOARD, Dashboard, Tabs, no_problems
from tests.e2e.harness import ProcessCluster, running_cluster

REFRESH_SECONDS = 1
# How long a page without streams takes to show a change: its next read, and the time to
# ask and draw.
REFRESH_WAIT = REFRESH_SECONDS * 1000 + 10_000

# An API call made by the tab itself, with its own token, over the Connect protocol (JSON):
# what any script in the page could send, whatever the page offers.
CALL = """async ([method, body]) => {
    const answer = await fetch(`/hakuriver.v1.AccessService/${method}`, {
        method: "POST",
        headers: {
            "Content-Type": "application/json",
            "Connect-Protocol-Version": "1",
            Authorization: `Bearer ${sessionStorage.getItem("hakuriver.token")}`,
        },
        body: JSON.stringify(body),
    });
    return [answer.status, await answer.json()];
}"""


class Site:
    def __init__(self, cluster: ProcessCluster, browser: Browser) -> None:
        self.cluster = cluster
        self.tabs = Tabs(browser, cluster.dashboard_url)
        self.alice = cluster.add_user("alice")
        self.bob = cluster.add_user("bob")

    def tab(self, token: str | None) -> Dashboard:
        return self.tabs.open(token)

    def users(self) -> dict[str, int]:
        listed = self.cluster.access.ListUsers(apb.ListUsersRequest(), timeout=10).users
        return {user.name: user.role for user in listed}

    def whoami(self, secret: str) -> apb.WhoAmIResponse:
        channel = self.cluster.user_channel(secret)
        stub = access_service_pb2_grpc.AccessServiceStub(channel)
        return stub.WhoAmI(apb.WhoAmIRequest(), timeout=10)


@contextlib.contextmanager
def _site(browser: Browser, root: Path, **cluster: Any) -> Iterator[Site]:
    with running_cluster(root, runner_count=0, **cluster) as running:
        built = Site(running, browser)
        try:
            yield built
        finally:
            built.tabs.close()


@pytest.fixture(scope="module")
def site(browser: Browser, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    with _site(browser, tmp_path_factory.mktemp("dashboard-access")) as built:
        yield built


@pytest.fixture(scope="module")
def refreshing(browser: Browser, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """A cluster whose pages without streams read their lists again every REFRESH_SECONDS
    (dashboard.refresh_seconds), for the tests that wait for those reads; ``site`` keeps
    the default, so its tests show that their pages read again after each action."""
    root = tmp_path_factory.mktemp("dashboard-refreshing")
    refresh = {"dashboard": f"refresh_seconds = {REFRESH_SECONDS}"}
    with _site(browser, root, extra_sections=refresh) as built:
        yield built


def _call(tab: Dashboard, method: str, **body: Any) -> tuple[int, dict[str, Any]]:
    status, answer = tab.page.evaluate(CALL, [method, body])
    return int(status), json.loads(json.dumps(answer))


def test_an_admin_adds_a_user_changes_their_role_and_deletes_them(site: Site) -> None:
    tab = site.tab(site.cluster.admin_token)
    tab.goto("/")
    tab.page.locator("header.bar").get_by_role("link", name="Users", exact=True).click()
    expect(tab.page.get_by_test_id("user-row-alice")).to_be_visible()
    tab.page.get_by_test_id("user-name").fill("gina")
    tab.page.get_by_test_id("user-role").select_option("operator")
    tab.page.get_by_test_id("user-create").click()
    expect(tab.page.get_by_test_id("user-row-gina")).to_be_visible()
    assert site.users()["gina"] == Role.OPERATOR.pb
    tab.page.get_by_test_id("user-set-role-gina").select_option("user")
    expect(tab.page.get_by_test_id("user-done")).to_have_text("gina is now user.")
    assert site.users()["gina"] == Role.USER.pb
    tab.shot("users")
    tab.page.get_by_test_id("user-delete-gina").click()
    expect(tab.page.get_by_test_id("confirm-title")).to_have_text("Delete user gina?")
    tab.page.get_by_test_id("confirm-ok").click()
    expect(tab.page.get_by_test_id("user-row-gina")).to_have_count(0)
    assert "gina" not in site.users()
    no_problems(tab)
    # A bad name is the Host's message, beside the field.
    tab.page.get_by_test_id("user-name").fill("no way")
    tab.page.get_by_test_id("user-create").click()
    expect(tab.page.get_by_test_id("error-name")).to_contain_text("name:")
    assert "no way" not in site.users()


def test_the_last_admin_keeps_their_role_on_the_page_too(site: Site) -> None:
    """The Host refuses to demote the last admin: the page says so, and the select goes
    back to the role the Host holds."""
    tab = site.tab(site.cluster.admin_token)
    tab.goto("/users")
    admin = next(name for name, role in site.users().items() if role == Role.ADMIN.pb)
    select = tab.page.get_by_test_id(f"user-set-role-{admin}")
    select.select_option("user")
    tab.page.get_by_test_id("confirm-ok").click()
    expect(tab.page.get_by_test_id("user-action-error")).to_contain_text(admin)
    expect(select).to_have_value(str(Role.ADMIN.pb))
    assert site.users()[admin] == Role.ADMIN.pb


def test_an_admin_who_makes_themselves_a_user_is_left_no_admin_part(site: Site) -> None:
    """Asked first; then the page and the bar follow the new role at once, without asking
    the Host for what it now refuses."""
    site.cluster.access.CreateUser(
        apb.CreateUserRequest(name="ivy", role=Role.ADMIN.pb), timeout=10
    )
    made = site.cluster.access.CreateToken(apb.CreateTokenRequest(user="ivy"), timeout=10)
    tab = site.tab(made.secret)
    tab.goto("/users")
    tab.page.get_by_test_id("user-set-role-ivy").select_option("user")
    expect(tab.page.get_by_test_id("confirm-title")).to_have_text("Make yourself user?")
    tab.page.get_by_test_id("confirm-ok").click()
    expect(tab.page.get_by_test_id("users-admins-only")).to_be_visible()
    expect(tab.page.get_by_test_id("who")).to_have_text("ivy · user")
    bar = tab.page.locator("header.bar")
    expect(bar.get_by_role("link", name="Users", exact=True)).to_have_count(0)
    assert site.users()["ivy"] == Role.USER.pb
    no_problems(tab)


def test_an_admin_made_a_user_on_the_tokens_page_is_shown_their_own(refreshing: Site) -> None:
    """The page has no stream to end at the change: it asks who the user is as it reads the
    list again (every dashboard.refresh_seconds), before asking for everybody's tokens,
    which the Host would now refuse. The change is made as the page asks who the user is,
    at the start of a read: one between its question and the list would be refused whatever
    their order (and the page would ask again, checkSession)."""
    site = refreshing
    access = site.cluster.access
    access.CreateUser(apb.CreateUserRequest(name="jack", role=Role.ADMIN.pb), timeout=10)
    made = access.CreateToken(apb.CreateTokenRequest(user="jack"), timeout=10)
    tab = site.tab(made.secret)
    tab.goto("/tokens?user=*")
    expect(tab.page.get_by_role("heading", name="Everybody's tokens")).to_be_visible()
    expect(tab.page.get_by_test_id("token-whose")).to_be_visible()
    changed: list[bool] = []

    def change_as_asked(route: Route) -> None:
        if not changed:
            access.SetUserRole(apb.SetUserRoleRequest(name="jack", role=Role.USER.pb), timeout=10)
            changed.append(True)
        route.continue_()

    tab.page.route("**/hakuriver.v1.AccessService/WhoAmI", change_as_asked)
    expect(tab.page.get_by_test_id("who")).to_have_text("jack · user", timeout=REFRESH_WAIT)
    expect(tab.page.get_by_role("heading", name="Your tokens")).to_be_visible()
    expect(tab.page.get_by_test_id("token-whose")).to_have_count(0)
    expect(tab.page.get_by_test_id(f"token-row-{made.token.token_id}")).to_be_visible()
    no_problems(tab)


@pytest.mark.docker
def test_a_page_without_streams_follows_a_role_change_as_it_refreshes(
    docker_ready: None, refreshing: Site
) -> None:
    """The Docker page has no stream for the Host to end at a change of role: it asks who
    the user is as it reads its lists again (every dashboard.refresh_seconds), so an
    operator made a user is no longer offered the environments' management, and made an
    operator again is."""
    access = refreshing.cluster.access
    access.CreateUser(apb.CreateUserRequest(name="hana", role=Role.OPERATOR.pb), timeout=10)
    token = access.CreateToken(apb.CreateTokenRequest(user="hana"), timeout=10).secret
    tab = refreshing.tab(token)
    tab.goto("/docker")
    expect(tab.page.get_by_test_id("env-name")).to_be_visible()
    for role, offered in ((Role.USER, 0), (Role.OPERATOR, 1)):
        access.SetUserRole(apb.SetUserRoleRequest(name="hana", role=role.pb), timeout=10)
        who = tab.page.get_by_test_id("who")
        expect(who).to_have_text(f"hana · {role.value}", timeout=REFRESH_WAIT)
        expect(tab.page.get_by_test_id("env-name")).to_have_count(offered)
    no_problems(tab)


def test_an_admin_made_a_user_while_the_tab_is_hidden_is_not_refused(site: Site) -> None:
    """Shown again, the tab asks who the user is, and the Users page reads its list again:
    the page waits for that answer rather than ask for the list under a role gone."""
    access = site.cluster.access
    access.CreateUser(apb.CreateUserRequest(name="kim", role=Role.ADMIN.pb), timeout=10)
    made = access.CreateToken(apb.CreateTokenRequest(user="kim"), timeout=10)
    tab = site.tab(made.secret)
    tab.goto("/users")
    expect(tab.page.get_by_test_id("user-row-kim")).to_be_visible()
    tab.show(False)
    access.SetUserRole(apb.SetUserRoleRequest(name="kim", role=Role.USER.pb), timeout=10)
    tab.show(True)
    expect(tab.page.get_by_test_id("users-admins-only")).to_be_visible()
    expect(tab.page.get_by_test_id("who")).to_have_text("kim · user")
    no_problems(tab)


def test_a_user_makes_a_token_sees_its_secret_once_and_revokes_it(site: Site) -> None:
    tab = site.tab(site.alice)
    tab.page.add_init_script(NO_CLIPBOARD)
    tab.goto("/")
    tab.page.locator("header.bar").get_by_role("link", name="Tokens", exact=True).click()
    tab.page.get_by_test_id("token-description").fill("laptop")
    tab.page.get_by_test_id("token-create").click()
    shown = tab.page.get_by_test_id("token-secret")
    expect(shown).to_have_text(re.compile(f"^{API_TOKEN_PREFIX}"))
    secret = shown.inner_text()
    # Copied even by a page with no clipboard API (plain HTTP from another machine).
    tab.page.get_by_test_id("token-secret-copy").click()
    expect(tab.page.get_by_test_id("token-secret-copy")).to_have_text("Copied")
    assert tab.page.evaluate("window.copied") == [secret]
    who = site.whoami(secret)
    assert who.user == "alice"
    row = tab.page.get_by_test_id(f"token-row-{who.token_id}")
    expect(row).to_contain_text("laptop")
    expect(row).to_contain_text("active")
    tab.shot("tokens")
    tab.page.reload()  # shown once: gone with the page
    expect(row).to_be_visible()
    expect(shown).to_have_count(0)
    tab.page.get_by_test_id(f"token-revoke-{who.token_id}").click()
    expect(tab.page.get_by_test_id("confirm-title")).to_have_text(
        f"Revoke API token {who.token_id}?"
    )
    tab.page.get_by_test_id("confirm-ok").click()
    expect(row).to_have_count(0)
    with pytest.raises(grpc.RpcError) as refused:
        site.whoami(secret)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    no_problems(tab)
    # An expiry the Host refuses: its message, beside the field; no token made.
    tab.page.get_by_test_id("token-expires").fill("2020-01-01T00:00")
    tab.page.get_by_test_id("token-create").click()
    expect(tab.page.get_by_test_id("error-expires_at")).to_contain_text("expires_at:")
    listed = site.cluster.access.ListTokens(apb.ListTokensRequest(user="alice"), timeout=10)
    assert len(listed.tokens) == 1  # the tab's


def test_revoking_the_tabs_own_token_signs_it_out(site: Site) -> None:
    access = site.cluster.access
    access.CreateUser(apb.CreateUserRequest(name="lou", role=Role.USER.pb), timeout=10)
    made = access.CreateToken(apb.CreateTokenRequest(user="lou"), timeout=10)
    tab = site.tab(made.secret)
    tab.goto("/tokens")
    row = tab.page.get_by_test_id(f"token-row-{made.token.token_id}")
    expect(row).to_contain_text("this tab")
    row.get_by_role("button", name="Revoke").click()
    expect(tab.page.get_by_test_id("confirm-detail")).to_contain_text("the tab signs out")
    tab.page.get_by_test_id("confirm-ok").click()
    expect(tab.page.get_by_test_id("signin-ended")).to_contain_text(
        f"API token {made.token.token_id} was revoked"
    )
    assert tab.page.evaluate("sessionStorage.getItem('hakuriver.token')") is None


def test_an_admin_makes_and_revokes_another_users_tokens(site: Site) -> None:
    tab = site.tab(site.cluster.admin_token)
    tab.goto("/users")
    tab.page.get_by_test_id("user-row-bob").get_by_role("link", name="tokens").click()
    expect(tab.page.get_by_role("heading", name="bob's tokens")).to_be_visible()
    tab.page.get_by_test_id("token-user").fill("bob")
    tab.page.get_by_test_id("token-create").click()
    secret = tab.page.get_by_test_id("token-secret")
    expect(secret).to_have_text(re.compile(f"^{API_TOKEN_PREFIX}"))
    who = site.whoami(secret.inner_text())
    assert who.user == "bob"
    tab.page.get_by_test_id(f"token-revoke-{who.token_id}").click()
    tab.page.get_by_test_id("confirm-ok").click()
    expect(tab.page.get_by_test_id(f"token-row-{who.token_id}")).to_have_count(0)
    tab.page.get_by_test_id("token-inactive").check()
    expect(tab.page.get_by_test_id(f"token-row-{who.token_id}")).to_contain_text("revoked")
    no_problems(tab)


def test_a_user_is_offered_no_admin_part_and_the_host_refuses_them(site: Site) -> None:
    """No Users link nor page, no other users' tokens: and the tab's own calls for them,
    made with its token whatever the page offers, are refused by the Host."""
    bobs = site.cluster.access.ListTokens(apb.ListTokensRequest(user="bob"), timeout=10).tokens
    tab = site.tab(site.alice)
    tab.goto("/tokens?user=bob")
    expect(tab.page.get_by_role("heading", name="Your tokens")).to_be_visible()
    expect(tab.page.get_by_test_id("token-table")).not_to_contain_text("bob")
    for admins_only in ("token-user", "token-whose"):
        expect(tab.page.get_by_test_id(admins_only)).to_have_count(0)
    bar = tab.page.locator("header.bar")
    expect(bar.get_by_role("link", name="Tokens", exact=True)).to_be_visible()
    expect(bar.get_by_role("link", name="Users", exact=True)).to_have_count(0)
    tab.goto("/users")
    expect(tab.page.get_by_test_id("users-admins-only")).to_be_visible()
    for admins_only in ("user-create", "user-table"):
        expect(tab.page.get_by_test_id(admins_only)).to_have_count(0)
    no_problems(tab)  # the pages asked the Host for nothing it refuses
    refusals = {
        "ListUsers": {},
        "CreateUser": {"name": "mallory", "role": "ROLE_ADMIN"},
        "SetUserRole": {"name": "alice", "role": "ROLE_ADMIN"},
        "DeleteUser": {"name": "bob"},
        "ListTokens": {"user": "*"},
    }
    for method, body in refusals.items():
        status, answer = _call(tab, method, **body)
        assert (status, answer["code"]) == (403, "permission_denied"), (method, answer)
    # Another user's tokens are, to a user, ones that do not exist.
    hidden = {
        "ListTokens": {"user": "bob"},
        "CreateToken": {"user": "bob"},
        "RevokeToken": {"tokenId": bobs[0].token_id},
    }
    for method, body in hidden.items():
        status, answer = _call(tab, method, **body)
        assert (status, answer["code"]) == (404, "not_found"), (method, answer)
    still = site.cluster.access.ListTokens(apb.ListTokensRequest(user="bob"), timeout=10).tokens
    assert [token.token_id for token in still] == [token.token_id for token in bobs]
    assert site.users()["alice"] == Role.USER.pb
    assert "mallory" not in site.users()
