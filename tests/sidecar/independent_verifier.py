"""A verifier written from the Chio rule alone, NOT the kernel's own code (imported by the tests):

Ed25519 (hex ``kernel_key`` / ``issuer`` / ``delegator``) over the RFC 8785 canonical JSON of the
object without its ``signature`` field. RFC 8785 here, in a few lines from the RFC: object keys
sorted by their UTF-16 code units, no whitespace, strings as ``json.dumps(ensure_ascii=False)``
writes them, numbers as ECMAScript's ``Number.prototype.toString`` (shortest round-trip digits, no
exponent from 1e-7 to 1e21), UTF-8. (Listings on a shared sidecar include receipts of the fuzz
tests: floats and astral-plane keys do occur.)
"""

from __future__ import annotations

import json
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

__all__ = ["assert_receipt_verifies", "assert_token_verifies", "signature_ok"]


def _number(value: float) -> str:
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError("RFC 8785 has no NaN or Infinity")
    if value == int(value) and abs(value) < 1e21:
        return str(int(value))
    digits, _, exp = repr(abs(value)).partition("e")  # shortest round-trip digits, as ECMAScript's
    whole, _, fraction = digits.partition(".")
    mantissa = (whole + fraction).lstrip("0")
    n = len(whole) + int(exp or 0) - (len(whole + fraction) - len(mantissa))  # point after n digits
    mantissa = mantissa.rstrip("0") or "0"
    k = len(mantissa)
    if k <= n <= 21:
        text = mantissa + "0" * (n - k)
    elif 0 < n <= 21:
        text = mantissa[:n] + "." + mantissa[n:]
    elif -6 < n <= 0:
        text = "0." + "0" * -n + mantissa
    else:
        e = n - 1
        text = (mantissa[0] + ("." + mantissa[1:] if k > 1 else "")) + ("e+" if e >= 0 else "e-") + str(abs(e))
    return ("-" if value < 0 else "") + text


def _text(value: Any) -> str:
    if isinstance(value, dict):
        items = sorted(value.items(), key=lambda kv: kv[0].encode("utf-16-be"))
        return "{" + ",".join(json.dumps(k, ensure_ascii=False) + ":" + _text(v) for k, v in items) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_text(v) for v in value) + "]"
    if isinstance(value, float):
        return _number(value)
    return json.dumps(value, ensure_ascii=False)  # str, int, bool, None


def _canonical(value: Any) -> bytes:
    return _text(value).encode("utf-8")


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
