"""The exception tree of edgecollab.

    EdgecollabError
    ├── ConfigError              a cluster config that does not validate
    ├── ModelError               a model that cannot be used as described
    │   └── ManifestError        a model manifest (zoo.toml) that is broken
    ├── RequestFailed            a request did not complete (``code`` says why)
    │   ├── BusyError            the coordinator is at its request limit, or no board is ready: retry later
    │   ├── InvalidInputError    the inputs, policy or target do not fit: fix the request
    │   ├── InfeasibleTargetError  a strict request whose target or minimum accuracy the cluster cannot meet
    │   ├── NodeLostError        boards were lost until a shard or the request could not go on
    │   └── RequestLostError     the coordinator shut down, forgot the request, stopped answering, or timed out
    ├── ProtocolError            a peer sent a malformed message  (edgecollab.protocol)
    └── PlanningError            no plan can be made              (edgecollab.planner)

Every error message names what was wrong and what was expected.
"""

from __future__ import annotations

from .worker.errors import ConfigError, EdgecollabError

__all__ = [
    "BusyError",
    "ConfigError",
    "EdgecollabError",
    "InfeasibleTargetError",
    "InvalidInputError",
    "ManifestError",
    "ModelError",
    "NodeLostError",
    "RequestFailed",
    "RequestLostError",
    "request_failed",
]


class ModelError(EdgecollabError):
    """A model file cannot be used as its manifest entry describes."""


class ManifestError(ModelError):
    """The model manifest is missing, malformed or inconsistent with its files."""


class RequestFailed(EdgecollabError):
    """A request did not complete; ``code`` says why (see ``protocol.ERROR_CODES``)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.reason = message


class BusyError(RequestFailed):
    """Retry later: the coordinator is at its request limit, or no board is ready."""


class InvalidInputError(RequestFailed):
    """The request itself is wrong (inputs, policy, target): retrying will not help."""


class InfeasibleTargetError(RequestFailed):
    """A strict request asked for more than the cluster can plan: lower the target or the minimum accuracy."""


class NodeLostError(RequestFailed):
    """Boards were lost until the request could not go on."""


class RequestLostError(RequestFailed):
    """The coordinator shut down or restarted before answering, stopped answering, or did not answer in time."""


_BY_CODE: dict[str, type[RequestFailed]] = {
    "busy": BusyError,
    "invalid_input": InvalidInputError,
    "unknown_variant": InvalidInputError,
    "infeasible": InfeasibleTargetError,
    "node_lost": NodeLostError,
    "shutting_down": RequestLostError,
    "request_lost": RequestLostError,
    "coordinator_unreachable": RequestLostError,
    "timeout": RequestLostError,
}


def request_failed(code: str, message: str) -> RequestFailed:
    """The typed error for an error code (``RequestFailed`` itself for any other)."""
    return _BY_CODE.get(code, RequestFailed)(code, message)
