"""Deprecated path (one release): import ``run_temporal``, ``temporal_cli_path`` and
``release_temporal_clients`` from ``chio_temporal``, with a DeprecationWarning here."""

from __future__ import annotations

import warnings

from chio_temporal._devserver import release_temporal_clients, run_temporal, temporal_cli_path

warnings.warn(
    "chio_temporal.devserver is deprecated and goes away in the next release: import run_temporal, "
    "temporal_cli_path and release_temporal_clients from chio_temporal",
    DeprecationWarning,
    stacklevel=2,
)

__all__ = ["release_temporal_clients", "run_temporal", "temporal_cli_path"]
