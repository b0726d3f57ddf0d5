"""What a reader hands the gate: one :class:`Credential` per read.

It lives with the policy because ``decide()`` reads it; readers produce it and import it from
here, so the pure policy never imports a reader.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Literal

CredentialKind = Literal["card", "qr"]
Direction = Literal["in", "out"]


@dataclass(frozen=True, slots=True)
class Credential:
    """One read. ``value`` is the normalized card UID (upper-case hex, no separators), a Wiegand
    form (``w26:FAC:NUM``), or the QR text. ``at`` is ``time.monotonic_ns()`` of the read: the
    start of the latency budget. A raw UID lives only in memory and is never logged."""

    kind: CredentialKind
    value: str
    reader_id: str
    direction: Direction = "in"
    at: int = field(default_factory=time.monotonic_ns)

    def __repr__(self) -> str:  # never print a raw UID or a full code
        return f"Credential({self.kind}, reader={self.reader_id}, direction={self.direction})"
