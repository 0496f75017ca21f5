"""Reading TOML files with errors that name the file."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from .errors import EdgecollabError


def read_toml(path: Path, what: str, error: type[EdgecollabError]) -> dict[str, Any]:
    """The parsed file, or ``error`` saying that ``what`` is missing or not valid TOML."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise error(f"{what} not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{what} {path} is not valid TOML: {exc}") from None
