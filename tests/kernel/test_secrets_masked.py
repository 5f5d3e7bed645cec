"""Credentials are masked in every form (URL userinfo of any scheme, DSN query passwords, libpq
key/values) by one function, and never echoed by the CLI or the sidecar's error answers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from chio_kernel import SidecarClient
from chio_kernel._secrets import mask_secrets
from chio_kernel.sidecar._responses import error_response
from cli_run import run_cli

SECRET = "hunter2"


@pytest.mark.parametrize(("text", "shown"), [
    ("postgresql://u:hunter2@h:5432/db", "postgresql://u:***@h:5432/db"),
    ("postgresql://u@h/db?password=hunter2&sslmode=require", "postgresql://u@h/db?password=***&sslmode=require"),
    ("postgres://h/db?sslmode=require&sslpassword=hunter2", "postgres://h/db?sslmode=require&sslpassword=***"),
    ("mysql://root:hunter2@db.example/app", "mysql://root:***@db.example/app"),
    ("redis://:hunter2@cache:6379/0", "redis://:***@cache:6379/0"),
    ("host=db password=hunter2 user=u", "host=db password=*** user=u"),
    ("host=db password='hunter2 with spaces' dbname=x", "host=db password=*** dbname=x"),
    ("host=db PASSWORD = hunter2", "host=db PASSWORD = ***"),
    ("cannot connect to postgresql://a:hunter2@h/x: refused", "cannot connect to postgresql://a:***@h/x: refused"),
    ("http://127.0.0.1:9090/v1/evaluate", "http://127.0.0.1:9090/v1/evaluate"),
    ("postgresql://u@h/db", "postgresql://u@h/db"),
])
def test_mask_secrets(text: str, shown: str) -> None:
    assert mask_secrets(text) == shown


@pytest.mark.parametrize("store", [
    "mysql://root:hunter2@db.example/app",
    "host=db password=hunter2",
    "postgresql://u@127.0.0.1:1/db?password=hunter2",
    "postgresql://u:hunter2@127.0.0.1:1/db",
])
def test_cli_never_echoes_a_store_password(tmp_path: Path, store: str) -> None:
    for args in (["receipts", "list"], ["capability", "create", "--subject", "s", "--grant", "a:b:invoke"]):
        done = run_cli(*args, "--data-dir", str(tmp_path), "--store", store)
        assert done.returncode == 1
        assert SECRET not in done.stdout + done.stderr, done.stderr
        assert done.stderr.startswith("error: ")
        assert "***" in done.stderr or "://" not in done.stderr  # quoted: masked (or not quoted at all)


def test_sidecar_errors_and_client_repr_are_masked() -> None:
    body = json.loads(error_response(503, "store_unavailable", "store postgresql://h/db?password=hunter2 is down").body)
    assert SECRET not in body["message"] and "password=***" in body["message"]
    assert SECRET not in repr(SidecarClient("http://user:hunter2@127.0.0.1:9090"))
