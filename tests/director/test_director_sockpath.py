"""The director's control socket fits a unix socket path whatever the run dir's depth."""
from __future__ import annotations

import os

import pytest

from halb.context import Context
from halb.director import daemon as dmod
from halb.errors import HalbError


def test_deep_run_dir_gets_a_short_socket_name(tmp_path):
    deep = tmp_path / ("x" * (88 - len(str(tmp_path))))
    ctx = Context(node="n", run_dir=deep, engine="proxy")
    p = dmod.sock_path(ctx, "/etc/ha.d/ldirectord.cf")
    assert len(os.fsencode(str(p))) <= dmod.SUN_PATH_MAX
    # the same config gives the same socket (client and daemon meet), another config another one
    assert p == dmod.sock_path(ctx, "/etc/ha.d/ldirectord.cf")
    assert p != dmod.sock_path(ctx, "/etc/ha.d/other.cf")


def test_short_run_dir_keeps_the_readable_name(tmp_path):
    ctx = Context(node="n", run_dir=tmp_path, engine="proxy")
    assert dmod.sock_path(ctx, "/etc/ha.d/ldirectord.cf").name.startswith("director.ldirectord.cf.")


def test_run_dir_too_long_is_one_clear_error(tmp_path):
    ctx = Context(node="n", run_dir=tmp_path / ("y" * 120), engine="proxy")
    with pytest.raises(HalbError, match="too long for a control socket"):
        dmod.sock_path(ctx, "/etc/ha.d/ldirectord.cf")
