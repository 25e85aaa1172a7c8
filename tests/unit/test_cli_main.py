import subprocess
import sys


def run(*args, env=None):
    return subprocess.run([sys.executable, "-m", "halb", *args], capture_output=True, text=True, env=env)


def test_help_lists_the_articles_tools():
    r = run("--help")
    assert r.returncode == 0
    for cmd in ("ipvsadm", "director", "heartbeat", "dsh", "realserver", "lab"):
        assert cmd in r.stdout


def test_unknown_command_and_option_are_one_line_errors():
    r = run("frobnicate")
    assert r.returncode != 0 and "unknown command 'frobnicate'" in r.stderr
    assert "Traceback" not in r.stderr
    r = run("--node")
    assert r.returncode != 0 and "--node needs a value" in r.stderr
    r = run("--bogus", "ipvsadm")
    assert r.returncode != 0 and "unknown global option" in r.stderr
