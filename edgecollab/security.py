"""CURVE keys: loading, the allow-list, and generating a cluster's key pairs.

Certificates are ZeroMQ's (``NAME.key`` public, ``NAME.key_secret`` secret). The coordinator
admits only peers whose public certificate is in the ``authorized_keys`` folder; a worker's
certificate there must be named after its node (``rpi4.key``), which binds the node name to
the key: a valid key cannot register under another node's name.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import zmq.auth

from .config import ClusterConfig, NodeConfig
from .errors import ConfigError
from .worker.keys import ClientCurve, KeyPair, load_key_pair, load_public_key

__all__ = [
    "ClientCurve",
    "KeyPair",
    "authorized_keys",
    "client_curve",
    "generate_keys",
    "load_key_pair",
    "load_public_key",
    "node_curve",
    "server_curve",
    "site_curve",
]


def authorized_keys(folder: Path) -> dict[bytes, str]:
    """Public key → certificate name (the file's stem) for every certificate in the allow-list folder."""
    if not folder.is_dir():
        raise ConfigError(f"CURVE allow-list folder not found: {folder}")
    keys = {load_public_key(path): path.stem for path in sorted(folder.glob("*.key"))}
    if not keys:
        raise ConfigError(f"CURVE allow-list {folder} holds no public certificates (*.key)")
    return keys


def generate_keys(folder: Path, nodes: list[str], clients: list[str]) -> list[Path]:
    """Key pairs for the coordinator, each node and each client, and the allow-list of the last two."""
    folder.mkdir(parents=True, exist_ok=True)
    allowed = folder / "authorized"
    allowed.mkdir(exist_ok=True)
    written = []
    for name in ["coordinator", *nodes, *clients]:
        public, secret = zmq.auth.create_certificates(folder, name)
        Path(secret).chmod(0o600)  # readable by its owner only
        written += [Path(public), Path(secret)]
        if name != "coordinator":
            shutil.copy(public, allowed / Path(public).name)
    return written


def _require(value: str | None, what: str) -> str:
    if value is None:
        raise ConfigError(f"[security] curve = true: {what} is not set")
    return value


def server_curve(config: ClusterConfig) -> tuple[KeyPair, Path] | None:
    """The coordinator's key pair and allow-list folder, or None when CURVE is off."""
    security = config.security
    if not security.curve:
        return None
    keys = load_key_pair(config.resolve(_require(security.coordinator_key, "coordinator_key")))
    return keys, config.resolve(_require(security.authorized_keys, "authorized_keys"))


def node_curve(config: ClusterConfig, node: NodeConfig) -> ClientCurve | None:
    if not config.security.curve:
        return None
    server = load_public_key(config.resolve(_require(config.security.coordinator_public_key, "coordinator_public_key")))
    return ClientCurve(load_key_pair(config.resolve(_require(node.key, f"key of node {node.name}"))), server)


def client_curve(config: ClusterConfig) -> ClientCurve | None:
    if not config.security.curve:
        return None
    server = load_public_key(config.resolve(_require(config.security.coordinator_public_key, "coordinator_public_key")))
    return ClientCurve(load_key_pair(config.resolve(_require(config.security.client_key, "client_key"))), server)


def site_curve(config: ClusterConfig) -> ClientCurve | None:
    """A site's keys towards its parent (``parent_key``, ``parent_public_key``), or None without CURVE there."""
    settings = config.coordinator
    if settings.parent_key is None or settings.parent_public_key is None:
        return None
    return ClientCurve(
        load_key_pair(config.resolve(settings.parent_key)), load_public_key(config.resolve(settings.parent_public_key))
    )
