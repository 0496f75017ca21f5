"""The exception tree of edgecollab.

    EdgecollabError
    ├── ConfigError          a cluster config that does not validate
    ├── ModelError           a model that cannot be used as described
    │   └── ManifestError    a model manifest (zoo.toml) that is broken
    ├── RequestFailed        the coordinator answered a request with an error (``code`` says which)
    ├── ProtocolError        a peer sent a malformed message  (edgecollab.protocol)
    └── PlanningError        no plan can be made              (edgecollab.planner)

Every error message names what was wrong and what was expected.
"""

from __future__ import annotations


class EdgecollabError(Exception):
    """Base class of every error edgecollab raises on purpose."""


class ConfigError(EdgecollabError):
    """The cluster configuration is invalid."""


class ModelError(EdgecollabError):
    """A model file cannot be used as its manifest entry describes."""


class ManifestError(ModelError):
    """The model manifest is missing, malformed or inconsistent with its files."""


class RequestFailed(EdgecollabError):
    """The coordinator could not serve a request; ``code`` says why (see ``protocol.ERROR_CODES``)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.reason = message
