"""A running coordinator serves Prometheus metrics named edgecollab_*."""

from __future__ import annotations

import socket
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from edgecollab.client import SyncClient
from edgecollab.errors import InvalidInputError
from edgecollab.local import LocalCluster

from .cluster_helpers import infer
from .conftest import SHIPPED_MANIFEST


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int) -> dict[str, float]:
    deadline = time.monotonic() + 10
    while True:
        try:
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def test_metrics_count_requests_inputs_and_report_each_board(tmp_path: Path) -> None:
    port = free_port()
    (tmp_path / "cluster.toml").write_text(
        f'[coordinator]\nmetrics_port = {port}\n[models]\nmanifest = "{SHIPPED_MANIFEST}"\n'
        '[[nodes]]\nname = "rpi4"\nemulate = "rpi4"\nvariants = ["mlp-64", "cnn-8"]\n'
        '[[nodes]]\nname = "jetson-nano"\nemulate = "jetson-nano"\nvariants = ["mlp-64", "cnn-8"]\n'
    )
    with LocalCluster(tmp_path / "cluster.toml", log_dir=tmp_path / "logs") as local:
        infer(local.clients_endpoint, np.zeros((300, 1, 28, 28), np.uint8), target_ips=100)
        with pytest.raises(InvalidInputError):
            infer(local.clients_endpoint, np.zeros((3, 28, 28), np.uint8))
        with SyncClient(local.clients_endpoint, timeout_s=60) as client, client.stream(30.0) as stream:
            stream.send(np.zeros((10, 1, 28, 28), np.uint8))
            answers = iter(stream)
            assert all(next(answers).prediction >= 0 for _ in range(10))
            metrics = scrape(port)
            sid = stream.stream.stream_id
    assert metrics[f'edgecollab_stream_frames_total{{outcome="answered",stream="{sid}"}}'] == 10
    assert metrics[f'edgecollab_stream_target_fps{{stream="{sid}"}}'] == 30
    assert metrics[f'edgecollab_stream_latency_seconds_count{{stream="{sid}"}}'] == 10
    assert metrics[f'edgecollab_stream_latency_seconds_bucket{{le="+Inf",stream="{sid}"}}'] == 10
    assert metrics["edgecollab_frames_served_total"] == 10
    assert metrics['edgecollab_requests_total{outcome="completed"}'] == 1
    assert metrics['edgecollab_requests_total{outcome="invalid_input"}'] == 1
    assert metrics["edgecollab_inputs_served_total"] == 300
    assert metrics["edgecollab_nodes_alive"] == 2
    for node in ("rpi4", "jetson-nano"):
        assert metrics[f'edgecollab_node_throughput_ips{{node="{node}",variant="cnn-8"}}'] > 0
        assert f'edgecollab_node_in_flight_shards{{node="{node}"}}' in metrics
    assert metrics["edgecollab_last_request_expected_ips"] >= 100
    assert metrics["edgecollab_last_request_achieved_ips"] > 0
    assert 0.5 <= metrics["edgecollab_efficiency"] <= 1.0
    assert all(name.startswith("edgecollab_") for name in metrics if not name.startswith(("python_", "process_")))
