"""edgecollab: accuracy-aware collaborative DNN inference on heterogeneous edge boards."""

from __future__ import annotations

from .errors import ConfigError, EdgecollabError, ManifestError, ModelError

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "EdgecollabError",
    "ManifestError",
    "ModelError",
    "__version__",
]
