"""The cluster over shaped links: every board's worker in a network namespace of its own.

    sudo .venv/bin/python benchmarks/network.py [--config cluster.toml] [--inputs-224 4000]

Needs root (or CAP_NET_ADMIN) for ``ip netns``; without it, it says so and exits 0 without
writing anything. The benchmark builds, and always removes again, a bridge on this host
(10.213.0.1, where the coordinator listens) and per board a namespace joined to it by a veth
pair, shaped in both directions: 100 Mbit/s and 2 ms each way for the wired boards, 20 Mbit/s
and 10 ms for the Raspberry Pi on Wi-Fi. Shaping is ``tc netem`` (rate and delay) where the
kernel has it; where it does not (``sch_netem`` missing), the rate is a ``tbf`` qdisc and the
delay a relay in the board's namespace (benchmarks/delay_relay.py). No traffic leaves the host.

1. Small inputs (28×28, 784 bytes): the efficiency benchmark's two workloads on loopback and
   over the shaped links, profiled where they run — what the network costs.
2. Large inputs (the ``fashion-mnist-224`` variants: 224×224, 50,176 bytes, resized inside the
   graph): every board's profile measured on loopback (its compute alone, as on a bench),
   then one request over the shaped links planned
   - *link-aware*: with each board's ``link_mbps``, so a board costs max(compute, transfer);
   - *link-blind*: without, adapting at run time (drift re-plans, work stealing);
   - *link-blind, no adaptation*: the plan the request started with;
   - *profiled over the links*: no ``link_mbps``, profiles measured through the shaped links.
   Each in a fresh cluster, so no request learns from an earlier one.

Writes benchmarks/results/network.json and network.png.
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from common import RESULTS, run_info, write_results

from edgecollab.config import ClusterConfig, load_config
from edgecollab.inspection import wait_until_ready
from edgecollab.local import LocalCluster, WorkerPlace, die_with_parent, free_tcp_endpoint
from edgecollab.planner import ProfileCache
from edgecollab.plots import pyplot, save
from edgecollab.workload import RequestSpec, node_rates, run_sync, workload_source


@dataclass(frozen=True)
class Link:
    kind: str
    mbps: float
    delay_ms: float  # one way, added in each direction


WIRED = Link("wired", 100.0, 2.0)
WIFI = Link("Wi-Fi", 20.0, 10.0)
# The Pi 4 is the board of the testbed with Wi-Fi on board; the others have only Ethernet.
LINKS = {"odroid-xu4-a": WIRED, "odroid-xu4-b": WIRED, "rpi4": WIFI, "jetson-nano": WIRED}
SUBNET = "10.213.0"
RELAY_PORT = 5555  # in every namespace, where its worker connects when the delay is in user space
SMALL_TASK = "fashion-mnist"
SMALL_INPUTS = 10_000
SMALL_WORKLOADS: dict[str, float | None] = {"accurate": None, "fast": 8_000.0}
LARGE_TASK = "fashion-mnist-224"
TARGET_224 = 600.0  # about 3/4 of what the links carry (3 × 100 + 20 Mbit/s of 50,176-byte inputs ≈ 800 inf/s)
LARGE_WORKLOADS: dict[str, float | None] = {"accurate": None, f"target {TARGET_224:.0f}": TARGET_224}


class NamespacesUnavailable(Exception):
    """This machine does not let the benchmark make namespaces or shape links."""


def sh(*command: str) -> None:
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise NamespacesUnavailable(f"`{' '.join(command)}` failed: {done.stderr.strip() or done.returncode}")


class ShapedNetwork:
    """A bridge on this host and, per board, a namespace on a veth pair shaped both ways. A context manager."""

    def __init__(self, links: dict[str, Link]) -> None:
        tag = os.getpid() % 100_000
        self.links = links
        self.bridge = f"ecbr{tag}"
        self.host_ip = f"{SUBNET}.1"
        self.namespaces = {node: f"ec{tag}-{i}" for i, node in enumerate(links)}
        self.veths = {node: (f"ec{tag}h{i}", f"ec{tag}n{i}") for i, node in enumerate(links)}
        self.kernel_delay = True  # False: sch_netem missing, delays come from relays
        self._relays: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> ShapedNetwork:
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def _build(self) -> None:
        if shutil.which("ip") is None or shutil.which("tc") is None:
            raise NamespacesUnavailable("`ip` and `tc` (iproute2) are needed")
        sh("ip", "link", "add", self.bridge, "type", "bridge")
        sh("ip", "addr", "add", f"{self.host_ip}/24", "dev", self.bridge)
        sh("ip", "link", "set", self.bridge, "up")
        for i, (node, namespace) in enumerate(self.namespaces.items()):
            host_end, board_end = self.veths[node]
            sh("ip", "netns", "add", namespace)
            sh("ip", "link", "add", host_end, "type", "veth", "peer", "name", board_end)
            sh("ip", "link", "set", board_end, "netns", namespace)
            sh("ip", "link", "set", host_end, "master", self.bridge)
            sh("ip", "link", "set", host_end, "up")
            sh("ip", "-n", namespace, "addr", "add", f"{SUBNET}.{i + 2}/24", "dev", board_end)
            sh("ip", "-n", namespace, "link", "set", board_end, "up")
            sh("ip", "-n", namespace, "link", "set", "lo", "up")
            link = self.links[node]
            self._shape([], host_end, link)  # towards the board
            self._shape(["ip", "netns", "exec", namespace], board_end, link)  # from the board

    def _shape(self, where: list[str], device: str, link: Link) -> None:
        rate = f"{link.mbps:g}mbit"
        add = [*where, "tc", "qdisc", "add", "dev", device, "root"]
        if self.kernel_delay:
            try:
                sh(*add, "netem", "rate", rate, "delay", f"{link.delay_ms:g}ms", "limit", "100000")
                return
            except NamespacesUnavailable as exc:
                if "unknown" not in str(exc).lower():
                    raise
                self.kernel_delay = False
        # A token bucket that holds a 64 KiB segment (veth offloads) and queues up to 200 ms.
        sh(*add, "tbf", "rate", rate, "burst", "128kb", "latency", "200ms")

    def place(self, node: str, coordinator_port: int) -> WorkerPlace:
        """How to start ``node``'s worker in its namespace, and where it reaches the coordinator from there."""
        namespace = self.namespaces[node]
        prefix = ("ip", "netns", "exec", namespace)
        if self.kernel_delay:
            return WorkerPlace(prefix, f"tcp://{self.host_ip}:{coordinator_port}")
        relay = [*prefix, sys.executable, str(Path(__file__).with_name("delay_relay.py")),
                 "--listen", f"127.0.0.1:{RELAY_PORT}", "--to", f"{self.host_ip}:{coordinator_port}",
                 "--delay-ms", f"{self.links[node].delay_ms:g}"]  # fmt: skip
        self._relays.append(subprocess.Popen(relay, preexec_fn=die_with_parent))
        return WorkerPlace(prefix, f"tcp://127.0.0.1:{RELAY_PORT}")

    def stop_relays(self) -> None:
        for relay in self._relays:
            relay.send_signal(signal.SIGTERM)
        for relay in self._relays:
            try:
                relay.wait(5)
            except subprocess.TimeoutExpired:
                relay.kill()
                relay.wait()
        self._relays.clear()

    def close(self) -> None:
        self.stop_relays()
        for namespace in self.namespaces.values():  # deleting a namespace deletes its veth pair
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)

    def describe(self) -> dict[str, Any]:
        return {
            "shaping": "tc netem (rate, delay)" if self.kernel_delay else
                       "tc tbf (rate) + delay_relay.py (delay): this kernel has no sch_netem",
            "links": {n: {"kind": k.kind, "mbps": k.mbps, "delay_ms_each_way": k.delay_ms}
                      for n, k in self.links.items()},
        }  # fmt: skip


def write_config(
    base: ClusterConfig, folder: Path, name: str, task: str, link_aware: bool, adapt: bool, profile: Path
) -> Path:
    """The base config's nodes, on ``task``, with or without ``link_mbps`` and run-time adaptation."""
    lines = [
        "[coordinator]",
        f'profile_cache = "{profile}"',
        f"replan_on_drift = {str(adapt).lower()}",
        f"work_stealing = {str(adapt).lower()}",
        "[models]",
        f'task = "{task}"',
    ]
    if base.manifest_path:
        lines.append(f'manifest = "{base.manifest_path}"')
    for node in base.nodes:
        lines += ["[[nodes]]", f'name = "{node.name}"', f"providers = {list(node.providers)!r}".replace("'", '"')]
        if node.emulate:
            lines.append(f'emulate = "{node.emulate}"')
        if link_aware and node.name in LINKS:
            lines.append(f"link_mbps = {LINKS[node.name].mbps:g}")
    path = folder / f"{name}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


@dataclass(frozen=True)
class Scenario:
    name: str
    shaped: bool  # workers behind the shaped links, or beside the coordinator on loopback
    link_aware: bool  # the config gives each node's link_mbps
    adapt: bool  # drift re-plans and work stealing
    profile: str  # the profile the cluster starts from: "bench" (loopback) or "links" (measured through them)


LARGE_SCENARIOS = [
    Scenario("compute only (loopback)", False, False, True, "bench"),
    Scenario("link-aware", True, True, True, "bench"),
    Scenario("link-blind", True, False, True, "bench"),
    Scenario("link-blind, no adaptation", True, False, False, "bench"),
    Scenario("profiled over the links", True, False, True, "links"),
]


def start_cluster(config_path: Path, network: ShapedNetwork | None, log_dir: Path) -> LocalCluster:
    """A coordinator and workers for ``config_path``, the workers in their namespaces when ``network`` is given."""
    if network is None:
        return LocalCluster(config_path, log_dir=log_dir)
    endpoint = free_tcp_endpoint(network.host_ip)
    port = int(endpoint.rsplit(":", 1)[1])
    places = {node: network.place(node, port) for node in network.namespaces}
    return LocalCluster(config_path, log_dir=log_dir, workers_endpoint=endpoint, worker_places=places)


def run_requests(
    config_path: Path, network: ShapedNetwork | None, requests: list[RequestSpec], log_dir: Path
) -> list[dict[str, Any]]:
    """Start a cluster, wait until every node is profiled (or loaded from the cache), run ``requests`` one by one."""
    test_set = workload_source(load_config(config_path))
    try:
        with start_cluster(config_path, network, log_dir) as cluster:
            wait_until_ready(cluster.clients_endpoint, timeout_s=600)
            return [run_sync(cluster.clients_endpoint, test_set, [spec], seed)[0] for seed, spec in enumerate(requests)]
    finally:
        if network is not None:
            network.stop_relays()


def profile_ips(cache: Path) -> dict[str, dict[str, float]]:
    """What the planner started from: each node's profiled inf/s per variant, from the profile cache."""
    profiles = {node: ProfileCache(cache).load_any(node) for node in LINKS}
    return {node: {v: round(m.ips, 1) for v, m in rows.items()} for node, rows in profiles.items() if rows}


def figures(row: dict[str, Any]) -> dict[str, Any]:
    report = row["_report"]
    times, rates = node_rates(report["timeline"])
    width = report["timeline"]["bin_s"]
    done = itertools.accumulate(sum(r[i] for r in rates.values()) * width for i in range(len(times)))
    return {
        "inputs": row["inputs"],
        "target_ips": row["target_ips"],
        "achieved_ips": row["achieved_ips"],
        "accuracy": row["accuracy"],
        "met": row["met"],
        "expected_ips": row["expected_ips"],
        "wall_s": row["wall_s"],
        "per_node": {
            node: {
                "inputs": sum(a["inputs"] for a in row["assignment"] if a["node"] == node),
                "variants": sorted({a["variant"] for a in row["assignment"] if a["node"] == node and a["inputs"]}),
            }
            for node in sorted({a["node"] for a in row["assignment"]})
        },
        # inputs predicted by the end of each 1/50th of the request's wall time
        "progress": {"t_s": [t + width / 2 for t in times], "inputs": [round(d) for d in done]},
    }


def small_inputs(base: ClusterConfig, network: ShapedNetwork, folder: Path, repeats: int) -> list[dict[str, Any]]:
    """The 28×28 workloads on loopback and over the shaped links, each cluster profiled where it runs."""
    workloads = [w for _ in range(repeats) for w in SMALL_WORKLOADS]
    requests = [RequestSpec(SMALL_INPUTS, SMALL_WORKLOADS[w], None, None) for w in workloads]
    rows = []
    for placement, where in (("loopback", None), ("shaped links", network)):
        slug = placement.replace(" ", "-")
        config = write_config(base, folder, f"small-{slug}", SMALL_TASK, True, True, folder / f"small-{slug}.json")
        for workload, row in zip(workloads, run_requests(config, where, requests, folder / slug), strict=True):
            rows.append({"placement": placement, "workload": workload, **figures(row)})
            print(f"small {workload:>8} on {placement:<12}: {row['achieved_ips']:>7,.0f} inf/s", file=sys.stderr)
    return rows


def large_inputs(
    base: ClusterConfig, network: ShapedNetwork, folder: Path, inputs: int, repeats: int
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The 224×224 scenarios, each request in a fresh cluster started from a copy of its profile."""
    profiles = {"bench": folder / "profile-bench.json", "links": folder / "profile-links.json"}
    for source, where in (("bench", None), ("links", network)):  # profile once, on loopback and through the links
        config = write_config(base, folder, f"profile-{source}", LARGE_TASK, False, True, profiles[source])
        run_requests(config, where, [], folder / f"profile-{source}")
    rows = []
    for scenario in LARGE_SCENARIOS:
        slug = scenario.name.replace(" ", "-").replace(",", "")
        cache = folder / f"{slug}.json"
        config = write_config(base, folder, slug, LARGE_TASK, scenario.link_aware, scenario.adapt, cache)
        for workload, target in LARGE_WORKLOADS.items():
            for repeat in range(repeats):
                shutil.copy(profiles[scenario.profile], cache)  # learn nothing from the previous request
                where = network if scenario.shaped else None
                spec = RequestSpec(inputs, target, None, None)
                (row,) = run_requests(config, where, [spec], folder / f"{slug}-{repeat}")
                rows.append({"scenario": scenario.name, "workload": workload, "repeat": repeat, **figures(row)})
                achieved, planned = row["achieved_ips"], row["expected_ips"]
                print(f"large {workload:>10} {scenario.name:<26}: {achieved:>5,.0f} inf/s (planned {planned:>5,.0f}), "
                      f"accuracy {row['accuracy']:.4f}", file=sys.stderr)  # fmt: skip
    return {source: profile_ips(path) for source, path in profiles.items()}, rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=Path("cluster.toml"))
    parser.add_argument("--inputs-224", type=int, default=4_000, help="inputs per large-input request")
    parser.add_argument("--repeats", type=int, default=3, help="requests per placement or scenario and workload")
    parser.add_argument("--out", type=Path, default=RESULTS / "network.json")
    args = parser.parse_args()
    base = load_config(args.config)
    if os.geteuid() != 0:
        print("network benchmark skipped: network namespaces need root or CAP_NET_ADMIN", file=sys.stderr)
        return 0
    folder = Path(tempfile.mkdtemp(prefix="edgecollab-network-"))
    try:
        with ShapedNetwork(LINKS) as network:
            print(f"links: {network.describe()['shaping']}", file=sys.stderr)
            small = small_inputs(base, network, folder, args.repeats)
            profiles, large = large_inputs(base, network, folder, args.inputs_224, args.repeats)
            described = network.describe()
    except NamespacesUnavailable as exc:
        print(f"network benchmark skipped: cannot build the namespaces and shaped links here: {exc}", file=sys.stderr)
        return 0
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    out = {
        **run_info(),
        "config": str(args.config),
        "network": described,
        "small_summary": summarise(small, "placement"),
        "small": small,
        "large_summary": summarise(large, "scenario"),
        "large_profiles_ips": profiles,
        "large": large,
    }
    write_results(args.out, out, lambda path: _plot(out, path))
    return 0


def summarise(rows: list[dict[str, Any]], by: str) -> list[dict[str, Any]]:
    """Per ``by`` (placement or scenario) and workload: medians of the repeats, and how many met their target."""
    summary = []
    for key in dict.fromkeys(r[by] for r in rows):
        for workload in dict.fromkeys(r["workload"] for r in rows):
            group = [r for r in rows if r[by] == key and r["workload"] == workload]
            summary.append(
                {by: key, "workload": workload, "requests": len(group), "met": sum(r["met"] for r in group)}
                | {k: statistics.median(r[k] for r in group) for k in ("achieved_ips", "expected_ips", "accuracy",
                                                                        "wall_s")}
            )  # fmt: skip
    return summary


def _plot(out: dict[str, Any], path: Path) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.4))
    ax = axes[0]
    for i, placement in enumerate(["loopback", "shaped links"]):
        rows = [r for r in out["small_summary"] if r["placement"] == placement]
        ax.bar([j + 0.4 * i for j in range(len(rows))], [r["achieved_ips"] for r in rows], width=0.4, label=placement)
    ax.set_xticks([j + 0.2 for j in range(len(SMALL_WORKLOADS))], [f"{w} (28×28)" for w in SMALL_WORKLOADS])
    ax.set_ylabel("achieved inf/s")
    ax.set_title("small inputs: median inf/s, loopback vs shaped links")
    ax.legend(fontsize=8)

    ax = axes[1]
    width = 0.8 / len(LARGE_SCENARIOS)
    for i, scenario in enumerate(LARGE_SCENARIOS):
        rows = [r for r in out["large_summary"] if r["scenario"] == scenario.name]
        xs = [j + width * i for j in range(len(rows))]
        ax.bar(xs, [r["achieved_ips"] for r in rows], width=width, label=scenario.name)
        for x, r in zip(xs, rows, strict=True):
            label = f"{100 * r['accuracy']:.1f}%" + (
                f"\n{r['met']}/{r['requests']}" if r["workload"] != "accurate" else ""
            )
            ax.text(x, r["achieved_ips"], label, ha="center", va="bottom", fontsize=6)
    ax.axhline(TARGET_224, color="k", lw=0.8, ls="--")
    ax.set_xticks(
        [j + 0.4 - width / 2 for j in range(len(LARGE_WORKLOADS))], [f"{w} (224×224)" for w in LARGE_WORKLOADS]
    )
    ax.set_title("large inputs: median inf/s (accuracy, targets met)")
    ax.legend(fontsize=7)

    ax = axes[2]
    for scenario in LARGE_SCENARIOS[1:]:
        row = next(r for r in out["large"] if r["scenario"] == scenario.name and r["target_ips"] and r["repeat"] == 0)
        ax.plot([0.0, *row["progress"]["t_s"]], [0, *row["progress"]["inputs"]], label=scenario.name)
    end = max(r["wall_s"] for r in out["large"] if r["target_ips"])
    ax.plot([0, end], [0, TARGET_224 * end], color="k", lw=0.8, ls="--", label=f"{TARGET_224:.0f} inf/s")
    ax.set_xlabel("seconds since the request arrived")
    ax.set_ylabel("inputs predicted")
    ax.set_title(f"large inputs, target {TARGET_224:.0f} inf/s: one request each")
    ax.legend(fontsize=7)
    save(fig, path)


if __name__ == "__main__":
    raise SystemExit(main())
