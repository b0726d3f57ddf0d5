"""The simulated reader: credentials typed in through the control socket (``gatectl badge``).

It is a first-class reader (the demo and the tests drive the gate through it), built by the
registry like the others. :meth:`SimReader.present` is a card held to it: the read is emitted
through the gate's reader path as a hardware reader's would be. ``gatectl badge`` takes
:meth:`SimReader.read`'s credential to the gate itself, to answer with the decision. Never
debounced: each is one deliberate read.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from gated.policy.credential import Credential, CredentialKind, Direction
from gated.readers.base import Emit, ReaderHealth

if TYPE_CHECKING:
    from gated.config import SimReaderConfig


class SimReader:
    kind = "sim"

    def __init__(self, config: SimReaderConfig) -> None:
        assert config.id is not None
        self.id = config.id
        self.direction: Direction = config.direction
        self.health = ReaderHealth(state="ok", detail="fed by gatectl badge")
        self._emit: Emit | None = None

    def read(self, kind: CredentialKind, value: str) -> Credential:
        """Make the credential for one typed-in read."""
        self.health.reads += 1
        self.health.last_read_at = time.time()
        return Credential(kind, value, self.id, self.direction)

    def present(self, kind: CredentialKind, value: str) -> Credential:
        """A card (or code) held to this reader: emitted as a hardware reader emits a read.
        Raises RuntimeError while the reader is not running."""
        emit = self._emit
        if emit is None:
            raise RuntimeError(f"sim reader {self.id} is not running")
        credential = self.read(kind, value)
        emit(credential)
        return credential

    async def run(self, emit: Emit) -> None:
        """Hold ``emit`` for :meth:`present` until cancelled."""
        self._emit = emit
        try:
            await asyncio.Event().wait()  # nothing arrives on its own
        finally:
            self._emit = None
