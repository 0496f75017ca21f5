"""The worker's I/O shell: a DEALER that registers with the coordinator, heartbeats and runs shards."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time

import zmq
import zmq.asyncio

from .. import transport
from ..protocol import Error, Goodbye, Heartbeat, Hello, ProtocolError, Shard, ShardResult, Welcome, decode, encode
from ..protocol.messages import Message
from ..security import ClientCurve
from .runner import ShardRejected, ShardRunner

log = logging.getLogger(__name__)

EXIT_REFUSED = 3  # the coordinator refused this node (e.g. its name is taken)
EXIT_VANISHED = 4  # an emulated board vanished on schedule
MAX_BACKOFF_S = 10.0


class WorkerAgent:
    """Connects one node to the coordinator. Shards run one at a time, as on a real board."""

    def __init__(
        self,
        runner: ShardRunner,
        endpoint: str,
        heartbeat_s: float = 1.0,
        misses: int = 3,
        curve: ClientCurve | None = None,
    ) -> None:
        self.runner = runner
        self.curve = curve
        self.endpoint = endpoint
        self.heartbeat_s = heartbeat_s
        self.misses = misses
        self._context = zmq.asyncio.Context()
        self._sock: zmq.asyncio.Socket | None = None
        self._io: transport.FastSocket | None = None
        self._queue: asyncio.Queue[Shard] = asyncio.Queue()
        self._last_heard = 0.0  # monotonic time of the coordinator's last message
        self._registered = False
        self._register_again = False  # the coordinator said it does not know us (it restarted)
        self._coordinator_left = False  # the coordinator said goodbye (it is shutting down)
        self._stop = asyncio.Event()
        self._exit_code = 0

    @property
    def name(self) -> str:
        return self.runner.node.name

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        if self.runner.board is not None:  # emulated: faults on demand, for soak tests (benchmarks/chaos.py)
            loop.add_signal_handler(signal.SIGUSR1, self._toggle_stall)
            loop.add_signal_handler(signal.SIGUSR2, self._toggle_garble)
        tasks = [
            asyncio.create_task(self._connection()),
            asyncio.create_task(self._execute()),
            asyncio.create_task(self._scheduled_events()),
        ]
        try:
            await self._stop.wait()
        finally:
            if self._sock is not None and self._registered:
                await self._send(Goodbye(node=self.name, reason="worker stopping"))
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self.runner.close()
            self._close_socket()
            self._context.term()
        return self._exit_code

    async def _connection(self) -> None:
        """Register, then receive and heartbeat; start over (with back-off) when the coordinator goes silent."""
        backoff = 0.5
        while not self._stop.is_set():
            self._close_socket()
            self._sock = transport.dealer(self._context, self.endpoint, self.curve)
            self._io = transport.FastSocket(self._sock)
            self._registered = False
            self._register_again = False
            self._coordinator_left = False
            self._drop_queued_shards()
            await self._send(
                Hello(self.name, self.runner.providers, list(self.runner.variants), self.runner.fingerprint())
            )
            self._last_heard = time.monotonic()
            await self._serve_connection()
            if self._registered or self._register_again:
                backoff = 0.5  # it was connected: back off afresh
            if self._register_again or self._stop.is_set():
                continue  # the coordinator answers: register again at once
            if not self._coordinator_left:
                log.warning("node %s: coordinator silent; registering again in %.1f s", self.name, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF_S)

    def _close_socket(self) -> None:
        if self._io is not None:
            self._io.close()
            self._io = None
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None

    async def _serve_connection(self) -> None:
        assert self._io is not None
        deadline = self.heartbeat_s * self.misses
        next_beat = time.monotonic()
        while not self._stop.is_set() and not self._register_again and not self._coordinator_left:
            now = time.monotonic()
            if now - self._last_heard > (deadline if self._registered else max(deadline, 5.0)):
                return
            if self._registered and now >= next_beat:
                await self._send(Heartbeat(node=self.name))
                next_beat = now + self.heartbeat_s
            frames = await self._io.receive_within(self.heartbeat_s / 4)
            if frames is None:
                continue
            try:
                message = decode([f.buffer for f in frames])
            except ProtocolError as exc:
                log.error("node %s: dropped a malformed message from the coordinator: %s", self.name, exc)
                continue
            self._last_heard = time.monotonic()
            self._handle(message)

    def _handle(self, message: Message) -> None:
        if isinstance(message, Welcome):
            self._registered = True
            self.heartbeat_s = message.heartbeat_s
            log.info("node %s: registered with %s", self.name, self.endpoint)
        elif isinstance(message, Shard):
            self._queue.put_nowait(message)
        elif isinstance(message, Goodbye):
            # The coordinator stopped on purpose: wait for it to come back, as after a silence.
            log.warning("node %s: coordinator left (%s); registering again when it is back", self.name, message.reason)
            self._coordinator_left = True
        elif isinstance(message, Error) and message.code == "unregistered":
            log.warning("node %s: the coordinator does not know this worker; registering again", self.name)
            self._register_again = True
        elif isinstance(message, Error) and message.code == "refused":
            log.error("node %s: refused by the coordinator: %s", self.name, message.message)
            self._exit_code = EXIT_REFUSED
            self._stop.set()
        elif isinstance(message, Error):
            log.warning("node %s: coordinator error %s: %s", self.name, message.code, message.message)
        # Heartbeats only refresh _last_heard.

    def _toggle_stall(self) -> None:
        stalled = self.runner.toggle_stall()
        log.warning("node %s: %s", self.name, "emulating a stuck inference" if stalled else "inference unstuck")

    def _toggle_garble(self) -> None:
        self.runner.garbled = not self.runner.garbled
        log.warning("node %s: results %s", self.name, "garbled from now on" if self.runner.garbled else "sound again")

    async def _scheduled_events(self) -> None:
        """Apply the node's emulation schedule: speed changes, a hang, a stall, garbled results, or vanishing."""
        started = time.monotonic()
        for event in sorted(self.runner.node.events, key=lambda e: e.at_s):
            await asyncio.sleep(max(0.0, started + event.at_s - time.monotonic()))
            if event.speed is not None:
                log.warning("node %s: emulated speed now %.2f of the profile's", self.name, event.speed)
                self.runner.speed = event.speed
            elif event.action == "hang":
                log.warning("node %s: emulating a hang", self.name)
                os.kill(os.getpid(), signal.SIGSTOP)  # frozen, as a board that stopped responding
            elif event.action == "stall":
                log.warning("node %s: emulating a stuck inference (heartbeats go on)", self.name)
                self.runner.stall()
            elif event.action == "garble":
                log.warning("node %s: emulating malformed results", self.name)
                self.runner.garbled = True
            elif event.action == "vanish":
                log.warning("node %s: emulating a board that vanishes", self.name)
                os._exit(EXIT_VANISHED)  # no goodbye, no clean-up: as if the power went

    async def _execute(self) -> None:
        while True:
            shard = await self._queue.get()
            started = time.perf_counter()
            try:
                ran = await asyncio.to_thread(self.runner.run, shard.variant, shard.inputs, shard.outputs)
            except ShardRejected as exc:
                await self._send(Error(exc.code, str(exc), shard.request_id, shard.shard_id, shard.attempt))
                continue
            except Exception as exc:  # an ORT failure must not kill the node
                log.exception("node %s: shard %s/%s failed", self.name, shard.request_id, shard.shard_id)
                await self._send(
                    Error("internal", f"{type(exc).__name__}: {exc}", shard.request_id, shard.shard_id, shard.attempt)
                )
                continue
            # Hold the reply until the emulated board would have finished.
            hold = started + ran.board_seconds - time.perf_counter()
            if hold > 0:
                await asyncio.sleep(hold)
            busy = time.perf_counter() - started
            await self._send(
                ShardResult(shard.request_id, shard.shard_id, shard.attempt, ran.predictions, busy, ran.outputs)
            )

    def _drop_queued_shards(self) -> None:
        # After a reconnect the coordinator has given these shards to others.
        while not self._queue.empty():
            self._queue.get_nowait()

    async def _send(self, message: Message) -> None:
        if self._io is None:
            return
        try:
            await self._io.send(encode(message))
        except zmq.ZMQError as exc:
            log.warning("node %s: could not send %s: %s", self.name, message.kind, exc)
