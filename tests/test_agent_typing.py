"""``ChioPrefectAgent`` / ``ChioTemporalAgent`` are generic in the wrapped agent's deps and output types.

mypy (strict, the project's configuration) checks ``tests/typing/check_agent_types.py``, whose
``assert_type`` lines fail if ``result.output`` is ``Any`` or the wrong type. In the same mypy run a
copy with one wrong expectation must fail, so the check is known to bite.

The engines' own packages (Prefect, Temporal, DBOS and what they pull in: SQLAlchemy, IPython, ...)
are not followed (``follow_imports = "skip"``): the governed agents' types come from pydantic-ai's
generics and ours, and a cold run is 9 s instead of 21 s. Were a wrapper's ``run`` typed through an
engine's type, ``result.output`` would be ``Any`` here and the ``assert_type`` lines would fail.
"""

from __future__ import annotations

from pathlib import Path

import pytest

mypy_api = pytest.importorskip("mypy.api", reason="mypy is in the [test] extra: pip install -e '.[test]'")

ROOT = Path(__file__).resolve().parent.parent
CHECKED = ROOT / "tests" / "typing" / "check_agent_types.py"


NOT_FOLLOWED = ["prefect.*", "temporalio.*", "dbos.*", "sqlalchemy.*", "IPython.*", "redis.*", "fastmcp.*", "mcp.*",
                "logfire.*", "opentelemetry.*", "rich.*"]


@pytest.mark.slow  # a cold strict mypy run over pydantic-ai: ~10 s
def test_result_output_is_typed_on_both_engines(tmp_path: Path) -> None:
    config = tmp_path / "pyproject.toml"  # the project's, with the engines' packages not followed
    modules = ", ".join(f'"{m}"' for m in NOT_FOLLOWED)
    config.write_text(
        (ROOT / "pyproject.toml").read_text()
        + f'\n[[tool.mypy.overrides]]\nmodule = [{modules}]\nfollow_imports = "skip"\n'
    )
    source = CHECKED.read_text()
    wrong_line = "    assert_type(result.output, Order)\n"
    assert source.count(wrong_line) == 2
    wrong = tmp_path / "check_wrong_expectation.py"
    wrong.write_text(source.replace(wrong_line, "    assert_type(result.output, str)\n"))
    out, err, _ = mypy_api.run(["--config-file", str(config), "--strict", str(CHECKED), str(wrong)])
    report = out + err
    errors = [line for line in report.splitlines() if ": error:" in line]
    assert not [line for line in errors if "check_agent_types.py" in line], report
    # both engines' wrong expectation is caught: result.output is Order, not str (nor Any)
    caught = [line for line in errors if "check_wrong_expectation.py" in line and '"Order", not "str"' in line]
    assert len(caught) == 2, report
