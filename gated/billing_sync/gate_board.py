"""Each gate's latest status as head office heard it: the retained status topics (and each
gate's last will, which says ``"state":"offline"`` when its connection drops), taken in by
``serve``'s MQTT publisher and held in memory (the broker keeps them retained, so a restart
reads them again). ``gate_health`` puts them beside the manifests for the console.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from gated.payloads import GateStatus


@dataclass(frozen=True, slots=True)
class Heard:
    """One gate's latest status and when head office received it (None: retained, time
    unknown)."""

    status: dict[str, Any]
    received_at: int | None


class GateBoard:
    """The latest status of every gate; written by the intake's task, read by web handlers in
    worker threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._gates: dict[tuple[str, str], Heard] = {}
        self.refused = 0

    def take(self, site: str, gate: str, body: object, received_at: int, retained: bool) -> bool:
        """Keep a status from ``gated/v1/sites/{site}/gates/{gate}/status``; one that does not
        parse, or names another site or gate than its topic, is refused and counted."""
        try:
            status = GateStatus.model_validate(body)
        except ValidationError:
            self.refused += 1
            return False
        if (status.site, status.gate) != (site, gate):
            self.refused += 1
            return False
        with self._lock:
            before = self._gates.get((site, gate))
            # A retained copy read again at a reconnect keeps the time we last heard it live.
            at = before.received_at if retained and before is not None else None
            body = status.model_dump()
            if status.state == "offline" and before is not None:
                # A last will was written when the gate connected: what the gate reported
                # since (members, digest, lockdown) is newer than the will's copy.
                body = {**before.status, "state": "offline"}
            self._gates[(site, gate)] = Heard(body, at if retained else received_at)
        return True

    def heard(self) -> dict[tuple[str, str], Heard]:
        with self._lock:
            return dict(self._gates)
