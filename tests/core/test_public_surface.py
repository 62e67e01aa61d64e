"""The public surface of kiiaren_core: explicit ``__all__`` lists and no I/O library imported."""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import pkgutil
import re
import subprocess
import sys
from types import ModuleType

import pytest

import kiiaren_core

FORBIDDEN_IMPORTS = (
    "sqlalchemy",
    "httpx",
    "websockets",
    "boto3",
    "botocore",
    "starlette",
    "fastapi",
    "psycopg",
    "aiosqlite",
    "uvicorn",
    "kiiaren_selfhost",
    "kiiaren_hosted",
    "selfhost_server",
)


def _module_names() -> list[str]:
    names = [kiiaren_core.__name__]
    for info in pkgutil.walk_packages(kiiaren_core.__path__, prefix=f"{kiiaren_core.__name__}."):
        names.append(info.name)
    return sorted(names)


def _contract_module_names() -> list[str]:
    """Every module except the conformance suite (which imports pytest on purpose)."""
    return [name for name in _module_names() if not name.startswith("kiiaren_core.testing")]


def _isort_style_key(name: str) -> tuple[int, list[int | str]]:
    """The order ruff's RUF022 keeps: CONSTANTS, then Classes, then everything else."""
    if len(name) > 1 and name.upper() == name and any(ch.isalpha() for ch in name):
        group = 0
    elif name[:1].isupper():
        group = 1
    else:
        group = 2
    natural = [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]
    return group, natural


def test_the_module_walk_finds_the_package() -> None:
    names = _module_names()
    for expected in (
        "kiiaren_core.errors",
        "kiiaren_core.events",
        "kiiaren_core.models",
        "kiiaren_core.protocols",
        "kiiaren_core.settings",
        "kiiaren_core._registry",
        "kiiaren_core.extensions.gate",
        "kiiaren_core.testing.plugin",
    ):
        assert expected in names


# A pytest plugin is loaded by name and holds hooks and fixtures: it has no import surface.
WITHOUT_ALL = frozenset({"kiiaren_core.testing.plugin"})


def test_modules_without_all_are_the_known_ones() -> None:
    lacking = {
        name for name in _module_names() if "__all__" not in vars(importlib.import_module(name))
    }
    assert lacking == WITHOUT_ALL


@pytest.mark.parametrize("name", sorted(set(_module_names()) - WITHOUT_ALL))
def test_every_name_in_all_exists(name: str) -> None:
    module: ModuleType = importlib.import_module(name)
    exported = getattr(module, "__all__", None)
    assert exported is not None, f"{name} has no __all__"
    assert len(exported) == len(set(exported)), f"duplicates in {name}.__all__"
    missing = [item for item in exported if not hasattr(module, item)]
    assert not missing, f"{name}.__all__ names what it does not define: {missing}"


@pytest.mark.parametrize("name", _module_names())
def test_all_is_sorted(name: str) -> None:
    exported = list(getattr(importlib.import_module(name), "__all__", []))
    assert exported == sorted(exported, key=_isort_style_key)


def test_the_top_level_all_is_sorted_unique_and_importable() -> None:
    exported = kiiaren_core.__all__
    assert len(exported) == len(set(exported))
    assert exported == sorted(exported, key=_isort_style_key)
    namespace: dict[str, object] = {}
    exec("from kiiaren_core import *", namespace)  # the star import users write
    assert set(exported) <= set(namespace)


def test_the_top_level_exports_the_essentials() -> None:
    for name in (
        "BackendProvider",
        "KiiarenError",
        "ManagedOnlyError",
        "open_provider",
        "create_provider",
        "register_provider",
        "load_settings",
        "FeatureGate",
        "EventEnvelope",
        "NotRecovered",
        "Page",
        "UNSET",
    ):
        assert name in kiiaren_core.__all__


def test_the_version_matches_the_distribution() -> None:
    assert kiiaren_core.__version__ == importlib.metadata.version("kiiaren")


def test_core_imports_no_io_library_provider_or_server() -> None:
    """Import every contract module and list the registry in a fresh interpreter."""
    modules = _contract_module_names()
    script = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "import kiiaren_core\n"
        "names = kiiaren_core.available_providers()\n"  # reading entry points imports nothing
        "print(json.dumps({'modules': sorted(sys.modules), 'providers': names}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    loaded = {name.split(".")[0] for name in report["modules"]}
    assert "kiiaren_core" in loaded
    assert "pydantic" in loaded  # the check is real: imports did happen
    assert sorted(loaded & set(FORBIDDEN_IMPORTS)) == []
    assert "selfhost" in report["providers"]
