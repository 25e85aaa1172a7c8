"""A lab whose nodes run real OpenSSH servers, and a dsh config for it.

`sshlab` (module scope): Lab(nodes=4, clients=1, apache=False); every node
runs Debian's /usr/sbin/sshd with its own sshd_config on its RIP, port 22,
with a host key and an authorized user key generated here. client0 gets an
ssh_config (Host N1..N4 -> RIPs, the key, a known_hosts file written here,
BatchMode, ConnectTimeout) and a dsh config dir (machines.list, group/web,
dsh.conf with remoteshell=ssh and remoteshellopt=-F<ssh_config>).

`sshlab.dsh(*args)` runs `halb dsh --config-dir DIR ARGS` inside client0.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

SSHD = "/usr/sbin/sshd"
NODES = ["N1", "N2", "N3", "N4"]


class SshLab:
    def __init__(self, lab, base: Path):
        self.lab = lab
        self.base = base
        self.conf = base / "dsh"
        self.ssh_config = base / "ssh_config"
        self.sshd: dict[str, subprocess.Popen] = {}

    def dsh_argv(self, *args, config_dir=True):
        argv = [sys.executable, "-m", "halb", "dsh"]
        if config_dir:
            argv += ["--config-dir", str(self.conf)]
        import halb
        env = dict(os.environ, PYTHONPATH=str(Path(halb.__file__).resolve().parents[1]))
        env.pop("HALB_DEBUG", None)
        return argv + [str(a) for a in args], env

    def dsh(self, *args, timeout=60, input=None, config_dir=True):
        argv, env = self.dsh_argv(*args, config_dir=config_dir)
        t0 = time.monotonic()
        r = self.lab.run("client0", argv, timeout=timeout, input=input, env=env)
        r.elapsed = time.monotonic() - t0
        return r

    def start_sshd(self, node: str):
        d = self.base / node
        log = open(d / "sshd.log", "ab")
        p = self.lab.popen(node, [SSHD, "-D", "-e", "-f", str(d / "sshd_config")],
                           stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        self.sshd[node] = p
        return p

    def stop_sshd(self, node: str):
        p = self.sshd.pop(node)
        p.terminate()
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(10)

    def wait_ssh(self, nodes, deadline=30.0):
        """Poll (from client0) until each node's sshd sends its SSH banner."""
        end = time.monotonic() + deadline
        pending = list(nodes)
        last = ""
        while pending and time.monotonic() < end:
            node = pending[0]
            sock = self.lab.socket("client0")
            sock.settimeout(5)
            try:
                sock.connect((self.lab.node(node).ip, 22))
                if sock.recv(64).startswith(b"SSH-2.0-"):
                    pending.pop(0)
                    continue
            except OSError as e:
                last = str(e)
            finally:
                sock.close()
            time.sleep(0.1)
        if pending:
            logs = {n: (self.base / n / "sshd.log").read_text(errors="replace")[-500:] for n in pending}
            raise RuntimeError(f"sshd not reachable on {pending}: {last}; logs: {logs}")


def _keygen(path: Path):
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "halb-dsh-test", "-f", str(path)],
                   check=True, capture_output=True, timeout=30)


@pytest.fixture(scope="module")
def sshlab(tmp_path_factory):
    from halb.lab import Lab

    base = tmp_path_factory.mktemp("dshlab")
    os.chmod(base, 0o755)
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege-separation dir
    lab = Lab(nodes=len(NODES), clients=1, apache=False)
    try:
        lab.up()
        s = SshLab(lab, base)
        _keygen(base / "hostkey")
        _keygen(base / "userkey")
        (base / "authorized_keys").write_text((base / "userkey.pub").read_text())
        hostpub = (base / "hostkey.pub").read_text().split()
        known = ",".join(lab.node(n).ip for n in NODES)
        (base / "known_hosts").write_text(f"{known} {hostpub[0]} {hostpub[1]}\n")
        cfg = []
        for n in NODES:
            ip = lab.node(n).ip
            d = base / n
            d.mkdir()
            (d / "sshd_config").write_text(
                f"ListenAddress {ip}\nPort 22\nHostKey {base / 'hostkey'}\n"
                f"AuthorizedKeysFile {base / 'authorized_keys'}\nPidFile none\nUsePAM no\n"
                "StrictModes no\nPermitRootLogin prohibit-password\nPasswordAuthentication no\n"
                "KbdInteractiveAuthentication no\nLogLevel VERBOSE\nMaxStartups 50\n")
            cfg.append(f"Host {n}\n  HostName {ip}\n")
        cfg.append(f"Host *\n  User root\n  IdentityFile {base / 'userkey'}\n  IdentitiesOnly yes\n"
                   f"  UserKnownHostsFile {base / 'known_hosts'}\n  StrictHostKeyChecking yes\n"
                   f"  BatchMode yes\n  ConnectTimeout 5\n  LogLevel ERROR\n")
        s.ssh_config.write_text("".join(cfg))
        (s.conf / "group").mkdir(parents=True)
        (s.conf / "machines.list").write_text("# the cluster\nN1\nN2\n\nN3\nN4\n")
        (s.conf / "group" / "web").write_text("N1\nN2\n")
        (s.conf / "dsh.conf").write_text(
            f"# as Debian ships it, plus our ssh_config\nremoteshell = ssh\n"
            f"remoteshellopt = -F{s.ssh_config}\nshowmachinenames = 0\n")
        for n in NODES:
            s.start_sshd(n)
        s.wait_ssh(NODES)
        yield s
    finally:
        lab.down()
