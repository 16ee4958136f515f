"""Shared fixtures. Tests that need ../shared/data skip cleanly (with a reason) when it is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("FACERECON_SHARED_DATA", ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The research-only data folder beside the project (../shared/data), or skip."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA} (set FACERECON_SHARED_DATA)")
    return SHARED_DATA


def shared_subdir(name: str) -> Path:
    """A sub-folder of the shared data, or skip the calling test."""
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"shared data {path} not found")
    return path
