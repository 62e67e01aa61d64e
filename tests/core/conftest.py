"""Fixtures shared by the core tests."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from kiiaren_selfhost.settings import SelfHostSettings


@pytest.fixture
def selfhost() -> type[SelfHostSettings]:
    """The self-host provider's settings class, imported lazily.

    A fixture rather than a module import: a broken ``kiiaren_selfhost`` package then errors
    the few tests that need it instead of stopping the collection of every core test.
    """
    module = importlib.import_module("kiiaren_selfhost.settings")
    settings_cls: type[SelfHostSettings] = module.SelfHostSettings
    return settings_cls
