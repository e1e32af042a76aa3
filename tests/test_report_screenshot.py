"""Look at the report: render the demo's HTML in headless Chromium and check the picture.

The PNG is kept under the test's tmp folder (and scripts/screenshot_report.sh makes one by
hand). Skips, saying why, where Debian's chromium package is not installed.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest

from costsplit.demo import run_demo

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "screenshot_report.sh"


@pytest.mark.skipif(
    not (shutil.which("chromium") or shutil.which("chromium-browser")),
    reason="chromium is not installed (apt-get install -y chromium)",
)
def test_demo_report_renders_in_chromium(tmp_path):
    result = run_demo(
        calls=300, folder=tmp_path / "demo", now=datetime(2026, 11, 2, tzinfo=UTC), threads=4
    )
    html = next(p for p in result.files if p.suffix == ".html")
    png = tmp_path / "report.png"
    subprocess.run(["bash", str(SCRIPT), str(html), str(png), "1280x1400"], check=True, timeout=60)
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (1280, 1400)
    assert len(data) > 50_000  # a drawn page, not a blank one
