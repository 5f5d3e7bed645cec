"""The Temporal agent interceptor parses an activity type once, not once per hook of each execution."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from temporalio.testing import ActivityEnvironment

import chio_temporal.agent as temporal_agent
from chio_kernel import LocalChioClient


def test_an_activity_type_is_parsed_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    parsed: list[str] = []
    real = temporal_agent.classify_activity

    def counting(activity_type: str, agent_name: str) -> Any:
        parsed.append(activity_type)
        return real(activity_type, agent_name)

    monkeypatch.setattr(temporal_agent, "classify_activity", counting)
    interceptor = temporal_agent.ChioAgentActivityInterceptor(
        LocalChioClient(tmp_path), agent_name="support", capability_id="cap-support"
    )
    info = dataclasses.replace(ActivityEnvironment().info, activity_type="agent__support__model_request")
    # governs, resolve_grant, resolve_capability_id, map_activity, on_allowed/on_denied each ask
    answers = [interceptor.agent_activity(info) for _ in range(5)]
    assert parsed == ["agent__support__model_request"]
    assert answers[0] is not None and answers[0].kind == "model" and all(a is answers[0] for a in answers)
