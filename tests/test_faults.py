"""Boards fail mid-request; peers send garbage: every input still ends exactly once, the coordinator keeps serving."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import msgpack
import numpy as np
import pytest
import zmq

from edgecollab.client import Client, InferenceResult
from edgecollab.errors import RequestFailed
from edgecollab.inspection import ask
from edgecollab.local import LocalCluster
from edgecollab.protocol import Error, Submit, decode, encode
from edgecollab.zoo import LabelledSet, load_manifest, load_test_set

from .cluster_helpers import infer, local_predictions, raw_peer, write_cluster_config
from .conftest import SHIPPED_MANIFEST


@pytest.fixture(scope="module")
def profile(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("faults-profile")
    with LocalCluster(write_cluster_config(folder, heartbeat_s=0.3), log_dir=folder / "logs") as local:
        infer(local.clients_endpoint, np.zeros((8, 1, 28, 28), np.uint8))
    return folder / ".edgecollab" / "exploration.json"


@pytest.fixture
def cluster(profile: Path, tmp_path: Path) -> Iterator[LocalCluster]:
    """A fresh cluster (faults leave it damaged) that starts from the cached profile."""
    config = write_cluster_config(tmp_path, heartbeat_s=0.3)
    (tmp_path / ".edgecollab").mkdir()
    shutil.copy(profile, tmp_path / ".edgecollab" / "exploration.json")
    with LocalCluster(config, log_dir=tmp_path / "logs") as local:
        infer(local.clients_endpoint, np.zeros((8, 1, 28, 28), np.uint8))  # every board registered
        yield local


@pytest.fixture(scope="module")
def test_set() -> LabelledSet:
    manifest = load_manifest(SHIPPED_MANIFEST, check_files=False)
    return load_test_set(manifest, manifest.tasks["fashion-mnist"])


def cnn16_predictions(inputs: np.ndarray) -> np.ndarray:
    return local_predictions("cnn-16", inputs)  # every board runs cnn-16 in these tests


def infer_while(
    cluster: LocalCluster, inputs: np.ndarray, fault_after_s: float, fault: object, policy: str = "proportional"
) -> InferenceResult:
    """Run one request (every board on cnn-16) and call ``fault`` part-way through."""

    async def go() -> InferenceResult:
        async with Client(cluster.clients_endpoint, timeout_s=120) as client:
            request = asyncio.create_task(client.infer(inputs, policy=policy))
            await asyncio.sleep(fault_after_s)
            assert not request.done(), "the fault should land mid-request"
            fault()  # type: ignore[operator]
            return await request

    return asyncio.run(go())


@pytest.mark.parametrize("board", ["rpi4", "jetson-nano"])
def test_a_board_killed_mid_request_loses_no_input(cluster: LocalCluster, test_set: LabelledSet, board: str) -> None:
    indices = np.random.default_rng(3).choice(len(test_set), 30000, replace=True)
    inputs = test_set.inputs[indices]
    result = infer_while(cluster, inputs, 0.5, lambda: cluster.signal_worker(board, signal.SIGKILL))
    # Every input exactly once, in order: the same predictions the model gives locally.
    assert np.array_equal(result.predictions, cnn16_predictions(inputs))
    done_by_board = sum(a["inputs"] for a in result.report["assignment"] if a["node"] == board)
    planned = sum(a["planned_inputs"] for a in result.report["assignment"] if a["node"] == board)
    assert done_by_board < planned
    assert sum(a["inputs"] for a in result.report["assignment"]) == len(inputs)
    # Its connection closed with it: lost at once (the socket monitor), not after missed heartbeats.
    assert ask(cluster.clients_endpoint, "status")["counters"]["nodes_disconnected"] == 1


def test_a_hung_board_is_declared_dead_and_its_late_replies_are_ignored(
    cluster: LocalCluster, test_set: LabelledSet
) -> None:
    inputs = test_set.inputs[np.random.default_rng(4).choice(len(test_set), 30000, replace=True)]
    before = ask(cluster.clients_endpoint, "status")["counters"]
    result = infer_while(cluster, inputs, 0.5, lambda: cluster.signal_worker("rpi4", signal.SIGSTOP))
    assert np.array_equal(result.predictions, cnn16_predictions(inputs))
    assert result.report["retries"] > 0
    # Declared dead by its missed heartbeats (a stopped process keeps its connection open), and the rest
    # of its share was answered by the others.
    after = ask(cluster.clients_endpoint, "status")["counters"]
    assert after.get("nodes_lost", 0) == before.get("nodes_lost", 0) + 1
    assert after.get("nodes_disconnected", 0) == before.get("nodes_disconnected", 0)
    by_rpi4 = sum(a["inputs"] for a in result.report["assignment"] if a["node"] == "rpi4")
    planned = sum(a["planned_inputs"] for a in result.report["assignment"] if a["node"] == "rpi4")
    assert by_rpi4 < planned
    cluster.signal_worker("rpi4", signal.SIGCONT)  # its stale replies now arrive, and must change nothing
    again = infer(cluster.clients_endpoint, inputs[:500], policy="proportional")
    assert np.array_equal(again.predictions, cnn16_predictions(inputs[:500]))


GARBAGE: list[list[bytes]] = [
    [b"\xc1not msgpack"],
    [msgpack.packb({"v": 1, "k": "submit", "f": {"request_id": "x"}, "a": []})],  # missing array frame
    [
        msgpack.packb(
            {"v": 1, "k": "submit", "f": {"request_id": "x"}, "a": [["inputs", "uint8", [10**9, 1, 28, 28]]]}
        ),
        b"",
    ],
    [msgpack.packb({"v": 1, "k": "shard_result", "f": {1: 2}, "a": []})],  # int keys
    [msgpack.packb({"v": 9, "k": "heartbeat", "f": {"node": "x"}, "a": []})],
    [msgpack.packb({"v": 1, "k": "submit", "f": {"request_id": "x"}, "a": [["inputs", "object", [1]]]}), b"\x00" * 8],
    [msgpack.packb({"v": 1, "k": "heartbeat", "f": {"node": "x"}, "a": []}) + b"trailing"],
    [],
]


async def send_garbage(endpoint: str) -> list[Error]:
    replies = []
    async with raw_peer(endpoint) as sock:
        for frames in GARBAGE:
            await sock.send_multipart(frames or [b""])
            if await sock.poll(5000):
                message = decode(await sock.recv_multipart())
                assert isinstance(message, Error)
                replies.append(message)
    return replies


@pytest.mark.parametrize("socket_name", ["clients", "workers"])
def test_garbage_on_either_socket_gets_protocol_errors_and_others_are_still_served(
    cluster: LocalCluster, test_set: LabelledSet, socket_name: str
) -> None:
    endpoint = cluster.clients_endpoint if socket_name == "clients" else cluster.workers_endpoint
    replies = asyncio.run(send_garbage(endpoint))
    assert len(replies) == len(GARBAGE)
    assert all(r.code == "protocol" for r in replies)
    result = infer(cluster.clients_endpoint, test_set.inputs[:256], policy="proportional")
    assert np.array_equal(result.predictions, cnn16_predictions(test_set.inputs[:256]))
    status = ask(cluster.clients_endpoint, "status", timeout_s=30)
    assert status["counters"]["protocol_errors"] >= len(GARBAGE)
    assert sorted(n["name"] for n in status["nodes"]) == ["jetson-nano", "odroid-xu4-a", "odroid-xu4-b", "rpi4"]
    json.dumps(status)  # the status stays plain data


def test_past_the_request_cap_a_client_gets_busy_and_the_others_are_served(
    profile: Path, tmp_path: Path, test_set: LabelledSet
) -> None:
    config = write_cluster_config(tmp_path, heartbeat_s=0.3)
    config.write_text(config.read_text().replace("[coordinator]\n", "[coordinator]\nmax_requests = 2\n"))
    (tmp_path / ".edgecollab").mkdir()
    shutil.copy(profile, tmp_path / ".edgecollab" / "exploration.json")
    inputs = test_set.inputs[np.random.default_rng(5).choice(len(test_set), 20000, replace=True)]

    async def three_at_once(endpoint: str) -> list[object]:
        async with Client(endpoint, timeout_s=120) as client:
            return await asyncio.gather(
                *(client.infer(inputs, policy="proportional") for _ in range(3)), return_exceptions=True
            )

    with LocalCluster(config, log_dir=tmp_path / "logs") as local:
        infer(local.clients_endpoint, np.zeros((8, 1, 28, 28), np.uint8))
        outcomes = asyncio.run(three_at_once(local.clients_endpoint))
    busy = [o for o in outcomes if isinstance(o, RequestFailed)]
    served = [o for o in outcomes if isinstance(o, InferenceResult)]
    assert len(busy) == 1 and busy[0].code == "busy" and "limit of 2 requests" in busy[0].reason
    assert len(served) == 2
    expected = cnn16_predictions(inputs)
    assert all(np.array_equal(r.predictions, expected) for r in served)


def test_workers_register_again_with_a_restarted_coordinator(
    profile: Path, tmp_path: Path, test_set: LabelledSet
) -> None:
    # Heartbeats slow enough that the new coordinator is up before any worker notices the silence:
    # the workers must learn from the coordinator itself that it no longer knows them.
    config = write_cluster_config(tmp_path, heartbeat_s=3.0)
    (tmp_path / ".edgecollab").mkdir()
    shutil.copy(profile, tmp_path / ".edgecollab" / "exploration.json")
    with LocalCluster(config, log_dir=tmp_path / "logs") as local:
        infer(local.clients_endpoint, np.zeros((8, 1, 28, 28), np.uint8))
        assert local.coordinator is not None
        local.coordinator.kill()
        local.coordinator.wait()
        local.start_coordinator()  # same endpoints, no memory of the workers
        result = infer(local.clients_endpoint, test_set.inputs[:512], policy="proportional")
    nodes = {a["node"] for a in result.report["assignment"]}
    assert nodes == {"jetson-nano", "odroid-xu4-a", "odroid-xu4-b", "rpi4"}, result.report["notes"]
    assert np.array_equal(result.predictions, cnn16_predictions(test_set.inputs[:512]))


def test_a_message_above_the_size_limit_cuts_off_only_its_sender(cluster: LocalCluster, test_set: LabelledSet) -> None:
    from edgecollab.worker.transport import MAX_MESSAGE_BYTES

    async def oversized() -> list[bytes] | None:
        async with raw_peer(cluster.clients_endpoint) as sock:
            header = msgpack.packb({"v": 1, "k": "submit", "f": {"request_id": "big"}, "a": [["inputs", "uint8", [1]]]})
            await sock.send_multipart([header, bytes(MAX_MESSAGE_BYTES + 1)])
            return await sock.recv_multipart() if await sock.poll(3000) else None

    assert asyncio.run(oversized()) is None  # libzmq drops the connection; nothing reaches the coordinator
    result = infer(cluster.clients_endpoint, test_set.inputs[:256], policy="proportional")
    assert np.array_equal(result.predictions, cnn16_predictions(test_set.inputs[:256]))
    status = ask(cluster.clients_endpoint, "status", timeout_s=30)
    assert "protocol_errors" not in status["counters"] and status["requests"] == []


def test_a_board_joining_mid_request_takes_part_of_it(profile: Path, tmp_path: Path, test_set: LabelledSet) -> None:
    config = write_cluster_config(tmp_path, heartbeat_s=0.3)
    config.write_text(config.read_text().replace("startup_timeout_s = 60", "startup_timeout_s = 2"))
    (tmp_path / ".edgecollab").mkdir()
    shutil.copy(profile, tmp_path / ".edgecollab" / "exploration.json")
    inputs = test_set.inputs[np.random.default_rng(6).choice(len(test_set), 12000, replace=True)]
    with LocalCluster(config, nodes=["odroid-xu4-a", "odroid-xu4-b"], log_dir=tmp_path / "logs") as local:
        infer(local.clients_endpoint, np.zeros((8, 1, 28, 28), np.uint8))  # the two odroids serve alone
        # No target: adaptive keeps every board on the most accurate variant, so predictions are cnn-16's.
        result = infer_while(local, inputs, 0.5, lambda: local.start_worker("jetson-nano"), policy="adaptive")
    shares = {a["node"]: a["inputs"] for a in result.report["assignment"]}
    assert shares.get("jetson-nano", 0) > 0, "the new board should have been planned into the running request"
    assert result.report["replans"] >= 1
    assert np.array_equal(result.predictions, cnn16_predictions(inputs))


def test_a_peer_that_keeps_sending_garbage_is_cut_off(cluster: LocalCluster, test_set: LabelledSet) -> None:
    from edgecollab.coordinator.peers import MAX_PROTOCOL_STRIKES

    async def offender() -> tuple[int, list[bytes] | None]:
        answered = 0
        async with raw_peer(cluster.clients_endpoint) as sock:
            for _ in range(MAX_PROTOCOL_STRIKES + 3):
                await sock.send(b"\xc1garbage")
                if await sock.poll(1000):
                    await sock.recv_multipart()
                    answered += 1
            # Even a well-formed request from the same peer is now dropped.
            await sock.send_multipart(encode(Submit("late", np.zeros((2, 1, 28, 28), np.uint8))))
            return answered, (await sock.recv_multipart() if await sock.poll(2000) else None)

    answered, after = asyncio.run(offender())
    assert answered == MAX_PROTOCOL_STRIKES and after is None
    result = infer(cluster.clients_endpoint, test_set.inputs[:128], policy="proportional")  # others are served
    assert np.array_equal(result.predictions, cnn16_predictions(test_set.inputs[:128]))
    counters = ask(cluster.clients_endpoint, "status", timeout_s=30)["counters"]
    assert counters["peers_cut_off"] == 1 and counters["dropped_from_cut_off_peers"] == 4


def test_a_client_learns_at_once_that_a_restarted_coordinator_lost_its_request(
    cluster: LocalCluster, test_set: LabelledSet
) -> None:
    inputs = test_set.inputs[np.random.default_rng(8).choice(len(test_set), 60000, replace=True)]

    def restart() -> None:
        assert cluster.coordinator is not None
        cluster.coordinator.kill()
        cluster.coordinator.wait()
        cluster.start_coordinator()

    started = time.monotonic()
    with pytest.raises(RequestFailed) as failure:
        infer_while(cluster, inputs, 0.5, restart)
    assert failure.value.code in ("request_lost", "coordinator_unreachable")
    assert time.monotonic() - started < 30, "well before the client's 120 s timeout"
    again = infer(cluster.clients_endpoint, test_set.inputs[:128], policy="proportional")  # the new one serves
    assert np.array_equal(again.predictions, cnn16_predictions(test_set.inputs[:128]))


def test_a_board_whose_inference_stalls_while_it_heartbeats_is_worked_around(
    profile: Path, tmp_path: Path, test_set: LabelledSet
) -> None:
    """The emulated ``stall`` stops the rpi4's inference but not its event loop: it stays alive (heartbeats),
    so only the shard deadline can notice. Its shards go to the others, and every input ends exactly once."""
    config = write_cluster_config(tmp_path, heartbeat_s=0.3)
    config.write_text(config.read_text().replace("[coordinator]\n", "[coordinator]\nstall_floor_s = 1.0\n", 1))
    (tmp_path / ".edgecollab").mkdir()
    shutil.copy(profile, tmp_path / ".edgecollab" / "exploration.json")
    inputs = test_set.inputs[np.random.default_rng(8).choice(len(test_set), 20000, replace=True)]
    with LocalCluster(config, log_dir=tmp_path / "logs", faults={"rpi4": ["stall@1.5"]}) as local:
        infer(local.clients_endpoint, np.zeros((8, 1, 28, 28), np.uint8))  # every board registered
        result = infer(local.clients_endpoint, inputs, policy="proportional")
        status = ask(local.clients_endpoint, "status")
    assert np.array_equal(result.predictions, cnn16_predictions(inputs))
    assert status["counters"].get("nodes_stalled", 0) >= 1 and status["counters"].get("nodes_lost", 0) == 0
    rpi4 = next(n for n in status["nodes"] if n["name"] == "rpi4")
    assert rpi4["alive"] and rpi4["suspect"], "alive (heartbeating) but given no work"


def test_a_board_that_returns_garbled_results_is_cut_off_and_no_input_is_wrong(
    cluster: LocalCluster, test_set: LabelledSet
) -> None:
    """The emulated ``garble`` (here by signal, mid-request) makes the rpi4 answer a prediction short with NaN
    outputs: each such shard is sent again elsewhere, and after three the board is cut off."""
    inputs = test_set.inputs[np.random.default_rng(10).choice(len(test_set), 30000, replace=True)]
    result = infer_while(cluster, inputs, 0.5, lambda: cluster.signal_worker("rpi4", signal.SIGUSR2))
    assert np.array_equal(result.predictions, cnn16_predictions(inputs))  # nothing garbled got through
    status = ask(cluster.clients_endpoint, "status")
    assert status["counters"]["bad_results"] >= 3 and status["counters"]["nodes_cut_off"] == 1
    assert "rpi4" not in {n["name"] for n in status["nodes"] if n["alive"]}
    assert cluster.workers["rpi4"].wait(timeout=10) != 0  # told it was refused, it stopped


def test_a_stalled_board_that_answers_again_gets_work_again(cluster: LocalCluster, test_set: LabelledSet) -> None:
    inputs = test_set.inputs[np.random.default_rng(11).choice(len(test_set), 30000, replace=True)]

    def stall_then_recover() -> None:
        cluster.signal_worker("rpi4", signal.SIGUSR1)  # stuck inference, heartbeats go on

    result = infer_while(cluster, inputs, 0.3, stall_then_recover)
    assert np.array_equal(result.predictions, cnn16_predictions(inputs))
    rpi4 = next(n for n in ask(cluster.clients_endpoint, "status")["nodes"] if n["name"] == "rpi4")
    assert rpi4["alive"] and rpi4["suspect"]
    cluster.signal_worker("rpi4", signal.SIGUSR1)  # unstuck: its late answers come, and it is usable again
    deadline = time.monotonic() + 20
    while next(n for n in ask(cluster.clients_endpoint, "status")["nodes"] if n["name"] == "rpi4")["suspect"]:
        assert time.monotonic() < deadline, "the rpi4 answered again but stayed suspect"
        time.sleep(0.1)
    again = infer(cluster.clients_endpoint, inputs[:6000], policy="proportional")
    assert np.array_equal(again.predictions, cnn16_predictions(inputs[:6000]))
    assert any(a["node"] == "rpi4" and a["inputs"] > 0 for a in again.report["assignment"])


def test_a_cancelled_request_frees_the_boards_and_the_others_are_served(
    cluster: LocalCluster, test_set: LabelledSet
) -> None:
    """Cancelling ``Client.infer`` sends a cancel: the coordinator forgets the request at once (nothing more
    of it is dispatched), and the next request is served as usual."""
    inputs = test_set.inputs[np.random.default_rng(9).choice(len(test_set), 30000, replace=True)]

    async def cancel_midway() -> list[dict]:
        async with Client(cluster.clients_endpoint, timeout_s=120) as client:
            request = asyncio.create_task(client.infer(inputs, policy="proportional"))
            await asyncio.sleep(0.5)
            assert not request.done(), "the cancel should land mid-request"
            request.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await request
            await asyncio.sleep(0.3)
            return (await client.query("status"))["requests"]

    assert asyncio.run(cancel_midway()) == []
    again = infer(cluster.clients_endpoint, inputs[:500], policy="proportional")
    assert np.array_equal(again.predictions, cnn16_predictions(inputs[:500]))


def test_ctrl_c_on_submit_cancels_its_request(cluster: LocalCluster, tmp_path: Path) -> None:
    config = tmp_path / "cluster.toml"  # the fixture's
    process = subprocess.Popen(
        [sys.executable, "-m", "edgecollab", "submit", "--config", str(config), "--coordinator",
         cluster.clients_endpoint, "--inputs", "60000", "--policy", "proportional"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    # The request is another client's: status shows this connection only how many there are.
    while not ask(cluster.clients_endpoint, "status")["others"]["requests"]:  # wait until it runs
        assert time.monotonic() < deadline and process.poll() is None, process.communicate()
        time.sleep(0.1)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 130, stderr
    deadline = time.monotonic() + 2  # 60,000 inputs take several seconds here: only the cancel ends it this soon
    while ask(cluster.clients_endpoint, "status")["others"]["requests"]:
        assert time.monotonic() < deadline, "the interrupted request should have been cancelled"
        time.sleep(0.1)


def test_a_client_that_disconnects_without_cancelling_frees_the_boards(
    cluster: LocalCluster, test_set: LabelledSet
) -> None:
    """ZeroMQ does not tell a ROUTER that a peer left; the socket monitor does: the request is dropped."""
    inputs = test_set.inputs[np.random.default_rng(12).choice(len(test_set), 60000, replace=True)]
    context = zmq.Context()
    leaving = context.socket(zmq.DEALER)
    leaving.setsockopt(zmq.LINGER, 1000)
    leaving.connect(cluster.clients_endpoint)
    try:
        leaving.send_multipart(encode(Submit("leaving", inputs, policy="proportional")))
        deadline = time.monotonic() + 30
        while not (seen := ask(cluster.clients_endpoint, "status"))["others"]["requests"]:  # wait until it runs
            assert time.monotonic() < deadline
            time.sleep(0.05)
        # Another client is told that one request is open, not which: no id, no size.
        assert seen["requests"] == [] and seen["waiting"] == [] and "leaving" not in json.dumps(seen)
    finally:
        leaving.close()  # no cancel: the connection just closes
        context.term()
    left = time.monotonic()
    while (status := ask(cluster.clients_endpoint, "status"))["others"]["requests"]:
        assert time.monotonic() - left < 2, "60,000 inputs take several seconds: only the disconnect ends it this soon"
        time.sleep(0.05)
    assert status["counters"]["clients_disconnected"] == 1
    again = infer(cluster.clients_endpoint, inputs[:500], policy="proportional")
    assert np.array_equal(again.predictions, cnn16_predictions(inputs[:500]))


def test_a_client_that_stops_reading_is_cut_off_and_no_one_else_waits(tmp_path: Path) -> None:
    """A client sends requests whose answers are large and never reads them. Its answers pile up in a queue
    of its own (``client_queue_messages`` in ZeroMQ, then as many in the coordinator); past that it is cut
    off and its requests dropped, while another client's requests are served all along."""
    config = tmp_path / "cluster.toml"
    manifest = SHIPPED_MANIFEST
    config.write_text(
        f'[coordinator]\nclient_queue_messages = 4\nmax_requests = 100\n[models]\nmanifest = "{manifest}"\n'
        '[[nodes]]\nname = "board"\nvariants = ["linear-7x7"]\n'
    )
    images = np.zeros((4096, 1, 28, 28), np.uint8)
    with LocalCluster(config, log_dir=tmp_path / "logs") as local:
        infer(local.clients_endpoint, images[:8])  # the board is registered and profiled
        context = zmq.Context()
        slow = context.socket(zmq.DEALER)
        slow.setsockopt(zmq.RCVHWM, 1)
        slow.setsockopt(zmq.RCVBUF, 4096)  # the kernel holds little for it either
        slow.setsockopt(zmq.LINGER, 0)
        slow.connect(local.clients_endpoint)
        try:
            for i in range(60):  # each answer carries every output: 4096 x 10 float32, 160 KiB
                slow.send_multipart(encode(Submit(f"slow{i}", images, outputs="all")))
            served = []
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                served.append(infer(local.clients_endpoint, images[:64]))
                counters = ask(local.clients_endpoint, "status")["counters"]
                if counters.get("clients_cut_off"):
                    break
            assert counters.get("clients_cut_off") == 1, counters
            assert all(len(r.predictions) == 64 for r in served)
            assert ask(local.clients_endpoint, "status")["others"] == {"requests": 0, "streams": 0}  # its were dropped
        finally:
            slow.close()
            context.term()
