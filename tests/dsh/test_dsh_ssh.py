"""halb dsh against real OpenSSH servers on the lab's nodes (run from client0).

Every node answers `uname -n` with its own name (N1..N4, its UTS namespace),
so the output proves which machines really ran the command.
"""
from __future__ import annotations

import pytest

pytestmark = [pytest.mark.root, pytest.mark.timeout(240)]


def lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.strip()]


def test_group_machine_and_nodeset_selection(sshlab):
    r = sshlab.dsh("-g", "web", "-m", "N4", "-m", "N2", "uname", "-n")
    assert r.returncode == 0, r.stderr
    assert lines(r.stdout) == ["N1", "N2", "N4"]  # duplicates merged, order kept

    r = sshlab.dsh("-c", "-M", "-m", "N[3-4],root@N1", "echo $(uname -n) $(id -un)")
    assert r.returncode == 0, r.stderr
    assert sorted(lines(r.stdout)) == ["N3: N3 root", "N4: N4 root", "root@N1: N1 root"]


def test_cluster_group_is_the_ha_cf_node_list(sshlab, tmp_path):
    ha = tmp_path / "ha.cf"
    ha.write_text("keepalive 2\ndeadtime 10\nbcast eth0\n# the two directors\nnode N2\nnode N3\n"
                  "auto_failback off\n")
    r = sshlab.dsh("--ha-cf", ha, "-g", "cluster", "uname", "-n")
    assert r.returncode == 0, r.stderr
    assert lines(r.stdout) == ["N2", "N3"]


def test_all_machines_wait_by_default_and_concurrent_with_c(sshlab):
    # 4 machines each sleeping 1 s. dsh's default is -w: one machine after
    # the other, in machines.list order, so at least 4 s; -c: about 1 s
    w = sshlab.dsh("-a", "--", "sleep 1; uname -n")
    c = sshlab.dsh("-c", "-a", "sleep 1; uname -n")
    assert w.returncode == 0 and c.returncode == 0, (w.stderr, c.stderr)
    assert lines(w.stdout) == ["N1", "N2", "N3", "N4"]
    assert "Traceback" not in w.stderr
    assert sorted(lines(c.stdout)) == ["N1", "N2", "N3", "N4"]
    assert w.elapsed >= 4.0
    assert c.elapsed < w.elapsed - 1.5, (c.elapsed, w.elapsed)
    # -F 2: two at a time, so at least two rounds of 1 s
    f = sshlab.dsh("-F", "2", "-a", "sleep 1; uname -n")
    assert f.returncode == 0, f.stderr
    assert sorted(lines(f.stdout)) == ["N1", "N2", "N3", "N4"]
    assert f.elapsed >= 2.0


def test_machine_name_prefix_on_stdout_and_stderr(sshlab):
    r = sshlab.dsh("-c", "-M", "-a", "echo out $(uname -n); echo err >&2")
    assert r.returncode == 0, r.stderr
    assert sorted(lines(r.stdout)) == [f"N{i}: out N{i}" for i in range(1, 5)]
    assert sorted(ln for ln in lines(r.stderr) if ln.endswith(": err")) == [
        f"N{i}: err" for i in range(1, 5)]


def test_gather_folds_identical_outputs(sshlab):
    r = sshlab.dsh("-c", "-G", "-a", "echo same; uname -n | grep -E 'N[12]' >/dev/null && echo small || echo big")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert out.count("same") == 2  # two different outputs, each shown once
    assert "N[1-2] (2)\n---------------\nsame\nsmall\n" in out
    assert "N[3-4] (2)\n---------------\nsame\nbig\n" in out
    assert out.index("N[1-2]") < out.index("N[3-4]")
    r = sshlab.dsh("-c", "-G", "-a", "echo identical")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "---------------\nN[1-4] (4)\n---------------\nidentical\n"


def test_exit_status_counts_failed_machines(sshlab):
    r = sshlab.dsh("-c", "-a", "case $(uname -n) in N2) exit 3;; N4) exit 7;; esac; echo fine")
    assert r.returncode == 2
    assert sorted(lines(r.stdout)) == ["fine", "fine"]
    assert "halb dsh: N2: exit status 3" in r.stderr
    assert "halb dsh: N4: exit status 7" in r.stderr
    assert "2 of 4 machines failed" in r.stderr
    q = sshlab.dsh("-q", "-c", "-a", "test $(uname -n) != N1")
    assert q.returncode == 1 and "failed" not in q.stderr


def test_per_host_timeout_does_not_block_the_others(sshlab):
    # -w: N2 hangs, is killed after 6 s (ample for an ssh login on a busy
    # machine), and N3, N4 still run after it
    r = sshlab.dsh("-w", "-t", "6", "-a", "test $(uname -n) = N2 && sleep 60; uname -n")
    assert r.returncode == 1, r.stderr
    assert lines(r.stdout) == ["N1", "N3", "N4"]
    assert "halb dsh: N2: timed out after 6 s" in r.stderr
    assert r.elapsed < 40


def test_down_machine_is_reported_and_others_run(sshlab):
    sshlab.lab.cut_link("N3")  # N3 unplugged: ssh gets no answer at all
    try:
        r = sshlab.dsh("-c", "-M", "-a", "uname -n", timeout=90)
    finally:
        sshlab.lab.restore_link("N3")
    assert r.returncode == 1, r.stderr
    assert sorted(lines(r.stdout)) == ["N1: N1", "N2: N2", "N4: N4"]
    assert "halb dsh: N3: ssh failed (exit 255):" in r.stderr
    assert "1 of 4 machines failed" in r.stderr

    sshlab.stop_sshd("N4")  # N4 up but no sshd: connection refused
    try:
        r = sshlab.dsh("-c", "-a", "uname -n")
    finally:
        sshlab.start_sshd("N4")
        sshlab.wait_ssh(["N3", "N4"])
    assert r.returncode == 1
    assert sorted(lines(r.stdout)) == ["N1", "N2", "N3"]
    assert "N4: ssh failed (exit 255):" in r.stderr and "refused" in r.stderr


def test_duplicate_input_and_local_script(sshlab, tmp_path):
    r = sshlab.dsh("-c", "-i", "-M", "-g", "web", "--", "sed", "s/^/got:/", input="line one\nline two\n")
    assert r.returncode == 0, r.stderr
    assert sorted(lines(r.stdout)) == ["N1: got:line one", "N1: got:line two",
                                       "N2: got:line one", "N2: got:line two"]
    script = tmp_path / "probe.sh"
    script.write_text("#!/bin/sh\necho \"$(uname -n) has $# args: $1|$2\"\nexit 0\n")
    r = sshlab.dsh("-c", "-e", script, "-m", "N1,N3", "--", "a b", "c")
    assert r.returncode == 0, r.stderr
    assert sorted(lines(r.stdout)) == ["N1 has 2 args: a b|c", "N3 has 2 args: a b|c"]


def test_dsh_conf_keys_apply(sshlab, tmp_path):
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "machines.list").write_text("N1\nN2\n")
    (conf / "dsh.conf").write_text(
        f"remoteshell=ssh\nremoteshellopt=-F{sshlab.ssh_config}\nshowmachinenames=1\nwaitshell=0\n")
    r = sshlab.dsh("--config-dir", conf, "-v", "-a", "sleep 1; uname -n", config_dir=False)
    assert r.returncode == 0, r.stderr
    assert sorted(lines(r.stdout)) == ["N1: N1", "N2: N2"]
    # -v tells what was read and what ran
    assert f"halb dsh: loading config file {conf / 'dsh.conf'}" in r.stderr
    assert "halb dsh: 2 machines (2 at a time): N1 N2" in r.stderr
    assert f"halb dsh: N2: executing ssh -o BatchMode=yes -F{sshlab.ssh_config} -- N2 'sleep 1; uname -n'" in r.stderr
