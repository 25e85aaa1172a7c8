"""ldirectord.cf and the director's checks against hostile or careless input
(issue 13): no option injection into sendmail, every number in range with its
file and line, no catastrophic regular expression, no redirect to another host."""
from __future__ import annotations

import os
import re
import stat

import pytest

from halb.director import alerts
from halb.director.config import parse_text
from halb.errors import ConfigError


def err(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as e:
        parse_text(text, "ld.cf", resolver=lambda h, af: None, hostname="N1")
    return e.value


@pytest.mark.parametrize("text,line,pattern", [
    ('emailalert="-oQ/tmp/x"\n', 1, r"cannot start with '-'"),
    ('emailalert="root@example.org, -Cevil.cf"\n', 1, r"cannot start with '-'"),
    ('emailalertfrom="-oQ/tmp"\n', 1, r"cannot start with '-'"),
])
def test_email_addresses_cannot_be_sendmail_options(text, line, pattern):
    e = err(text)
    assert str(e).startswith(f"ld.cf:{line}: ") and re.search(pattern, e.message), str(e)


def test_sendmail_options_end_before_the_recipients(tmp_path, monkeypatch):
    """A fake sendmail records its argv: recipients come after `--`."""
    log = tmp_path / "argv"
    fake = tmp_path / "sendmail"
    fake.write_text(f"#!/bin/sh\nprintf '%s\\n' \"$@\" > {log}\ncat > /dev/null\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    alerts.send("test", "root@example.org", None, "root@n1", "running")
    argv = log.read_text().split("\n")[:-1]
    assert argv[-2:] == ["--", "root@example.org"] and argv[:3] == ["-oi", "-f", "root@n1"]
    with pytest.raises(ValueError):
        alerts.send("test", "-oQ/tmp", None, None, "running")
