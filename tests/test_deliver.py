"""Delivery through a real SMTP server (aiosmtpd on loopback) and the sent-ledger."""

from __future__ import annotations

import email
import email.policy
import logging
import os
import ssl
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
import trustme
from aiosmtpd.controller import Controller
from reportworld import Inbox, build_world, free_port

from costsplit.config import load_settings
from costsplit.deliver import deliver, ledger
from costsplit.jobs import send_budget_alerts, send_digest, send_monthly
from costsplit.render import message_id

NOW = datetime(2026, 11, 1, 0, 30, tzinfo=UTC)


@pytest.fixture
def smtp():
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        yield controller.port, inbox
    finally:
        controller.stop()


def by_recipient(inbox: Inbox) -> dict[str, email.message.EmailMessage]:
    return {rcpt[0]: message for rcpt, message in inbox.messages}


def test_monthly_report_mail_parts_images_and_headers(tmp_path, smtp):
    port, inbox = smtp
    settings = build_world(tmp_path, smtp_port=port)
    sleeps = []
    results = send_monthly(settings, "2026-10", now=NOW, sleep=sleeps.append)
    assert [(d.report, d.recipient, d.status, d.attempts) for d in results] == [
        ("monthly", "finance@example.com", "sent", 1),
        ("statement:ws-support", "support-lead@example.com", "sent", 1),
        ("statement:ws-research", "research-lead@example.com", "sent", 1),
    ]
    assert sleeps == []
    mail = by_recipient(inbox)
    finance = mail["finance@example.com"]
    assert finance["Subject"] == "Model Studio cost split — October 2026"
    assert finance["From"] == "costsplit <costsplit@example.com>"
    assert finance["To"] == "finance@example.com"
    assert finance["Message-ID"] == message_id(
        "monthly", "2026-10", "finance@example.com", "costsplit@example.com"
    )
    assert [p.get_content_type() for p in finance.walk()] == [
        "multipart/mixed",
        "multipart/alternative",
        "text/plain",
        "multipart/related",
        "text/html",
        "image/png",
        "text/csv",
    ]
    parts = {p.get_content_type(): p for p in finance.walk()}
    html = parts["text/html"].get_content()
    assert 'src="cid:chart-1@costsplit"' in html
    assert "<svg" not in html  # clients that block SVG still show the PNG
    png = parts["image/png"]
    assert png["Content-ID"] == "<chart-1@costsplit>"
    assert png.get_content_disposition() == "inline"
    assert png.get_payload(decode=True).startswith(b"\x89PNG\r\n\x1a\n")
    assert (
        parts["text/plain"]
        .get_content()
        .replace("\r\n", "\n")
        .startswith("Model Studio cost split — October 2026\n")
    )
    assert parts["text/csv"].get_filename() == "costsplit-2026-10.csv"
    statement = mail["support-lead@example.com"]
    assert statement["Subject"] == "Workspace statement — Customer support — October 2026"
    # The files are written for finance to pull as well.
    assert sorted(p.name for p in (settings.reports_out / "2026-10").iterdir()) == [
        "costsplit-2026-10.csv",
        "costsplit-2026-10.eml",
        "costsplit-2026-10.html",
    ]


def test_a_restarted_process_does_not_send_again(tmp_path, smtp):
    port, inbox = smtp
    settings = build_world(tmp_path, smtp_port=port)
    first = send_monthly(settings, "2026-10", now=NOW)
    assert len(inbox.messages) == 3
    # A new process with the same settings and database: everything is in the ledger already.
    code = (
        "import sys; from datetime import datetime, UTC;"
        "from costsplit.config import load_settings; from costsplit.jobs import send_monthly;"
        "now = datetime(2026, 11, 1, tzinfo=UTC);"
        "r = send_monthly(load_settings(sys.argv[1]), '2026-10', now=now);"
        "print(sorted({d.status for d in r}))"
    )
    env = {**os.environ, "COSTSPLIT_HOME": str(settings.home)}
    out = subprocess.run(
        [sys.executable, "-c", code, str(settings.source)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "['already-sent']"
    assert len(inbox.messages) == 3
    assert [row[:5] for row in ledger(settings)] == [
        ("monthly", "2026-10", "finance@example.com", "sent", 1),
        ("statement:ws-research", "2026-10", "research-lead@example.com", "sent", 1),
        ("statement:ws-support", "2026-10", "support-lead@example.com", "sent", 1),
    ]
    assert {d.message_id for d in first} == {row[5] for row in ledger(settings)}


def test_failed_sends_are_retried_with_backoff_and_kept(tmp_path):
    dead = free_port()  # nothing listens here
    settings = build_world(tmp_path, smtp_port=dead)
    sleeps = []
    results = send_monthly(settings, "2026-10", now=NOW, sleep=sleeps.append)
    assert {(d.status, d.attempts) for d in results} == {("failed", 4)}
    assert sleeps == [2.0, 10.0, 30.0] * 3
    assert results[0].error.startswith(f"SMTP 127.0.0.1:{dead}: cannot send to finance@example.com")
    assert {row[3] for row in ledger(settings)} == {"failed"}
    # The server comes back: the next run sends what failed, with the same Message-ID.
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=dead)
    controller.start()
    try:
        again = send_monthly(settings, "2026-10", now=NOW, sleep=sleeps.append)
    finally:
        controller.stop()
    assert [(d.status, d.attempts) for d in again] == [("sent", 5)] * 3
    assert [d.message_id for d in again] == [d.message_id for d in results]
    assert len(inbox.messages) == 3


def test_budget_alerts_once_per_threshold_per_month(tmp_path, smtp):
    port, inbox = smtp
    settings = build_world(tmp_path, smtp_port=port, budget="0.40")
    # As of 20 October: chatbot spent more than 80% and is projected past 100%.
    now = datetime(2026, 10, 20, 4, 0, tzinfo=UTC)
    sent = send_budget_alerts(settings, now=now)
    assert [(d.report, d.period, d.recipient, d.status) for d in sent] == [
        ("budget:ws-support/chatbot:80", "2026-10", "bot-owner@example.com", "sent"),
        ("budget:ws-support/chatbot:100", "2026-10", "bot-owner@example.com", "sent"),
    ]
    subjects = sorted(m["Subject"] for _, m in inbox.messages)
    assert subjects[0].startswith("Budget ") and "chatbot (2026-10)" in subjects[0]
    again = send_budget_alerts(settings, now=now)
    assert [d.status for d in again] == ["already-sent", "already-sent"]
    assert len(inbox.messages) == 2


def test_credentials_come_from_the_environment(tmp_path, smtp):
    port, _ = smtp
    config = tmp_path / "c.toml"
    config.write_text(f'[smtp]\nport = {port}\nhost = "127.0.0.1"\nusername_env = "MY_SMTP_USER"\n')
    settings = load_settings(config)
    results = send_monthly(settings, "2026-10", now=NOW, environ={}, sleep=lambda s: None)
    assert results == []  # no recipients configured: nothing to send, nothing failed
    failed = deliver(
        settings,
        report="t",
        period="p",
        recipients=["a@example.com"],
        message_for=_plain,
        environ={},
        sleep=lambda s: None,
        delays=(),
    )
    assert failed[0].status == "failed"
    assert failed[0].error == f"SMTP 127.0.0.1:{port}: $MY_SMTP_USER is not set"
    assert Path(settings.database).exists()


def _plain(recipient: str) -> email.message.EmailMessage:
    message = email.message.EmailMessage()
    message["To"] = recipient
    message["Message-ID"] = "<x@example.com>"
    message.set_content("hello")
    return message


# --- TLS: a test CA (trustme) signs the server's certificate; the client trusts it through
# SSL_CERT_FILE, as an operator would point costsplit at a private CA. ---

SECRET = "pa55-w0rd-not-in-any-log"


class Logins:
    """An aiosmtpd authenticator accepting one user name and password, keeping every try."""

    def __init__(self):
        self.tries = []

    def __call__(self, server, session, envelope, mechanism, auth_data):
        from aiosmtpd.smtp import AuthResult

        login, password = auth_data.login.decode(), auth_data.password.decode()
        over_tls = server.transport.get_extra_info("ssl_object") is not None
        self.tries.append((mechanism, login, over_tls))
        # handled=False: aiosmtpd answers 535 itself (its default, True, answers nothing).
        return AuthResult(success=(login, password) == ("costsplit-bot", SECRET), handled=False)


@pytest.fixture
def test_ca(tmp_path, monkeypatch):
    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server)
    trusted = tmp_path / "test-ca.pem"
    ca.cert_pem.write_to_path(str(trusted))
    return server, trusted, monkeypatch


def tls_settings(tmp_path, security: str, port: int):
    config = tmp_path / f"{security}.toml"
    config.write_text(
        f'[storage]\nhome = "{tmp_path}"\n'
        f'[smtp]\nhost = "127.0.0.1"\nport = {port}\nsecurity = "{security}"\n'
        'sender = "costsplit@example.com"\ntimeout_seconds = 5\n'
        'username_env = "COSTSPLIT_TEST_SMTP_USER"\npassword_env = "COSTSPLIT_TEST_SMTP_PASSWORD"\n'
    )
    return load_settings(config, environ={}, cwd=tmp_path)


CREDENTIALS = {"COSTSPLIT_TEST_SMTP_USER": "costsplit-bot", "COSTSPLIT_TEST_SMTP_PASSWORD": SECRET}


@pytest.mark.parametrize("security", ["starttls", "tls"])
def test_starttls_and_tls_with_credentials_from_the_environment(
    tmp_path, test_ca, security, caplog, capfd
):
    server_context, trusted, monkeypatch = test_ca
    monkeypatch.setenv("SSL_CERT_FILE", str(trusted))
    caplog.set_level(logging.DEBUG)
    inbox, logins = Inbox(), Logins()
    if security == "starttls":  # the server refuses AUTH and mail before STARTTLS
        tls = {"tls_context": server_context, "require_starttls": True, "auth_require_tls": True}
    else:  # implicit TLS (aiosmtpd's auth_require_tls only knows STARTTLS)
        tls = {"ssl_context": server_context, "auth_require_tls": False}
    controller = Controller(
        inbox,
        hostname="127.0.0.1",
        port=free_port(),
        authenticator=logins,
        auth_exclude_mechanism=["LOGIN"],  # PLAIN only: a wrong password is one 535
        **tls,
    )
    controller.start()
    try:
        settings = tls_settings(tmp_path, security, controller.port)
        sent = deliver(
            settings,
            report="t",
            period="2026-10",
            recipients=["a@example.com"],
            message_for=_plain,
            environ=CREDENTIALS,
            sleep=lambda s: None,
            delays=(),
        )
        wrong = deliver(
            settings,
            report="t",
            period="2026-10",
            recipients=["b@example.com"],
            message_for=_plain,
            environ={**CREDENTIALS, "COSTSPLIT_TEST_SMTP_PASSWORD": SECRET + "-wrong"},
            sleep=lambda s: None,
            delays=(),
        )
    finally:
        controller.stop()
    assert [(d.recipient, d.status, d.error) for d in sent] == [("a@example.com", "sent", "")]
    assert [(rcpt, m["Message-ID"]) for rcpt, m in inbox.messages] == [
        (("a@example.com",), "<x@example.com>")
    ]
    # Logged in over TLS, with the user name from the environment variable the settings name.
    assert logins.tries == [("PLAIN", "costsplit-bot", True), ("PLAIN", "costsplit-bot", True)]
    assert wrong[0].status == "failed"
    assert wrong[0].error.startswith(
        f"SMTP 127.0.0.1:{controller.port}: cannot send to b@example.com: (535"
    )
    # The password is in no log record, no output, no result and no ledger row.
    out, err = capfd.readouterr()
    seen = [caplog.text, out, err, repr(sent), repr(wrong), repr(ledger(settings))]
    assert not [text for text in seen if SECRET in text]


def test_a_certificate_from_an_unknown_ca_is_refused(tmp_path, test_ca):
    server_context, _, monkeypatch = test_ca  # SSL_CERT_FILE not set: the system CAs only
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    controller = Controller(
        Inbox(), hostname="127.0.0.1", port=free_port(), tls_context=server_context
    )
    controller.start()
    try:
        settings = tls_settings(tmp_path, "starttls", controller.port)
        failed = deliver(
            settings,
            report="t",
            period="2026-10",
            recipients=["a@example.com"],
            message_for=_plain,
            environ=CREDENTIALS,
            sleep=lambda s: None,
            delays=(),
        )
    finally:
        controller.stop()
    assert failed[0].status == "failed"
    assert "CERTIFICATE_VERIFY_FAILED" in failed[0].error
    assert [row[3] for row in ledger(settings)] == ["failed"]


def test_each_scenario_owner_gets_a_digest_of_their_own_scenarios(tmp_path, smtp):
    port, inbox = smtp
    settings = build_world(tmp_path, smtp_port=port)
    now = datetime(2026, 10, 26, 1, 0, tzinfo=UTC)  # Monday 09:00 in Shanghai
    results = send_digest(settings, "2026-W43", now=now)
    assert [(d.report, d.period, d.recipient, d.status) for d in results] == [
        ("digest", "2026-W43", "bot-owner@example.com", "sent"),
        ("digest", "2026-W43", "research-lead@example.com", "sent"),
    ]
    mail = by_recipient(inbox)
    week = "2026-W43 (19 Oct – 25 Oct 2026)"
    assert {r: m["Subject"] for r, m in mail.items()} == {
        "bot-owner@example.com": f"Scenario digest — chatbot — {week}",
        "research-lead@example.com": f"Scenario digest — summaries — {week}",
    }
    # Each sees only their own scenario (the ingest time is the wall clock's: left out).
    texts = {r: _text_part(m).splitlines()[3:] for r, m in mail.items()}
    assert texts == {
        "bot-owner@example.com": [
            "",
            "This week USD 0.12 (last week 0.11, +0.01)",
            "",
            "chatbot (Customer support): USD 0.12, last week 0.11 (+0.01), 20 calls",
            "    top models: qwen-plus 0.12, qwen3-max 0.00",
            "    budget: USD 0.39 of 100.00 used (0.4%), projected 0.48 (0.5%) at month end",
        ],
        "research-lead@example.com": [
            "",
            "This week USD 0.27 (last week 0.26, +0.01)",
            "",
            "summaries (Research): USD 0.27, last week 0.26 (+0.01), 8 calls",
            "    top models: qwen3-max 0.27, qwen9-imaginary 0.00",
        ],
    }
    assert send_digest(settings, "2026-W43", now=now)[0].status == "already-sent"
    assert len(inbox.messages) == 2


def _text_part(message) -> str:
    part = next(p for p in message.walk() if p.get_content_type() == "text/plain")
    return part.get_content().replace("\r\n", "\n")
