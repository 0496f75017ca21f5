"""The README's Python examples run as written, against the shipped two-application cluster."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from .conftest import REPO

EXAMPLES = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)


@pytest.mark.parametrize("number", range(len(EXAMPLES)))
def test_readme_python_example_runs(number: int) -> None:
    assert len(EXAMPLES) >= 2
    done = subprocess.run(
        [sys.executable, "-c", EXAMPLES[number]], cwd=REPO, capture_output=True, text=True, timeout=240, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip()  # each example prints what it got
