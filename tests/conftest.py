"""Shared test set-up.

Tests marked `root` need root and network namespaces. Locally they are
skipped with the reason when not root; in CI (CI=true) such a skip is an
error, so a CI run can never pass without them.
"""
from __future__ import annotations

import os
import shutil

import pytest

# No test may change this machine's own network set-up through the nft
# engine: it refuses to work in the initial namespace while this is set
# (lab nodes are separate namespaces and are not affected).
os.environ.setdefault("HALB_NFT_HOST_GUARD", "1")

pytest_plugins = ["halb.lab.testing"]


def _root_problem() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces, nftables)"
    if not shutil.which("ip"):
        return "needs iproute2 (ip)"
    return None


def pytest_collection_modifyitems(config, items):
    problem = _root_problem()
    if problem is None:
        return
    if os.environ.get("CI") == "true":
        return  # pytest_runtest_setup turns these into failures
    for item in items:
        if item.get_closest_marker("root"):
            item.add_marker(pytest.mark.skip(reason=problem))


def pytest_runtest_setup(item):
    if os.environ.get("CI") == "true" and item.get_closest_marker("root"):
        problem = _root_problem()
        if problem:
            pytest.fail(f"CI must run root tests but: {problem}", pytrace=False)


@pytest.fixture
def ctx(tmp_path):
    """A halb Context with a private run dir (node name 'testnode')."""
    from halb.context import Context

    return Context(node="testnode", run_dir=tmp_path / "run", engine="proxy")
