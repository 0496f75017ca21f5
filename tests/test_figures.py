"""The figures in README.md and docs/benchmarks.md are what the results files say, and every results
file says which commit it ran on."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import render  # noqa: E402


def test_every_figure_block_is_what_the_results_render() -> None:
    for path in render.DOCS:
        text = path.read_text()
        assert render.BLOCK.search(text), f"{path.name} quotes no rendered figures"
        assert render.render(text) == text, f"stale figures in {path.name}: run benchmarks/render.py"


def test_every_block_names_a_known_renderer() -> None:
    for path in render.DOCS:
        for match in render.BLOCK.finditer(path.read_text()):
            assert match.group(2) in render.BLOCKS, match.group(2)


def test_every_results_file_records_how_it_was_produced() -> None:
    files = sorted(render.RESULTS.glob("*.json"))
    assert files
    for path in files:
        data = json.loads(path.read_text())
        for key in ("commit", "date", "command", "machine"):
            assert key in data, f"{path.name} lacks {key!r}"
        assert {"cpu", "cpus"} <= set(data["machine"]), path.name
        assert not data.get("code_modified"), f"{path.name} ran on code that differed from its commit"
        known = subprocess.run(["git", "-C", str(ROOT), "cat-file", "-e", f"{data['commit']}^{{commit}}"], check=False)
        assert known.returncode == 0, f"{path.name}: commit {data['commit']} is not in this repository's history"
