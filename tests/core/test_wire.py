"""The wire table stays in step with the protocols it exposes."""

from __future__ import annotations

import inspect
import re

import pytest

from kiiaren_core import protocols
from kiiaren_core.wire import API_PREFIX, OPERATIONS, OPERATIONS_BY_NAME, Operation

# Attribute path prefix -> the protocol class that owns the method.
_OWNERS: dict[str, type] = {
    "auth": protocols.AuthProvider,
    "events": protocols.EventsProvider,
    "storage": protocols.StorageProvider,
    "persistence.workspace": protocols.WorkspaceStore,
    "persistence.channel": protocols.ChannelStore,
    "persistence.member": protocols.MemberStore,
    "persistence.message": protocols.MessageStore,
    "persistence.reaction": protocols.ReactionStore,
    "persistence.conversation": protocols.ConversationStore,
    "persistence.doc": protocols.DocStore,
    "persistence.board": protocols.BoardStore,
    "persistence.invite": protocols.InviteStore,
    "persistence.domain": protocols.DomainStore,
}
# Protocol members that are deliberately not HTTP operations, and why.
_NOT_ON_THE_WIRE = {
    "auth.tokens": "client-side state",
    "auth.on_auth_state_change": "client-side callbacks",
    "events.subscribe": "the WebSocket /v1/events",
    "events.stream": "the WebSocket /v1/events",
    "storage.upload": "ticket + PUT to the ticket's URL",
}


def _owner(op: Operation) -> tuple[type | None, str]:
    prefix, _, method = op.target.rpartition(".")
    return _OWNERS.get(prefix), method


def _protocol_methods() -> set[str]:
    names = set()
    for prefix, cls in _OWNERS.items():
        for name, member in vars(cls).items():
            if name.startswith("_"):
                continue
            if callable(member) or isinstance(member, property):
                names.add(f"{prefix}.{name}")
    return names


def test_names_and_routes_are_unique() -> None:
    assert len(OPERATIONS_BY_NAME) == len(OPERATIONS)
    routes = [(op.method, op.url_path) for op in OPERATIONS]
    assert len(set(routes)) == len(routes)
    assert all(op.url_path.startswith(API_PREFIX + "/") for op in OPERATIONS)


def test_every_protocol_method_is_on_the_wire_or_explained() -> None:
    targets = {op.target for op in OPERATIONS}
    missing = _protocol_methods() - targets - set(_NOT_ON_THE_WIRE)
    assert not missing, f"protocol methods without a wire operation: {sorted(missing)}"


@pytest.mark.parametrize("op", [op for op in OPERATIONS if _owner(op)[0]], ids=lambda op: op.name)
def test_arguments_match_the_protocol_signature(op: Operation) -> None:
    owner, method_name = _owner(op)
    assert owner is not None
    method = getattr(owner, method_name)
    parameters = dict(inspect.signature(method).parameters)
    parameters.pop("self")
    supplied = set(op.path_params)
    for model in (op.body, op.query):
        if model is not None and op.body_as is None:
            supplied |= set(model.model_fields)
    if op.body_as:
        supplied.add(op.body_as)
    if op.name in {"auth.sign_up", "auth.sign_in", "auth.refresh", "events.emit"}:
        return  # hand-written server handlers (session binding, envelope construction)
    assert supplied <= set(parameters), f"{op.name} sends unknown arguments"
    required = {name for name, p in parameters.items() if p.default is inspect.Parameter.empty}
    assert required <= supplied, f"{op.name} misses required arguments {required - supplied}"


def test_secrets_never_travel_in_urls() -> None:
    secret = re.compile(r"code|token|password", re.IGNORECASE)
    for op in OPERATIONS:
        assert not any(secret.search(p) for p in op.path_params), op.name
        if op.query is not None and op.name != "auth.oauth_callback":
            assert not any(secret.search(name) for name in op.query.model_fields), op.name


def test_reads_do_not_take_bodies_and_status_matches_response() -> None:
    for op in OPERATIONS:
        if op.method == "GET":
            assert op.body is None, op.name
        if op.response is None:
            assert op.status in (202, 204), op.name
        else:
            assert op.status in (200, 201), op.name
