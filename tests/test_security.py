"""With CURVE on, only allow-listed keys get in, a node's name is bound to its key, and a client's
key is who it is: status shows it its own work only, an operator's key sees everyone's."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgecollab.client import Client
from edgecollab.config import load_config
from edgecollab.errors import ConfigError
from edgecollab.inspection import ask
from edgecollab.local import LocalCluster
from edgecollab.protocol import Cancel, Error, Hello, StreamClose, Submit, decode, encode
from edgecollab.security import ClientCurve, load_key_pair, load_public_key

from .cluster_helpers import edgecollab, raw_peer
from .conftest import SHIPPED_MANIFEST

NODES = ["rpi4", "jetson-nano"]


def secured_config(folder: Path) -> Path:
    lines = [
        "[coordinator]",
        "heartbeat_s = 0.5",
        "[models]",
        f'manifest = "{SHIPPED_MANIFEST}"',
        "[security]",
        "curve = true",
        'coordinator_key = "keys/coordinator.key_secret"',
        'coordinator_public_key = "keys/coordinator.key"',
        'authorized_keys = "keys/authorized"',
        'client_key = "keys/client.key_secret"',
        'operators = ["ops"]',
    ]
    for name in NODES:
        lines += [
            "[[nodes]]",
            f'name = "{name}"',
            f'emulate = "{name}"',
            'variants = ["cnn-8"]',
            f'key = "keys/{name}.key_secret"',
        ]
    path = folder / "cluster.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalCluster, Path]]:
    folder = tmp_path_factory.mktemp("secured")
    config = secured_config(folder)
    done = edgecollab(
        "keys", "generate", str(folder / "keys"), "--config", str(config),
        "--client", "client", "--client", "other", "--client", "stranger", "--operator", "ops",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert {path.stat().st_mode & 0o777 for path in (folder / "keys").glob("*.key_secret")} == {0o600}
    (folder / "keys" / "authorized" / "stranger.key").unlink()  # a valid key pair, not allowed in
    with LocalCluster(config, log_dir=folder / "logs") as local:
        yield local, folder / "keys"


def client_keys(keys: Path, name: str, server: str = "coordinator") -> ClientCurve:
    return ClientCurve(load_key_pair(keys / f"{name}.key_secret"), load_public_key(keys / f"{server}.key"))


def test_an_allowed_client_is_served_over_curve(secured: tuple[LocalCluster, Path]) -> None:
    local, keys = secured

    async def go() -> object:
        async with Client(local.clients_endpoint, timeout_s=60, curve=client_keys(keys, "client")) as client:
            return await client.infer(np.zeros((600, 1, 28, 28), np.uint8))  # large: planned on both nodes

    result = asyncio.run(go())
    assert sorted({a["node"] for a in result.report["assignment"]}) == sorted(NODES)  # type: ignore[attr-defined]


async def silent_peer(endpoint: str, curve: ClientCurve | None, message: object) -> list[bytes] | None:
    """Send one message as a peer with these keys (None: no CURVE); the reply, or None if nothing came back."""
    async with raw_peer(endpoint, curve) as sock:
        await sock.send_multipart(encode(message))  # type: ignore[arg-type]
        return await sock.recv_multipart() if await sock.poll(2000) else None


@pytest.mark.parametrize("who", ["no CURVE", "unknown key", "wrong server key"])
def test_peers_without_an_allowed_key_get_nothing_through(secured: tuple[LocalCluster, Path], who: str) -> None:
    local, keys = secured
    curve = {
        "no CURVE": None,
        "unknown key": client_keys(keys, "stranger"),
        "wrong server key": client_keys(keys, "client", server="stranger"),
    }[who]
    before = ask(local.clients_endpoint, "status", 30, client_keys(keys, "client"))["counters"]
    submit = Submit("intruder", np.zeros((4, 1, 28, 28), np.uint8))
    assert asyncio.run(silent_peer(local.clients_endpoint, curve, submit)) is None
    hello = Hello("rpi4", {"arch": "x86_64", "max_opset": 21})
    assert asyncio.run(silent_peer(local.workers_endpoint, curve, hello)) is None
    after = ask(local.clients_endpoint, "status", 30, client_keys(keys, "client"))
    assert after["counters"] == before, "nothing may reach the application"
    assert after["requests"] == [] and sorted(n["name"] for n in after["nodes"]) == sorted(NODES)


def test_a_client_sees_only_its_own_work_and_cannot_touch_anothers_an_operator_sees_all(
    secured: tuple[LocalCluster, Path],
) -> None:
    local, keys = secured

    async def status(name: str) -> dict[str, Any]:
        async with Client(local.clients_endpoint, timeout_s=30, curve=client_keys(keys, name)) as asker:
            return await asker.query("status")

    async def go() -> None:
        owner = Client(local.clients_endpoint, timeout_s=60, curve=client_keys(keys, "client"))
        async with owner as client, client.stream(20.0) as stream:
            sid = stream.stream_id
            other = await status("other")
            assert other["streams"] == [] and other["others"] == {"requests": 0, "streams": 1}
            assert sid not in str(other), "another client's ids are never shown"
            # The same key on another connection is the same client; the operator sees it with its owner.
            assert [st["id"] for st in (await status("client"))["streams"]] == [sid]
            assert [(st["id"], st["client"]) for st in (await status("ops"))["streams"]] == [(sid, "client")]
            # Another client naming this stream's id touches nothing: to it, no such stream exists.
            reply = await silent_peer(local.clients_endpoint, client_keys(keys, "other"), StreamClose(sid))
            assert reply is not None
            error = decode(reply)
            assert isinstance(error, Error) and f"stream_id {sid!r} is not an open stream" in error.message
            assert await silent_peer(local.clients_endpoint, client_keys(keys, "other"), Cancel(sid)) is None
            await stream.send(np.zeros((3, 1, 28, 28), np.uint8))
            await stream.close()
            results = [r async for r in stream]
            assert [r.seq for r in results] == [0, 1, 2]  # the stream ran on, untouched
            assert (await status("ops"))["counters"]["cancels_ignored"] >= 1

    asyncio.run(go())


def test_a_valid_key_cannot_register_under_another_nodes_name(secured: tuple[LocalCluster, Path]) -> None:
    local, keys = secured
    impostor = Hello("jetson-nano", {"arch": "aarch64", "max_opset": 21})
    reply = asyncio.run(silent_peer(local.workers_endpoint, client_keys(keys, "rpi4"), impostor))
    assert reply is not None
    error = decode(reply)
    assert isinstance(error, Error) and error.code == "refused"
    assert "this key belongs to 'rpi4', not to node 'jetson-nano'" in error.message


def test_the_config_refuses_curve_without_an_allow_list(tmp_path: Path) -> None:
    (tmp_path / "cluster.toml").write_text('[security]\noperators = ["ops"]\n[[nodes]]\nname = "a"\n')
    with pytest.raises(ConfigError, match=r"operators need curve = true"):
        load_config(tmp_path / "cluster.toml")
    (tmp_path / "cluster.toml").write_text(
        '[security]\ncurve = true\ncoordinator_public_key = "c.key"\n[[nodes]]\nname = "a"\nkey = "a.key_secret"\n'
    )
    with pytest.raises(ConfigError, match=r"security: curve = true needs authorized_keys, an allow-list"):
        load_config(tmp_path / "cluster.toml")
    (tmp_path / "cluster.toml").write_text(
        '[security]\ncurve = true\ncoordinator_public_key = "c.key"\nauthorized_keys = "ok"\n[[nodes]]\nname = "a"\n'
    )
    with pytest.raises(ConfigError, match=r"curve = true needs a key for every node; missing for a"):
        load_config(tmp_path / "cluster.toml")


def test_a_worker_without_its_secret_key_file_says_which(tmp_path: Path) -> None:
    config = secured_config(tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "edgecollab", "worker", "--config", str(config), "--node", "rpi4"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert "cannot read CURVE" in done.stderr and "coordinator.key" in done.stderr
