"""Credential sources. Each reader only produces :class:`Credential` objects."""

from gated.readers.base import Credential, Debouncer, Reader, ReaderHealth

__all__ = ["Credential", "Debouncer", "Reader", "ReaderHealth"]
