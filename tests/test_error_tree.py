"""One root for "the kernel gave no decision" across the packages, with the builtin bases users catch."""

from __future__ import annotations

import pickle

import pytest

from chio_durable import HoldConflict, KernelRejected, KernelUnavailable, NoDecision
from chio_prefect.errors import ChioRequestRejected, ChioSidecarUnavailable

NO_DECISION = [
    (KernelUnavailable, RuntimeError),
    (KernelRejected, ValueError),
    (HoldConflict, ValueError),
    (ChioSidecarUnavailable, ConnectionError),
    (ChioRequestRejected, ValueError),
]


@pytest.mark.parametrize(("error", "builtin"), NO_DECISION)
def test_every_no_decision_error_shares_the_root_and_keeps_its_builtin_base(error: type[Exception], builtin: type[Exception]) -> None:
    err = error("embedded:/tmp/k", "the store is locked", "fs", "read")
    assert isinstance(err, NoDecision) and isinstance(err, builtin)
    assert "embedded:/tmp/k" in str(err) and "the store is locked" in str(err)
    back = pickle.loads(pickle.dumps(err))  # engines persist failed states: the facts survive
    assert type(back) is error and (back.url, back.detail, back.tool_server, back.tool_name) == (
        "embedded:/tmp/k", "the store is locked", "fs", "read")


def test_a_deny_is_not_a_missing_decision() -> None:
    # A deny is a decision (a signed receipt), raised as PermissionError: never caught as NoDecision.
    assert not issubclass(PermissionError, NoDecision)
    assert not issubclass(NoDecision, PermissionError)
