from __future__ import annotations

import importlib.util
import os
import re
import uuid
from collections.abc import Iterator

import pytest

from tests.services import (
    LocalStripe,
    Postgres,
    ensure_localstripe,
    postgres_bindir,
    run_localstripe,
    run_postgres,
)


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


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[Postgres]:
    """One throwaway PostgreSQL cluster for the session (each test gets its own database)."""
    missing = None
    if postgres_bindir() is None:
        missing = "PostgreSQL is not installed (scripts/bootstrap apt-installs postgresql)"
    elif importlib.util.find_spec("psycopg") is None:
        missing = "the psycopg driver is not installed (pip install -e '.[dev]')"
    if missing is not None:
        if os.environ.get("CI"):
            # CI bootstraps both: a skip there would hide a broken install step.
            pytest.fail(missing)
        pytest.skip(missing)
    with run_postgres() as cluster:
        yield cluster


def _database_name(request: pytest.FixtureRequest) -> str:
    name = "t_" + re.sub(r"[^a-z0-9]+", "_", request.node.name.lower())[:50]
    return f"{name}_{uuid.uuid4().hex[:8]}"


@pytest.fixture
def postgres_url(postgres_cluster: Postgres, request: pytest.FixtureRequest) -> str:
    """A SQLAlchemy URL of a new, empty database on the session's cluster."""
    return postgres_cluster.create_database(_database_name(request))


@pytest.fixture(scope="session")
def postgres_template(postgres_cluster: Postgres) -> str:
    """The name of a database on the session's cluster that the migrations brought to head, once:
    running them all takes PostgreSQL seconds per database, copying one a fraction of a second."""
    from gated.billing_sync.store import open_store

    name = "gated_store_at_head"
    engine = open_store(postgres_cluster.create_database(name))
    engine.dispose()  # a template is copied only while no session is connected to it
    return name


@pytest.fixture
def postgres_store_url(
    postgres_cluster: Postgres, postgres_template: str, request: pytest.FixtureRequest
) -> str:
    """A SQLAlchemy URL of a new database already at the head revision (a copy of
    ``postgres_template``), for tests of the store on PostgreSQL rather than of its migrations
    (those take ``postgres_url``)."""
    return postgres_cluster.create_database(_database_name(request), template=postgres_template)
