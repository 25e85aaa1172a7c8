"""Fixtures shared by the heartbeat lab tests."""
from __future__ import annotations

import sys

import pytest

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from hb_cluster import Cluster  # noqa: E402


@pytest.fixture
def cluster_factory(make_lab, tmp_path):
    """factory(apache=True, clients=1, **Cluster options): a fresh two-node lab running
    halb heartbeat configs (not started); every cluster is stopped at the end."""
    made = []

    def factory(apache=True, clients=1, **kw):
        lab = make_lab(nodes=2, clients=clients, apache=apache)
        c = Cluster(lab, tmp_path / f"c{len(made)}", **kw)
        made.append(c)
        return c

    yield factory
    for c in made:
        c.close()
