"""The membership terms a visitor accepts when joining: a text file whose first line names its
version (``Version: 2026-12-01``), configured as ``[app] terms_file`` or the shipped default in
``gated/web/terms/``. The SHA-256 of the file's bytes is recorded with each acceptance."""

from __future__ import annotations

import hashlib
from pathlib import Path

from gated.billing_sync.service import Terms

DEFAULT = Path(__file__).with_name("terms") / "membership-terms.txt"


class TermsError(ValueError):
    """The terms file cannot be used (missing, not UTF-8, no version line)."""


def load_terms(path: Path | None) -> Terms:
    """The terms in ``path`` (or the shipped default), with their version and SHA-256."""
    source = path or DEFAULT
    try:
        raw = source.read_bytes()
        text = raw.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TermsError(f"[app] terms_file {source}: {exc}") from exc
    first, _, _ = text.partition("\n")
    label, _, version = first.partition(":")
    if label.strip().lower() != "version" or not version.strip():
        raise TermsError(f"[app] terms_file {source}: the first line must be 'Version: ...'")
    return Terms(version.strip()[:64], hashlib.sha256(raw).hexdigest(), text)
