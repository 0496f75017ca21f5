"""What each board gets at registration: its settings from the coordinator's config, and the variants
its runtime can run (the rest left out, with the reason). Pure functions of the config, the manifest
and the runtime a worker reports; the model files themselves are served by the shell in chunks."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import onnx

from ..config import ClusterConfig, NodeConfig
from ..errors import ConfigError
from ..worker.backends import pick_backend
from ..worker.cache import default_cache_dir
from ..worker.runner import ShardRunner
from ..worker.settings import EventSpec, NodeSettings, VariantSpec
from ..zoo import Manifest, load_manifest


@functools.lru_cache(maxsize=256)
def file_opset(path: Path, sha256: str) -> int:
    """The highest opset of the default ONNX domain the file imports (keyed by content too)."""
    model = onnx.load(str(path), load_external_data=False)
    return max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=1)


def node_variants(config: ClusterConfig, manifest: Manifest, node: NodeConfig) -> list[str]:
    """The variants a node is configured for: its own list, or every variant of the served tasks."""
    tasks = manifest.served(config.models.served)
    served = {t.name for t in tasks}
    names = list(node.variants or (manifest.id_of(v) for t in tasks for v in manifest.for_task(t.name)))
    foreign = [n for n in names if manifest.variant(n).task not in served]
    if foreign:
        raise ConfigError(
            f"node {node.name}: variant(s) {', '.join(foreign)} are of tasks the cluster does not serve"
            f" ({', '.join(served)}); add their task to [models] tasks"
        )
    return names


def variant_spec(manifest: Manifest, name: str) -> VariantSpec:
    variant = manifest.variant(name)
    task = manifest.task_of(variant)
    path = manifest.resolve(variant.file)
    return VariantSpec(
        id=manifest.id_of(variant), task=task.name, sha256=variant.sha256, size=path.stat().st_size,
        input_shape=tuple(task.input_shape), input_dtype=task.input_dtype, top1=task.quality == "top1",
        macs=variant.macs, quantized=variant.quantized, opset=file_opset(path, variant.sha256),
    )  # fmt: skip


def left_out(spec: VariantSpec, runtime: dict[str, Any]) -> str | None:
    """Why a board's runtime cannot run a variant, or None when it can (as far as its report tells)."""
    max_opset = runtime.get("max_opset")
    if isinstance(max_opset, int) and not isinstance(max_opset, bool) and spec.opset > max_opset:
        backend = f"{runtime.get('backend', '?')} {runtime.get('backend_version', '?')}"
        return f"needs opset {spec.opset}; {backend} runs opset {max_opset} at most"
    return None


def settings_for(config: ClusterConfig, manifest: Manifest, node: NodeConfig, runtime: dict[str, Any]) -> NodeSettings:
    """The node's settings from the config, with the variants its runtime can run."""
    runnable, excluded = [], {}
    for name in node_variants(config, manifest, node):
        spec = variant_spec(manifest, name)
        reason = left_out(spec, runtime)
        if reason is None:
            runnable.append(spec)
        else:
            excluded[spec.id] = reason
    return NodeSettings(
        providers=tuple(node.providers),
        threads=node.threads,
        emulate=node.emulate,
        events=tuple(EventSpec(e.at_s, e.speed, e.action) for e in node.events),
        variants=tuple(runnable),
        fp16=node.fp16,
        engine_cache=node.engine_cache,
        heartbeat_misses=config.coordinator.heartbeat_misses,
        excluded=excluded,
    )


def model_files(manifest: Manifest, settings: NodeSettings) -> dict[str, Path]:
    """The files a node may fetch, by sha256: those of its own variants and no others."""
    return {v.sha256: manifest.resolve(manifest.variant(v.id).file) for v in settings.variants}


def local_runner(config: ClusterConfig, node: str) -> ShardRunner:
    """A node's runner in this process, on the manifest's own files (no coordinator, no fetch): for tools
    that drive boards directly, such as the peer benchmarks. Runtime: this machine's ONNX Runtime."""
    manifest = load_manifest(config.manifest_path)
    backend = pick_backend("onnxruntime")
    settings = settings_for(config, manifest, config.node(node), backend.describe())
    files = {v.id: manifest.resolve(manifest.variant(v.id).file) for v in settings.variants}
    return ShardRunner(node, settings, files, backend, default_cache_dir().parent / "engines")
