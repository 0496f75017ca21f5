"""edgecollab as a service: a script on the Python API, strict targets, progress, plots, JSON logs, SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import edgecollab

from .cluster_helpers import edgecollab as edgecollab_cli
from .conftest import SHIPPED_MANIFEST

IMAGES = np.zeros((200, 1, 28, 28), np.uint8)


@pytest.fixture(scope="module")
def config_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("service")
    (folder / "cluster.toml").write_text(
        "[coordinator]\nheartbeat_s = 0.5\nshutdown_grace_s = 0.5\n"
        f'[models]\nmanifest = "{SHIPPED_MANIFEST}"\n'
        '[[nodes]]\nname = "rpi4"\nemulate = "rpi4"\nvariants = ["cnn-8", "resnet-20"]\n'
        '[[nodes]]\nname = "odroid"\nemulate = "odroid-xu4"\nvariants = ["cnn-8", "resnet-20"]\n'
    )
    return folder / "cluster.toml"


@pytest.fixture(scope="module")
def cluster(config_path: Path) -> Iterator[edgecollab.LocalCluster]:
    with edgecollab.LocalCluster(config_path, log_dir=config_path.parent / "logs", verbose=1, log_json=True) as local:
        with edgecollab.SyncClient(local.clients_endpoint, timeout_s=120) as client:
            client.infer(IMAGES[:4])  # registered and profiled
        yield local


def test_a_script_on_the_python_api_is_served_by_separate_processes(cluster: edgecollab.LocalCluster) -> None:
    script = (
        "import numpy as np, edgecollab\n"
        f"with edgecollab.SyncClient({cluster.clients_endpoint!r}) as c:\n"
        "    result = c.infer(np.zeros((300, 1, 28, 28), np.uint8), target_ips=500)\n"
        "    nodes = [n['name'] for n in c.query('status')['nodes']]\n"
        "print(len(result.predictions), result.report['achieved_ips'] > 0, sorted(nodes))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "300 True ['odroid', 'rpi4']"


def test_an_infeasible_target_is_served_at_best_or_refused_when_strict(cluster: edgecollab.LocalCluster) -> None:
    with edgecollab.SyncClient(cluster.clients_endpoint, timeout_s=60) as client:
        best_effort = client.infer(IMAGES, target_ips=1e7)
        assert best_effort.feasible is False and len(best_effort.predictions) == len(IMAGES)
        assert best_effort.notes and best_effort.achieved_ips > 0
        assert sum(n for shares in best_effort.per_node.values() for n in shares.values()) == len(IMAGES)
        with pytest.raises(edgecollab.InfeasibleTargetError, match=r"cannot meet target_ips=10000000.0"):
            client.infer(IMAGES, target_ips=1e7, strict=True)
        assert len(client.infer(IMAGES, target_ips=100, strict=True).predictions) == len(IMAGES)
        assert client.query("status")["requests"] == []  # the refused request left nothing behind


def test_the_progress_callback_counts_up_to_every_input(cluster: edgecollab.LocalCluster) -> None:
    seen: list[tuple[int, int]] = []
    with edgecollab.SyncClient(cluster.clients_endpoint, timeout_s=60) as client:
        client.infer(IMAGES[:100], min_accuracy=0.92, progress=lambda done, total: seen.append((done, total)))
    assert seen[-1] == (100, 100)
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)
    assert len(seen) > 1, "resnet-20 on two emulated boards takes long enough for a progress poll"


def test_submit_shows_a_progress_bar_on_a_terminal_and_nothing_otherwise(
    cluster: edgecollab.LocalCluster, config_path: Path
) -> None:
    args = [
        "submit", "--config", str(config_path), "--coordinator", cluster.clients_endpoint,
        "--inputs", "3000", "--target-ips", "2000",
    ]  # fmt: skip
    quiet = edgecollab_cli(*args)
    assert quiet.returncode == 0, quiet.stderr
    assert "request 1" not in quiet.stderr and "━" not in quiet.stderr
    terminal = run_on_a_terminal([sys.executable, "-m", "edgecollab", *args])
    assert "request 1 (3,000 inputs, target 2,000 inf/s)" in terminal and "3000/3000" in terminal


def test_submit_strict_exits_3_naming_the_infeasible_target(
    cluster: edgecollab.LocalCluster, config_path: Path
) -> None:
    done = edgecollab_cli(
        "submit", "--config", str(config_path), "--coordinator", cluster.clients_endpoint,
        "--inputs", "50", "--target-ips", "10000000", "--strict",
    )  # fmt: skip
    assert done.returncode == 3
    assert "infeasible: cannot meet target_ips=10000000.0" in done.stderr and "Traceback" not in done.stderr


def test_run_plots_per_node_throughput_and_variants(config_path: Path, tmp_path: Path) -> None:
    plot = tmp_path / "run.png"
    done = edgecollab_cli(
        "run", "--config", str(config_path), "--requests", "2", "--inputs", "500", "--plot", str(plot), "--json"
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["summary"]["inputs"] == 1000
    assert plot.read_bytes().startswith(b"\x89PNG") and plot.stat().st_size > 10_000


def test_processes_log_one_json_object_per_line(cluster: edgecollab.LocalCluster) -> None:
    lines = (cluster.log_dir / "coordinator.log").read_text().splitlines()
    entries = [json.loads(line) for line in lines if line.startswith("{")]
    assert entries and len(entries) == len(lines), "every line is one JSON object"
    assert all({"ts", "level", "logger", "pid", "message"} <= set(e) for e in entries)
    assert any(e["level"] == "info" and "profiled" in e["message"] for e in entries)


def test_sigterm_fails_running_requests_clearly_tells_workers_and_they_return(
    cluster: edgecollab.LocalCluster,
) -> None:
    assert cluster.coordinator is not None
    coordinator = cluster.coordinator
    started = time.monotonic()

    async def request_cut_short_by_sigterm() -> None:
        async with edgecollab.Client(cluster.clients_endpoint, timeout_s=60) as client:
            # resnet-20 on both boards: 3,000 inputs take ~10 s, far past the 0.5 s grace period.
            running = asyncio.create_task(client.infer(np.zeros((3000, 1, 28, 28), np.uint8), min_accuracy=0.92))
            while not (await client.query("status"))["requests"]:
                await asyncio.sleep(0.05)
            coordinator.send_signal(signal.SIGTERM)
            with pytest.raises(edgecollab.RequestLostError, match=r"shutting_down: the coordinator shut down after"):
                await running

    asyncio.run(request_cut_short_by_sigterm())
    assert coordinator.wait(timeout=15) == 0
    assert time.monotonic() - started < 20, "failed at the grace period, not at a heartbeat or client timeout"
    log = (cluster.log_dir / "rpi4.log").read_text()
    assert "coordinator left (coordinator shutting down)" in log
    assert all(worker.poll() is None for worker in cluster.workers.values()), "workers wait for it to return"

    cluster.start_coordinator()  # same endpoints: the workers register again
    with edgecollab.SyncClient(cluster.clients_endpoint, timeout_s=60) as client:
        assert len(client.infer(IMAGES, target_ips=100).predictions) == len(IMAGES)
        assert sorted(n["name"] for n in client.query("status")["nodes"]) == ["odroid", "rpi4"]


def run_on_a_terminal(command: list[str], timeout_s: float = 120) -> str:
    """Run a command with stdout and stderr on a pseudo-terminal; return what it wrote there."""
    controller, terminal = pty.openpty()
    process = subprocess.Popen(command, stdout=terminal, stderr=terminal, env={**os.environ, "TERM": "xterm"})
    os.close(terminal)
    output = b""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ready, _, _ = select.select([controller], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # the terminal closed: the process is done
                break
            if not chunk:
                break
            output += chunk
        elif process.poll() is not None:
            break
    os.close(controller)
    assert process.wait(timeout=10) == 0, output.decode(errors="replace")
    return output.decode(errors="replace")


@pytest.mark.parametrize("unit", ["edgecollab-coordinator.service", "edgecollab-worker@.service"])
def test_the_systemd_units_start_commands_the_cli_accepts(unit: str, config_path: Path) -> None:
    text = (Path(__file__).parents[1] / "docs" / "deploy" / unit).read_text()
    (command,) = [line.removeprefix("ExecStart=") for line in text.splitlines() if line.startswith("ExecStart=")]
    executable, *args = command.split()
    args = [
        a.replace("/etc/edgecollab/cluster.toml", str(config_path))
        .replace("%i", "rpi4")
        .replace("${EDGECOLLAB_COORDINATOR}", "tcp://127.0.0.1:5555")
        .replace("$EDGECOLLAB_WORKER_ARGS", "--keys=/etc/edgecollab/keys")
        for a in args
    ]
    if executable.endswith("/edgecollab-worker"):  # the board's thin install
        thin = [sys.executable, "-m", "edgecollab.worker.main", *args, "--help"]
        done = subprocess.run(thin, capture_output=True, text=True, timeout=60, check=False)
    else:
        done = edgecollab_cli(*args, "--help")  # options are parsed (and refused if unknown) before --help
    assert done.returncode == 0, done.stderr
