"""Fixtures for the xdp engine's lab tests."""
from __future__ import annotations

import sys

import pytest

from xdp_helpers import Director, xdp_lab


@pytest.fixture
def dr_lab(make_lab):
    """N1 (director, VIP, XDP), N2 (real server), client0; (lab, Director)."""
    lab = xdp_lab(make_lab)
    d = Director(lab)
    try:
        yield lab, d
    finally:
        d.halb("xdp", "flush", check=False)
        lab.run("N2", [sys.executable, "-m", "halb", "realserver", "stop"], check=False)
