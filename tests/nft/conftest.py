"""Fixtures for the nft engine's lab tests."""
from __future__ import annotations

import pytest

from nft_helpers import Director, vip_on


@pytest.fixture
def director_lab(make_lab):
    """Lab with N1 (director, holds the VIP) and N2; returns (lab, Director)."""
    lab = make_lab(nodes=2, clients=1, apache=True)
    vip_on(lab, "N1")
    d = Director(lab)
    try:
        yield lab, d
    finally:
        d.halb("nft", "flush", check=False)
