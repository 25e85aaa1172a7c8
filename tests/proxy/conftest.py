"""Fixtures for tests/proxy: they live in proxy_helpers.py so test modules can import its helpers by a unique name (several conftest.py exist under tests/)."""
from proxy_helpers import *  # noqa: F401,F403
