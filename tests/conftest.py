from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHIPPED_MANIFEST = REPO / "models" / "zoo.toml"


@pytest.fixture(scope="session")
def shipped_manifest_path() -> Path:
    return SHIPPED_MANIFEST
