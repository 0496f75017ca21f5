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


def test_the_policies_results_say_whether_adaptive_dominates_as_their_requests_show() -> None:
    """benchmarks/policies.py's flag is what its per-request rows say, task by task: adaptive meets at least
    every baseline's feasible targets and 95 % of them, and where it and uniform both met, its measured
    quality is at least uniform's (5 points of mAP more on detection)."""
    d = json.loads((render.RESULTS / "policies.json").read_text())
    assert d["seeds"] >= 3 and set(d["tasks"]) == {"fashion-mnist", "fashion-detect"}
    verdicts = []
    for task, t in d["tasks"].items():
        met = dict.fromkeys(t["targets_met"], 0)
        feasible, gains = 0, []
        for by_policy in t["seeds"].values():
            for i, request in enumerate(by_policy["adaptive"]):
                if not request["feasible_in_run"]:
                    continue
                feasible += 1
                for policy in met:
                    met[policy] += by_policy[policy][i]["met"]
                uniform = by_policy["uniform"][i]
                if request["met"] and uniform["met"]:
                    gains.append((request["accuracy"] - uniform["accuracy"]) * 100)
        assert met == t["targets_met"] and feasible == t["feasible_requests"], task
        bar = 5.0 if task == "fashion-detect" else 0.0
        dominates = (
            all(met["adaptive"] >= met[b] for b in ("uniform", "proportional", "equal"))
            and met["adaptive"] >= 0.95 * feasible
            and bool(gains)
            and sum(gains) / len(gains) >= bar
        )
        assert t["adaptive"]["dominates"] == dominates, task
        verdicts.append(dominates)
    assert d["adaptive_dominates"] == all(verdicts)
