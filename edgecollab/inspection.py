"""Where ``profile``, ``plan``, ``pareto`` and ``status`` get the cluster's state from.

Either a running coordinator (asked with a ``Query``), or the profile cached beside the
config; ``profile_here`` fills that cache by starting the config's cluster on this machine.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from .client import Client
from .config import ClusterConfig, load_config
from .coordinator.provisioning import node_variants
from .errors import EdgecollabError, RequestFailed
from .local import LocalCluster
from .planner import ExplorationTable, Measurement, ProfileCache
from .planner.table import PRIOR_ROW_SPREAD
from .security import ClientCurve, client_curve
from .zoo import load_manifest


def ask(
    endpoint: str, topic: str, timeout_s: float = 10.0, curve: ClientCurve | None = None, **params: Any
) -> dict[str, Any]:
    """Query a running coordinator; a clear error when none answers."""

    async def go() -> dict[str, Any]:
        async with Client(endpoint, timeout_s=timeout_s, curve=curve) as client:
            return await client.query(topic, **params)

    try:
        return asyncio.run(go())
    except RequestFailed as exc:
        if exc.code == "timeout":
            raise EdgecollabError(f"no coordinator answered at {endpoint} within {timeout_s:.0f} s") from None
        raise


def cached_table(config: ClusterConfig, task: str | None = None) -> ExplorationTable:
    """The exploration table of one task's variants (none: the default task's) from the profile cache,
    for every node of the config."""
    manifest = load_manifest(config.manifest_path, check_files=False)
    task = task or config.models.task
    table, _ = cached_profile(config)  # its links are per input of the first task, scaled for each variant's
    return table.only(frozenset(manifest.id_of(v) for v in manifest.for_task(task)))


def cached_profile(config: ClusterConfig) -> tuple[ExplorationTable, list[dict[str, str]]]:
    """Every served task's rows from the profile cache, with what earlier runs learned; and the (node,
    variant) pairs of served tasks the cache lacks. ``EdgecollabError`` when a node has no profile at all."""
    manifest = load_manifest(config.manifest_path, check_files=False)
    tasks = manifest.served(config.models.served)
    variants = {manifest.id_of(v): t.name for t in tasks for v in manifest.for_task(t.name)}
    table = ExplorationTable({manifest.id_of(v): v.accuracy for t in tasks for v in manifest.for_task(t.name)})
    table.tasks = variants
    table.confidence = config.coordinator.confidence
    table.link_seconds.update(config.link_seconds_per_input(tasks[0].bytes_per_input))
    scale = {v: manifest.tasks[t].bytes_per_input / tasks[0].bytes_per_input for v, t in variants.items()}
    table.input_scale.update(scale)
    cache_path = config.resolve(config.coordinator.profile_cache)
    cache = ProfileCache(cache_path)
    table.realisations.update(cache.load_realisations())
    unprofiled, missing = [], []
    for node in config.nodes:
        measurements = cache.load_any(node.name)
        if not measurements:
            unprofiled.append(node.name)
            continue
        for variant, measurement in measurements.items():
            if variant in table.accuracy:
                table.record(node.name, variant, measurement)
        wanted = [v for v in node_variants(config, manifest, node) if v in variants]
        missing += [
            {"node": node.name, "variant": v, "task": variants[v], "why": "not in the profile cache"}
            for v in wanted
            if v not in measurements
        ]
    if unprofiled:
        raise EdgecollabError(
            f"no cached profile for {', '.join(unprofiled)} in {cache_path}; run 'edgecollab profile' "
            "to profile the cluster here, or pass --coordinator to ask a running one"
        )
    return table, missing


def table_from_rows(rows: list[dict[str, Any]]) -> ExplorationTable:
    """The table a coordinator's ``table`` query answered (its rows' errors and curves included)."""
    table = ExplorationTable({str(r["variant"]): float(r["accuracy"]) for r in rows})
    for r in rows:
        latencies = tuple((int(b), float(ms)) for b, ms in r.get("latencies", []))
        error = r.get("error") or {}
        measurement = Measurement(
            float(r["ips"]),
            float(r["latency_ms"]),
            latencies,
            spread=float(error.get("spread", PRIOR_ROW_SPREAD)),
            host_bound=bool(error.get("host_bound", False)),
            curve=tuple((int(b), float(ips)) for b, ips in r.get("curve", [])),
            observations=int(error.get("observations", 0)),
        )
        table.record(str(r["node"]), str(r["variant"]), measurement)
        if r.get("task"):
            table.tasks[str(r["variant"])] = str(r["task"])
    return table


def wait_until_ready(endpoint: str, timeout_s: float = 300.0, curve: ClientCurve | None = None) -> dict[str, Any]:
    """Poll a coordinator until every configured node is registered and profiled; its status."""
    deadline = time.monotonic() + timeout_s
    while True:
        status = ask(endpoint, "status", timeout_s=30, curve=curve)
        serving = status["state"] in ("serving", "replanning", "degraded")
        if serving and status["nodes"] and all(n["profiled"] for n in status["nodes"]):
            return status
        if time.monotonic() > deadline:
            raise EdgecollabError(f"the cluster at {endpoint} was not ready within {timeout_s:.0f} s")
        time.sleep(0.5)


def profile_here(config_path: Path, refresh: bool, timeout_s: float = 300.0) -> list[dict[str, Any]]:
    """Start the config's cluster on this machine until every node is profiled; return the table's rows."""
    config = load_config(config_path)
    cache = config.resolve(config.coordinator.profile_cache)
    if refresh:
        cache.unlink(missing_ok=True)
    curve = client_curve(config)
    with LocalCluster(config_path, log_dir=config.resolve(".edgecollab/logs")) as local:
        wait_until_ready(local.clients_endpoint, timeout_s, curve)
        return ask(local.clients_endpoint, "table", curve=curve)["rows"]  # type: ignore[no-any-return]
