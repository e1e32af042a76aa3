"""costsplit: exact Model Studio (DashScope / Qwen) cost split by workspace and scenario.

The public API is imported lazily so that the command line starts fast.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "CostsplitError": "costsplit.errors",
    "ConfigError": "costsplit.errors",
    "DatabaseLocked": "costsplit.errors",
    "ModelNotGranted": "costsplit.errors",
    "Settings": "costsplit.config",
    "load_settings": "costsplit.config",
    "UsageEvent": "costsplit.events",
    "fingerprint_key": "costsplit.events",
    "Spool": "costsplit.spool",
    "open_spool": "costsplit.spool",
    "IngestResult": "costsplit.ingest",
    "ingest_spool": "costsplit.ingest",
    "scenario": "costsplit.record",
    "Recorder": "costsplit.record",
    "recording_errors": "costsplit.record",
    "RecordingTransport": "costsplit.transport",
    "AsyncRecordingTransport": "costsplit.transport",
    "recording_httpx_client": "costsplit.transport",
    "async_recording_httpx_client": "costsplit.transport",
    "Httpx2RecordingTransport": "costsplit.transport_httpx2",
    "AsyncHttpx2RecordingTransport": "costsplit.transport_httpx2",
    "recording_client": "costsplit.transport_httpx2",
    "async_recording_client": "costsplit.transport_httpx2",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'costsplit' has no attribute {name!r}")
