"""Whatever a caller sends, the kernel answers with a receipt or a ValueError — never anything else."""

from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from chio_sdk.models import ChioReceipt

from chio_kernel import Kernel

from kernel_helpers import grant, scope

anything = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20) | st.binary(max_size=5),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5) | st.integers(), c, max_size=3)
    | st.tuples(c, c),
    max_leaves=8,
)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    capability_id=st.sampled_from(["cap-fuzz", "cap-unknown"]) | anything,
    tool_server=st.sampled_from(["fs"]) | anything,
    tool_name=st.sampled_from(["read"]) | anything,
    parameters=st.dictionaries(st.text(max_size=8), anything, max_size=4) | anything,
    idempotency_key=st.none() | st.text(max_size=10) | anything,
    cost=st.none() | st.fixed_dictionaries({"units": st.integers(), "currency": st.text(max_size=4)}) | anything,
    operation=st.sampled_from(["Invoke", "Read"]) | anything,
)
def test_evaluate_never_raises_anything_but_value_error(
    tmp_path_factory, capability_id, tool_server, tool_name, parameters, idempotency_key, cost, operation
) -> None:
    kernel = _kernel(tmp_path_factory)
    try:
        r = kernel.evaluate(capability_id, tool_server, tool_name, parameters,
                            idempotency_key=idempotency_key, cost=cost, operation=operation)
    except ValueError:
        return
    assert isinstance(r, ChioReceipt) and r.decision.verdict in ("allow", "deny")
    assert kernel.verify_receipt(r)


_KERNELS: dict[str, Kernel] = {}


def _kernel(factory) -> Kernel:  # one kernel for all examples: fast, and the chain keeps growing
    if "k" not in _KERNELS:
        k = Kernel(Path(factory.mktemp("fuzz")))
        k.create_capability("agent:fuzz", scope(grant()), 3600, capability_id="cap-fuzz")
        _KERNELS["k"] = k
    return _KERNELS["k"]


def test_fuzzed_chain_still_verifies(tmp_path_factory) -> None:
    kernel = _kernel(tmp_path_factory)
    kernel.evaluate("cap-fuzz", "fs", "read", {"last": True})
    report = kernel.verify_chain()
    assert report.ok and report.count >= 1
