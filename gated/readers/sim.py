"""The simulated reader: credentials typed in through the control socket (``gatectl badge``).

It is a first-class reader (the demo and the end-to-end tests drive the gate through it), but a
badge through it is one deliberate read: never debounced.
"""

from __future__ import annotations

import asyncio
import time

from gated.policy.credential import Credential, CredentialKind, Direction
from gated.readers.base import Emit, ReaderHealth


class SimReader:
    kind = "sim"

    def __init__(self, reader_id: str, direction: Direction = "in") -> None:
        self.id = reader_id
        self.direction: Direction = direction
        self.health = ReaderHealth(state="ok", detail="fed by gatectl badge")

    def read(self, kind: CredentialKind, value: str) -> Credential:
        """Make the credential for one typed-in read."""
        self.health.reads += 1
        self.health.last_read_at = time.time()
        return Credential(kind, value, self.id, self.direction)

    async def run(self, emit: Emit) -> None:
        await asyncio.Event().wait()  # nothing arrives on its own
