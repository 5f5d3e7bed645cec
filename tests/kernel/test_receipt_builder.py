"""The kernel's one receipt builder: its spliced hot path equals its general path byte for byte."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from chio_kernel import _receipts
from chio_kernel._receipts import CallRecord, _general_receipt, _spliced_receipt, build_receipt, verify_receipt_dict
from chio_kernel.canonical import canonical_json_str
from chio_kernel.signing import Signer

PARAMS: dict[str, Any] = {"path": "/data/é.txt", "n": 3}
METADATA = [
    None,
    {"workflow_id": "wf-1", "run_id": "r-1"},
    {"flow_run_id": "7a0c…", "zeta": "ünïcode ✓", "agent": "support"},
    {"dbos_workflow_id": 'quote " and \\ backslash', "\u00e9": "key not ascii"},
]


def _call() -> CallRecord:
    text = canonical_json_str(PARAMS)
    return CallRecord(
        capability_id="cap-1", tool_server="files", tool_name="read", params=PARAMS,
        param_hash=hashlib.sha256(text.encode()).hexdigest(), params_text=text,
        params_ascii=json.dumps(PARAMS, sort_keys=True, separators=(",", ":"), ensure_ascii=True),
    )


@pytest.mark.parametrize("metadata", METADATA)
@pytest.mark.parametrize("decision", [{"verdict": "allow"}, {"verdict": "deny", "guard": "scope", "reason": "nope ✗"}])
def test_the_spliced_receipt_equals_the_general_one(
    metadata: dict[str, str] | None, decision: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    signer = Signer(Ed25519PrivateKey.generate())
    monkeypatch.setattr(_receipts, "_uuid7_str", lambda: "01a24e3b-0000-7000-8000-000000000001")
    deny = None if decision["verdict"] == "allow" else (decision["guard"], decision["reason"])
    call = _call()
    args = (signer.sign_hex, signer.public_key_hex, "0" * 64, 1_765_000_000.5)
    spliced = _spliced_receipt(*args, call.capability_id, call.tool_server, call.tool_name, call.params,
                               call.params_text or "", call.params_ascii or "", call.param_hash, deny, "p" * 64, metadata)
    general = _general_receipt(*args, call, dict(decision), "p" * 64, metadata)
    assert spliced[1] == general[1]  # the stored text
    assert spliced[2] == general[2]  # its chain hash
    assert spliced[0].model_dump(exclude_none=True) == general[0].model_dump(exclude_none=True)
    assert verify_receipt_dict(json.loads(spliced[1]), {signer.public_key_hex}) is None
    # build_receipt takes the spliced path for text-only run metadata
    built = build_receipt(*args, call, decision, "p" * 64, metadata)
    assert built[1] == general[1]
