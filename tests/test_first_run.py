"""First runs on a busy machine: Prefect's temporary server gets a start limit it can meet, analytics
are off, a user's own values win, and a start timeout tells the user what to set.

Each check runs in a fresh interpreter without ``PREFECT_API_URL`` (as a new user's shell), so the
session's Prefect settings are not touched.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from demo_sections import demo_env

from chio_prefect._local import ANALYTICS_SETTING, STARTUP_TIMEOUT_SETTING

PROBE = """
import json, os
import prefect  # imported first, as in a notebook: the defaults must still take effect
from chio_prefect._local import use_local_prefect_defaults
from prefect.settings import get_current_settings
set_here = use_local_prefect_defaults()
server = get_current_settings().server
print(json.dumps({"set": set_here, "timeout": server.ephemeral.startup_timeout_seconds,
                  "analytics": server.analytics_enabled}))
"""


def _user_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    return {**env, "PREFECT_HOME": str(tmp_path / "prefect-home"), **extra}


def _probe(tmp_path: Path, **extra: str) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120, env=_user_env(tmp_path, **extra)
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_defaults_apply_after_prefect_was_imported(tmp_path: Path) -> None:
    assert _probe(tmp_path) == {
        "set": {STARTUP_TIMEOUT_SETTING: "120", ANALYTICS_SETTING: "false"},
        "timeout": 120,
        "analytics": False,
    }


def test_values_the_user_set_are_kept(tmp_path: Path) -> None:
    got = _probe(tmp_path, **{STARTUP_TIMEOUT_SETTING: "7", ANALYTICS_SETTING: "true"})
    assert got == {"set": {}, "timeout": 7, "analytics": True}


def test_a_profile_value_is_kept(tmp_path: Path) -> None:
    profiles = tmp_path / "profiles.toml"
    profiles.write_text(f'active = "mine"\n[profiles.mine]\n{STARTUP_TIMEOUT_SETTING} = "45"\n')
    got = _probe(tmp_path, PREFECT_PROFILES_PATH=str(profiles))
    assert got == {"set": {ANALYTICS_SETTING: "false"}, "timeout": 45, "analytics": False}


def test_nothing_changes_with_a_prefect_api_configured(tmp_path: Path) -> None:
    got = _probe(tmp_path, PREFECT_API_URL="http://127.0.0.1:1/api")
    assert got == {"set": {}, "timeout": 20, "analytics": True}


# The demo's kernel section and its Prefect section (the Temporal one is not what this is about), as
# `chio-durable demo` runs them: the exit code is the one the command exits with.
DEMO_PREFECT_ONLY = """
import sys
from pathlib import Path
from chio_kernel._demo import engine_sections, run
sections = [s for s in engine_sections() if s.name == "prefect"]
assert len(sections) == 1, engine_sections()
raise SystemExit(run(None, Path(sys.argv[1]), sections))
"""


@pytest.mark.slow  # the demo's Prefect section in a subprocess
@pytest.mark.prefect
def test_demo_start_timeout_prints_the_setting_and_exits_1(tmp_path: Path) -> None:
    # A start limit of 0 s: Prefect gives up before its first health check, whatever the machine's speed.
    env = _user_env(tmp_path, **{STARTUP_TIMEOUT_SETTING: "0"})
    done = subprocess.run(
        [sys.executable, "-c", DEMO_PREFECT_ONLY, str(tmp_path / "demo")],
        capture_output=True, text=True, timeout=300, env=demo_env(tmp_path, {**env, "COLUMNS": "400"}), cwd=tmp_path,
    )
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    hint = [line for line in done.stdout.splitlines() if "Prefect agent section failed" in line]
    assert len(hint) == 1, done.stdout
    assert f"did not start within 0 s. Set {STARTUP_TIMEOUT_SETTING} higher" in hint[0]
    assert "Traceback" not in done.stdout + done.stderr
    assert "Timed out while attempting to connect" not in done.stdout  # the hint replaces Prefect's raw error
