"""Periodic housekeeping of a self-host deployment (idempotent; safe in every process).

* the event log keeps ``event_retention_seconds``: older events are deleted, so a resume from
  before the window answers "not recovered (expired)" instead of replaying part;
* rate-limit windows older than a day, and expired OAuth states, are deleted;
* orphaned uploads (ticket issued, never attached) older than ``orphan_upload_ttl_seconds``
  are deleted with their bytes.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

from kiiaren_selfhost.clock import utcnow
from kiiaren_selfhost.db import tables as t

if TYPE_CHECKING:
    from kiiaren_selfhost.runtime import Runtime

__all__ = ["MaintenanceReport", "run_maintenance", "run_periodically"]

logger = logging.getLogger("kiiaren.selfhost.maintenance")


@dataclass(frozen=True, slots=True)
class MaintenanceReport:
    """What one pass removed."""

    events: int
    rate_limit_windows: int
    oauth_states: int
    orphan_uploads: int


async def prune_events(runtime: Runtime) -> int:
    """Delete logged events older than the retention window; returns how many."""
    cutoff = utcnow() - timedelta(seconds=runtime.settings.event_retention_seconds)
    async with runtime.db.write() as conn:
        result = await conn.execute(t.events.delete().where(t.events.c.created_at < cutoff))
    return int(result.rowcount or 0)


async def run_maintenance(runtime: Runtime) -> MaintenanceReport:
    """One housekeeping pass."""
    events = await prune_events(runtime)
    windows = await runtime.limiter.prune()
    async with runtime.db.write() as conn:
        states = await conn.execute(
            t.oauth_states.delete().where(t.oauth_states.c.expires_at < utcnow())
        )
    orphans = await runtime.files.cleanup_orphans(
        timedelta(seconds=runtime.settings.orphan_upload_ttl_seconds)
    )
    report = MaintenanceReport(events, windows, int(states.rowcount or 0), orphans)
    if any((report.events, report.rate_limit_windows, report.oauth_states, report.orphan_uploads)):
        logger.info("maintenance: %s", report)
    return report


async def run_periodically(runtime: Runtime) -> None:
    """Run :func:`run_maintenance` every ``maintenance_interval_seconds`` until cancelled."""
    while True:
        await asyncio.sleep(runtime.settings.maintenance_interval_seconds)
        try:
            await run_maintenance(runtime)
        except Exception:
            logger.exception("maintenance pass failed")
