"""A verifier written from the Chio rule alone, NOT the kernel's own code (imported by the tests):

Ed25519 (hex ``kernel_key`` / ``issuer`` / ``delegator``) over the RFC 8785 canonical JSON of the
object without its ``signature`` field. For the values these tests use (no floats, keys in the
Basic Multilingual Plane) RFC 8785 equals ``json.dumps(sort_keys=True, separators=(",", ":"),
ensure_ascii=False)`` as UTF-8.
"""

from __future__ import annotations

import json
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

__all__ = ["assert_receipt_verifies", "assert_token_verifies", "signature_ok"]


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def signature_ok(obj: dict[str, Any], public_key_hex: str) -> bool:
    """Does ``obj["signature"]`` verify under ``public_key_hex`` over ``obj`` minus ``signature``?"""
    body = {k: v for k, v in obj.items() if k != "signature"}
    try:
        Ed25519PublicKey.from_public_bytes(bytes.fromhex(public_key_hex)).verify(
            bytes.fromhex(obj["signature"]), _canonical(body)
        )
    except (InvalidSignature, ValueError, KeyError):
        return False
    return True


def assert_receipt_verifies(receipt: dict[str, Any]) -> None:
    """A tool receipt or an HttpReceipt as served: signed by its ``kernel_key``."""
    assert isinstance(receipt, dict) and len(receipt.get("kernel_key", "")) == 64, receipt
    assert signature_ok(receipt, receipt["kernel_key"]), f"receipt {receipt.get('id')} does not verify: {receipt}"


def assert_token_verifies(token: dict[str, Any]) -> None:
    """A capability token as served: signed by its ``issuer``; each delegation link by its ``delegator``."""
    assert isinstance(token, dict) and len(token.get("issuer", "")) == 64, token
    assert signature_ok(token, token["issuer"]), f"token {token.get('id')} does not verify: {token}"
    for link in token.get("delegation_chain", []):
        assert signature_ok(link, link["delegator"]), f"delegation link of {token.get('id')} does not verify"
