"""The public Python API: exactly what __all__ says, typed errors, and a blocking client that works anywhere."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import edgecollab
from edgecollab.errors import request_failed

from .conftest import SHIPPED_MANIFEST

DOCUMENTED_API = {
    "BusyError",
    "Client",
    "ClusterConfig",
    "ConfigError",
    "EdgecollabError",
    "FrameResult",
    "InferenceResult",
    "InfeasibleTargetError",
    "InvalidInputError",
    "LocalCluster",
    "ManifestError",
    "ModelError",
    "NodeLostError",
    "ProtocolError",
    "RequestFailed",
    "RequestLostError",
    "Stream",
    "SyncClient",
    "SyncStream",
    "__version__",
    "load_config",
}


def test_the_public_api_is_exactly_the_documented_one() -> None:
    assert set(edgecollab.__all__) == DOCUMENTED_API
    assert all(hasattr(edgecollab, name) for name in edgecollab.__all__)


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        ("busy", edgecollab.BusyError),
        ("invalid_input", edgecollab.InvalidInputError),
        ("unknown_variant", edgecollab.InvalidInputError),
        ("infeasible", edgecollab.InfeasibleTargetError),
        ("node_lost", edgecollab.NodeLostError),
        ("shutting_down", edgecollab.RequestLostError),
        ("request_lost", edgecollab.RequestLostError),
        ("coordinator_unreachable", edgecollab.RequestLostError),
        ("timeout", edgecollab.RequestLostError),
        ("internal", edgecollab.RequestFailed),
    ],
)
def test_error_codes_map_to_one_exception_tree(code: str, kind: type[Exception]) -> None:
    error = request_failed(code, "why")
    assert type(error) is kind and error.code == code and error.reason == "why"
    assert isinstance(error, edgecollab.RequestFailed) and isinstance(error, edgecollab.EdgecollabError)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[edgecollab.LocalCluster]:
    folder: Path = tmp_path_factory.mktemp("api")
    (folder / "cluster.toml").write_text(
        f'[models]\nmanifest = "{SHIPPED_MANIFEST}"\n'
        '[[nodes]]\nname = "rpi4"\nemulate = "rpi4"\nvariants = ["cnn-8"]\n'
        '[[nodes]]\nname = "jetson-nano"\nemulate = "jetson-nano"\nvariants = ["cnn-8"]\n'
    )
    with edgecollab.LocalCluster(folder / "cluster.toml", log_dir=folder / "logs") as local:
        yield local


def test_the_blocking_client_serves_requests_and_raises_typed_errors(cluster: edgecollab.LocalCluster) -> None:
    images = np.zeros((100, 1, 28, 28), np.uint8)
    with edgecollab.SyncClient(cluster.clients_endpoint, timeout_s=60) as client:
        result = client.infer(images, target_ips=100)
        assert isinstance(result, edgecollab.InferenceResult) and result.predictions.shape == (100,)
        assert result.report["inputs"] == 100
        with pytest.raises(edgecollab.InvalidInputError, match=r"expected uint8 inputs of shape \(N, 1, 28, 28\)"):
            client.infer(images.astype(np.float32))
        assert sorted(n["name"] for n in client.query("status")["nodes"]) == ["jetson-nano", "rpi4"]


def test_the_blocking_client_works_inside_a_running_event_loop(cluster: edgecollab.LocalCluster) -> None:
    async def notebook_cell() -> int:
        with edgecollab.SyncClient(cluster.clients_endpoint, timeout_s=60) as client:
            return len(client.infer(np.zeros((10, 1, 28, 28), np.uint8)).predictions)

    assert asyncio.run(notebook_cell()) == 10
