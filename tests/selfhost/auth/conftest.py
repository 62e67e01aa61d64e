"""Fixtures for the auth building blocks: a loopback identity provider and RSA keys."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.selfhost.oauth_idp import LoopbackIdP, new_rsa_key


@pytest.fixture(scope="session")
def idp_key() -> rsa.RSAPrivateKey:
    """The IdP's signing key (generated once: RSA key generation is slow)."""
    return new_rsa_key()


@pytest.fixture(scope="session")
def attacker_key() -> rsa.RSAPrivateKey:
    """A second RSA key the IdP does not publish."""
    return new_rsa_key()


@pytest.fixture
def idp(idp_key: rsa.RSAPrivateKey) -> Iterator[LoopbackIdP]:
    """A running loopback IdP on an ephemeral port, stopped (threads joined) afterwards."""
    server = LoopbackIdP(key=idp_key)
    server.start()
    try:
        yield server
    finally:
        server.stop()
