"""Last release's public module paths stay importable for one release, each with a DeprecationWarning."""

from __future__ import annotations

import subprocess
import sys

import pytest

OLD_PATHS = {
    "chio_temporal.agent": ["ChioTemporalAgent", "receipt_ids_in_messages", "RECEIPT_METADATA_KEY"],
    "chio_temporal.devserver": ["run_temporal", "temporal_cli_path", "release_temporal_clients"],
    "chio_prefect.agent": ["ChioPrefectAgent", "ReceiptIdCachePolicy", "prefect_run_identity", "with_receipt_cache_key"],
    "chio_kernel.kernel": ["Kernel", "ChainReport", "CapabilityError", "KernelInputError", "resolve_store", "uuid7"],
}


@pytest.mark.parametrize("module", sorted(OLD_PATHS))
def test_old_path_imports_with_a_deprecation_warning(module: str) -> None:
    names = ", ".join(OLD_PATHS[module])
    code = (
        "import warnings\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        f"    from {module} import {names}\n"
        "msgs = [str(w.message) for w in caught if issubclass(w.category, DeprecationWarning)]\n"
        f"assert any({module!r} in m and 'deprecated' in m for m in msgs), msgs\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_the_warning_points_at_the_importer() -> None:
    done = subprocess.run([sys.executable, "-c", "import chio_kernel.kernel"], capture_output=True, text=True,
                          timeout=60)  # default filters show a DeprecationWarning raised in __main__ only
    assert "DeprecationWarning" in done.stderr and "chio_kernel.kernel is deprecated" in done.stderr
