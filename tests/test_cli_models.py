"""``edgecollab models`` commands, run as a user would run them."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import tomli_w

from .conftest import SHIPPED_MANIFEST

CHEAP = ["linear", "mlp-64"]


def edgecollab(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgecollab", *args], capture_output=True, text=True, check=False, timeout=240
    )


def copy_zoo(tmp_path: Path, names: list[str], edit: dict[str, dict[str, object]] | None = None) -> Path:
    """A manifest in tmp_path with only ``names``, their files and the test set, optionally edited."""
    data = tomllib.loads(SHIPPED_MANIFEST.read_text())
    data["variant"] = [v for v in data["variant"] if v["name"] in names]
    for v in data["variant"]:
        (tmp_path / v["file"]).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(SHIPPED_MANIFEST.parent / v["file"], tmp_path / v["file"])
        v.update((edit or {}).get(v["name"], {}))
    shutil.copytree(SHIPPED_MANIFEST.parent / "data", tmp_path / "data")
    (tmp_path / "zoo.toml").write_text(tomli_w.dumps(data))
    return tmp_path / "zoo.toml"


def test_list_shows_every_variant() -> None:
    done = edgecollab("models", "list", "--json", "--manifest", str(SHIPPED_MANIFEST))
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    shipped = tomllib.loads(SHIPPED_MANIFEST.read_text())["variant"]
    assert sorted(r["name"] for r in rows) == sorted(v["name"] for v in shipped)
    assert all(r["bytes"] > 0 and {"accuracy", "macs", "params", "quantized"} <= r.keys() for r in rows)


def test_verify_json_reports_each_variant(tmp_path: Path) -> None:
    done = edgecollab("models", "verify", "--json", "--manifest", str(copy_zoo(tmp_path, CHEAP)))
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    assert [r["name"] for r in rows] == CHEAP
    for r in rows:
        assert r["sha256_ok"] is True
        assert abs(r["accuracy_measured"] - r["accuracy_manifest"]) <= 0.002
        assert r["ips_b1"] > 0 and r["ips_b32"] > 0


def test_verify_fails_on_wrong_accuracy_or_digest(tmp_path: Path) -> None:
    manifest = copy_zoo(tmp_path, CHEAP, edit={"linear": {"accuracy": 0.99}, "mlp-64": {"sha256": "0" * 64}})
    done = edgecollab("models", "verify", "--json", "--manifest", str(manifest))
    assert done.returncode == 1
    rows = {r["name"]: r for r in json.loads(done.stdout)}
    assert rows["linear"]["ok"] is False and rows["linear"]["sha256_ok"] is True
    assert rows["mlp-64"]["ok"] is False and rows["mlp-64"]["sha256_ok"] is False
    assert "verification failed for: linear, mlp-64" in done.stderr


def test_bad_manifest_gives_one_clear_line_and_exit_2(tmp_path: Path) -> None:
    done = edgecollab("models", "list", "--manifest", str(tmp_path / "missing.toml"))
    assert done.returncode == 2
    assert done.stderr.strip() == f"error: model manifest not found: {tmp_path / 'missing.toml'}"
    assert "Traceback" not in done.stderr


def test_inspect_counts_what_the_manifest_says() -> None:
    shipped = tomllib.loads(SHIPPED_MANIFEST.read_text())["variant"][0]
    done = edgecollab("models", "inspect", str(SHIPPED_MANIFEST.parent / shipped["file"]))
    assert done.returncode == 0, done.stderr
    facts = json.loads(done.stdout)
    assert (facts["sha256"], facts["macs"], facts["params"]) == (shipped["sha256"], shipped["macs"], shipped["params"])
