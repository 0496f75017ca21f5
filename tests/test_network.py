"""The network benchmark's machinery: workers in namespaces of their own behind shaped links, and the delay relay."""

from __future__ import annotations

import importlib
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from edgecollab.inspection import wait_until_ready
from edgecollab.local import free_tcp_endpoint
from edgecollab.zoo import load_manifest, load_test_set

from .cluster_helpers import PAPER_TESTBED, infer, write_cluster_config
from .conftest import SHIPPED_MANIFEST

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def benchmark_module(name: str) -> ModuleType:
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))  # benchmarks import their helpers (common.py) as scripts do
    return importlib.import_module(name)


def namespaces_permitted() -> bool:
    if os.geteuid() != 0:
        return False
    probe = f"ec-probe-{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True).returncode == 0
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return made


def free_port() -> int:
    return int(free_tcp_endpoint().rsplit(":", 1)[1])


def test_relay_carries_every_byte_both_ways_and_delays_them() -> None:
    echo = socket.create_server(("127.0.0.1", 0))
    echo_port = echo.getsockname()[1]

    def serve_echo() -> None:
        conn, _ = echo.accept()
        with conn:
            while data := conn.recv(1 << 16):
                conn.sendall(data)

    threading.Thread(target=serve_echo, daemon=True).start()
    relay_port, delay_ms = free_port(), 40.0
    relay = subprocess.Popen(
        [sys.executable, str(BENCHMARKS / "delay_relay.py"), "--listen", f"127.0.0.1:{relay_port}",
         "--to", f"127.0.0.1:{echo_port}", "--delay-ms", str(delay_ms)]
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                conn = socket.create_connection(("127.0.0.1", relay_port), timeout=20)
                break
            except ConnectionRefusedError:
                assert time.monotonic() < deadline, "the relay never listened"
                time.sleep(0.05)
        with conn:
            started = time.monotonic()
            conn.sendall(b"x")
            assert conn.recv(1) == b"x"
            # Each direction holds the byte for the delay: the round trip can only be longer than both.
            assert time.monotonic() - started >= 2 * delay_ms / 1e3
            payload = np.random.default_rng(0).bytes(3 << 20)
            sender = threading.Thread(target=conn.sendall, args=(payload,))
            sender.start()
            back = bytearray()
            while len(back) < len(payload):
                back += conn.recv(1 << 16)
            sender.join()
            assert bytes(back) == payload
    finally:
        relay.terminate()
        assert relay.wait(10) == 0
        echo.close()


@pytest.mark.skipif(not namespaces_permitted(), reason="network namespaces need root (ip netns add)")
def test_workers_in_shaped_namespaces_serve_a_request_and_leave_nothing_behind(tmp_path: Path) -> None:
    network_bench = benchmark_module("network")
    links = {name: network_bench.LINKS[name] for name, _ in PAPER_TESTBED}
    config = write_cluster_config(tmp_path, variants=["mlp-64"])
    manifest = load_manifest(SHIPPED_MANIFEST, check_files=False)
    test_set = load_test_set(manifest, manifest.tasks["fashion-mnist"])

    with network_bench.ShapedNetwork(links) as network:
        for node in network.namespaces:
            host_end = network.veths[node][0]
            qdisc = subprocess.run(["tc", "qdisc", "show", "dev", host_end], capture_output=True, text=True).stdout
            assert f"rate {links[node].mbps:g}Mbit" in qdisc, qdisc
            assert ("netem" if network.kernel_delay else "tbf") in qdisc
        with network_bench.start_cluster(config, network, tmp_path / "logs") as cluster:
            wait_until_ready(cluster.clients_endpoint, timeout_s=120)
            for node, namespace in network.namespaces.items():
                # The worker process really lives in its board's namespace, not in ours.
                worker_ns = os.stat(f"/proc/{cluster.workers[node].pid}/ns/net").st_ino
                assert worker_ns == os.stat(f"/run/netns/{namespace}").st_ino
                assert worker_ns != os.stat("/proc/self/ns/net").st_ino
            result = infer(cluster.clients_endpoint, test_set.inputs[:600], target_ips=None)
        network.stop_relays()
        assert {a["node"] for a in result.report["assignment"] if a["inputs"]} == set(links)
        accuracy = float((result.predictions == test_set.labels[:600]).mean())
        assert abs(accuracy - manifest.variant("mlp-64").accuracy) < 0.05
        names = list(network.namespaces.values())
        bridge = network.bridge

    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not any(name in listed for name in names)
    assert subprocess.run(["ip", "link", "show", bridge], capture_output=True).returncode != 0
