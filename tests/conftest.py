"""Shared fixtures."""

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Keep tests off the user's cache and quiet about thread oversubscription.
os.environ.setdefault("EMOJIDIFF_CACHE", str(REPO / "outputs" / ".test-cache"))


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO
