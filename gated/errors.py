"""The one root of gated's own exceptions.

Every error gated raises on purpose derives from :class:`GatedError`, so an edge (a CLI command,
the control socket, the web) can turn any of them into one line for a human and one exit code,
while a bug (any other exception) still shows up as one. This module imports nothing of ours.
"""

from __future__ import annotations


class GatedError(Exception):
    """Base of every error gated raises on purpose; ``str()`` is one line for a human."""
