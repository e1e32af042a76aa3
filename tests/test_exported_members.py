"""The public API is exactly this list: adding a name is a decision, made here too."""

from __future__ import annotations

import costsplit

EXPORTED = [
    "AsyncHttpx2RecordingTransport",
    "AsyncRecordingTransport",
    "ConfigError",
    "CostsplitError",
    "DatabaseLocked",
    "Httpx2RecordingTransport",
    "IngestResult",
    "ModelNotGranted",
    "Recorder",
    "RecordingTransport",
    "Settings",
    "Spool",
    "UsageEvent",
    "async_recording_client",
    "async_recording_httpx_client",
    "fingerprint_key",
    "ingest_spool",
    "load_settings",
    "open_spool",
    "recording_client",
    "recording_errors",
    "recording_httpx_client",
    "scenario",
]


def test_all_is_the_agreed_list():
    assert costsplit.__all__ == EXPORTED


def test_every_exported_name_resolves_to_an_object_of_that_name():
    for name in EXPORTED:
        member = getattr(costsplit, name)
        assert getattr(member, "__name__", name) == name, name


def test_an_unknown_name_is_an_attribute_error():
    try:
        costsplit.not_a_member  # noqa: B018
    except AttributeError as exc:
        assert str(exc) == "module 'costsplit' has no attribute 'not_a_member'"
    else:
        raise AssertionError("expected AttributeError")
