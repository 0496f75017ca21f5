"""Model files on the board's disk, by content: ``ROOT/<sha256>.onnx``. A file is used only when its
size and sha256 are the ones the coordinator named; anything else is fetched again. No sockets here."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from .settings import VariantSpec


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "edgecollab" / "models"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class ModelCache:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._checked: set[str] = set()  # hashes verified since this worker started

    def path(self, spec: VariantSpec) -> Path:
        return self.root / f"{spec.sha256}.onnx"

    def holds(self, spec: VariantSpec) -> bool:
        """Whether the cached file is the one named, byte for byte (a corrupt or partial one is removed)."""
        path = self.path(spec)
        if spec.sha256 in self._checked and path.is_file():
            return True
        if not path.is_file():
            return False
        if path.stat().st_size == spec.size and sha256_of(path) == spec.sha256:
            self._checked.add(spec.sha256)
            return True
        path.unlink()
        return False

    def store(self, spec: VariantSpec, data: bytes) -> Path:
        """Keep a fetched file, if it is the one named; ``ValueError`` says how it is not."""
        digest = hashlib.sha256(data).hexdigest()
        if len(data) != spec.size or digest != spec.sha256:
            raise ValueError(
                f"model {spec.id}: fetched {len(data)} bytes with sha256 {digest[:12]}…;"
                f" expected {spec.size} bytes with sha256 {spec.sha256[:12]}…"
            )
        self.root.mkdir(parents=True, exist_ok=True)
        # Write aside, then rename: a reader (another worker sharing the cache) never sees half a file.
        fd, temporary = tempfile.mkstemp(dir=self.root, prefix=".fetch-")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(temporary, self.path(spec))
        self._checked.add(spec.sha256)
        return self.path(spec)
