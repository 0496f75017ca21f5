"""Two sites under a parent: each site is a coordinator with four emulated boards (one fleet process),
registered with the parent as one node. Real processes, real sockets, real models."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from edgecollab.client import InferenceResult, SyncClient
from edgecollab.inspection import ask, wait_until_ready
from edgecollab.local import LocalCluster, die_with_parent, free_tcp_endpoint
from edgecollab.security import ClientCurve, generate_keys, load_key_pair, load_public_key
from edgecollab.zoo import load_manifest, load_test_set

from .cluster_helpers import infer, local_predictions
from .conftest import REPO, SHIPPED_MANIFEST

BENCHMARKS = REPO / "benchmarks"
VARIANTS = ["mlp-64", "cnn-8"]
SITES = {
    "site-a": ["odroid-xu4", "odroid-xu4", "rpi4", "jetson-nano"],  # the paper's testbed
    "site-b": ["rpi4", "rpi4", "odroid-xu4", "rpi4"],  # a slower one
}


@dataclass
class Site:
    name: str
    cluster: LocalCluster
    fleet: subprocess.Popen[bytes]


def write_parent(folder: Path) -> Path:
    lines = [
        "[coordinator]",
        "startup_timeout_s = 120",
        "heartbeat_s = 0.5",
        "[models]",
        f'manifest = "{SHIPPED_MANIFEST}"',
    ]
    for site in SITES:
        lines += ["[[nodes]]", f'name = "{site}"', f"variants = {VARIANTS!r}".replace("'", '"')]
    path = folder / "parent.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def write_site(folder: Path, site: str, parent_workers: str) -> Path:
    lines = [
        "[coordinator]", "startup_timeout_s = 120", "heartbeat_s = 0.5",
        f'parent = "{parent_workers}"', f'site = "{site}"',
        "[models]", f'manifest = "{SHIPPED_MANIFEST}"',
    ]  # fmt: skip
    for k, profile in enumerate(SITES[site]):
        lines += ["[[nodes]]", f'name = "{site}-{profile}-{k}"', f'emulate = "{profile}"']
        lines += [f"variants = {VARIANTS!r}".replace("'", '"')]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "cluster.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def start_site(folder: Path, site: str, parent_workers: str) -> Site:
    config = write_site(folder / site, site, parent_workers)
    cluster = LocalCluster(config, nodes=[], log_dir=folder / site / "logs")
    cluster.start()
    command = [sys.executable, "-m", "edgecollab", "fleet", "--config", str(config),
               "--coordinator", cluster.workers_endpoint, "--cache", str(folder / "cache")]  # fmt: skip
    with (folder / site / "fleet.log").open("wb") as log:
        fleet = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log, preexec_fn=die_with_parent)
    return Site(site, cluster, fleet)


def stop_site(site: Site) -> None:
    site.fleet.terminate()
    site.cluster.stop()
    site.fleet.wait(timeout=30)


def site_nodes_ready(parent: LocalCluster, wanted: set[str], timeout_s: float = 150) -> dict[str, dict[str, float]]:
    """Wait until the parent serves with every wanted site; their rows (the reported fronts) by site."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = ask(parent.clients_endpoint, "status")
        ready = {n["name"]: n["ips"] for n in status["nodes"] if n["ready"] and n["profiled"]}
        if wanted <= set(ready):
            return ready
        time.sleep(0.5)
    raise AssertionError(f"sites {sorted(wanted)} not serving under the parent within {timeout_s:.0f} s")


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalCluster, dict[str, Site], Path]]:
    folder = tmp_path_factory.mktemp("sites")
    parent_workers = free_tcp_endpoint()
    with LocalCluster(
        write_parent(folder), nodes=[], workers_endpoint=parent_workers, log_dir=folder / "logs"
    ) as parent:
        started: dict[str, Site] = {}
        try:
            for name in SITES:
                started[name] = start_site(folder, name, parent_workers)
            for site in started.values():  # every board of each site profiled there
                wait_until_ready(site.cluster.clients_endpoint, timeout_s=150)
            wait_until_ready(parent.clients_endpoint, timeout_s=150)
            site_nodes_ready(parent, set(SITES))
            yield parent, started, folder
        finally:
            for site in started.values():
                stop_site(site)


def fashion_inputs(n: int) -> np.ndarray:
    manifest = load_manifest(SHIPPED_MANIFEST, check_files=False)
    inputs = load_test_set(manifest, manifest.tasks["fashion-mnist"]).inputs
    return np.concatenate([inputs] * (n // len(inputs) + 1))[:n]


def assert_real_predictions(result_variants: list[str], predictions: np.ndarray, inputs: np.ndarray) -> None:
    for variant in set(result_variants):
        rows = [i for i, v in enumerate(result_variants) if v == variant]
        assert (predictions[rows] == local_predictions(variant, inputs[rows])).all()


def test_each_site_is_one_node_of_the_parent_with_its_front(sites: tuple[LocalCluster, dict[str, Site], Path]) -> None:
    parent, started, _ = sites
    summed = {}
    for name, site in started.items():
        boards = ask(site.cluster.clients_endpoint, "status")["nodes"]
        assert len(boards) == 4 and all(b["profiled"] for b in boards)
        summed[name] = {v: sum(b["ips"][v] for b in boards) for v in VARIANTS}
    # Each site is one node of the parent (the boards are the sites' own); its row per variant is what its
    # boards give together (both variants are on the front: the faster is the less accurate). A front is
    # reported again when it moves by a tenth, so the last boards to be profiled show within a second or two.
    deadline = time.monotonic() + 10
    while True:
        rows = site_nodes_ready(parent, set(SITES))
        close = all(rows[s][v] == pytest.approx(summed[s][v], rel=0.15) for s in SITES for v in VARIANTS)
        if close or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert set(rows) == set(SITES)
    assert {s: set(r) for s, r in rows.items()} == {s: set(VARIANTS) for s in SITES}
    for name in SITES:
        for variant in VARIANTS:
            assert rows[name][variant] == pytest.approx(summed[name][variant], rel=0.15)


def test_a_large_request_to_the_parent_uses_both_sites_by_their_speed(
    sites: tuple[LocalCluster, dict[str, Site], Path],
) -> None:
    parent, _, _ = sites
    inputs = fashion_inputs(20_000)
    rows = site_nodes_ready(parent, set(SITES))
    result = infer(parent.clients_endpoint, inputs, target_ips=1e6, min_accuracy=0.9)  # cnn-8 (0.9001) everywhere
    assert len(result.predictions) == 20_000 and Counter(result.variants)["cnn-8"] > 19_000
    shares = Counter(result.nodes)
    assert set(shares) == set(SITES)
    speed = {name: rows[name]["cnn-8"] for name in SITES}
    planned: Counter[str] = Counter()
    for a in result.report["assignment"]:
        planned[a["node"]] += a["planned_inputs"]
    for name in SITES:
        # The parent cuts the request by each site's throughput, as it would by boards' ...
        assert planned[name] / sum(planned.values()) == pytest.approx(speed[name] / sum(speed.values()), abs=0.06)
        # ... and each site serves about that share (idle sites take the tail of a slower one's queue).
        assert shares[name] / 20_000 == pytest.approx(speed[name] / sum(speed.values()), abs=0.2)
    assert_real_predictions(result.variants, result.predictions, inputs)


def test_a_streams_frames_are_answered_through_the_parent(sites: tuple[LocalCluster, dict[str, Site], Path]) -> None:
    parent, _, _ = sites
    frames = fashion_inputs(240)
    answered: dict[int, tuple[int, str, str]] = {}
    with SyncClient(parent.clients_endpoint) as client, client.stream(target_fps=120, max_latency_ms=1000) as stream:
        for k in range(0, len(frames), 8):
            stream.send(frames[k : k + 8])
            time.sleep(8 / 120)
        summary = stream.close()
        for result in stream:
            answered[result.seq] = (result.prediction, result.variant, result.node)
    assert sorted(answered) == list(range(len(frames)))  # every frame, once
    assert {node for _, _, node in answered.values()} <= set(SITES)
    predictions = np.array([answered[k][0] for k in range(len(frames))])
    assert_real_predictions([answered[k][1] for k in range(len(frames))], predictions, frames)
    assert summary["results"] == len(frames)


def test_a_site_killed_mid_request_loses_no_input(sites: tuple[LocalCluster, dict[str, Site], Path]) -> None:
    parent, started, _ = sites
    # Enough inputs to keep both sites busy for several seconds (dispatch is work-conserving: a target
    # does not slow a request down), so the kill lands inside the request.
    inputs = fashion_inputs(60_000)
    victim = started["site-b"]
    outcome: dict[str, InferenceResult] = {}
    with SyncClient(parent.clients_endpoint) as client:
        request = threading.Thread(target=lambda: outcome.update(result=client.infer(inputs, target_ips=4000)))
        request.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not _site_busy(victim):
            time.sleep(0.05)
        time.sleep(0.2)
        assert request.is_alive()  # still running when the site's coordinator dies
        assert victim.cluster.coordinator is not None
        victim.cluster.coordinator.send_signal(signal.SIGKILL)
        request.join(timeout=120)
    result = outcome["result"]
    assert len(result.predictions) == 60_000
    assert_real_predictions(result.variants, result.predictions, inputs)
    assert set(result.nodes) == set(SITES)  # site-b served its part until it died; the rest went to site-a
    status = ask(parent.clients_endpoint, "status")
    assert "site-b" not in {n["name"] for n in status["nodes"]}
    assert status["counters"].get("nodes_lost", 0) >= 1


def _site_busy(site: Site) -> bool:
    try:
        status = ask(site.cluster.clients_endpoint, "status", timeout_s=2)
    except Exception:
        return False
    return sum(n.get("in_flight", 0) for n in status["nodes"]) > 0


def test_a_site_joins_a_parent_that_requires_curve(tmp_path: Path) -> None:
    """The parent admits only allowed keys; the site connects with its own (``parent_key``), and a client
    of the parent, over CURVE too, is served by the site's board."""
    generate_keys(tmp_path / "keys", ["site-c"], ["client"])
    parent_config = tmp_path / "parent.toml"
    parent_config.write_text(
        "\n".join([
            "[coordinator]", "heartbeat_s = 0.5", "[models]", f'manifest = "{SHIPPED_MANIFEST}"',
            "[security]", "curve = true", 'coordinator_key = "keys/coordinator.key_secret"',
            'coordinator_public_key = "keys/coordinator.key"', 'authorized_keys = "keys/authorized"',
            'client_key = "keys/client.key_secret"',
            "[[nodes]]", 'name = "site-c"', 'variants = ["cnn-8"]', 'key = "keys/site-c.key_secret"',
        ]) + "\n"
    )  # fmt: skip
    parent_workers = free_tcp_endpoint()
    site_config = tmp_path / "site" / "cluster.toml"
    site_config.parent.mkdir()
    site_config.write_text(
        "\n".join([
            "[coordinator]", "heartbeat_s = 0.5", f'parent = "{parent_workers}"', 'site = "site-c"',
            f'parent_key = "{tmp_path}/keys/site-c.key_secret"', f'parent_public_key = "{tmp_path}/keys/coordinator.key"',
            "[models]", f'manifest = "{SHIPPED_MANIFEST}"',
            "[[nodes]]", 'name = "board"', 'emulate = "rpi4"', 'variants = ["cnn-8"]',
        ]) + "\n"
    )  # fmt: skip
    keys = tmp_path / "keys"
    curve = ClientCurve(load_key_pair(keys / "client.key_secret"), load_public_key(keys / "coordinator.key"))
    inputs = fashion_inputs(500)
    with (
        LocalCluster(parent_config, nodes=[], workers_endpoint=parent_workers, log_dir=tmp_path / "logs") as parent,
        LocalCluster(site_config, log_dir=tmp_path / "site" / "logs"),
    ):
        wait_until_ready(parent.clients_endpoint, timeout_s=120, curve=curve)
        with SyncClient(parent.clients_endpoint, curve=curve) as client:
            result = client.infer(inputs)
    assert len(result.predictions) == 500 and set(result.nodes) == {"site-c"}
    assert_real_predictions(result.variants, result.predictions, inputs)


def test_a_site_measures_its_link_and_the_parent_plans_within_it(tmp_path: Path) -> None:
    """The site reaches its parent through a relay paced to 8 Mbit/s: the link it measures is that, and the
    parent plans the site no faster than the link carries its inputs (a board alone would go faster)."""
    rate_mbps = 8.0
    parent_config = tmp_path / "parent.toml"
    parent_config.write_text(
        "\n".join([
            "[coordinator]", "heartbeat_s = 0.5", "[models]", f'manifest = "{SHIPPED_MANIFEST}"',
            "[[nodes]]", 'name = "site-d"', 'variants = ["mlp-64"]',
        ]) + "\n"
    )  # fmt: skip
    parent_workers = free_tcp_endpoint()
    relay_at = free_tcp_endpoint()
    relay = subprocess.Popen(
        [sys.executable, str(BENCHMARKS / "delay_relay.py"), "--listen", relay_at.removeprefix("tcp://"),
         "--to", parent_workers.removeprefix("tcp://"), "--delay-ms", "0", "--rate-mbps", str(rate_mbps)],
        preexec_fn=die_with_parent,
    )  # fmt: skip
    site_config = tmp_path / "site" / "cluster.toml"
    site_config.parent.mkdir()
    site_config.write_text(
        "\n".join([
            "[coordinator]", "heartbeat_s = 0.5", f'parent = "{relay_at}"', 'site = "site-d"',
            "[models]", f'manifest = "{SHIPPED_MANIFEST}"',
            "[[nodes]]", 'name = "board"', 'emulate = "odroid-xu4"', 'variants = ["mlp-64"]',
        ]) + "\n"
    )  # fmt: skip
    try:
        with (
            LocalCluster(parent_config, nodes=[], workers_endpoint=parent_workers, log_dir=tmp_path / "logs") as parent,
            LocalCluster(site_config, log_dir=tmp_path / "site" / "logs"),
        ):
            wait_until_ready(parent.clients_endpoint, timeout_s=120)
            deadline = time.monotonic() + 60
            while True:
                (node,) = ask(parent.clients_endpoint, "status")["nodes"]
                if node["measured_link_mbps"] is not None or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            assert node["measured_link_mbps"] == pytest.approx(rate_mbps, rel=0.3)
            link_ips = node["measured_link_mbps"] * 1e6 / 8 / (28 * 28)  # a fashion-mnist input is 784 bytes
            assert node["ips"]["mlp-64"] > 1.5 * link_ips  # the board alone would go faster than the link
            plan = ask(parent.clients_endpoint, "plan", inputs=5000)
            # What the plan promises is the link's rate less the margin it keeps.
            assert plan["expected_ips"] / (1 - plan["margin"]) == pytest.approx(link_ips, rel=0.1)
    finally:
        relay.terminate()
        relay.wait(timeout=10)
