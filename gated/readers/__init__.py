"""Credential sources. Each reader only produces :class:`Credential` objects."""

from gated.policy.credential import Credential
from gated.readers.base import Debouncer, Reader, ReaderHealth

__all__ = ["Credential", "Debouncer", "Reader", "ReaderHealth"]
