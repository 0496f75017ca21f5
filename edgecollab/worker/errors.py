"""The root of edgecollab's exception tree (the rest is in ``edgecollab.errors``), kept here so the board's
worker raises the same types as the full package."""

from __future__ import annotations


class EdgecollabError(Exception):
    """Base class of every error edgecollab raises on purpose."""


class ConfigError(EdgecollabError):
    """The cluster configuration, or a worker's own settings (keys, cache), is invalid."""
