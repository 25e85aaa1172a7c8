"""Fixtures for tests/sched: they live in sched_helpers.py so test modules can import its helpers by a unique name (several conftest.py exist under tests/)."""
from sched_helpers import *  # noqa: F401,F403
