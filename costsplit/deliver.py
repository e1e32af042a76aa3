"""Deliver reports by SMTP, exactly once per (report, period, recipient).

Every message goes through the sent-ledger (table ``sent_ledger``, migration m005): a row per
(report, period, recipient) with its stable Message-ID, its status (``pending``, ``sent``,
``failed``), the number of attempts and the last error. A recipient whose row says ``sent`` is
skipped, so a restarted scheduler never sends twice; a failed send is retried with backoff
(the ``sleep`` is injected), and when it still fails its row stays ``failed`` with the error —
reported, and tried again on the next run, never dropped.

SMTP is the standard library's: ``none``, ``starttls`` or ``tls`` (implicit TLS) per
``settings.smtp.security``, the server's certificate checked against the system CAs (or the
file named by ``SSL_CERT_FILE``, OpenSSL's variable, for a private CA); the user name and
password come from the environment variables named in ``settings.smtp`` (never from the file)
and are neither logged nor kept in the ledger.

The database is opened only around ledger reads and writes, not while talking to the server,
so ingest is never held up by a slow mail server.
"""

from __future__ import annotations

import dataclasses
import smtplib
import ssl
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from email.message import EmailMessage

from costsplit.config import Settings
from costsplit.errors import DeliveryError
from costsplit.store import connect

RETRY_DELAYS = (2.0, 10.0, 30.0)  # seconds before the 2nd, 3rd and 4th attempt


@dataclasses.dataclass(frozen=True, slots=True)
class Delivery:
    report: str
    period: str
    recipient: str
    status: str  # sent | failed | already-sent
    attempts: int
    message_id: str
    error: str = ""


def deliver(
    settings: Settings,
    *,
    report: str,
    period: str,
    recipients: Iterable[str],
    message_for: Callable[[str], EmailMessage],
    environ: Mapping[str, str] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    delays: tuple[float, ...] = RETRY_DELAYS,
) -> list[Delivery]:
    """Send ``message_for(recipient)`` to each recipient not yet sent; return what happened."""
    import os

    environ = os.environ if environ is None else environ
    results = []
    for recipient in dict.fromkeys(recipients):
        previous = ledger_row(settings, report, period, recipient)
        if previous and previous["status"] == "sent":
            results.append(
                Delivery(
                    report,
                    period,
                    recipient,
                    "already-sent",
                    previous["attempts"],
                    previous["message_id"],
                )
            )
            continue
        message = message_for(recipient)
        message_id = str(message["Message-ID"])
        attempts = previous["attempts"] if previous else 0
        _record(
            settings, report, period, recipient, message_id, "pending", attempts, "", clock(), None
        )
        error = ""
        for n, delay in enumerate((0.0, *delays)):
            if n:
                sleep(delay)
            attempts += 1
            try:
                send_message(settings, message, recipient, environ)
            except DeliveryError as exc:
                error = str(exc)
                _record(
                    settings,
                    report,
                    period,
                    recipient,
                    message_id,
                    "failed",
                    attempts,
                    error,
                    clock(),
                    None,
                )
                continue
            _record(
                settings,
                report,
                period,
                recipient,
                message_id,
                "sent",
                attempts,
                "",
                clock(),
                clock(),
            )
            results.append(Delivery(report, period, recipient, "sent", attempts, message_id))
            break
        else:
            results.append(
                Delivery(report, period, recipient, "failed", attempts, message_id, error)
            )
    return results


def send_message(
    settings: Settings, message: EmailMessage, recipient: str, environ: Mapping[str, str]
) -> None:
    """One SMTP transaction; any failure is a ``DeliveryError`` naming the server."""
    smtp = settings.smtp
    where = f"{smtp.host}:{smtp.port}"
    try:
        context = ssl.create_default_context()
        if smtp.security == "tls":
            client: smtplib.SMTP = smtplib.SMTP_SSL(
                smtp.host, smtp.port, timeout=smtp.timeout_seconds, context=context
            )
        else:
            client = smtplib.SMTP(smtp.host, smtp.port, timeout=smtp.timeout_seconds)
        with client:
            if smtp.security == "starttls":
                client.starttls(context=context)
            if smtp.username_env:
                user = environ.get(smtp.username_env, "")
                password = environ.get(smtp.password_env, "") if smtp.password_env else ""
                if not user:
                    raise DeliveryError(f"SMTP {where}: ${smtp.username_env} is not set")
                client.login(user, password)
            client.send_message(message, from_addr=smtp.sender, to_addrs=[recipient])
    except (smtplib.SMTPException, OSError) as exc:
        raise DeliveryError(f"SMTP {where}: cannot send to {recipient}: {exc}") from exc


def ledger_row(settings: Settings, report: str, period: str, recipient: str) -> dict | None:
    """The ledger row of (report, period, recipient), or None."""
    with connect(settings.database) as con:
        row = con.execute(
            "SELECT status, attempts, message_id, last_error FROM sent_ledger "
            "WHERE report = ? AND period = ? AND recipient = ?",
            [report, period, recipient],
        ).fetchone()
    if row is None:
        return None
    return {"status": row[0], "attempts": row[1], "message_id": row[2], "last_error": row[3]}


def ledger(settings: Settings) -> list[tuple]:
    """Every ledger row as (report, period, recipient, status, attempts, message_id, last_error)."""
    with connect(settings.database) as con:
        return con.execute(
            "SELECT report, period, recipient, status, attempts, message_id, last_error "
            "FROM sent_ledger ORDER BY report, period, recipient"
        ).fetchall()


def _record(
    settings, report, period, recipient, message_id, status, attempts, error, at, sent_at
) -> None:
    with connect(settings.database) as con:
        con.execute(
            """
            INSERT INTO sent_ledger VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
            ON CONFLICT (report, period, recipient) DO UPDATE SET
                message_id = excluded.message_id, status = excluded.status,
                attempts = excluded.attempts, last_error = excluded.last_error,
                sent_at = excluded.sent_at
            """,
            [report, period, recipient, message_id, status, attempts, error, at, sent_at],
        )
