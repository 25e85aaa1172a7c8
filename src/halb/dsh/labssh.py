"""Real OpenSSH servers on a lab's nodes, and a dsh config to reach them.

For the tests and the demo (`dsh -a -r ssh date` on the article's cluster):

    from halb.lab import Lab
    from halb.dsh.labssh import LabSsh
    with Lab(nodes=2, clients=1) as lab:
        ssh = LabSsh(lab, "/run/halb-lab/<name>/ssh").setup()   # keys, configs, sshd on every node
        r = ssh.dsh("-a", "-M", "--", "date")                   # halb dsh run inside client0

Every node runs Debian's /usr/sbin/sshd (its own sshd_config, one host key,
one authorized user key, all generated here) on its RIP, port 22, started
with lab.popen so lab.down() kills it whatever happens. The client side is
an ssh_config (Host N1.. -> RIPs, the key, a known_hosts file written here,
StrictHostKeyChecking yes, BatchMode, ConnectTimeout) and a dsh config dir:
machines.list (every node), group/web (N1, N2), dsh.conf (remoteshell=ssh,
remoteshellopt=-F<ssh_config>). Nothing outside `base` is touched but
sshd's privilege-separation directory /run/sshd.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from halb.errors import HalbError
from halb.lab.netns import stop_popen

SSHD = "/usr/sbin/sshd"


class LabSshError(HalbError):
    pass


def _keygen(path: Path):
    r = subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "halb-lab", "-f", str(path)],
                       capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        raise LabSshError(f"ssh-keygen {path}: {r.stderr.strip()}")


class LabSsh:
    def __init__(self, lab, base, client: str = "client0", connect_timeout: int = 5):
        self.lab = lab
        self.base = Path(base)
        self.client = client
        self.connect_timeout = connect_timeout
        self.conf = self.base / "dsh"
        self.ssh_config = self.base / "ssh_config"
        self.sshd: dict[str, subprocess.Popen] = {}
        self.nodes = [n.name for n in lab.nodes]

    # ---- set-up ----------------------------------------------------------
    def setup(self, wait: float = 30.0) -> "LabSsh":
        if not os.path.exists(SSHD):
            raise LabSshError(f"{SSHD} not found (Debian package openssh-server)")
        base = self.base
        base.mkdir(parents=True, exist_ok=True)
        os.chmod(base, 0o755)
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        for key in ("hostkey", "userkey"):
            for f in (base / key, base / f"{key}.pub"):
                f.unlink(missing_ok=True)
            _keygen(base / key)
        (base / "authorized_keys").write_text((base / "userkey.pub").read_text())
        kind, blob = (base / "hostkey.pub").read_text().split()[:2]
        ips = ",".join(self.lab.node(n).ip for n in self.nodes)
        (base / "known_hosts").write_text(f"{ips} {kind} {blob}\n")
        cfg = []
        for n in self.nodes:
            ip = self.lab.node(n).ip
            d = base / n
            d.mkdir(exist_ok=True)
            (d / "sshd_config").write_text(
                f"ListenAddress {ip}\nPort 22\nHostKey {base / 'hostkey'}\n"
                f"AuthorizedKeysFile {base / 'authorized_keys'}\nPidFile none\nUsePAM no\n"
                "StrictModes no\nPermitRootLogin prohibit-password\nPasswordAuthentication no\n"
                "KbdInteractiveAuthentication no\nLogLevel VERBOSE\nMaxStartups 50\n")
            cfg.append(f"Host {n}\n  HostName {ip}\n")
        cfg.append(f"Host *\n  User root\n  IdentityFile {base / 'userkey'}\n  IdentitiesOnly yes\n"
                   f"  UserKnownHostsFile {base / 'known_hosts'}\n  StrictHostKeyChecking yes\n"
                   f"  BatchMode yes\n  ConnectTimeout {self.connect_timeout}\n  LogLevel ERROR\n")
        self.ssh_config.write_text("".join(cfg))
        (self.conf / "group").mkdir(parents=True, exist_ok=True)
        (self.conf / "machines.list").write_text("# the cluster\n" + "".join(f"{n}\n" for n in self.nodes))
        (self.conf / "group" / "web").write_text("".join(f"{n}\n" for n in self.nodes[:2]))
        (self.conf / "dsh.conf").write_text(
            "# as Debian ships it, plus the lab's ssh_config\nremoteshell = ssh\n"
            f"remoteshellopt = -F{self.ssh_config}\nshowmachinenames = 0\n")
        for n in self.nodes:
            self.start_sshd(n)
        self.wait_ssh(self.nodes, wait)
        return self

    # ---- sshd ------------------------------------------------------------
    def start_sshd(self, node: str) -> subprocess.Popen:
        d = self.base / node
        with open(d / "sshd.log", "ab") as log:
            p = self.lab.popen(node, [SSHD, "-D", "-e", "-f", str(d / "sshd_config")],
                               stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.sshd[node] = p
        return p

    def stop_sshd(self, node: str) -> None:
        stop_popen(self.sshd.pop(node), 10, kill_wait=10)

    def stop(self) -> None:
        for n in list(self.sshd):
            self.stop_sshd(n)

    def wait_ssh(self, nodes, deadline: float = 30.0) -> None:
        """Poll (from the client) until each node's sshd sends its SSH banner."""
        end = time.monotonic() + deadline
        pending = list(nodes)
        last = ""
        while pending and time.monotonic() < end:
            node = pending[0]
            sock = self.lab.socket(self.client)
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
            tail = {n: (self.base / n / "sshd.log").read_text(errors="replace")[-300:].strip()
                    for n in pending}
            raise LabSshError(f"sshd not answering on {', '.join(pending)}: {last}; logs: {tail}")

    # ---- dsh -------------------------------------------------------------
    def dsh_argv(self, *args, config_dir: bool = True) -> tuple[list[str], dict]:
        """argv and env of `halb dsh [--config-dir DIR] ARGS` (this halb's source)."""
        import halb

        argv = [sys.executable, "-m", "halb", "dsh"]
        if config_dir:
            argv += ["--config-dir", str(self.conf)]
        env = dict(os.environ, PYTHONPATH=str(Path(halb.__file__).resolve().parents[1]))
        env.pop("HALB_DEBUG", None)
        return argv + [str(a) for a in args], env

    def dsh(self, *args, timeout: float = 60, input=None, config_dir: bool = True):
        """Run halb dsh inside the client; CompletedProcess (text) + .elapsed."""
        argv, env = self.dsh_argv(*args, config_dir=config_dir)
        t0 = time.monotonic()
        r = self.lab.run(self.client, argv, timeout=timeout, input=input, env=env)
        r.elapsed = time.monotonic() - t0
        return r
