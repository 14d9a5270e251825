"""Shared fixtures: the reference-data folder and a tiny trained-from-scratch model."""
from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO.parent / "shared" / "reference-data"


@pytest.fixture(scope="session")
def reference_data() -> Path:
    if not REFERENCE.is_dir():
        pytest.skip(f"reference data not found at {REFERENCE} (expected ../shared/reference-data beside the repo)")
    return REFERENCE
