"""Keys and capability tokens: persistence, issue/validate, attenuation, revocation."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from chio_sdk.models import ChioScope, Constraint, Operation, ToolGrant

from chio_kernel import CapabilityError, Kernel, KernelInputError, default_data_dir
from chio_kernel._kernel import capability_signing_bytes
from chio_kernel.signing import verify_hex

from kernel_helpers import Clock, grant, scope


def test_key_file_is_0600_and_dir_0700_and_persists(tmp_path: Path) -> None:
    home = tmp_path / "new-home"
    k1 = Kernel(home)
    key_file = home / "kernel.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    assert len(k1.public_key_hex) == 64 and int(k1.public_key_hex, 16) >= 0
    token = k1.create_capability("agent:p", scope(grant()), 600, capability_id="cap-persist")
    k1.close()
    key_file.chmod(0o644)  # loosened by someone: tightened again on load
    k2 = Kernel(home)
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert k2.public_key_hex == k1.public_key_hex
    assert k2.validate_capability(token) == (True, None)
    assert k2.get_capability("cap-persist") == token
    k2.close()


def test_default_data_dir_honours_chio_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CHIO_HOME", str(tmp_path / "from-env"))
    assert default_data_dir() == tmp_path / "from-env"
    k = Kernel()
    assert k.data_dir == (tmp_path / "from-env").resolve()
    assert k.base_url == f"embedded:{k.data_dir}" and "from-env" in repr(k)
    k.close()
    monkeypatch.delenv("CHIO_HOME")
    assert default_data_dir() == Path.home() / ".chio-durable"


def test_corrupt_key_file_is_a_clear_error(tmp_path: Path) -> None:
    home = tmp_path / "h"
    home.mkdir()
    fd = os.open(home / "kernel.key", os.O_CREAT | os.O_WRONLY, 0o600)
    os.write(fd, b"not hex")
    os.close(fd)
    with pytest.raises(ValueError, match="corrupt"):
        Kernel(home)


def test_create_and_validate(kernel: Kernel) -> None:
    token = kernel.create_capability("agent:my-pipeline", scope(grant()), 3600)
    assert token.id.startswith("cap-") and len(token.id) == 36
    assert token.issuer == kernel.public_key_hex and len(token.signature) == 128
    assert token.expires_at - token.issued_at == 3600
    assert verify_hex(kernel.public_key_hex, token.signature, capability_signing_bytes(token))
    assert kernel.validate_capability(token) == (True, None)
    assert kernel.validate_capability(token.model_dump()) == (True, None)
    assert [t.id for t in kernel.list_capabilities()] == [token.id]


def test_tampered_token_fails_signature(kernel: Kernel) -> None:
    token = kernel.create_capability("agent:a", scope(grant(max_invocations=1)), 3600)
    wider = token.model_copy(update={"scope": scope(grant(max_invocations=1000))})
    ok, reason = kernel.validate_capability(wider)
    assert not ok and "invalid signature" in reason
    later = token.model_copy(update={"expires_at": token.expires_at + 10**6})
    assert kernel.validate_capability(later)[0] is False


def test_foreign_issuer_and_trusted_key(tmp_path: Path, clock: Clock) -> None:
    other = Kernel(tmp_path / "other", clock=clock)
    foreign = other.create_capability("agent:a", scope(grant()), 600)
    mine = Kernel(tmp_path / "mine", clock=clock)
    ok, reason = mine.validate_capability(foreign)
    assert not ok and "neither this kernel" in reason and "trusted_keys" in reason
    trusting = Kernel(tmp_path / "trusting", trusted_keys=[other.public_key_hex], clock=clock)
    assert trusting.validate_capability(foreign) == (True, None)
    # a trusted parent can be attenuated here; the child validates and evaluates
    child = trusting.attenuate_capability(foreign, scope(grant()))
    assert trusting.validate_capability(child) == (True, None)
    assert trusting.evaluate(child.id, "fs", "read", {}).decision.verdict == "allow"
    with pytest.raises(KernelInputError):
        Kernel(tmp_path / "bad", trusted_keys=["abc"])


def test_time_window(kernel: Kernel, clock: Clock, tmp_path: Path) -> None:
    token = kernel.create_capability("agent:a", scope(grant()), 60)
    clock.advance(61)
    ok, reason = kernel.validate_capability(token)
    assert not ok and "expired" in reason
    future = Kernel(tmp_path / "future", clock=Clock(clock.now + 3600))
    early = future.create_capability("agent:a", scope(grant()), 60)
    trusting = Kernel(tmp_path / "t", trusted_keys=[future.public_key_hex], clock=clock)
    ok, reason = trusting.validate_capability(early)
    assert not ok and "not valid before" in reason


def test_caller_chosen_id_and_idempotent_provisioning(kernel: Kernel, clock: Clock) -> None:
    s = scope(grant("search", "web", Constraint.domain_glob("*.example.com")))
    first = kernel.create_capability("agent:research", s, 600, capability_id="cap-research-pipeline")
    assert first.id == "cap-research-pipeline"
    again = kernel.create_capability("agent:research", s, 600, capability_id="cap-research-pipeline")
    assert again == first  # the stored token, not a new one
    with pytest.raises(CapabilityError, match="already exists.*different subject, scope"):
        kernel.create_capability("agent:other", s, 600, capability_id="cap-research-pipeline")
    with pytest.raises(CapabilityError, match="already exists"):
        kernel.create_capability("agent:research", scope(grant()), 600, capability_id="cap-research-pipeline")
    kernel.revoke_capability("cap-research-pipeline")
    with pytest.raises(CapabilityError, match="revoked"):
        kernel.create_capability("agent:research", s, 600, capability_id="cap-research-pipeline")
    kernel.create_capability("agent:x", s, 10, capability_id="cap-short")
    clock.advance(11)
    with pytest.raises(CapabilityError, match="expired"):
        kernel.create_capability("agent:x", s, 10, capability_id="cap-short")


def test_attenuate_subset_with_verifiable_link(kernel: Kernel) -> None:
    parent = kernel.create_capability(
        "agent:parent", scope(grant("fs", "*", max_invocations=10), grant("web", "get")), 3600
    )
    child_scope = scope(grant("fs", "read", Constraint.path_prefix("/data"), max_invocations=5))
    child = kernel.attenuate_capability(parent, child_scope, ttl_seconds=60, subject="agent:child")
    assert child.subject == "agent:child" and child.expires_at <= parent.expires_at
    assert child.expires_at == child.issued_at + 60
    (link,) = child.delegation_chain
    assert link.capability_id == parent.id and link.delegator == kernel.public_key_hex
    assert link.delegatee == "agent:child" and len(link.signature) == 128
    body = link.model_dump(exclude_none=True)
    body.pop("signature")
    from chio_kernel import canonical_json

    assert verify_hex(kernel.public_key_hex, link.signature, canonical_json(body))
    assert kernel.validate_capability(child) == (True, None)
    # by id too; expiry clamped to the parent's
    grandchild = kernel.attenuate_capability(child.id, scope(grant("fs", "read", Constraint.path_prefix("/data"),
                                                                   Constraint.max_length(50), max_invocations=2)),
                                             ttl_seconds=10**6)
    assert grandchild.expires_at == child.expires_at and len(grandchild.delegation_chain) == 2
    assert kernel.validate_capability(grandchild) == (True, None)
    # a forged link breaks validation
    forged_link = link.model_copy(update={"delegatee": "agent:mallory"})
    forged = child.model_copy(update={"delegation_chain": [forged_link]})
    assert kernel.validate_capability(forged)[0] is False


def test_attenuate_superset_refused_naming_the_grant(kernel: Kernel) -> None:
    parent = kernel.create_capability("agent:p", scope(grant("fs", "read", max_invocations=5)), 3600)
    with pytest.raises(CapabilityError, match=r"fs/write \(Invoke\) is not within the parent's grants"):
        kernel.attenuate_capability(parent, scope(grant("fs", "write")))
    with pytest.raises(CapabilityError, match="max_invocations=50"):
        kernel.attenuate_capability(parent, scope(grant("fs", "read", max_invocations=50)))
    with pytest.raises(CapabilityError, match="unknown capability"):
        kernel.attenuate_capability("cap-nope", scope(grant()))


def test_attenuate_with_chosen_id_is_idempotent(kernel: Kernel) -> None:
    parent = kernel.create_capability("agent:p", scope(grant("fs", "*")), 3600)
    child = kernel.attenuate_capability(parent, scope(grant("fs", "read")), capability_id="cap-child")
    assert kernel.attenuate_capability(parent, scope(grant("fs", "read")), capability_id="cap-child") == child
    with pytest.raises(CapabilityError, match="already exists"):
        kernel.attenuate_capability(parent, scope(grant("fs", "write")), capability_id="cap-child")


def test_revoke_cascades_and_unknown_id_fails(kernel: Kernel) -> None:
    root = kernel.create_capability("agent:root", scope(grant("fs", "*")), 3600)
    a = kernel.attenuate_capability(root, scope(grant("fs", "read")))
    b = kernel.attenuate_capability(a, scope(grant("fs", "read")))
    sibling = kernel.create_capability("agent:other", scope(grant()), 3600)
    revoked = kernel.revoke_capability(a.id)
    assert revoked == [a.id, b.id]
    assert kernel.validate_capability(root) == (True, None)
    assert kernel.validate_capability(sibling) == (True, None)
    for token in (a, b):
        ok, reason = kernel.validate_capability(token)
        assert not ok and "revoked" in reason
    assert kernel.revoke_capability(a.id) == [a.id, b.id]  # idempotent
    assert set(kernel.revoke_capability(root.id)) == {root.id, a.id, b.id}
    with pytest.raises(CapabilityError, match="unknown capability"):
        kernel.revoke_capability("cap-does-not-exist")
    info = kernel.capability_info(b.id)
    assert info is not None and info["revoked"] and info["parent_id"] == a.id


def test_capability_ids_are_time_ordered(kernel: Kernel) -> None:
    ids = [kernel.create_capability("agent:a", scope(grant()), 60).id for _ in range(50)]
    assert ids == sorted(ids) and len(set(ids)) == 50


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"subject": 7}, "subject must be a string"),
        ({"subject": ""}, "non-empty"),
        ({"scope": "fs:read"}, "scope must be"),
        ({"scope": {"grants": [{"server_id": "fs"}]}}, "not a valid ChioScope"),
        ({"scope": {"grant": []}}, "unknown field 'grant'"),
        ({"scope": {"grants": [{"server_id": "fs", "tool_name": "t", "operations": ["Invoke"],
                                "max_invocation": 3}]}}, r"unknown field 'grants\[0\]\.max_invocation'"),
        ({"scope": {"grants": [{"server_id": "fs", "tool_name": "t", "operations": ["Invoke"],
                                "constraints": [{"type": "max_length", "valeu": 3}]}]}},
         r"grants\[0\]\.constraints\[0\]\.valeu"),
        ({"ttl_seconds": 0}, "positive integer"),
        ({"ttl_seconds": "60"}, "positive integer"),
        ({"ttl_seconds": True}, "positive integer"),
        ({"capability_id": 12}, "capability_id must be a string"),
        ({"capability_id": "cap/with/slash"}, "contains '/'"),
        ({"capability_id": "cap with space"}, "letters, digits"),
        ({"rate_limit": (0, 1)}, "max_calls"),
        ({"rate_limit": (1, -1)}, "per_seconds"),
        ({"rate_limit": "10/s"}, "rate_limit must be"),
    ],
)
def test_create_bad_input_raises_value_error(kernel: Kernel, kwargs: dict, match: str) -> None:
    args = {"subject": "agent:a", "scope": scope(grant()), "ttl_seconds": 60} | kwargs
    with pytest.raises(ValueError, match=match):
        kernel.create_capability(**args)


def test_scope_dict_form_is_accepted(kernel: Kernel) -> None:
    token = kernel.create_capability(
        "agent:a", {"grants": [{"server_id": "fs", "tool_name": "read", "operations": ["Invoke"]}]}, 60
    )
    assert token.scope == ChioScope(grants=[ToolGrant(server_id="fs", tool_name="read", operations=[Operation.INVOKE])])


def test_processes_starting_on_a_fresh_dir_agree_on_one_key(tmp_path: Path) -> None:
    import subprocess
    import sys

    home = tmp_path / "fresh"
    code = "import sys; from chio_kernel import Kernel; print(Kernel(sys.argv[1]).public_key_hex)"
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(home)], stdout=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    keys = {p.communicate(timeout=60)[0].strip() for p in procs}
    assert all(p.returncode == 0 for p in procs)
    assert len(keys) == 1 and len(next(iter(keys))) == 64
    assert Kernel(home).public_key_hex in keys
    assert not [f for f in home.iterdir() if f.name.endswith(".tmp")]
