"""Settings: environment over file over default, and every bad value named by file, key, line."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from costsplit.config import Route, Settings, load_settings
from costsplit.errors import ConfigError
from costsplit.events import fingerprint_key

REPO = Path(__file__).resolve().parent.parent
REGIONS = "ap-southeast-1, cn-beijing, us-east-1, cn-hongkong, ap-northeast-1, eu-central-1"


def load(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> Settings:
    path = tmp_path / "costsplit.toml"
    path.write_text(text, encoding="utf-8")
    return load_settings(
        path, environ={"COSTSPLIT_HOME": str(tmp_path / "home"), **(environ or {})}, cwd=tmp_path
    )


def error_of(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, text, environ)
    return str(caught.value).replace(str(tmp_path / "costsplit.toml"), "costsplit.toml")


def test_defaults_without_a_file(tmp_path):
    settings = load_settings(environ={"COSTSPLIT_HOME": str(tmp_path / "h")}, cwd=tmp_path)
    assert settings.source is None
    assert settings.home == tmp_path / "h"
    assert settings.database == tmp_path / "h" / "costsplit.duckdb"
    assert settings.spool_dir == tmp_path / "h" / "spool"
    assert settings.fsync_interval == 0.05
    assert (settings.timezone, settings.currency) == ("Asia/Shanghai", "USD")
    assert settings.workspaces == () and settings.scenarios == ()


def test_file_is_found_by_explicit_path_then_environment_then_working_directory(tmp_path):
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "costsplit.toml").write_text('[reporting]\ncurrency = "CNY"\n')
    (tmp_path / "env.toml").write_text('[reporting]\ncurrency = "EUR"\n')
    (tmp_path / "explicit.toml").write_text('[reporting]\ncurrency = "JPY"\n')
    env = {"COSTSPLIT_HOME": str(tmp_path)}
    assert load_settings(environ=env, cwd=tmp_path).currency == "CNY"
    env_cfg = {**env, "COSTSPLIT_CONFIG": str(tmp_path / "env.toml")}
    assert load_settings(environ=env_cfg, cwd=tmp_path).currency == "EUR"
    assert (
        load_settings(tmp_path / "explicit.toml", environ=env_cfg, cwd=tmp_path).currency == "JPY"
    )


def test_environment_overrides_the_file(tmp_path):
    text = '[storage]\ndatabase = "a.duckdb"\nspool = "s"\n[reporting]\ntimezone = "UTC"\n'
    settings = load(
        tmp_path,
        text,
        {"COSTSPLIT_DATABASE": "/data/b.duckdb", "COSTSPLIT_TIMEZONE": "Europe/Berlin"},
    )
    assert settings.database == Path("/data/b.duckdb")
    assert settings.spool_dir == tmp_path / "home" / "s"
    assert settings.timezone == "Europe/Berlin"


def test_key_envs_become_fingerprints_and_the_key_is_not_kept(tmp_path):
    text = '[[workspaces]]\nid = "ws-a"\nregion = "cn-beijing"\nkey_envs = ["A_KEY", "UNSET_KEY"]\n'
    settings = load(tmp_path, text, {"A_KEY": "sk-secret-0001"})
    (workspace,) = settings.workspaces
    assert workspace.key_fingerprints == (fingerprint_key("sk-secret-0001"),)
    assert "sk-secret-0001" not in repr(settings)
    assert settings.workspace_for_fingerprint(fingerprint_key("sk-secret-0001")) is workspace


def test_the_example_configuration_is_valid():
    settings = load_settings(
        REPO / "config" / "costsplit.toml", environ={"COSTSPLIT_HOME": "/srv/costsplit"}, cwd=REPO
    )
    assert settings.home == Path("/srv/costsplit")  # the example leaves storage.home unset
    assert [w.region for w in settings.workspaces] == [
        "ap-southeast-1",
        "ap-southeast-1",
        "cn-beijing",
    ]
    assert [(s.name, s.monthly_budget, s.budget_currency) for s in settings.scenarios] == [
        ("support-bot", Decimal("1500.00"), "USD"),
        ("paper-summaries", Decimal("8000"), "CNY"),
        ("evaluation", None, ""),
    ]
    assert settings.proxy.routes == (
        Route("singapore", "https://dashscope-intl.aliyuncs.com", "ap-southeast-1"),
        Route("beijing", "https://dashscope.aliyuncs.com", "cn-beijing"),
    )
    assert (settings.smtp.username_env, settings.smtp.password_env) == (
        "COSTSPLIT_SMTP_USERNAME",
        "COSTSPLIT_SMTP_PASSWORD",
    )
    assert settings.exchange_rates[0].rate == Decimal("0.1404")


WS = '[[workspaces]]\nid = "ws-a"\nregion = "cn-beijing"\n'
RATE = '[[exchange_rates]]\nmonth = "2026-10"\nfrom = "CNY"\nto = "USD"\n'

BAD = {
    "bad TOML": (
        'x = 1\n[reporting]\ntimezone = "UTC\n',
        "costsplit.toml:3: invalid TOML: Illegal character '\\n' (column 16)",
    ),
    "unknown top-level key": (
        "bogus = 1\n",
        "costsplit.toml:1: bogus: unknown key (known: exchange_rates, prices, proxy, recording, "
        "reporting, scenarios, schedules, smtp, storage, workspaces)",
    ),
    "unknown key in a table": (
        '[reporting]\ntimezone = "UTC"\ncolour = "red"\n',
        "costsplit.toml:3: reporting.colour: unknown key "
        "(known: currency, output, templates, timezone)",
    ),
    "unknown key in the second workspace": (
        WS + '\n[[workspaces]]\nid = "ws-b"\nregion = "cn-beijing"\nnmae = "x"\n',
        "costsplit.toml:8: workspaces[1].nmae: unknown key (known: cost_centre, default_scenario, "
        "id, key_envs, key_fingerprints, models, name, owners, region)",
    ),
    "no setting stores prompts or completions": (
        "[recording]\ncapture_content = true\n",
        "costsplit.toml:2: recording.capture_content: unknown key (known: enforce_grants)",
    ),
    "wrong type": (
        '[storage]\nfsync_interval_ms = "fast"\n',
        "costsplit.toml:2: storage.fsync_interval_ms: must be an int or float, got str 'fast'",
    ),
    "wrong type (bool)": (
        '[recording]\nenforce_grants = "yes"\n',
        "costsplit.toml:2: recording.enforce_grants: must be a bool, got str 'yes'",
    ),
    "bad timezone": (
        '[reporting]\ntimezone = "Mars/Olympus"\n',
        "costsplit.toml:2: reporting.timezone: unknown time zone 'Mars/Olympus'",
    ),
    "bad timezone as a dotted key": (
        'reporting.timezone = "Nope/X"\n',
        "costsplit.toml:1: reporting.timezone: unknown time zone 'Nope/X'",
    ),
    "bad currency": (
        '[reporting]\ncurrency = "usd"\n',
        "costsplit.toml:2: reporting.currency: must be a three-letter currency code such as USD "
        "or CNY, got 'usd'",
    ),
    "bad region": (
        WS + '[[workspaces]]\nid = "ws-b"\nregion = "moon-1"\n',
        f"costsplit.toml:6: workspaces[1].region: unknown region 'moon-1' (known: {REGIONS})",
    ),
    "bad region in an inline table": (
        'workspaces = [{id = "ws-a", region = "xx"}]\n',
        f"costsplit.toml:1: workspaces[0].region: unknown region 'xx' (known: {REGIONS})",
    ),
    "duplicate workspace": (
        WS + '\n[[workspaces]]\nid = "ws-a"\nregion = "ap-southeast-1"\n',
        "costsplit.toml:6: workspaces[1].id: duplicate workspace id",
    ),
    "scenario naming an unknown workspace": (
        WS + '\n[[scenarios]]\nname = "bot"\nworkspace = "ws-zz"\n',
        "costsplit.toml:7: scenarios[0].workspace: no workspace with id 'ws-zz'",
    ),
    "bad fingerprint": (
        WS + 'key_fingerprints = ["sha256:xyz"]\n',
        "costsplit.toml:4: workspaces[0].key_fingerprints: 'sha256:xyz' is not a fingerprint "
        "(run `costsplit fingerprint`)",
    ),
    "bad rate": (
        RATE + 'rate = "abc"\n',
        "costsplit.toml:5: exchange_rates[0].rate: "
        "must be a decimal amount such as \"12.50\", got 'abc'",
    ),
    "zero rate": (
        RATE + 'rate = "0"\n',
        "costsplit.toml:5: exchange_rates[0].rate: "
        "is required and must be positive (write it as a string)",
    ),
    "rate as a float": (
        RATE + "rate = 0.14\n",
        "costsplit.toml:5: exchange_rates[0].rate: "
        'must be a decimal amount written as a string such as "0.14", got float 0.14',
    ),
    "bad month": (
        '[[exchange_rates]]\nmonth = "2026-13"\n',
        "costsplit.toml:2: exchange_rates[0].month: must be YYYY-MM, got '2026-13'",
    ),
    "negative budget": (
        WS + '[[scenarios]]\nname = "bot"\nworkspace = "ws-a"\nmonthly_budget = "-5"\n',
        "costsplit.toml:7: scenarios[0].monthly_budget: must be a non-negative amount, got '-5'",
    ),
    "bad proxy upstream": (
        '[proxy]\n[[proxy.routes]]\nname = "sg"\nupstream = "ftp://x"\n',
        "costsplit.toml:4: proxy.routes[0].upstream: must be an http(s) URL, got 'ftp://x'",
    ),
    "bad smtp port": (
        "[smtp]\nport = 99999\n",
        "costsplit.toml:2: smtp.port: must be a TCP port, got 99999",
    ),
    "bad cron": (
        '[schedules]\nmonthly_report = "every month"\n',
        "costsplit.toml:2: schedules.monthly_report: "
        "must be a five-field cron expression, got 'every month'",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_each_kind_of_bad_input_gives_its_clear_message(tmp_path, case):
    text, message = BAD[case]
    assert error_of(tmp_path, text) == message


def test_bad_values_from_the_environment_name_the_variable(tmp_path):
    assert error_of(tmp_path, "", {"COSTSPLIT_TIMEZONE": "Nowhere/Land"}) == (
        "environment COSTSPLIT_TIMEZONE: unknown time zone 'Nowhere/Land'"
    )
    assert error_of(tmp_path, "", {"COSTSPLIT_SMTP_PORT": "twenty-five"}) == (
        "environment COSTSPLIT_SMTP_PORT: must be an integer, got 'twenty-five'"
    )


def test_an_unreadable_file_is_named(tmp_path):
    with pytest.raises(ConfigError) as caught:
        load_settings(tmp_path / "missing.toml", environ={}, cwd=tmp_path)
    assert (
        str(caught.value)
        == f"{tmp_path / 'missing.toml'}: cannot read config file: No such file or directory"
    )
