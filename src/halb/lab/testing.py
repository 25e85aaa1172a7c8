"""pytest fixtures for the lab (registered in tests/conftest.py).

    def test_something(lab):          # 2 nodes (N1, N2), 1 client, Apache
        status, body = lab.http_get("client0", f"http://{lab.node('N1').ip}/testcluster.html")

    def test_other(make_lab):         # any shape; all are torn down at the end
        lab = make_lab(nodes=3, clients=2, apache=False)

Both are marked for root use: the test itself must carry @pytest.mark.root.
The lab is always removed, also when the test fails.
"""
from __future__ import annotations

import pytest


@pytest.fixture
def make_lab():
    from halb.lab import Lab

    labs = []

    def factory(**kw):
        lab = Lab(**kw)
        labs.append(lab)
        return lab.build()

    try:
        yield factory
    finally:
        for lab in reversed(labs):
            lab.down()


@pytest.fixture
def lab(make_lab):
    """The article's cluster: N1, N2 with Apache, and client0."""
    return make_lab(nodes=2, clients=1, apache=True)
