"""Hostile but valid input to the kernel: regex, path and domain constraints, cost units, a missing key, its errors."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from chio_sdk.models import ChioReceipt, Constraint

from chio_kernel import Kernel
from chio_kernel._kernel import KernelInputError, KernelKeyMissingError
from kernel_helpers import grant, scope


def verdict(r: ChioReceipt) -> str | None:
    """None for an allow, else the deny's guard."""
    return None if r.decision.is_allowed else r.decision.guard


# --- regex_match on RE2 ---------------------------------------------------------------------------


def test_exponential_regex_returns_and_does_not_block_another_capability(kernel: Kernel) -> None:
    # ^(a|aa)+$ on "a"*36 + "b" backtracks ~fib(37) steps in Python's re (seconds per call, holding
    # the GIL); RE2 is linear. Four such calls and an unrelated capability's call, concurrently.
    hostile = kernel.create_capability("agent:h", scope(grant("s", "t", Constraint.regex_match("^(a|aa)+$"))), 3600)
    other = kernel.create_capability("agent:o", scope(grant("fs", "read")), 3600)
    results: dict[str, ChioReceipt] = {}

    def run(name: str, cid: str, server: str, tool: str, value: str) -> None:
        results[name] = kernel.evaluate(cid, server, tool, {"q": value})

    threads = [threading.Thread(target=run, args=(f"h{i}", hostile.id, "s", "t", "a" * 36 + "b")) for i in range(4)]
    threads.append(threading.Thread(target=run, args=("other", other.id, "fs", "read", "x")))
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)  # a sanity cap only: RE2 answers in microseconds
    assert not any(t.is_alive() for t in threads), "an evaluation did not return"
    assert [verdict(results[f"h{i}"]) for i in range(4)] == ["constraints"] * 4
    assert verdict(results["other"]) is None
    assert verdict(kernel.evaluate(hostile.id, "s", "t", {"q": "a" * 37})) is None


def test_dollar_is_end_of_text(kernel: Kernel) -> None:
    # Python's re lets "$" match before a final newline; RE2 (like Rust's regex) does not
    token = kernel.create_capability("agent:a", scope(grant("s", "t", Constraint.regex_match("^[a-z]+$"))), 3600)
    assert verdict(kernel.evaluate(token.id, "s", "t", {"q": "abc"})) is None
    r = kernel.evaluate(token.id, "s", "t", {"q": "abc\n"})
    assert verdict(r) == "constraints" and "does not match" in (r.decision.reason or "")


def test_regex_match_is_a_search_as_documented(kernel: Kernel) -> None:
    # docs/kernel.md: a match anywhere (regex::is_match); anchor to constrain the whole value
    token = kernel.create_capability("agent:a", scope(grant("s", "t", Constraint.regex_match("b+"))), 3600)
    assert verdict(kernel.evaluate(token.id, "s", "t", {"q": "abbc"})) is None
    assert verdict(kernel.evaluate(token.id, "s", "t", {"q": "ac"})) == "constraints"


# --- path_prefix: control characters ----------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    ["/data/..\x00/etc/passwd", "/data/a\x00", "/data/a\nb", "/data/\x1b[2J", "/data/a\x7f", "/data/a\x85"],
)
def test_path_prefix_denies_control_characters(kernel: Kernel, value: str) -> None:
    token = kernel.create_capability("agent:a", scope(grant("fs", "read", Constraint.path_prefix("/data"))), 3600)
    r = kernel.evaluate(token.id, "fs", "read", {"path": value})
    assert verdict(r) == "constraints" and "control character" in (r.decision.reason or "")


def test_path_prefix_traversal_still_normalised(kernel: Kernel) -> None:
    token = kernel.create_capability("agent:a", scope(grant("fs", "read", Constraint.path_prefix("/data"))), 3600)
    assert verdict(kernel.evaluate(token.id, "fs", "read", {"path": "/data/a/../b.txt"})) is None
    assert verdict(kernel.evaluate(token.id, "fs", "read", {"path": "/data/./x/..."})) is None
    for bad in ("/data/../etc/passwd", "/data/a/../../etc", "//data/../etc", "data/x", "/database"):
        assert verdict(kernel.evaluate(token.id, "fs", "read", {"path": bad})) == "constraints", bad


# --- domains: normalised before any comparison --------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "evil.com\uff0f.api.example.com/x",  # U+FF0F fullwidth solidus: NFKC "/"
        "https://evil.com\uff0f.api.example.com/x",
        "evil.com\uff03.api.example.com",  # fullwidth "#"
        "evil.com\u00a0.api.example.com",  # no-break space: NFKC " "
        "a..example.com",
        "https://" + "a" * 64 + ".example.com/",  # a label over 63 characters
    ],
)
def test_domain_glob_denies_hosts_invalid_after_normalisation(kernel: Kernel, value: str) -> None:
    token = kernel.create_capability("agent:a", scope(grant("web", "get", Constraint.domain_glob("*.example.com"))), 3600)
    r = kernel.evaluate(token.id, "web", "get", {"url": value})
    assert verdict(r) == "constraints", value


def test_domains_compare_in_normal_form(kernel: Kernel) -> None:
    glob = kernel.create_capability("agent:a", scope(grant("web", "get", Constraint.domain_glob("*.Example.COM."))), 3600)
    for ok in ("https://API.example.com./x", "\uff41\uff50\uff49.example.com/x", "https://bücher.example.com/"):
        assert verdict(kernel.evaluate(glob.id, "web", "get", {"url": ok})) is None, ok
    exact = kernel.create_capability("agent:a", scope(grant("web", "get", Constraint.domain_exact("BÜCHER.example.com"))), 3600)
    assert verdict(kernel.evaluate(exact.id, "web", "get", {"url": "https://xn--bcher-kva.example.com/"})) is None
    assert verdict(kernel.evaluate(exact.id, "web", "get", {"url": "https://bucher.example.com/"})) == "constraints"


# --- cost.units bounds ----------------------------------------------------------------------------------


@pytest.mark.parametrize("units", [2**64, 2**70, 2**63, -1])
def test_cost_units_outside_int64_are_input_errors(kernel: Kernel, units: int) -> None:
    token = kernel.create_capability("agent:a", scope(grant("s", "t", max_invocations=5)), 3600)
    before = kernel.receipt_count()
    with pytest.raises(KernelInputError, match=r"from 0 to 2\^63-1"):
        kernel.evaluate(token.id, "s", "t", {}, cost={"units": units, "currency": "USD"})
    assert kernel.receipt_count() == before


def test_spent_cost_saturates_instead_of_turning_into_a_float(kernel: Kernel) -> None:
    token = kernel.create_capability("agent:a", scope(grant("s", "t", max_invocations=5)), 3600)
    for _ in range(2):
        r = kernel.evaluate(token.id, "s", "t", {}, cost={"units": 2**63 - 1, "currency": "USD"})
        assert verdict(r) is None
    spent = kernel.capability_info(token.id)["usage"][0]["cost_units"]
    assert spent == 2**63 - 1 and isinstance(spent, int)


# --- a missing kernel.key next to a used store ----------------------------------------------------------


def test_missing_key_next_to_a_used_store_refuses_to_start(tmp_path: Path) -> None:
    home = tmp_path / "kernel"
    with Kernel(home) as k:
        token = k.create_capability("agent:a", scope(grant()), 3600)
        k.evaluate(token.id, "fs", "read", {})
        public = k.public_key_hex
        key_text = (home / "kernel.key").read_text()
    (home / "kernel.key").unlink()
    with pytest.raises(KernelKeyMissingError) as info:
        Kernel(home)
    message = str(info.value)
    assert "kernel.key" in message and "Restore" in message and "--data-dir" in message
    assert "1 capabilities and 1 receipts" in message and public[:16] in message
    assert not (home / "kernel.key").exists()  # no new identity minted
    (home / "kernel.key").write_text(key_text)  # restored from the backup: everything verifies again
    with Kernel(home) as k:
        assert k.public_key_hex == public and k.verify_chain().ok
        assert verdict(k.evaluate(token.id, "fs", "read", {})) is None


def test_missing_key_next_to_an_empty_store_starts_fresh(tmp_path: Path) -> None:
    home = tmp_path / "kernel"
    Kernel(home).close()
    (home / "kernel.key").unlink()
    with Kernel(home) as k:  # nothing was signed with the old key: a new identity loses nothing
        assert len(k.public_key_hex) == 64


def test_importing_the_kernel_does_not_load_re2() -> None:
    """re2 is a C extension Temporal's workflow sandbox cannot re-import ("bad argument to internal
    function"): a workflow module that imports chio_kernel must validate, so re2 loads on first regex."""
    import subprocess
    import sys

    code = "import sys, chio_kernel, chio_temporal; print('re2' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_every_kernel_error_has_one_root_and_keeps_its_builtin_base(kernel: Kernel, chio_home: Path) -> None:
    from chio_kernel import CapabilityError, ChioKernelError, KernelInputError
    from chio_kernel import KernelKeyMissingError as Missing

    with pytest.raises(ChioKernelError) as bad_input:
        kernel.evaluate("cap-x", "fs", "read", "not a dict")  # type: ignore[arg-type]
    assert isinstance(bad_input.value, KernelInputError) and isinstance(bad_input.value, ValueError)
    with pytest.raises(ChioKernelError) as refused:
        kernel.revoke_capability("cap-never-issued")
    assert isinstance(refused.value, CapabilityError) and isinstance(refused.value, ValueError)
    assert issubclass(Missing, ChioKernelError) and issubclass(Missing, RuntimeError)
