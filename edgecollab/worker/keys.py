"""CURVE key pairs as a connecting peer (worker or client) loads them. Certificates are ZeroMQ's
(``NAME.key`` public, ``NAME.key_secret`` secret)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import zmq.auth

from .errors import ConfigError


@dataclass(frozen=True)
class KeyPair:
    public: bytes  # z85
    secret: bytes  # z85


@dataclass(frozen=True)
class ClientCurve:
    """What a connecting peer (worker or client) needs: its key pair and the coordinator's public key."""

    keys: KeyPair
    server_public: bytes


def load_key_pair(path: Path) -> KeyPair:
    """A secret certificate (``*.key_secret``), with a clear error when it is missing or not one."""
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read CURVE secret certificate {path}: {exc}") from None
    if secret is None:
        raise ConfigError(f"{path} is a public certificate; a secret one (*.key_secret) is needed here")
    return KeyPair(public, secret)


def load_public_key(path: Path) -> bytes:
    try:
        public, _ = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read CURVE public certificate {path}: {exc}") from None
    return public


def curve_from_folder(folder: Path, node: str) -> ClientCurve:
    """A board's keys as ``edgecollab keys generate`` writes them: ``NODE.key_secret`` and the
    coordinator's ``coordinator.key``, side by side in one folder."""
    if not folder.is_dir():
        raise ConfigError(
            f"--keys {folder}: no such folder; expected one holding {node}.key_secret and coordinator.key"
        )
    return ClientCurve(load_key_pair(folder / f"{node}.key_secret"), load_public_key(folder / "coordinator.key"))
