"""Config test mode (`-t`, as keepalived -t and haproxy -c): every error of a
file, not only the first.

The parsers stop at their first error (a ConfigError naming file and line).
`all_errors` parses again with that line blanked out, and again, until the
file parses: each line error is found once, in file order. An error about the
whole file (no line) is reported too; after line errors it may be their
consequence (a bad `node` line leaves no node), and says so."""
from __future__ import annotations

import sys
from typing import Callable

from halb.errors import ConfigError, HalbError

MAX_ERRORS = 200


def all_errors(parse: Callable[[str], object], text: str,
               stand_in: Callable[[int, str], str] | None = None) -> tuple[object | None, list[HalbError]]:
    """(result of the last parse or None, errors in file order). `stand_in(line_no, text)`
    gives what replaces a bad line (default: a blank line), e.g. a valid section header
    so the lines of a section whose header is wrong are still checked as its lines."""
    lines = text.splitlines(keepends=True)
    errors: list[HalbError] = []
    blanked: set[int] = set()
    while len(errors) < MAX_ERRORS:
        try:
            return parse("".join(lines)), sorted(errors, key=_order)
        except ConfigError as e:
            ln = e.line
            if ln and 1 <= ln <= len(lines) and ln not in blanked:
                errors.append(e)
                blanked.add(ln)
                lines[ln - 1] = stand_in(ln, lines[ln - 1]) if stand_in else "\n"
                continue
            if blanked and not ln:
                e = ConfigError(e.path, None, e.message + " (perhaps because of the lines above)")
            errors.append(e)
            return None, sorted(errors, key=_order)
        except HalbError as e:
            errors.append(e)
            return None, errors
    return None, sorted(errors, key=_order)


def _order(e):
    return (getattr(e, "line", None) or 10 ** 9)


def report(errors: list[HalbError], warnings=(), checked=(), out=sys.stdout, err=sys.stderr) -> int:
    """Print warnings and errors (one line each), then a verdict; the exit code. Under
    systemd (ExecStartPre=... -t) the lines carry their journal priority."""
    from halb.sdnotify import under_journal

    e3, w4 = ("<3>", "<4>") if err is sys.stderr and under_journal() else ("", "")
    for w in warnings:
        print(f"{w4}warning: {w}", file=err)
    for e in errors:
        print(f"{e3}error: {e}", file=err)
    if errors:
        print(f"{e3}configuration test failed: {len(errors)} error(s)", file=err)
        return 1
    print("configuration test passed" + (f": {', '.join(str(c) for c in checked)}" if checked else ""), file=out)
    return 0
