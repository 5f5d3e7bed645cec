"""The throwaway PostgreSQL cluster fixture itself: a real server, reachable over loopback TCP."""

from __future__ import annotations

import pg_cluster


def test_cluster_is_a_real_postgresql_15_on_loopback(pg_cluster_session: pg_cluster.Cluster, pg_dsn: str) -> None:
    import psycopg

    assert pg_dsn.startswith(f"postgresql://postgres@127.0.0.1:{pg_cluster_session.port}/chio_")
    with psycopg.connect(pg_dsn) as conn:
        version = conn.execute("SHOW server_version_num").fetchone()
        addr = conn.execute("SELECT inet_server_addr()::text").fetchone()
    assert version is not None and 150000 <= int(version[0]) < 160000
    assert addr is not None and addr[0].startswith("127.0.0.1")
    # the unix sockets live in the cluster's own temp dir, not in /var/run/postgresql
    assert (pg_cluster_session.root / f".s.PGSQL.{pg_cluster_session.port}").exists()
