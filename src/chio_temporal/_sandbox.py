"""What chio_temporal passes through Temporal's workflow sandbox, and why (docs/temporal.md, "The sandbox")."""

from __future__ import annotations

import dataclasses
from typing import Any

from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner

__all__ = ["PASSED_THROUGH", "with_chio_passed_through"]

PASSED_THROUGH = ("chio_durable", "chio_kernel", "chio_sdk", "chio_temporal", "beartype")
"""Modules workflow code gets from the host instead of importing afresh for each workflow run.

* ``chio_*``: the governance's results (``Evaluation``) are decoded in workflow code against the
  host's classes, which pydantic-ai (passed through) built its type adapters from;
* ``beartype``: once fastmcp is imported anywhere in the worker process (pydantic-ai's MCP toolsets
  import it), its ``py-key-value-aio`` installs beartype's import hook for the whole process, and the
  sandbox then imports all of beartype afresh through it for every workflow run (about ten times the
  CPU of a small workflow's run). pydantic-ai's own plugin passes it through too.
"""


def with_chio_passed_through(runner: Any) -> Any:
    """``runner`` with :data:`PASSED_THROUGH` passed through, when it is Temporal's sandbox.

    Args:
        runner: a ``temporalio.worker.WorkflowRunner``; any other than the sandbox is returned as is.

    Returns:
        The runner to give the worker.
    """
    if not isinstance(runner, SandboxedWorkflowRunner):
        return runner
    return dataclasses.replace(runner, restrictions=runner.restrictions.with_passthrough_modules(*PASSED_THROUGH))
