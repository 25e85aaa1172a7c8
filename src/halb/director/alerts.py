"""E-mail alerts as ldirectord sends them (ld_emailalert_net_smtp).

With `smtp=` the message goes to that SMTP server (halb also accepts
`host:port`); without it, to the local sendmail if there is one.
"""
from __future__ import annotations

import getpass
import os
import re
import shutil
import smtplib
import socket
import subprocess
from email.message import EmailMessage


def split_server(smtp: str) -> tuple[str, int]:
    m = re.match(r"^\[([0-9A-Fa-f:.]+)\](?::(\d+))?$", smtp)
    if m:
        return m.group(1), int(m.group(2) or 25)
    m = re.match(r"^([^:]+)(?::(\d+))?$", smtp)
    if m:
        return m.group(1), int(m.group(2) or 25)
    return smtp, 25


def envelope_from_is_option(sender: str | None) -> bool:
    return bool(sender) and re.sub(r"^.*<([^>]*)>.*$", r"\1", sender).startswith("-")


def build_message(subject: str, to: str, sender: str | None, status: str,
                  hostname: str | None = None) -> EmailMessage:
    host = hostname or socket.gethostname()
    try:
        user = getpass.getuser()
    except Exception:
        user = "root"
    msg = EmailMessage()
    msg["From"] = sender or f"{user}@{host}"
    msg["To"] = to
    msg["Subject"] = subject
    msg.set_content(f"ldirectord host: {host}\nLog-Message: {subject}\nDaemon-Status: {status}\n")
    return msg


def send(subject: str, to: str, smtp: str | None, sender: str | None, status: str,
         timeout: float = 10.0) -> None:
    """Send one alert (blocking; run it in a thread). Raises OSError/SMTPException."""
    msg = build_message(subject, to, sender, status)
    rcpts = [a.strip() for a in to.split(",") if a.strip()]
    if any(a.startswith("-") for a in rcpts) or envelope_from_is_option(sender):
        raise ValueError(f"refusing e-mail addresses that start with '-' ({to!r})")
    envelope_from = re.sub(r"^.*<([^>]*)>.*$", r"\1", msg["From"])
    if smtp:
        host, port = split_server(smtp)
        with smtplib.SMTP(host, port, timeout=timeout) as s:
            s.send_message(msg, from_addr=envelope_from, to_addrs=rcpts)
        return
    sendmail = shutil.which("sendmail") or ("/usr/sbin/sendmail" if os.path.exists("/usr/sbin/sendmail") else None)
    if not sendmail:
        raise OSError("no smtp= server configured and no local sendmail")
    subprocess.run([sendmail, "-oi", "-f", envelope_from, "--", *rcpts], input=msg.as_bytes(),
                   check=True, timeout=timeout, capture_output=True)
