"""One way for halb's daemons to log.

- Under systemd (stderr is the journal, see sdnotify.under_journal) a line
  goes to stderr once, prefixed with its syslog priority (`<3>` error, `<4>`
  warning, `<6>` info, `<7>` debug) so `journalctl -p` filters it; no time stamp
  (the journal stamps it) and nothing else (syslog) sends it again.
- Outside systemd a line carries STAMP, the one time stamp format of halb's
  logs, and goes to stderr and to the daemon's log file (by default under
  /var/log/halb/ when the node uses the system run dir), reopened on SIGHUP and
  SIGUSR1 (logrotate's postrotate) and whenever the file was moved away.
"""
from __future__ import annotations

import logging
import logging.handlers
import os
import sys
import time
from pathlib import Path

from halb.sdnotify import under_journal

LOG_DIR = Path("/var/log/halb")
STAMP = "%Y/%m/%d_%H:%M:%S"          # heartbeat's format, + .mmm


def stamp(t: float | None = None) -> str:
    """The one time stamp format of halb's log files: 2026/12/03_10:24:04.123"""
    if t is None:
        t = time.time()
    return time.strftime(STAMP, time.localtime(t)) + f".{int(t * 1000) % 1000:03d}"


PRIO = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}
LEVEL_WORD = {"debug": 7, "info": 6, "warn": 4, "warning": 4, "error": 3, "crit": 2}


def prio_of(levelno: int) -> int:
    for lv in (logging.CRITICAL, logging.ERROR, logging.WARNING, logging.INFO):
        if levelno >= lv:
            return PRIO[lv]
    return 7


class JournalFormatter(logging.Formatter):
    def format(self, record):
        return f"<{prio_of(record.levelno)}>{record.getMessage()}" + (
            "" if not record.exc_info else "\n" + self.formatException(record.exc_info))


class StampFormatter(logging.Formatter):
    """`STAMP name[pid]: level: message`, heartbeat's line shape."""

    def __init__(self, name: str):
        super().__init__()
        self.name = name

    def format(self, record):
        msg = record.getMessage()
        if record.exc_info:
            msg += "\n" + self.formatException(record.exc_info)
        return f"{stamp(record.created)} {self.name}[{record.process}]: {record.levelname.lower()}: {msg}"


def default_logfile(run_dir, name: str) -> Path:
    """/var/log/halb/NAME.log for a node on the system run dir (/run/halb/...), else
    RUN_DIR/NAME.log (the lab and the tests give every node its own run dir)."""
    rd = Path(run_dir)
    if os.geteuid() == 0 and rd.parent == Path("/run/halb") and not os.environ.get("HALB_RUN_DIR"):
        try:
            LOG_DIR.mkdir(mode=0o750, parents=True, exist_ok=True)
            return LOG_DIR / f"{name}.log"
        except OSError:
            pass                     # a read-only /var/log: the run dir then
    return rd / f"{name}.log"


_file_handlers: list[logging.handlers.WatchedFileHandler] = []


def setup(name: str, *, level=logging.INFO, logfile=None, stream=None) -> logging.Logger:
    """Configure the root logger for daemon `name`: journal lines under systemd, else
    stamped lines on stderr (and in `logfile`). Returns the root logger."""
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.setLevel(level)
    stream = stream or sys.stderr
    if under_journal():
        h = logging.StreamHandler(stream)
        h.setFormatter(JournalFormatter())
        root.addHandler(h)
    else:
        h = logging.StreamHandler(stream)
        h.setFormatter(StampFormatter(name))
        root.addHandler(h)
    if logfile:
        add_file(name, logfile)
    return root


def add_file(name: str, logfile) -> logging.Handler | None:
    try:
        Path(logfile).parent.mkdir(parents=True, exist_ok=True)
        fh = logging.handlers.WatchedFileHandler(str(logfile))
    except OSError as e:
        logging.getLogger().warning(f"cannot open log file {logfile}: {e.strerror}; logging to stderr only")
        return None
    fh.setFormatter(StampFormatter(name))
    logging.getLogger().addHandler(fh)
    _file_handlers.append(fh)
    return fh


def reopen() -> None:
    """Reopen every log file (logrotate moved it, or SIGHUP/SIGUSR1)."""
    for fh in _file_handlers:
        fh.acquire()
        try:
            if fh.stream:
                fh.stream.close()
            fh.stream = fh._open()
        except OSError:
            pass
        finally:
            fh.release()
