"""Every notebook in notebooks/ executes top to bottom (nbclient, a real ipykernel) without error,
and its kernel process then exits with 0.

The kernel process gets the session's real Prefect API (``PREFECT_API_URL``) so a notebook that runs
flows does not start a server of its own. Notebooks assert their own outcomes in their cells.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


@pytest.mark.slow  # each notebook in its own Jupyter kernel
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_executes(path: Path, prefect_api: str, tmp_path: Path) -> None:
    nbformat = pytest.importorskip("nbformat", reason="pip install -e '.[test]' (nbformat, nbclient, ipykernel)")
    nbclient = pytest.importorskip("nbclient", reason="pip install -e '.[test]' (nbformat, nbclient, ipykernel)")

    notebook = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        notebook,
        timeout=120,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    env = {**os.environ, "PREFECT_API_URL": prefect_api, "CHIO_HOME": str(tmp_path / "chio-home")}
    # raises CellExecutionError with the failing cell's traceback; the kernel is kept to see it exit
    client.execute(env=env, cleanup_kc=False)
    process = client.km.provisioner.process  # the kernel's Popen (jupyter_client's local provisioner)
    # jupyter_client SIGTERMs a kernel still exiting after 5 s; on a loaded 2-core CI box Prefect's and
    # Temporal's teardown can take longer than that, which is not the abort this test looks for
    client.km.shutdown_wait_time = 60.0
    nbclient.util.run_sync(client.km.shutdown_kernel)()  # a graceful shutdown, as a Jupyter user's
    # 0, not an abort at interpreter exit (-6/-11: temporalio/sdk-python#300) or a kill after a hang
    assert process.returncode == 0

    errors = [
        output
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
        if output.get("output_type") == "error"
    ]
    assert errors == []
    assert any(cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code")
    check_outputs(path, notebook)


def _texts(notebook: object) -> list[tuple[str, str]]:
    """(kind, text) of every output: stream name or mime type."""
    found: list[tuple[str, str]] = []
    for cell in notebook.cells:  # type: ignore[attr-defined]
        if cell.cell_type != "code":
            continue
        for output in cell.get("outputs", []):
            if output.get("output_type") == "stream":
                found.append((output["name"], output["text"]))
            for mime, data in (output.get("data") or {}).items():
                found.append((mime, data if isinstance(data, str) else "".join(data)))
    return found


ENGINE_NOTEBOOKS = ("prefect_agent", "temporal_agent", "dbos_agent")


def check_outputs(path: Path, notebook: object) -> None:
    """What a reader sees: the receipt table (HTML, the same on both engines), no traceback, no telemetry."""
    outputs = _texts(notebook)
    tables = [text for mime, text in outputs if mime == "text/html" and 'class="chio-receipts"' in text]
    assert tables, f"{path.name}: no HTML receipt table in the outputs"
    assert all("<th>receipt</th>" in t and "<th>verdict</th>" in t for t in tables)
    assert any(">allow<" in t for t in tables)
    if path.stem in ENGINE_NOTEBOOKS:  # the engine tours show a denied call too
        assert any(">deny<" in t for t in tables)
    everything = "\n".join(text for _, text in outputs)
    assert "Traceback" not in everything, f"{path.name}: a traceback in the outputs"
    lowered = everything.lower()
    assert "telemetry" not in lowered and "analytics" not in lowered, f"{path.name}: Prefect telemetry lines"
    stderr = [text for kind, text in outputs if kind == "stderr"]
    assert stderr == [], f"{path.name}: red (stderr) output: {stderr}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_defines_its_own_agent(path: Path) -> None:
    """A notebook shows how to write the agent: nothing is imported from the demo modules."""
    text = path.read_text()
    for demo in ("chio_prefect._demo", "chio_temporal._demo", "chio_kernel._demo"):
        assert demo not in text, f"{path.name} imports {demo}"
    assert "Agent(" in text
