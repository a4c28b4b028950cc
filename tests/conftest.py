"""Shared fixtures: a fresh database on the test PostgreSQL server."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

PG_ENV = "HWSPARSE_TEST_PG_URL"  # .ci/run starts a throwaway server (.ci/postgres) and sets it


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh, empty database on the server ``HWSPARSE_TEST_PG_URL`` names (dropped
    afterwards); the test is skipped only when that variable is unset."""
    base = os.environ.get(PG_ENV)
    if not base:
        pytest.skip(f"{PG_ENV} is not set (.ci/run sets it)")
    import psycopg
    from sqlalchemy.engine import make_url

    url = make_url(base)
    name = f"hw_{uuid.uuid4().hex[:12]}"
    conninfo = url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    yield url.set(database=name).render_as_string(hide_password=False)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
