"""Man pages generated from the commands' own help (argparse parsers, or the
USAGE text of the commands that parse by hand) and their module docstrings:
`python -m halb.manpages DIR` writes DIR/halb.8.gz and DIR/halb-COMMAND.8.gz
(so `man halb-heartbeat` works) and prints each path written."""
from __future__ import annotations

import datetime
import gzip
import importlib
import sys
from pathlib import Path

from halb import __version__
from halb.cli.main import COMMANDS, USAGE

UNITS = {
    "heartbeat": "halb-heartbeat.service",
    "director": "halb-director@.service",
    "proxy": "halb-proxy.service",
    "sync": "halb-sync@.service",
    "realserver": "halb-realserver.service",
    "gmond": "halb-gmond.service",
    "gmetad": "halb-gmetad.service",
    "exporter": "halb-exporter.service",
}


def _esc(line: str) -> str:
    line = line.replace("\\", "\\e")
    if line.startswith((".", "'")):
        line = "\\&" + line
    return line


def help_text(cmd: str) -> tuple[str, str]:
    """(usage/help text, module docstring) of one command."""
    mod = importlib.import_module(f"halb.cli.{cmd.replace('-', '_')}")
    text = None
    for name in ("_parser", "parser"):
        fn = getattr(mod, name, None)
        if callable(fn):
            try:
                text = fn().format_help()
                break
            except TypeError:
                pass
    if text is None:
        text = getattr(mod, "USAGE", "") or ""
    return text, (mod.__doc__ or "").strip()


def page(name: str, summary: str, usage: str, doc: str, unit: str | None) -> str:
    date = datetime.date.today().isoformat()
    out = [f'.TH {name.upper()} 8 "{date}" "halb {__version__}" "halb manual"',
           ".SH NAME", f"{name} \\- {_esc(summary)}", ".SH SYNOPSIS", ".nf"]
    out += [_esc(ln) for ln in usage.rstrip().splitlines()]
    out += [".fi"]
    if doc:
        out += [".SH DESCRIPTION", ".nf"] + [_esc(ln) for ln in doc.splitlines()] + [".fi"]
    if unit:
        out += [".SH SYSTEMD", f"Run as a service with {unit}: logs go to the journal",
                f"(journalctl -u {unit.replace('@.', '@*.')}), systemctl reload sends SIGHUP."]
    out += [".SH SEE ALSO", "halb(8), /usr/share/doc/halb/README.md, /usr/share/doc/halb/examples/"]
    return "\n".join(out) + "\n"


def write_all(dest) -> list[Path]:
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    pages = {"halb": page("halb", "high-availability load-balancing cluster (LVS, ldirectord, heartbeat)",
                          USAGE, (importlib.import_module("halb").__doc__ or "").strip(), None)}
    for cmd, summary in COMMANDS.items():
        try:
            usage, doc = help_text(cmd)
        except ImportError:
            continue
        pages[f"halb-{cmd}"] = page(f"halb-{cmd}", summary, usage, doc, UNITS.get(cmd))
    for name, text in pages.items():
        p = dest / f"{name}.8.gz"
        with gzip.GzipFile(p, "wb", mtime=0) as fh:
            fh.write(text.encode())
        p.chmod(0o644)
        written.append(p)
    return written


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m halb.manpages DIR")
    for p in write_all(sys.argv[1]):
        print(p)
