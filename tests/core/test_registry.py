"""The provider registry: names -> factories, from code and from entry points."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from importlib.metadata import EntryPoint, EntryPoints, PathDistribution, entry_points
from pathlib import Path
from typing import Any

import pytest

from kiiaren_core import _registry
from kiiaren_core._registry import (
    ENTRY_POINT_GROUP,
    available_providers,
    create_provider,
    get_provider_factory,
    open_provider,
    register_provider,
    unregister_provider,
)
from kiiaren_core.errors import ConfigurationError, ProviderNotFoundError, ProviderUnavailableError


class RecordingProvider:
    """Test double of a provider: records the lifecycle calls the registry makes."""

    def __init__(self, origin: str, **options: Any) -> None:
        self.origin = origin
        self.options = options
        self.calls: list[str] = []
        self.fail_initialize = bool(options.get("fail_initialize"))

    async def initialize(self) -> None:
        self.calls.append("initialize")
        if self.fail_initialize:
            raise RuntimeError("cannot connect")

    async def aclose(self) -> None:
        self.calls.append("aclose")


def entry_point_factory(**options: Any) -> RecordingProvider:
    """Target of the simulated entry points (``<this module>:entry_point_factory``)."""
    return RecordingProvider("entry-point", **options)


def code_factory(**options: Any) -> RecordingProvider:
    return RecordingProvider("code", **options)


def other_code_factory(**options: Any) -> RecordingProvider:
    return RecordingProvider("other-code", **options)


@pytest.fixture(autouse=True)
def isolated_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts with nothing registered in code and leaves the real registry alone."""
    monkeypatch.setattr(_registry, "_registered", {})
    monkeypatch.delenv("KIIAREN_PROVIDER", raising=False)


@pytest.fixture
def fake_entry_points(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """Replace the installed entry points with the given ``EntryPoint`` objects."""

    def install(*points: EntryPoint) -> None:
        def fake(**params: Any) -> EntryPoints:
            return EntryPoints(points).select(**params)

        monkeypatch.setattr(_registry, "entry_points", fake)

    install()
    return install


def _ep(name: str, value: str, group: str = ENTRY_POINT_GROUP) -> EntryPoint:
    return EntryPoint(name=name, value=value, group=group)


def _distribution(tmp_path: Path, dist_name: str, lines: list[str]) -> PathDistribution:
    """A real installed-distribution record on disk, so entry points know their package."""
    info = tmp_path / f"{dist_name.replace('-', '_')}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist_name}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\n" + "\n".join(lines) + "\n")
    return PathDistribution(info)


# --- registration ---------------------------------------------------------------------------------


def test_register_and_look_up(fake_entry_points: Callable[..., None]) -> None:
    register_provider("demo", code_factory)
    assert get_provider_factory("demo") is code_factory
    assert get_provider_factory("  DEMO ") is code_factory
    assert available_providers() == ["demo"]


def test_registering_a_name_twice_is_refused() -> None:
    register_provider("demo", code_factory)
    with pytest.raises(ValueError, match="'demo' is already registered"):
        register_provider("Demo", other_code_factory)
    assert get_provider_factory("demo") is code_factory


def test_replace_true_overwrites() -> None:
    register_provider("demo", code_factory)
    register_provider("demo", other_code_factory, replace=True)
    assert get_provider_factory("demo") is other_code_factory


def test_unregister_removes_and_is_idempotent(fake_entry_points: Callable[..., None]) -> None:
    register_provider("demo", code_factory)
    unregister_provider("DEMO")
    unregister_provider("demo")
    with pytest.raises(ProviderNotFoundError):
        get_provider_factory("demo")
    register_provider("demo", other_code_factory)  # the name is free again
    assert get_provider_factory("demo") is other_code_factory


@pytest.mark.parametrize("alias", ["self-host", "self_host", "Self-Host", " SELFHOST "])
def test_self_host_aliases_resolve_to_selfhost(
    alias: str, fake_entry_points: Callable[..., None]
) -> None:
    register_provider("selfhost", code_factory)
    assert get_provider_factory(alias) is code_factory


def test_registering_under_an_alias_registers_the_canonical_name() -> None:
    register_provider("self-host", code_factory)
    assert get_provider_factory("selfhost") is code_factory
    with pytest.raises(ValueError, match="already registered"):
        register_provider("selfhost", other_code_factory)


# --- lookup order and entry points ----------------------------------------------------------------


def test_a_name_registered_in_code_wins_over_an_entry_point(
    fake_entry_points: Callable[..., None],
) -> None:
    fake_entry_points(_ep("demo", f"{__name__}:entry_point_factory"))
    assert get_provider_factory("demo") is entry_point_factory

    register_provider("demo", code_factory)
    assert get_provider_factory("demo") is code_factory
    assert available_providers() == ["demo"]

    unregister_provider("demo")  # entry points are untouched by unregister
    assert get_provider_factory("demo") is entry_point_factory


def test_entry_points_of_other_groups_are_ignored(fake_entry_points: Callable[..., None]) -> None:
    fake_entry_points(
        _ep("demo", f"{__name__}:entry_point_factory"),
        _ep("stranger", f"{__name__}:code_factory", group="someone.else"),
    )
    assert available_providers() == ["demo"]
    with pytest.raises(ProviderNotFoundError):
        get_provider_factory("stranger")


def test_entry_point_names_are_canonicalised(fake_entry_points: Callable[..., None]) -> None:
    fake_entry_points(_ep("Self-Host", f"{__name__}:entry_point_factory"))
    assert available_providers() == ["selfhost"]
    assert get_provider_factory("selfhost") is entry_point_factory


def test_available_providers_merges_code_and_entry_points_sorted(
    fake_entry_points: Callable[..., None],
) -> None:
    fake_entry_points(
        _ep("zeta", f"{__name__}:entry_point_factory"),
        _ep("broken", "kiiaren_no_such_module_for_tests:Provider"),
    )
    register_provider("alpha", code_factory)
    # Listed whether or not their dependencies are installed; nothing is imported to list them.
    assert available_providers() == ["alpha", "broken", "zeta"]


def test_unknown_name_lists_the_available_providers(
    fake_entry_points: Callable[..., None],
) -> None:
    fake_entry_points(_ep("zeta", f"{__name__}:entry_point_factory"))
    register_provider("alpha", code_factory)
    with pytest.raises(ProviderNotFoundError) as caught:
        get_provider_factory("Nope")
    error = caught.value
    assert isinstance(error, ConfigurationError)
    assert error.name == "nope"
    assert error.available == ["alpha", "zeta"]
    assert "Available providers: alpha, zeta." in error.message
    assert error.details["available"] == ["alpha", "zeta"]


def test_unknown_name_with_nothing_installed(fake_entry_points: Callable[..., None]) -> None:
    with pytest.raises(ProviderNotFoundError, match="Available providers: none"):
        get_provider_factory("anything")


def test_a_broken_entry_point_of_another_package_gives_its_pip_command(
    tmp_path: Path, fake_entry_points: Callable[..., None]
) -> None:
    dist = _distribution(tmp_path, "kiiaren-fancy", ["fancy = kiiaren_no_such_module_xyz:P"])
    fake_entry_points(*dist.entry_points)

    with pytest.raises(ProviderUnavailableError) as caught:
        get_provider_factory("fancy")

    error = caught.value
    assert "pip install kiiaren-fancy" in error.message
    assert "kiiaren_no_such_module_xyz" in error.message  # the import error that happened
    assert error.details == {
        "name": "fancy",
        "install": "pip install kiiaren-fancy",
        "variable": "KIIAREN_PROVIDER",
    }
    assert isinstance(error.__cause__, ImportError)


def test_a_broken_entry_point_of_kiiaren_itself_names_the_extra(
    tmp_path: Path, fake_entry_points: Callable[..., None]
) -> None:
    dist = _distribution(tmp_path, "kiiaren", ["hosted = kiiaren_no_such_module_xyz:Hosted"])
    fake_entry_points(*dist.entry_points)
    with pytest.raises(ProviderUnavailableError) as caught:
        get_provider_factory("hosted")
    assert 'pip install "kiiaren[hosted]"' in caught.value.message
    assert caught.value.details["install"] == 'pip install "kiiaren[hosted]"'


def test_a_broken_entry_point_without_a_distribution_still_explains(
    fake_entry_points: Callable[..., None],
) -> None:
    fake_entry_points(_ep("orphan", "kiiaren_no_such_module_xyz:P"))
    with pytest.raises(ProviderUnavailableError, match="install the package that provides it"):
        get_provider_factory("orphan")


def test_a_working_entry_point_from_a_distribution_loads(
    tmp_path: Path, fake_entry_points: Callable[..., None]
) -> None:
    dist = _distribution(tmp_path, "kiiaren-demo", [f"demo = {__name__}:entry_point_factory"])
    fake_entry_points(*dist.entry_points)
    assert get_provider_factory("demo") is entry_point_factory


def test_the_installed_distribution_exposes_the_selfhost_entry_point() -> None:
    points = {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}
    assert "selfhost" in points
    selfhost = points["selfhost"]
    assert selfhost.value == "kiiaren_selfhost:SelfHostProvider"
    assert selfhost.dist is not None
    assert selfhost.dist.name == "kiiaren"
    assert importlib.util.find_spec(selfhost.module) is not None
    # The real registry (no monkeypatching of entry points here) lists it.
    assert "selfhost" in available_providers()


# --- create_provider / open_provider --------------------------------------------------------------


@pytest.fixture
def created() -> list[RecordingProvider]:
    """Register ``demo`` with a factory that remembers what it built."""
    built: list[RecordingProvider] = []

    def factory(**options: Any) -> RecordingProvider:
        provider = RecordingProvider("code", **options)
        built.append(provider)
        return provider

    register_provider("demo", factory)
    return built


def test_create_provider_passes_options_and_does_not_initialise(
    created: list[RecordingProvider],
) -> None:
    provider = create_provider("demo", database_url="sqlite://", pool_size=2)
    assert created == [provider]
    assert provider.options == {"database_url": "sqlite://", "pool_size": 2}
    assert provider.calls == []


def test_create_provider_uses_kiiaren_provider(
    monkeypatch: pytest.MonkeyPatch, created: list[RecordingProvider]
) -> None:
    monkeypatch.setenv("KIIAREN_PROVIDER", "  Demo ")
    provider = create_provider(flag=True)
    assert created == [provider]
    assert provider.options == {"flag": True}


def test_create_provider_resolves_an_aliased_kiiaren_provider(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    register_provider("selfhost", code_factory)
    monkeypatch.setenv("KIIAREN_PROVIDER", "self-host")
    provider = create_provider()
    assert isinstance(provider, RecordingProvider)
    assert provider.origin == "code"


def test_an_explicit_name_wins_over_kiiaren_provider(
    monkeypatch: pytest.MonkeyPatch, created: list[RecordingProvider]
) -> None:
    monkeypatch.setenv("KIIAREN_PROVIDER", "does-not-exist")
    provider = create_provider("demo")
    assert created == [provider]


def test_the_default_provider_is_selfhost(fake_entry_points: Callable[..., None]) -> None:
    with pytest.raises(ProviderNotFoundError) as caught:
        create_provider()
    assert caught.value.name == "selfhost"


def test_a_bad_kiiaren_provider_is_a_configuration_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KIIAREN_PROVIDER", "   ")
    with pytest.raises(ConfigurationError) as caught:
        create_provider()
    assert "KIIAREN_PROVIDER" in caught.value.message
    assert caught.value.details["variable"] == "KIIAREN_PROVIDER"


@pytest.mark.anyio
async def test_open_provider_initialises_then_closes(created: list[RecordingProvider]) -> None:
    async with open_provider("demo", option=1) as provider:
        assert created == [provider]
        assert provider.calls == ["initialize"]
        assert provider.options == {"option": 1}
    assert provider.calls == ["initialize", "aclose"]


@pytest.mark.anyio
async def test_open_provider_closes_when_the_body_raises(
    created: list[RecordingProvider],
) -> None:
    with pytest.raises(LookupError, match="body failed"):
        async with open_provider("demo"):
            raise LookupError("body failed")
    assert [p.calls for p in created] == [["initialize", "aclose"]]


@pytest.mark.anyio
async def test_open_provider_closes_when_initialize_fails(
    created: list[RecordingProvider],
) -> None:
    with pytest.raises(RuntimeError, match="cannot connect"):
        async with open_provider("demo", fail_initialize=True):
            pytest.fail("the body must not run when initialize fails")
    assert [p.calls for p in created] == [["initialize", "aclose"]]


@pytest.mark.anyio
async def test_open_provider_honours_kiiaren_provider(
    monkeypatch: pytest.MonkeyPatch, created: list[RecordingProvider]
) -> None:
    monkeypatch.setenv("KIIAREN_PROVIDER", "DEMO")
    async with open_provider() as provider:
        assert created == [provider]
    assert provider.calls == ["initialize", "aclose"]


@pytest.mark.anyio
async def test_open_provider_with_an_unknown_name_creates_nothing(
    fake_entry_points: Callable[..., None], created: list[RecordingProvider]
) -> None:
    with pytest.raises(ProviderNotFoundError):
        async with open_provider("missing"):
            pytest.fail("unreachable")
    assert created == []
