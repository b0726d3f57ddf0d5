from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.services import LocalStripe, ensure_localstripe, run_localstripe


@pytest.fixture(scope="session")
def localstripe_python() -> object:
    python = ensure_localstripe()
    if python is None:
        pytest.skip("localstripe could not be installed into .venv-localstripe (no registry?)")
    return python


@pytest.fixture
def localstripe(localstripe_python: object) -> Iterator[LocalStripe]:
    """A fresh localstripe per test (``--from-scratch`` semantics: nothing is loaded or saved)."""
    with run_localstripe(localstripe_python) as server:  # type: ignore[arg-type]
        yield server
