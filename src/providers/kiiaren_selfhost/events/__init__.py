"""Realtime events of the self-host provider: broker, streams, presence, LISTEN/NOTIFY."""

from kiiaren_selfhost.events.provider import SelfHostEvents, SelfHostEventStream

__all__ = ["SelfHostEventStream", "SelfHostEvents"]
