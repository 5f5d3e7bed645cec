"""Seed 000, "Testing": the sample's two tests, verbatim.

The sample uses ``PIPELINE_SCOPE`` without defining it; a test module that runs it defines it. Its
task ``double`` lives on tool server ``"srv"``, so this module's ``PIPELINE_SCOPE`` grants
``srv/double`` — the flow scope is an envelope, and a scope that does not grant the task's tool
denies it (``test_seed_samples.test_testing_sample_with_the_quickstart_scope_is_enveloped``).
"""

import pytest
from chio_sdk.models import ChioScope, Operation, ToolGrant

PIPELINE_SCOPE = ChioScope(
    grants=[ToolGrant(server_id="srv", tool_name="double", operations=[Operation.INVOKE])]
)

# ---- the sample, as written ----
from chio_sdk.testing import allow_all, deny_all  # noqa: E402
from chio_prefect import chio_task, chio_flow  # noqa: E402


def test_pipeline_happy_path():
    client = allow_all()

    @chio_task(tool_server="srv", chio_client=client)
    def double(x: int) -> int:
        return x * 2

    @chio_flow(
        scope=PIPELINE_SCOPE,
        capability_id="cap-test",
        tool_server="srv",
        chio_client=client,
    )
    def pipeline() -> int:
        return double(21)

    assert pipeline() == 42


def test_pipeline_denied():
    client = deny_all(reason="budget exceeded")

    @chio_task(tool_server="srv", chio_client=client)
    def double(x: int) -> int:
        return x * 2

    with pytest.raises(PermissionError):
        double(21)
