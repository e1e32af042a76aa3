"""Every test owns its world: costsplit's home is a fresh folder, warnings are errors."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def costsplit_home(tmp_path, monkeypatch):
    """Point COSTSPLIT_HOME at the test's own folder and clear settings from the environment."""
    home = tmp_path / "home"
    home.mkdir()
    for name in ("COSTSPLIT_CONFIG", "COSTSPLIT_DATABASE", "COSTSPLIT_SPOOL", "COSTSPLIT_TIMEZONE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("COSTSPLIT_HOME", str(home))
    monkeypatch.chdir(tmp_path)
    return home


@pytest.fixture
def simulator():
    """A Singapore simulator (default config: keys sk-sim-{default,support,research}-intl)."""
    from costsplit.simulator import SimulatorConfig, run_in_thread

    with run_in_thread(SimulatorConfig.default("ap-southeast-1")) as running:
        yield running


@pytest.fixture
def simulator_cn():
    """A Beijing simulator (default config: keys sk-sim-{default,support,research}-cn)."""
    from costsplit.simulator import SimulatorConfig, run_in_thread

    with run_in_thread(SimulatorConfig.default("cn-beijing")) as running:
        yield running
