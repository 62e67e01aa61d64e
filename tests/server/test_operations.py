"""Every operation of the wire table over HTTP: reachable, and authorised exactly as designed.

``MATRIX`` is the one declarative table of QUALITY.md's authorization matrix: for every
operation of :data:`kiiaren_core.wire.OPERATIONS`, the status each caller gets, in the order
of :data:`ROLES`:

* ``anonymous``: no token;
* ``outsider``: signed in, not a member of the workspace;
* ``member``, ``admin``, ``owner``: the workspace's members with that role;
* ``foreign_owner``: the owner of *another* workspace (seeded with canary strings).

and how to build the request (targets that an operation destroys or changes for good are
made fresh for each cell). An operation missing from the table fails the test, and no answer
to anyone but the foreign owner may contain a canary string of the foreign workspace.

``test_operation_is_reachable`` is the smoke test: each operation answered with its declared
success status by the first caller the table says may call it.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from kiiaren_core.models import ChannelScope, PresenceStatus, Role, Workspace
from kiiaren_core.protocols import BackendProvider
from kiiaren_core.testing.base import unique_email
from kiiaren_core.wire import OPERATIONS, Operation
from tests.server.conftest import PASSWORD, LiveServer

pytestmark = pytest.mark.anyio

ROLES: Final = ("anonymous", "outsider", "member", "admin", "owner", "foreign_owner")
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(64))

Expect = tuple[int, int, int, int, int, int]
"""Statuses for (anonymous, outsider, member, admin, owner, foreign_owner)."""

# The common shapes of a row.
MEMBER_READ: Final[Expect] = (401, 404, 200, 200, 200, 404)
MEMBER_LIST: Final[Expect] = (401, 200, 200, 200, 200, 200)  # outsiders see []
MEMBER_CREATE: Final[Expect] = (401, 404, 201, 201, 201, 404)
MEMBER_WRITE: Final[Expect] = (401, 404, 200, 200, 200, 404)
MEMBER_DELETE: Final[Expect] = (401, 404, 204, 204, 204, 404)
ADMIN_READ: Final[Expect] = (401, 404, 403, 200, 200, 404)
ADMIN_LIST: Final[Expect] = (401, 200, 403, 200, 200, 200)
ADMIN_CREATE: Final[Expect] = (401, 404, 403, 201, 201, 404)
ADMIN_WRITE: Final[Expect] = (401, 404, 403, 200, 200, 404)
ADMIN_DELETE: Final[Expect] = (401, 404, 403, 204, 204, 404)
SIGNED_IN: Final[Expect] = (401, 200, 200, 200, 200, 200)
SIGNED_IN_NO_CONTENT: Final[Expect] = (401, 204, 204, 204, 204, 204)
SIGNED_IN_CREATE: Final[Expect] = (401, 201, 201, 201, 201, 201)
ANYONE: Final[Expect] = (200, 200, 200, 200, 200, 200)
MANAGED_ONLY: Final[Expect] = (401, 403, 403, 403, 403, 403)


# --- the world: users, a workspace with one of everything, a foreign workspace --------------


@dataclass
class Actor:
    """One caller: a signed-in view (None for anonymous) and its membership of W."""

    role: str
    view: BackendProvider | None = None
    email: str | None = None
    user_id: str | None = None
    member_id: str | None = None

    @property
    def token(self) -> str | None:
        if self.view is None:
            return None
        tokens = self.view.auth.tokens
        assert tokens is not None
        return tokens.access_token


@dataclass
class Fresh:
    """A workspace made for one cell, with the same roles as W."""

    workspace: Workspace
    member_ids: dict[str, str]


@dataclass
class World:
    server: LiveServer
    canary: str
    actors: dict[str, Actor]
    ids: dict[str, str] = field(default_factory=dict)
    invite_code: str = ""

    @property
    def provider(self) -> BackendProvider:
        return self.server.provider

    def view(self, role: str) -> BackendProvider:
        view = self.actors[role].view
        assert view is not None
        return view

    @property
    def owner(self) -> BackendProvider:
        return self.view("owner")

    async def user(self, name: str = "Someone") -> tuple[BackendProvider, str]:
        """A new signed-in user (view, email), made through the provider."""
        view = self.provider.with_session(None)
        email = unique_email(name.lower())
        await view.auth.sign_up_with_password(email, PASSWORD, name=name)
        return view, email

    async def fresh_workspace(self) -> Fresh:
        """A workspace of the owner joined by the member and the admin (admin promoted)."""
        owner = self.owner
        workspace = await owner.persistence.workspace.create(f"fresh-{secrets.token_hex(3)}")
        assert workspace.join_code is not None
        ids: dict[str, str] = {}
        for role in ("member", "admin"):
            joined = await self.view(role).persistence.workspace.join(
                workspace.id, join_code=workspace.join_code
            )
            ids[role] = joined.id
        await owner.persistence.member.update_role(ids["admin"], Role.ADMIN)
        current = await owner.persistence.member.get_current(workspace.id)
        assert current is not None
        ids["owner"] = current.id
        return Fresh(workspace, ids)

    async def joiner(self) -> str:
        """The member id of a new plain member of W."""
        view, _ = await self.user("Joiner")
        workspace = await self.owner.persistence.workspace.get(self.ids["workspace"])
        assert workspace is not None
        joined = await view.persistence.workspace.join(workspace.id, join_code=workspace.join_code)
        return joined.id

    async def channel(self) -> str:
        return (
            await self.owner.persistence.channel.create(
                self.ids["workspace"], f"c-{secrets.token_hex(4)}"
            )
        ).id

    async def message(self) -> str:
        return (
            await self.owner.persistence.message.create(
                self.ids["workspace"], body="to delete", channel_id=self.ids["channel"]
            )
        ).id

    async def doc(self) -> str:
        return (await self.owner.persistence.doc.create(self.ids["workspace"], title="doc")).id

    async def board(self) -> str:
        return (await self.owner.persistence.board.create(self.ids["workspace"], title="b")).id

    async def invite(self, workspace_id: str | None = None) -> tuple[str, str]:
        created = await self.owner.persistence.invite.create(workspace_id or self.ids["workspace"])
        return created.id, created.code

    async def domain(self) -> str:
        name = f"d{secrets.token_hex(4)}.example.com"
        return (await self.owner.persistence.domain.add(self.ids["workspace"], name)).id

    async def file(self) -> str:
        stored = await self.owner.storage.upload(
            self.ids["workspace"], PNG, content_type="image/png", filename="picture.png"
        )
        return stored.id

    async def session(self, role: str) -> tuple[str, str, str]:
        """A second session of ``role``'s account: (access token, refresh token, session id)."""
        email = self.actors[role].email if role != "anonymous" else self.actors["owner"].email
        assert email is not None
        view = self.provider.with_session(None)
        session = await view.auth.sign_in_with_password(email, PASSWORD)
        tokens = view.auth.tokens
        assert tokens is not None
        assert tokens.refresh_token is not None
        return tokens.access_token, tokens.refresh_token, session.session_id

    async def throwaway_token(self, role: str) -> str | None:
        """The token of a new account for ``role`` (None for anonymous), for operations that
        end the caller's other sessions."""
        if role == "anonymous":
            return None
        view, _ = await self.user("Throwaway")
        assert view.auth.tokens is not None
        return view.auth.tokens.access_token


async def build_world(server: LiveServer) -> World:
    canary = "zq" + secrets.token_hex(4)
    world = World(server, canary, {role: Actor(role) for role in ROLES})
    for role in ROLES[1:]:
        name = canary if role == "foreign_owner" else role.title()
        view, email = await world.user(name)
        identity = await view.auth.get_current_user()
        assert identity is not None
        world.actors[role] = Actor(role, view, email, identity.id)
    owner = world.owner
    workspace = await owner.persistence.workspace.create(f"w-{secrets.token_hex(3)}")
    assert workspace.join_code is not None
    ids = world.ids
    ids["workspace"] = workspace.id
    for role in ("member", "admin"):
        joined = await world.view(role).persistence.workspace.join(
            workspace.id, join_code=workspace.join_code
        )
        world.actors[role].member_id = joined.id
    admin_id = world.actors["admin"].member_id
    assert admin_id is not None
    await owner.persistence.member.update_role(admin_id, Role.ADMIN)
    current = await owner.persistence.member.get_current(workspace.id)
    assert current is not None
    world.actors["owner"].member_id = current.id
    ids["channel"] = (await owner.persistence.channel.get(workspace.id))[0].id
    ids["message"] = (
        await owner.persistence.message.create(
            workspace.id, body="hello", channel_id=ids["channel"]
        )
    ).id
    ids["doc"] = await world.doc()
    ids["board"] = await world.board()
    _, world.invite_code = await world.invite()
    ids["domain"] = await world.domain()
    ids["file"] = await world.file()
    member_id = world.actors["member"].member_id
    assert member_id is not None
    ids["conversation"] = (
        await owner.persistence.conversation.create_or_get(workspace.id, current.id, member_id)
    ).id
    await seed_foreign(world)
    return world


async def seed_foreign(world: World) -> None:
    """The foreign owner's workspace, every name and text in it carrying the canary."""
    foreign = world.view("foreign_owner")
    canary = world.canary
    workspace = await foreign.persistence.workspace.create(canary)
    channel = await foreign.persistence.channel.create(workspace.id, canary)
    await foreign.persistence.message.create(
        workspace.id, body=f"secret {canary}", channel_id=channel.id
    )
    await foreign.persistence.doc.create(workspace.id, title=canary)
    await foreign.persistence.board.create(workspace.id, title=canary)
    await foreign.persistence.invite.create(workspace.id, scope=ChannelScope(channel_id=channel.id))
    await foreign.persistence.domain.add(workspace.id, f"{canary}.example.com")
    await foreign.storage.upload(workspace.id, PNG, content_type="image/png", filename=canary)
    await foreign.events.set_presence(workspace.id, PresenceStatus.ONLINE)
    world.ids["foreign_workspace"] = workspace.id


@pytest.fixture(scope="module")
async def world(live_server: LiveServer) -> World:
    return await build_world(live_server)


# --- one request ------------------------------------------------------------------------------


@dataclass
class Call:
    """How to call an operation: path parameters, JSON body, query, and a token that
    replaces the caller's own (``token=None`` keeps the caller's)."""

    path: dict[str, str] = field(default_factory=dict)
    json: Any = None
    query: dict[str, str] | None = None
    token: str | None = None
    anonymous: bool = False


Builder = Callable[["World", str], Awaitable[Call]]


@dataclass(frozen=True)
class Case:
    expect: Expect
    build: Builder


def W(**extra: str) -> Callable[[World], dict[str, str]]:
    """Path parameters ``workspace_id`` plus world ids named by ``extra`` (param -> id key)."""
    return lambda w: {"workspace_id": w.ids["workspace"], **{k: w.ids[v] for k, v in extra.items()}}


def ids(**params: str) -> Callable[[World], dict[str, str]]:
    """Path parameters from world ids (param -> id key)."""
    return lambda w: {k: w.ids[v] for k, v in params.items()}


def static(
    expect: Expect,
    path: Callable[[World], dict[str, str]] = lambda w: {},
    json: Callable[[World], Any] | Any = None,
    query: Callable[[World], dict[str, str]] | None = None,
) -> Case:
    """A case whose request only names the world's shared targets."""

    async def build(w: World, role: str) -> Call:
        body = json(w) if callable(json) else json
        return Call(path(w), body, query(w) if query else None)

    return Case(expect, build)


def fresh(expect: Expect, build: Builder) -> Case:
    return Case(expect, build)


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(3)}"


# --- builders of the cells that need fresh targets ---------------------------------------------


async def _sign_in(w: World, role: str) -> Call:
    email = w.actors[role].email or w.actors["owner"].email
    return Call(json={"email": email, "password": PASSWORD})


async def _refresh(w: World, role: str) -> Call:
    _, refresh, _ = await w.session(role)
    return Call(json={"refresh_token": refresh})


async def _sign_out(w: World, role: str) -> Call:
    if role == "anonymous":
        return Call(anonymous=True)
    access, _, _ = await w.session(role)
    return Call(token=access)


async def _revoke_session(w: World, role: str) -> Call:
    _, _, session_id = await w.session(role)
    return Call(path={"session_id": session_id})


async def _throwaway(w: World, role: str) -> Call:
    token = await w.throwaway_token(role)
    return Call(token=token, anonymous=token is None)


async def _change_password(w: World, role: str) -> Call:
    call = await _throwaway(w, role)
    call.json = {"current_password": PASSWORD, "new_password": "Another-password-2"}
    return call


async def _verify_email(w: World, role: str) -> Call:
    view = w.view("owner" if role == "anonymous" else role)
    await view.auth.request_email_verification()
    email = w.actors["owner" if role == "anonymous" else role].email
    assert email is not None
    return Call(json={"token": w.server.outbox.token_for(email)})


async def _reset_password(w: World, role: str) -> Call:
    view, email = await w.user("Forgetful")
    await view.auth.request_password_reset(email)
    token = await w.server.outbox.wait_for_token(email)
    return Call(json={"token": token, "new_password": "Reset-pass-3"})


async def _oauth_callback(w: World, role: str) -> Call:
    start = await w.provider.with_session(None).auth.sign_in_with_oauth("github")
    async with httpx.AsyncClient() as http:
        redirect = await http.get(start.url)
    query = parse_qs(urlsplit(redirect.headers["location"]).query)
    return Call(
        path={"provider": "github"}, query={"code": query["code"][0], "state": query["state"][0]}
    )


async def _workspace_remove(w: World, role: str) -> Call:
    return Call(path={"workspace_id": (await w.fresh_workspace()).workspace.id})


async def _workspace_join(w: World, role: str) -> Call:
    workspace = (await w.fresh_workspace()).workspace
    return Call(path={"workspace_id": workspace.id}, json={"join_code": workspace.join_code})


async def _transfer(w: World, role: str) -> Call:
    made = await w.fresh_workspace()
    return Call(
        path={"workspace_id": made.workspace.id}, json={"member_id": made.member_ids["admin"]}
    )


async def _channel_update(w: World, role: str) -> Call:
    return Call(path={"channel_id": await w.channel()}, json={"name": unique("renamed")})


async def _channel_remove(w: World, role: str) -> Call:
    return Call(path={"channel_id": await w.channel()})


async def _member_role(w: World, role: str) -> Call:
    return Call(path={"member_id": await w.joiner()}, json={"role": "admin"})


async def _member_remove(w: World, role: str) -> Call:
    return Call(path={"member_id": await w.joiner()})


async def _message_remove(w: World, role: str) -> Call:
    return Call(path={"message_id": await w.message()})


async def _conversation(w: World, role: str) -> Call:
    me = w.actors[role].member_id or w.actors["member"].member_id
    other = w.actors["member" if role == "owner" else "owner"].member_id
    return Call(
        path={"workspace_id": w.ids["workspace"]},
        json={"member_one_id": me, "member_two_id": other},
    )


async def _doc_archive(w: World, role: str) -> Call:
    return Call(path={"doc_id": await w.doc()})


async def _doc_restore(w: World, role: str) -> Call:
    doc_id = await w.doc()
    await w.owner.persistence.doc.archive(doc_id)
    return Call(path={"doc_id": doc_id})


async def _board_remove(w: World, role: str) -> Call:
    return Call(path={"board_id": await w.board()})


async def _invite_revoke(w: World, role: str) -> Call:
    invite_id, _ = await w.invite()
    return Call(path={"invite_id": invite_id})


async def _invite_redeem(w: World, role: str) -> Call:
    made = await w.fresh_workspace()
    _, code = await w.invite(made.workspace.id)
    return Call(json={"code": code})


async def _domain_remove(w: World, role: str) -> Call:
    return Call(path={"domain_id": await w.domain()})


async def _file_remove(w: World, role: str) -> Call:
    return Call(path={"storage_id": await w.file()})


SIGN_UP = {"password": PASSWORD, "name": "New"}
NOW = "2026-01-01T00:00:00Z"

MATRIX: Final[dict[str, Case]] = {
    # --- auth: the caller's own account; session-ending calls use sessions of their own ---
    "auth.sign_up": static(
        (201,) * 6,
        json=lambda w: {**SIGN_UP, "email": unique_email("new")},
    ),
    "auth.sign_in": fresh(ANYONE, _sign_in),
    "auth.refresh": fresh(ANYONE, _refresh),
    "auth.sign_out": fresh(SIGNED_IN_NO_CONTENT, _sign_out),
    "auth.session": static(SIGNED_IN),
    "auth.user": static(SIGNED_IN),
    "auth.sessions": static(SIGNED_IN),
    "auth.revoke_session": fresh(SIGNED_IN_NO_CONTENT, _revoke_session),
    "auth.revoke_other_sessions": fresh(SIGNED_IN, _throwaway),
    "auth.revoke_all_sessions": fresh(SIGNED_IN, _throwaway),
    "auth.change_password": fresh(SIGNED_IN_NO_CONTENT, _change_password),
    "auth.request_email_verification": static(SIGNED_IN_NO_CONTENT),
    "auth.verify_email": fresh(ANYONE, _verify_email),
    "auth.request_password_reset": static(
        (202,) * 6,
        json=lambda w: {"email": unique_email("nobody")},
    ),
    "auth.reset_password": fresh((204,) * 6, _reset_password),
    "auth.oauth_start": static(ANYONE, path=lambda w: {"provider": "github"}),
    "auth.oauth_callback": fresh(ANYONE, _oauth_callback),
    # --- workspaces ---
    "workspace.create": static(SIGNED_IN_CREATE, json=lambda w: {"name": unique("ws")}),
    "workspace.list": static(ANYONE),
    "workspace.get": static(MEMBER_READ, W()),
    "workspace.info": static(SIGNED_IN, W()),
    "workspace.update": static(ADMIN_WRITE, W(), json=lambda w: {"name": unique("w")}),
    "workspace.remove": fresh((401, 404, 403, 403, 204, 404), _workspace_remove),
    "workspace.join": fresh((401, 200, 409, 409, 409, 200), _workspace_join),
    "workspace.regenerate_join_code": static(ADMIN_WRITE, W()),
    "workspace.transfer_ownership": fresh((401, 404, 403, 403, 200, 404), _transfer),
    # --- channels ---
    "channel.create": static(ADMIN_CREATE, W(), json=lambda w: {"name": unique("c")}),
    "channel.list": static(MEMBER_LIST, W()),
    "channel.get": static(MEMBER_READ, ids(channel_id="channel")),
    "channel.update": fresh(ADMIN_WRITE, _channel_update),
    "channel.remove": fresh(ADMIN_DELETE, _channel_remove),
    # --- members ---
    "member.list": static(MEMBER_LIST, W()),
    "member.current": static(MEMBER_READ, W()),
    "member.get": static(MEMBER_READ, lambda w: {"member_id": w.actors["owner"].member_id or ""}),
    "member.update_role": fresh(ADMIN_WRITE, _member_role),
    "member.remove": fresh(ADMIN_DELETE, _member_remove),
    # --- messages ---
    "message.create": static(
        MEMBER_CREATE, W(), json=lambda w: {"body": "hi", "channel_id": w.ids["channel"]}
    ),
    "message.list": static(MEMBER_LIST, query=lambda w: {"channel_id": w.ids["channel"]}),
    "message.get": static(MEMBER_READ, ids(message_id="message")),
    "message.update": static(
        (401, 404, 403, 403, 200, 404), ids(message_id="message"), json={"body": "edited"}
    ),
    "message.remove": fresh(ADMIN_DELETE, _message_remove),
    "reaction.toggle": static(MEMBER_WRITE, ids(message_id="message"), json={"value": "+1"}),
    # --- conversations (participants only) ---
    "conversation.create_or_get": fresh(MEMBER_WRITE, _conversation),
    "conversation.list": static(MEMBER_LIST, W()),
    "conversation.get": static((401, 404, 200, 404, 200, 404), ids(conversation_id="conversation")),
    # --- docs (any member writes) ---
    "doc.create": static(MEMBER_CREATE, W(), json={"title": "new doc"}),
    "doc.list": static(MEMBER_LIST, W()),
    "doc.list_archived": static(MEMBER_LIST, W()),
    "doc.search": static(MEMBER_LIST, W(), query=lambda w: {"query": "doc"}),
    "doc.get": static(MEMBER_READ, ids(doc_id="doc")),
    "doc.update": static(MEMBER_WRITE, ids(doc_id="doc"), json={"content": "text"}),
    "doc.archive": fresh(MEMBER_WRITE, _doc_archive),
    "doc.restore": fresh(MEMBER_WRITE, _doc_restore),
    "doc.remove": fresh(MEMBER_DELETE, _doc_archive),
    # --- boards ---
    "board.create": static(MEMBER_CREATE, W(), json={"title": "new board"}),
    "board.list": static(MEMBER_LIST, W()),
    "board.search": static(MEMBER_LIST, W(), query=lambda w: {"query": "b"}),
    "board.get": static(MEMBER_READ, ids(board_id="board")),
    "board.update": static(MEMBER_WRITE, ids(board_id="board"), json={"excalidraw_data": "{}"}),
    "board.remove": fresh(MEMBER_DELETE, _board_remove),
    # --- invites (admins manage; previews are public) ---
    "invite.create": static(ADMIN_CREATE, W(), json={}),
    "invite.list": static(ADMIN_LIST, W()),
    "invite.revoke": fresh(ADMIN_DELETE, _invite_revoke),
    "invite.preview": static(ANYONE, json=lambda w: {"code": w.invite_code}),
    "invite.validate": static(ANYONE, json=lambda w: {"code": w.invite_code}),
    "invite.redeem": fresh((401, 200, 409, 409, 409, 200), _invite_redeem),
    # --- domains (admins) ---
    "domain.add": static(
        ADMIN_CREATE, W(), json=lambda w: {"domain": f"{unique('x')}.example.org"}
    ),
    "domain.list": static(ADMIN_LIST, W()),
    "domain.check_email": static(ANYONE, W(), json={"email": "someone@example.com"}),
    "domain.get": static((401, 404, 404, 200, 200, 404), ids(domain_id="domain")),
    "domain.instructions": static(ADMIN_READ, ids(domain_id="domain")),
    # The loopback resolver has no record: verification runs and reports the failure.
    "domain.verify": static(ADMIN_WRITE, ids(domain_id="domain")),
    "domain.remove": fresh(ADMIN_DELETE, _domain_remove),
    # --- files (members read; the uploader or an admin deletes) ---
    "storage.upload_ticket": static(
        MEMBER_CREATE, W(), json={"content_type": "image/png", "size": 10}
    ),
    "storage.metadata": static(MEMBER_READ, ids(storage_id="file")),
    "storage.url": static(MEMBER_READ, ids(storage_id="file")),
    "storage.remove": fresh(ADMIN_DELETE, _file_remove),
    # --- events ---
    "events.position": static(MEMBER_READ, W()),
    "events.emit": static(MEMBER_CREATE, W(), json={"type": "test.ping", "payload": {"n": 1}}),
    "events.set_presence": static(MEMBER_DELETE, W(), json={"status": "online"}),
    "events.presence": static(MEMBER_READ, W()),
    # --- extension hooks: silent no-ops, or managed-only ---
    "extensions.audit.log": static(
        SIGNED_IN_NO_CONTENT,
        json={
            "action": "x.y",
            "actor_id": None,
            "resource_type": "r",
            "resource_id": "1",
            "workspace_id": "w",
            "timestamp": NOW,
        },
    ),
    "extensions.audit.query": static(
        MANAGED_ONLY, json={"workspace_id": "w", "start_date": NOW, "end_date": NOW}
    ),
    "extensions.search.index": static(
        SIGNED_IN_NO_CONTENT,
        json={"document_type": "message", "document_id": "1", "workspace_id": "w", "content": "c"},
    ),
    "extensions.search.search": static(MANAGED_ONLY, json={"query": "q", "workspace_id": "w"}),
    "extensions.ai.process": static(
        MANAGED_ONLY, json={"type": "completion", "workspace_id": "w", "context": "hi"}
    ),
    "extensions.ai.store_memory": static(
        SIGNED_IN_NO_CONTENT, json={"agent_id": "a", "workspace_id": "w", "key": "k", "value": "v"}
    ),
    "extensions.notification.send_push": static(
        SIGNED_IN_NO_CONTENT, json={"user_id": "u", "title": "t", "body": "b"}
    ),
    "extensions.notification.register_device": static(
        SIGNED_IN_NO_CONTENT, json={"user_id": "u", "token": "t", "platform": "ios"}
    ),
    "extensions.kms.encrypt": static(MANAGED_ONLY, json={"data": "d"}),
    "extensions.kms.decrypt": static(MANAGED_ONLY, json={"ciphertext": "c"}),
    "extensions.kms.rotate_key": static(MANAGED_ONLY, json={"key_id": "k"}),
}


async def perform(client: httpx.AsyncClient, w: World, op: Operation, role: str) -> httpx.Response:
    """Build the cell's request and send it as ``role``."""
    call = await MATRIX[op.name].build(w, role)
    token = None if call.anonymous else (call.token or w.actors[role].token)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    body = call.json if call.json is not None or op.body is None else {}
    return await client.request(
        op.method,
        op.url_path.format(**call.path),
        json=body,
        params=call.query,
        headers=headers,
    )


def test_every_operation_is_in_the_matrix() -> None:
    missing = [op.name for op in OPERATIONS if op.name not in MATRIX]
    unknown = sorted(set(MATRIX) - {op.name for op in OPERATIONS})
    assert not missing, f"operations missing from the authorization matrix: {missing}"
    assert not unknown, f"matrix rows naming no operation: {unknown}"


@pytest.mark.parametrize("op", OPERATIONS, ids=lambda op: op.name)
async def test_operation_is_reachable(
    op: Operation, world: World, client: httpx.AsyncClient
) -> None:
    case = MATRIX.get(op.name)
    if case is None:
        pytest.fail(f"{op.name} has no test: add it to MATRIX")
    if case.expect == MANAGED_ONLY:
        # Not offered by a self-hosted deployment: reachable means the managed_only answer.
        response = await perform(client, world, op, "owner")
        assert response.status_code == 403, response.text
        assert response.json()["error"]["code"] == "managed_only"
        return
    allowed = [role for role, status in zip(ROLES, case.expect, strict=True) if status == op.status]
    assert allowed, f"no caller of {op.name} gets its success status {op.status}"
    response = await perform(client, world, op, allowed[0])
    assert response.status_code == op.status, response.text
    if op.response is None:
        assert response.content == b""
    else:
        assert response.headers["content-type"] == "application/json"


@pytest.mark.parametrize("op", OPERATIONS, ids=lambda op: op.name)
async def test_authorization_matrix(op: Operation, world: World, client: httpx.AsyncClient) -> None:
    case = MATRIX.get(op.name)
    if case is None:
        pytest.fail(f"{op.name} is missing from MATRIX")
    differences: list[str] = []
    for role, expected in zip(ROLES, case.expect, strict=True):
        response = await perform(client, world, op, role)
        if response.status_code != expected:
            differences.append(f"{role}: {response.status_code} != {expected} {response.text}")
        if response.status_code >= 400:
            error = response.json()
            assert set(error) == {"error", "request_id"}, response.text
            assert error["request_id"] == response.headers["x-request-id"]
        if role != "foreign_owner":
            assert world.canary not in response.text, f"{role} saw foreign data: {response.text}"
    assert not differences, "\n".join(differences)
