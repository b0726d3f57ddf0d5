"""systemd's notify protocol for the long-running processes (``gated run``, ``gated-billing
serve``): READY=1 once serving, WATCHDOG=1 from the event loop, STOPPING=1 on the way out.

Outside systemd (no NOTIFY_SOCKET) every call is a no-op, so the same code runs in a shell.
"""

from __future__ import annotations

import asyncio
import os

import sdnotify


class Notifier:
    """One process's link to the service manager."""

    def __init__(self) -> None:
        self._notifier = sdnotify.SystemdNotifier()

    def notify(self, state: str) -> None:
        self._notifier.notify(state)

    async def watchdog(self) -> None:
        """Pet the watchdog at half of WATCHDOG_USEC until cancelled; returns at once when the
        unit has no WatchdogSec=. Petted from the loop on purpose: a hung loop stops petting and
        systemd restarts the process."""
        usec = int(os.environ.get("WATCHDOG_USEC", "0"))
        if usec <= 0:
            return
        while True:
            self.notify("WATCHDOG=1")
            await asyncio.sleep(usec / 2e6)
