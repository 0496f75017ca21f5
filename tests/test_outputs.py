"""Full outputs and per-input provenance, end to end on real processes."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from edgecollab.local import LocalCluster
from edgecollab.zoo import load_manifest, load_test_set, open_session

from .cluster_helpers import infer
from .conftest import SHIPPED_MANIFEST

# Two boards that load different variants: every plan that uses both mixes variants.
NODE_VARIANTS = {"board-a": "cnn-8", "board-b": "mlp-64"}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    folder = tmp_path_factory.mktemp("outputs")
    lines = ["[coordinator]", "startup_timeout_s = 60", "[models]", f'manifest = "{SHIPPED_MANIFEST}"']
    for node, variant in NODE_VARIANTS.items():
        lines += ["[[nodes]]", f'name = "{node}"', f'variants = ["{variant}"]']
    config = folder / "cluster.toml"
    config.write_text("\n".join(lines) + "\n")
    with LocalCluster(config, log_dir=folder / "logs") as local:
        yield local


def test_all_outputs_match_a_local_run_of_the_variant_each_input_names(cluster: LocalCluster) -> None:
    manifest = load_manifest(SHIPPED_MANIFEST, check_files=False)
    inputs = load_test_set(manifest, manifest.tasks["fashion-mnist"]).inputs[:1000]
    # A target beyond the cluster: the fastest plan, which takes both boards.
    result = infer(cluster.clients_endpoint, inputs, target_ips=1e6, outputs="all")
    assert len(result.variants) == len(result.nodes) == len(inputs)
    assert set(zip(result.nodes, result.variants, strict=True)) == set(NODE_VARIANTS.items())
    assert set(result.outputs) == {"logits"} and result.outputs["logits"].shape == (1000, 10)
    for variant in NODE_VARIANTS.values():
        v = manifest.variant(variant)
        rows = np.array([i for i, name in enumerate(result.variants) if name == variant])
        (expected,) = open_session(manifest.resolve(v.file), manifest.task_of(v)).run(None, {"images": inputs[rows]})
        np.testing.assert_allclose(result.outputs["logits"][rows], expected, atol=1e-4, rtol=0)
        assert np.array_equal(result.predictions[rows], expected.argmax(axis=1))


def test_the_default_is_predictions_only_with_provenance(cluster: LocalCluster) -> None:
    inputs = np.zeros((40, 1, 28, 28), np.uint8)
    result = infer(cluster.clients_endpoint, inputs)
    assert result.outputs == {} and len(result.predictions) == 40
    assert set(result.nodes) <= set(NODE_VARIANTS) and len(result.variants) == 40


def test_small_requests_with_different_outputs_each_get_their_own(cluster: LocalCluster) -> None:
    """Small requests travel packed together; the pack never mixes requests that want different outputs."""
    import asyncio

    from edgecollab.client import Client

    async def go() -> list[object]:
        async with Client(cluster.clients_endpoint, timeout_s=60) as client:
            image = np.zeros((1, 1, 28, 28), np.uint8)
            modes = ["all", "top5", None] * 10
            return await asyncio.gather(*(client.infer(image, outputs=m) for m in modes))

    results = asyncio.run(go())
    for i, result in enumerate(results):
        keys = set(result.outputs)  # type: ignore[attr-defined]
        assert keys == [{"logits"}, {"top5", "top5_scores"}, set()][i % 3]
