"""Building and loading the XDP program: a missing clang and a verifier
rejection are one line each; where XDP cannot run, the table goes to the
nft engine with one line saying why; the layout's pure parts."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from halb.model import Dest, Service, ServiceKey
from halb.xdp import layout as lay
from xdp_helpers import Director, get, xdp_lab

# reads a packet byte without checking the packet's end: the verifier refuses it
BAD_C = r"""
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
SEC("xdp")
int halb_xdp(struct xdp_md *ctx)
{
	unsigned char *data = (void *)(long)ctx->data;
	return data[20] == 6 ? XDP_DROP : XDP_PASS;
}
char _license[] SEC("license") = "GPL";
"""


def _halb(*args, env=None):
    return subprocess.run([sys.executable, "-m", "halb", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=60)


def test_missing_clang_is_one_line(tmp_path):
    r = _halb("xdp", "build", "--force", env={"HALB_XDP_CLANG": "", "HALB_XDP_BUILD_DIR": str(tmp_path)})
    assert r.returncode == 1
    assert r.stderr.strip().count("\n") == 0 and "clang not found" in r.stderr, r.stderr
    assert not list(tmp_path.iterdir())


@pytest.mark.root
def test_verifier_rejection_is_one_line(tmp_path):
    from halb.xdp.build import build
    src = tmp_path / "bad.c"
    src.write_text(BAD_C)
    obj = build(src, out_dir=tmp_path)
    r = _halb("xdp", "check", env={"HALB_XDP_OBJ": str(obj)})
    assert r.returncode == 1
    line = r.stderr.strip()
    assert "\n" not in line and "verifier rejected" in line and "invalid access to packet" in line, r.stderr
    # the real program passes
    r = _halb("xdp", "check")
    assert r.returncode == 0 and "passes the kernel's verifier" in r.stdout, r.stderr


@pytest.mark.root
@pytest.mark.timeout(120)
def test_where_xdp_cannot_run_the_nft_engine_serves(make_lab, tmp_path):
    """No built program and no clang; then a program the verifier refuses:
    each time one line, and the service works through the nft engine."""
    lab = xdp_lab(make_lab)
    d = Director(lab)
    url = f"http://{lab.vip}/testcluster.html"
    try:
        env = dict(lab.node_env("N1"), HALB_XDP_CLANG="", HALB_XDP_BUILD_DIR=str(tmp_path / "none"))
        r = d.halb("ipvsadm", "-A", "-t", f"{lab.vip}:80", "-s", "rr", env=env)
        err = r.stderr.strip().splitlines()
        assert len(err) == 1 and "clang is not installed" in err[0] and "nft engine" in err[0], r.stderr
        d.halb("ipvsadm", "-a", "-t", f"{lab.vip}:80", "-r", f"{lab.node('N2').ip}:80", "-g", env=env)
        assert get(lab, url) == "N2"
        assert "table inet halb" in d.sh("nft list ruleset").stdout and d.xdp_progs() == []
        d.halb("ipvsadm", "-C", env=env)
        # a program the verifier refuses: the nft engine, one line naming the verifier
        from halb.xdp.build import build
        src = tmp_path / "bad.c"
        src.write_text(BAD_C)
        env = dict(lab.node_env("N1"), HALB_XDP_OBJ=str(build(src, out_dir=tmp_path)))
        r = d.halb("ipvsadm", "-A", "-t", f"{lab.vip}:80", "-s", "rr", env=env)
        err = r.stderr.strip().splitlines()
        assert len(err) == 1 and "verifier rejected" in err[0] and "nft engine" in err[0], r.stderr
        d.halb("ipvsadm", "-a", "-t", f"{lab.vip}:80", "-r", f"{lab.node('N2').ip}:80", "-g", env=env)
        assert get(lab, url) == "N2" and d.xdp_progs() == []
        d.halb("ipvsadm", "-C", env=env)
        assert "table inet halb" not in d.sh("nft list ruleset").stdout
    finally:
        d.halb("xdp", "flush", check=False)


def test_layout_matches_the_program():
    # sizes of the C structs (bpf/halb_xdp.c)
    assert len(lay.svc_key("10.0.0.1", 80, "tcp")) == 8
    assert len(lay.svc_val(1, 2, 0, 0, 0, "255.255.255.255", 0)) == 32
    assert len(lay.dest_val("10.0.0.2", 3, 1, "02:00:00:00:00:01", "02:00:00:00:00:02", False, True)) == 28
    assert len(lay.flow_key("10.0.0.9", 4000, "10.0.0.1", 80, "tcp")) == 16
    assert len(lay.flow_val(1, False, 5)) == 16
    assert lay.parse_dest_val(lay.dest_val("10.0.0.2", 3, 7, "02:00:00:00:00:01", None, False, True)) == {
        "addr": "10.0.0.2", "ifindex": 3, "sid": 7, "mac": "02:00:00:00:00:01", "local": False,
        "live": True, "has_mac": True}
    key = ServiceKey("tcp", "10.0.0.1", 80)
    svc = Service(key, scheduler="wrr", dests=[Dest("10.0.0.2", 80, "gate", 3), Dest("10.0.0.3", 80, "gate", 1),
                                               Dest("10.0.0.4", 80, "gate", 0)])
    n, slots = lay.slots_for(svc, [11, 12, 13])
    assert n == 4 and sorted(d for _, d in slots) == [11, 11, 11, 12]  # weight 0: no slot
    assert lay.mode_of(Service(key, scheduler="sh", flags=("sh-port",))) == (lay.MODE_SADDR, lay.SF_PORT)
    assert lay.mode_of(Service(key, scheduler="dh")) == (lay.MODE_DADDR, 0)
