"""The global node: resource manager, request book-keeping, and the ROUTER server."""

from __future__ import annotations

from .request_run import MAX_ATTEMPTS, MAX_TRIES, RequestRun, ShardFailed, ShardTask
from .resource_manager import STATES, ResourceManager
from .server import Coordinator

__all__ = [
    "MAX_ATTEMPTS",
    "MAX_TRIES",
    "STATES",
    "Coordinator",
    "RequestRun",
    "ResourceManager",
    "ShardFailed",
    "ShardTask",
]
