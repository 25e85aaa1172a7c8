"""A lab whose nodes run real OpenSSH servers, and a dsh config for it.

`sshlab` (module scope): Lab(nodes=4, clients=1, apache=False) set up by
halb.dsh.labssh.LabSsh: sshd (Debian's /usr/sbin/sshd, own sshd_config,
host key and authorized key generated for the run) on every node's RIP,
an ssh_config + known_hosts for client0, and a dsh config dir
(machines.list N1..N4, group/web N1 N2, dsh.conf remoteshell=ssh,
remoteshellopt=-F<ssh_config>). `sshlab.dsh(*args)` runs
`halb dsh --config-dir DIR ARGS` inside client0.
"""
from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def sshlab(tmp_path_factory):
    from halb.dsh.labssh import LabSsh
    from halb.lab import Lab

    lab = Lab(nodes=4, clients=1, apache=False)
    try:
        lab.up()
        yield LabSsh(lab, tmp_path_factory.mktemp("dshlab")).setup()
    finally:
        lab.down()
