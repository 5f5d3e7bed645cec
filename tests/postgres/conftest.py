"""Fixtures of the PostgreSQL store tests: one throwaway PostgreSQL 15 cluster per session, a fresh
database (so a fresh fleet store) per test."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

import pg_cluster


@pytest.fixture(scope="session")
def pg_cluster_session() -> Iterator[pg_cluster.Cluster]:
    """A real PostgreSQL 15 server on a random loopback port, for the whole session."""
    why = pg_cluster.missing()
    if why is not None:
        pytest.skip(why)
    with pg_cluster.throwaway_cluster() as cluster:
        yield cluster


@pytest.fixture
def pg_dsn(pg_cluster_session: pg_cluster.Cluster) -> str:
    """The DSN of an empty database of the session's cluster (one per test)."""
    return pg_cluster_session.create_database("chio_" + uuid.uuid4().hex[:12])
