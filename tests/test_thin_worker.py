"""The board's worker on its own: the edgecollab-worker wheel in a fresh virtual environment (the oldest
Python a supported board OS ships, when this machine has it), joining a coordinator with nothing but
``--coordinator``, ``--node`` and ``--keys``: settings and models come over the bus (CURVE on), checked
by sha256 and cached, so a restart fetches nothing and a corrupt cached file is fetched again."""

from __future__ import annotations

import ast
import asyncio
import json
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgecollab.boards import WORKER_SOURCE, build_worker_wheel
from edgecollab.client import SyncClient
from edgecollab.config import load_config
from edgecollab.inspection import ask
from edgecollab.local import LocalCluster, die_with_parent
from edgecollab.protocol import Hello, Welcome, decode, encode
from edgecollab.security import ClientCurve, client_curve, generate_keys, load_key_pair, load_public_key
from edgecollab.zoo import load_manifest

from .cluster_helpers import local_predictions, raw_peer
from .conftest import SHIPPED_MANIFEST

VARIANTS = ["linear", "cnn-8"]
RUNTIMES = {"numpy", "zmq", "msgpack", "onnxruntime", "cv2"}  # what the worker may import beside the stdlib
NOT_ON_A_BOARD = {"scipy", "pydantic", "typer", "rich", "transitions", "prometheus-client", "pycocotools", "pillow",
                  "onnx", "tomli-w", "edgecollab"}  # fmt: skip


def floor_python() -> str:
    """Python 3.9 (Debian 11's, the floor) when this machine has one, else the running Python."""
    for candidate in [*sorted(Path("/root/.pyenv/versions").glob("3.9.*/bin/python3")), Path("/usr/bin/python3.9")]:
        if candidate.exists():
            return str(candidate)
    return shutil.which("python3.9") or sys.executable


def test_the_worker_folder_imports_only_the_stdlib_and_its_runtimes() -> None:
    for path in sorted(WORKER_SOURCE.rglob("*.py")):
        depth = len(path.relative_to(WORKER_SOURCE).parts)  # 1: the package's own modules
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                assert node.level < depth + 1, f"{path}: 'from {'.' * node.level}{node.module}' leaves the package"
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and not node.level and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                assert top in sys.stdlib_module_names or top in RUNTIMES or top == "__future__", f"{path}: {name}"


def closure(python: str) -> tuple[set[str], set[str]]:
    """(every distribution installed in the venv, those edgecollab-worker needs, transitively)."""
    script = """
import json, re
from importlib import metadata
def norm(n): return re.sub(r"[-_.]+", "-", n).lower()
installed = {norm(d.metadata["Name"]): d for d in metadata.distributions()}
needed, todo = set(), ["edgecollab-worker"]
while todo:
    name = todo.pop()
    if name in needed or name not in installed:
        continue
    needed.add(name)
    for req in installed[name].requires or []:
        if "extra ==" in req:
            continue
        marker_ok = True
        if ";" in req:
            from packaging.markers import Marker
            marker_ok = Marker(req.split(";", 1)[1]).evaluate()
        if marker_ok:
            todo.append(norm(re.split(r"[ ;<>=!~\\[(]", req.strip(), maxsplit=1)[0]))
print(json.dumps([sorted(installed), sorted(needed)]))
"""
    # Run outside the checkout: its edgecollab.egg-info would look installed.
    done = subprocess.run([python, "-c", script], capture_output=True, text=True, check=True, cwd=Path(python).parent)
    installed, needed = json.loads(done.stdout)
    return set(installed), set(needed)


@pytest.fixture(scope="module")
def board_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("board")
    wheel = build_worker_wheel(folder / "dist")
    subprocess.run([floor_python(), "-m", "venv", str(folder / "venv")], check=True)
    pip = [str(folder / "venv" / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    done = subprocess.run([*pip, str(wheel)], capture_output=True, text=True, check=False, timeout=600)
    assert done.returncode == 0, done.stderr
    return folder / "venv"


def test_a_fresh_venv_gets_the_worker_and_its_dependency_set_only(board_venv: Path) -> None:
    python = str(board_venv / "bin" / "python")
    installed, needed = closure(python)
    assert {"edgecollab-worker", "numpy", "pyzmq", "msgpack", "onnxruntime"} <= needed
    # packaging reads the markers above; pip and setuptools come with every venv.
    assert installed - needed <= {"pip", "setuptools", "packaging", "wheel"}, installed - needed
    assert not installed & NOT_ON_A_BOARD
    assert (board_venv / "bin" / "edgecollab-worker").exists()
    bad = subprocess.run([str(board_venv / "bin" / "edgecollab-worker"), "--coordinator", "nowhere", "--node", "b"],
                         capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert bad.returncode == 2 and "--coordinator 'nowhere': expected an endpoint such as tcp://" in bad.stderr


@pytest.fixture(scope="module")
def coordinator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalCluster, Path]]:
    folder = tmp_path_factory.mktemp("coordinator")
    generate_keys(folder / "keys", ["board"], ["client"])
    (folder / "cluster.toml").write_text(
        "[coordinator]\nheartbeat_s = 0.5\n"
        f'[models]\nmanifest = "{SHIPPED_MANIFEST}"\n'
        '[security]\ncurve = true\ncoordinator_key = "keys/coordinator.key_secret"\n'
        'coordinator_public_key = "keys/coordinator.key"\nauthorized_keys = "keys/authorized"\n'
        'client_key = "keys/client.key_secret"\n'
        f'[[nodes]]\nname = "board"\nthreads = 2\nvariants = {json.dumps(VARIANTS)}\n'
        'key = "keys/board.key_secret"\nproviders = ["CUDAExecutionProvider", "CPUExecutionProvider"]\n'
    )
    with LocalCluster(folder / "cluster.toml", nodes=[], log_dir=folder / "logs") as local:
        yield local, folder


def start_board(venv: Path, local: LocalCluster, folder: Path, run: int) -> subprocess.Popen[bytes]:
    empty = folder / f"empty-{run}"  # nothing on the board but the venv and its cache
    empty.mkdir()
    board_keys = folder / "board-keys"
    board_keys.mkdir(exist_ok=True)
    for name in ("board.key_secret", "coordinator.key"):
        shutil.copy(folder / "keys" / name, board_keys / name)
    command = [str(venv / "bin" / "edgecollab-worker"), "--coordinator", local.workers_endpoint, "--node", "board",
               "--keys", str(board_keys)]  # fmt: skip
    # The board's home: its cache is the default one there (~/.cache/edgecollab/models).
    env = {"PATH": "/usr/bin:/bin", "HOME": str(folder / "home")}
    with open(folder / f"board-{run}.log", "wb") as log:
        return subprocess.Popen(command, cwd=empty, stdout=log, stderr=log, env=env, preexec_fn=die_with_parent)


def status_when_ready(local: LocalCluster, folder: Path, timeout_s: float = 120) -> dict[str, Any]:
    curve = client_curve(load_config(folder / "cluster.toml"))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = ask(local.clients_endpoint, "status", 10, curve)
        nodes = [n for n in status["nodes"] if n["name"] == "board"]
        if nodes and nodes[0]["ready"] and nodes[0]["profiled"] and status["state"] == "serving":
            return status
        time.sleep(0.2)
    raise AssertionError(f"the board did not become ready: {status}")


def stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0


def test_a_board_joins_with_only_its_name_serves_and_restarts_without_fetching(
    board_venv: Path, coordinator: tuple[LocalCluster, Path]
) -> None:
    local, folder = coordinator
    curve = client_curve(load_config(folder / "cluster.toml"))
    manifest = load_manifest(SHIPPED_MANIFEST, check_files=False)
    sizes = {v: manifest.resolve(manifest.variant(v).file).stat().st_size for v in VARIANTS}
    images = np.random.default_rng(21).integers(0, 256, (96, 1, 28, 28)).astype(np.uint8)

    def served_right() -> None:
        with SyncClient(local.clients_endpoint, timeout_s=60, curve=curve) as client:
            result = client.infer(images, target_ips=50.0)
        for variant in set(result.variants):
            rows = np.array([v == variant for v in result.variants])
            assert np.array_equal(result.predictions[rows], local_predictions(variant, images[rows]))

    board = start_board(board_venv, local, folder, 1)
    try:
        status = status_when_ready(local, folder)
        node = next(n for n in status["nodes"] if n["name"] == "board")
        assert sorted(node["variants"]) == sorted(VARIANTS)
        assert node["providers"] == ["CPUExecutionProvider"] and node["warmup_s"] > 0
        assert any(w.startswith("CUDAExecutionProvider is not in this onnxruntime") for w in node["warnings"])
        assert node["runtime"]["backend"] == "onnxruntime" and node["runtime"]["max_opset"] >= 17
        assert node["runtime"]["python"].startswith(".".join(map(str, sys.version_info[:1])))
        assert status["counters"]["model_bytes_sent"] == sum(sizes.values())
        assert sorted(p.name for p in (folder / "home" / ".cache" / "edgecollab" / "models").glob("*.onnx")) == sorted(
            f"{manifest.variant(v).sha256}.onnx" for v in VARIANTS
        )
        served_right()
    finally:
        stop(board)

    board = start_board(board_venv, local, folder, 2)  # the cache is warm: nothing travels
    try:
        status = status_when_ready(local, folder)
        assert status["counters"]["model_bytes_sent"] == sum(sizes.values())
        served_right()
    finally:
        stop(board)

    corrupt = folder / "home" / ".cache" / "edgecollab" / "models" / f"{manifest.variant('cnn-8').sha256}.onnx"
    corrupt.write_bytes(b"\0" * sizes["cnn-8"])  # the right size, the wrong bytes
    board = start_board(board_venv, local, folder, 3)
    try:
        status = status_when_ready(local, folder)
        assert status["counters"]["model_bytes_sent"] == sum(sizes.values()) + sizes["cnn-8"]
        served_right()
    finally:
        stop(board)
    assert "fetched cnn-8" in (folder / "board-3.log").read_text()
    assert "fetched" not in (folder / "board-2.log").read_text()


def test_a_board_whose_runtime_is_too_old_is_sent_no_variant_and_status_says_why(
    coordinator: tuple[LocalCluster, Path],
) -> None:
    local, folder = coordinator
    keys = ClientCurve(
        load_key_pair(folder / "keys" / "board.key_secret"), load_public_key(folder / "keys" / "coordinator.key")
    )
    old = {"arch": "aarch64", "backend": "onnxruntime", "backend_version": "1.11.0", "max_opset": 16}

    async def register() -> Welcome:
        async with raw_peer(local.workers_endpoint, keys) as sock:
            await sock.send_multipart(encode(Hello("board", old)))
            assert await sock.poll(10_000)
            welcome = decode(await sock.recv_multipart())
            assert isinstance(welcome, Welcome)
            curve = client_curve(load_config(folder / "cluster.toml"))
            status = await asyncio.to_thread(ask, local.clients_endpoint, "status", 10, curve)
            (node,) = [n for n in status["nodes"] if n["name"] == "board"]
            assert not node["ready"] and node["runtime"]["backend_version"] == "1.11.0"
            assert node["left_out"] == welcome.settings["excluded"]
            return welcome

    welcome = asyncio.run(register())
    assert welcome.settings["variants"] == []
    assert welcome.settings["excluded"] == {
        v: "needs opset 17; onnxruntime 1.11.0 runs opset 16 at most" for v in VARIANTS
    }
