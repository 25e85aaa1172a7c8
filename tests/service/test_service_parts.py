"""The service pieces without a booted machine: sd_notify datagrams, journal
lines, config test mode (every error, exit 0/1), --version on every command,
man pages, the proxy's reload plan, a missing check client naming its extra,
scripts/install's command line."""
from __future__ import annotations

import asyncio
import gzip
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from halb import __version__, logs, sdnotify
from halb.cli.main import COMMANDS

REPO = Path(__file__).resolve().parents[2]
SEED = REPO / "examples"


def halb(*args, env=None, cwd=None):
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "halb", *args], capture_output=True, text=True, env=e,
                          cwd=cwd, timeout=60)


def test_sdnotify_sends_datagrams_to_notify_socket(tmp_path, monkeypatch):
    path = tmp_path / "notify"
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    srv.bind(str(path))
    srv.settimeout(2)
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        assert sdnotify.ready("serving")
        assert srv.recv(4096).decode().split("\n") == ["READY=1", "STATUS=serving"]
        assert sdnotify.reloading()
        msg = srv.recv(4096).decode().split("\n")
        assert msg[0] == "RELOADING=1" and msg[1].startswith("MONOTONIC_USEC=")
        assert sdnotify.stopping()
        assert srv.recv(4096) == b"STOPPING=1"
        assert sdnotify.watchdog()
        assert srv.recv(4096) == b"WATCHDOG=1"
    finally:
        srv.close()
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert not sdnotify.ready()          # outside systemd: nothing, no error


def test_watchdog_interval_is_half_of_watchdogsec(monkeypatch):
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert sdnotify.watchdog_interval() == 15.0
    monkeypatch.setenv("WATCHDOG_PID", "1")          # asked of another process
    assert sdnotify.watchdog_interval() is None


def test_journal_lines_carry_priority_and_no_stamp(tmp_path, monkeypatch):
    err = tmp_path / "err"
    with open(err, "w") as fh:
        st = os.fstat(fh.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        os.dup2(fh.fileno(), 100)
    # a child whose stderr is that file: it is "the journal"
    code = ("import logging; from halb import logs; logs.setup('x'); "
            "logging.getLogger('a').warning('careful'); logging.getLogger('a').error('broken')")
    with open(err, "w") as fh:
        subprocess.run([sys.executable, "-c", code], stderr=fh, check=True, env=dict(os.environ))
    assert err.read_text().splitlines() == ["<4>careful", "<3>broken"]


def test_file_log_has_one_stamp_and_follows_logrotate(tmp_path):
    f = tmp_path / "d.log"
    root = logs.setup("halbtest", logfile=f, stream=open(os.devnull, "w"))
    try:
        logging.getLogger("t").info("one")
        f.rename(tmp_path / "d.log.1")                     # logrotate moves it
        logging.getLogger("t").info("two")
        logs.reopen()
        logging.getLogger("t").info("three")
        first = (tmp_path / "d.log.1").read_text().splitlines()
        now = f.read_text().splitlines()
        assert len(first) == 1 and first[0].endswith("halbtest[%d]: info: one" % os.getpid())
        assert [ln.split(": ", 2)[-1] for ln in now] == ["two", "three"]
        stamp = first[0].split(" ")[0]
        assert len(stamp) == len("2026/12/03_10:24:04.123") and stamp[4] == "/" and stamp[10] == "_"
    finally:
        for h in list(root.handlers):
            root.removeHandler(h)
        logs._file_handlers.clear()


@pytest.mark.parametrize("cmd", sorted(COMMANDS))
def test_version_on_every_command(cmd):
    r = halb(cmd, "--version")
    assert r.returncode == 0, r.stderr
    assert __version__ in r.stdout


def test_heartbeat_t_reports_every_error(tmp_path):
    d = tmp_path / "ha.d"
    d.mkdir()
    (d / "ha.cf").write_text("keepalive soon\nnode N1\nbogus 1\nnode N2\nwarntime -1\n"
                             "mcast eth0 225.0.0.7 694 1 0\n")
    (d / "authkeys").write_text((SEED / "authkeys").read_text())
    (d / "authkeys").chmod(0o644)
    (d / "haresources").write_text("N1 IPaddr2::10.0.0.300\n")
    r = halb("--node", "N1", "heartbeat", "-c", str(d), "-t")
    assert r.returncode == 1
    errs = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert [e.split(":")[2] for e in errs[:3]] == ["1", "3", "5"], r.stderr
    assert any("authkeys" in e and "chmod 600" in e for e in errs)
    assert any("haresources:1" in e for e in errs)
    assert "4 error(s)" in r.stderr or "5 error(s)" in r.stderr
    # the article's files with the placeholders filled in: passes, serial lines are warnings
    for f in ("ha.cf", "haresources"):
        (d / f).write_text((SEED / f).read_text().replace("$VIP", "10.0.0.100"))
    (d / "authkeys").chmod(0o600)
    r = halb("--node", "N1", "heartbeat", "-c", str(d), "-t")
    assert r.returncode == 0, r.stderr
    assert "configuration test passed" in r.stdout and "serial" in r.stderr


def test_director_t_checks_a_bad_virtual_sections_lines(tmp_path):
    f = tmp_path / "l.cf"
    f.write_text("checktimeout=x\nvirtual=nowhere\n\treal=10.0.0.2:80 gate\n\treal=bad gate\n\tscheduler=bogus\n")
    r = halb("director", "-t", str(f))
    assert r.returncode == 1
    errs = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    # the bad virtual= line does not hide the errors of its section's lines
    assert [e.split(f"{f}:")[1].split(":")[0] for e in errs] == ["1", "2", "4", "5"], r.stderr
    f.write_text((SEED / "ldirectord.cf").read_text().replace("$VIP", "10.0.0.100")
                 .replace("$RIP1", "10.0.0.11").replace("$RIP2", "10.0.0.12"))
    r = halb("director", "-t", str(f))
    assert r.returncode == 0, r.stderr


def test_proxy_and_gmetad_t(tmp_path):
    rules = tmp_path / "p.rules"
    rules.write_text("-A -t 10.0.0.1:80 -s rr\n-a -t 10.0.0.1:80 -r 10.0.0.2:80 -m\n"
                     "-A -t 10.0.0.1:80 -s wrr\nnonsense\n-a -t 10.0.0.1:80 -r 10.0.0.3:80 -g\n")
    r = halb("proxy", "-t", "--config", str(rules))
    assert r.returncode == 1
    errs = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert [e.split("p.rules:")[1].split(":")[0] for e in errs] == ["3", "4", "5"], r.stderr
    rules.write_text("-A -t 10.0.0.1:80 -s rr\n-a -t 10.0.0.1:80 -r 10.0.0.2:80 -m\n")
    assert halb("proxy", "-t", "--config", str(rules)).returncode == 0
    g = tmp_path / "gmetad.conf"
    g.write_text('data_source "a" N1 N2\nfoo bar\ndata_source "b" 0 x\n')
    r = halb("gmetad", "-t", "-c", str(g))
    assert r.returncode == 1 and "gmetad.conf:2:" in r.stderr and "gmetad.conf:3:" in r.stderr
    assert halb("gmetad", "-t", "-c", str(SEED / "gmetad.conf")).returncode == 0


def test_man_pages_for_every_command(tmp_path):
    from halb.manpages import write_all

    names = {p.name for p in write_all(tmp_path)}
    assert names == {"halb.8.gz"} | {f"halb-{c}.8.gz" for c in COMMANDS}
    text = gzip.open(tmp_path / "halb-heartbeat.8.gz").read().decode()
    assert text.startswith(".TH HALB-HEARTBEAT 8") and "-t" in text and "halb-heartbeat.service" in text
    r = subprocess.run(["man", "-l", str(tmp_path / "halb-proxy.8.gz")], capture_output=True, text=True,
                       env={**os.environ, "MANPAGER": "cat", "PAGER": "cat", "MANWIDTH": "100"})
    if r.returncode == 0:             # man-db present: the page renders
        assert "halb proxy" in r.stdout


def test_proxy_reload_plan_touches_only_what_the_file_changed():
    from halb.ipvsadm.parse import parse_restore
    from halb.model import Table
    from halb.proxy.reload import reload_ops

    def table(text):
        t = Table(default_fwd="masq")
        t.allowed_fwd = ("masq",)
        return t.apply(parse_restore(text).ops)

    old = table("-A -t 10.0.0.1:80 -s rr\n-a -t 10.0.0.1:80 -r 10.0.0.2:80 -m\n-a -t 10.0.0.1:80 -r 10.0.0.3:80 -m\n"
                "-A -t 10.0.0.1:81\n")
    # at run time someone added a service and a real server with ipvsadm
    live = old.apply(parse_restore("-A -t 10.0.0.9:80\n-a -t 10.0.0.1:80 -r 10.0.0.7:80 -m\n").ops)
    new = table("-A -t 10.0.0.1:80 -s wrr\n-a -t 10.0.0.1:80 -r 10.0.0.2:80 -m -w 5\n"
                "-A -t 10.0.0.1:82\n")
    ops = reload_ops(live, old, new)
    kinds = sorted((o.kind, str(o.key.port), o.dest.addr if o.dest else "") for o in ops)
    assert kinds == [("add-service", "82", ""), ("del-dest", "80", "10.0.0.3"), ("del-service", "81", ""),
                     ("edit-dest", "80", "10.0.0.2"), ("edit-service", "80", "")]
    after = live.apply(ops)
    svc = after.services[new.services and next(k for k in after.services if k.port == 80)]
    assert svc.scheduler == "wrr" and {d.addr for d in svc.dests} == {"10.0.0.2", "10.0.0.7"}
    assert any(k.addr == "10.0.0.9" for k in after.services)       # run-time service kept
    assert reload_ops(after, new, new) == []                       # same file again: nothing


def test_missing_check_client_names_the_extra(monkeypatch):
    from halb.director import checks
    from halb.director.config import parse_text

    cfg = parse_text("virtual=10.0.0.1:3306\n\treal=127.0.0.1:1 masq\n\tservice=mysql\n\tchecktype=negotiate\n"
                     "\tlogin=\"u\"\n\trequest=\"SELECT 1\"\n")
    monkeypatch.setitem(sys.modules, "pymysql", None)     # the client is not installed
    v = cfg.virtuals[0]
    res = asyncio.run(checks.run(checks.CheckSpec.build(v, v.reals[0])))
    assert not res.ok and "'mysql' extra" in res.msg and "pymysql" in res.msg, res.msg
    for mod, extra in (("dns", "dns"), ("pg8000", "pgsql"), ("ldap3", "ldap")):
        monkeypatch.setitem(sys.modules, mod, None)
    cfg = parse_text("virtual=10.0.0.1:53\n\treal=127.0.0.1:1 masq\n\tservice=dns\n\tchecktype=negotiate\n"
                     "\trequest=\"example.org\"\n\treceive=\"1.2.3.4\"\n")
    v = cfg.virtuals[0]
    res = asyncio.run(checks.run(checks.CheckSpec.build(v, v.reals[0])))
    assert not res.ok and "'dns' extra" in res.msg, res.msg


def test_install_script_refuses_without_root_and_documents_itself():
    r = subprocess.run([str(REPO / "scripts/install"), "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "--uninstall" in r.stdout and "/opt/halb" in r.stdout
    r = subprocess.run([str(REPO / "scripts/install"), "--bogus"], capture_output=True, text=True)
    assert r.returncode != 0 and "unknown option" in r.stderr


def test_units_are_well_formed():
    units = sorted((REPO / "packaging/systemd").glob("*.service"))
    names = {u.name for u in units}
    assert {"halb-realserver.service", "halb-heartbeat.service", "halb-director@.service", "halb-proxy.service",
            "halb-sync@.service", "halb-gmond.service", "halb-gmetad.service", "halb-exporter.service"} <= names
    import shutil
    if shutil.which("systemd-analyze"):
        import tempfile
        with tempfile.TemporaryDirectory() as d:
            for u in units:
                Path(d, u.name).write_text(u.read_text().replace("@PREFIX@", sys.prefix))
            files = [str(Path(d, u.name)) for u in units if "@." not in u.name]
            r = subprocess.run(["systemd-analyze", "verify", *files], capture_output=True, text=True)
            bad = [ln for ln in r.stderr.splitlines() if "halb" in ln and "Unknown" in ln]
            assert not bad, r.stderr


def test_daemon_log_files_go_to_var_log_halb_on_a_real_node(monkeypatch, tmp_path):
    monkeypatch.delenv("HALB_RUN_DIR", raising=False)
    from halb.director.daemon import log_path
    from halb.context import Context
    from halb.sync.daemon import paths

    lab = Context(node="N1", run_dir=tmp_path / "N1", engine="proxy")
    assert log_path(lab, "/etc/ha.d/ldirectord.cf") == tmp_path / "N1" / "director.ldirectord.cf.log"
    assert paths(tmp_path / "N1", "backup")["log"] == tmp_path / "N1" / "sync-backup.log"
    if os.geteuid() == 0:
        existed = Path("/var/log/halb").exists()
        real = Context(node="N1", run_dir=Path("/run/halb/N1"), engine="proxy")
        assert log_path(real, "/etc/ha.d/ldirectord.cf") == Path("/var/log/halb/director.ldirectord.cf.log")
        assert paths(Path("/run/halb/N1"), "master")["log"] == Path("/var/log/halb/sync-master.log")
        if not existed:
            os.rmdir("/var/log/halb")            # this machine as it was
