"""edgecollab: accuracy-aware collaborative DNN inference on heterogeneous edge boards.

The public API; everything else is internal and may change.
"""

from __future__ import annotations

from .client import Client, FrameResult, InferenceResult, Stream, SyncClient, SyncStream
from .config import ClusterConfig, load_config
from .errors import (
    BusyError,
    ConfigError,
    EdgecollabError,
    InfeasibleTargetError,
    InvalidInputError,
    ManifestError,
    ModelError,
    NodeLostError,
    RequestFailed,
    RequestLostError,
)
from .local import LocalCluster
from .protocol import ProtocolError

__version__ = "0.1.0"

__all__ = [
    "BusyError",
    "Client",
    "ClusterConfig",
    "ConfigError",
    "EdgecollabError",
    "FrameResult",
    "InfeasibleTargetError",
    "InferenceResult",
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
]
