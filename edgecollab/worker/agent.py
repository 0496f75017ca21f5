"""The worker's I/O shell: a DEALER that registers with the coordinator, takes its settings and model
files from it, warms up, heartbeats and runs shards."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from pathlib import Path

import zmq
import zmq.asyncio

from . import transport
from .backends import Backend
from .cache import ModelCache
from .keys import ClientCurve
from .protocol import (
    Error,
    FetchModel,
    Goodbye,
    Heartbeat,
    Hello,
    Message,
    ModelChunk,
    ProtocolError,
    Ready,
    Shard,
    ShardResult,
    Welcome,
    decode,
    encode,
)  # fmt: skip
from .runner import ShardRejected, ShardRunner
from .settings import EventSpec, NodeSettings, VariantSpec

log = logging.getLogger(__name__)

EXIT_REFUSED = 3  # the coordinator refused this node (e.g. its name is taken)
EXIT_VANISHED = 4  # an emulated board vanished on schedule
EXIT_FAILED = 1  # the worker itself failed (its log says how)
MAX_BACKOFF_S = 10.0
CHUNK_TIMEOUT_S = 10.0  # a chunk not answered in this time is asked for again
CHUNK_TRIES = 3


class WorkerAgent:
    """Connects one node to the coordinator. Shards run one at a time, as on a real board.

    A worker process runs one agent, which owns the process (signals, and faults that stop or kill
    it). A fleet runs many in one loop (``whole_process=False``): they share ``context``, and an
    emulated hang or vanish then silences or drops that board's connection alone.
    """

    def __init__(
        self,
        node: str,
        endpoint: str,
        backend: Backend,
        cache: ModelCache,
        curve: ClientCurve | None = None,
        extra_events: tuple[EventSpec, ...] = (),
        engine_dir: Path | None = None,
        *,
        context: zmq.asyncio.Context | None = None,
        whole_process: bool = True,
        stand_ins: bool = False,
        fetch_locks: dict[str, asyncio.Lock] | None = None,
    ) -> None:
        self.name = node
        self.endpoint = endpoint
        self.backend = backend
        self.cache = cache
        self.curve = curve
        self.extra_events = extra_events  # faults asked for on the command line (emulated boards only)
        self.engine_dir = engine_dir or cache.root.parent / "engines"
        self.heartbeat_s = 1.0
        self.misses = 3
        self.runner: ShardRunner | None = None
        self.settings: NodeSettings | None = None
        self.fetched_bytes = 0  # model bytes fetched since start (0 after a restart with the cache warm)
        self.whole_process = whole_process
        self.stand_ins = stand_ins  # emulated: the cost model sets the time, a cheap variant the outputs
        self._owns_context = context is None
        self._context = context if context is not None else zmq.asyncio.Context()
        # Per model file, one fetch at a time: boards of a fleet share these and their cache, so the first
        # to fetch a file fills the cache for the others.
        self._fetch_locks = fetch_locks if fetch_locks is not None else {}
        self._hung = False  # emulated hang of one board of a fleet: it sends and reads nothing
        self._vanished = False  # emulated vanish of one board of a fleet: its connection dropped, no goodbye
        self._sock: zmq.asyncio.Socket | None = None
        self._io: transport.FastSocket | None = None
        # Made in run(): before Python 3.10 asyncio's queues and events bind to the loop current when made.
        self._queue: asyncio.Queue[Shard]
        self._chunks: asyncio.Queue[ModelChunk | Error]  # ModelChunk answers, and refusals of a fetch
        self._stop: asyncio.Event
        self._preparing: asyncio.Task[None] | None = None
        self._events_task: asyncio.Task[None] | None = None
        self._started = time.monotonic()
        self._last_heard = 0.0  # monotonic time of the coordinator's last message
        self._registered = False
        self._register_again = False  # the coordinator said it does not know us (it restarted)
        self._coordinator_left = False  # the coordinator said goodbye (it is shutting down)
        self._exit_code = 0

    async def run(self) -> int:
        self._queue, self._chunks, self._stop = asyncio.Queue(), asyncio.Queue(), asyncio.Event()
        if self.whole_process:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self._stop.set)
        tasks = [asyncio.create_task(self._connection()), asyncio.create_task(self._execute())]
        stopped = asyncio.create_task(self._stop.wait())
        try:
            await asyncio.wait([stopped, *tasks], return_when=asyncio.FIRST_COMPLETED)
            for task in tasks:  # a loop that ended by itself is a bug: say so, and exit non-zero
                if task.done() and not task.cancelled() and task.exception() is not None:
                    log.error("node %s: worker loop failed", self.name, exc_info=task.exception())
                    self._exit_code = EXIT_FAILED
        finally:
            stopped.cancel()
            if self._sock is not None and self._registered and not self._vanished:
                await self._send(Goodbye(node=self.name, reason="worker stopping"))
            for each in [*tasks, self._preparing, self._events_task]:
                if each is not None:
                    each.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if self.runner is not None:
                self.runner.close()
            self._close_socket()
            if self._owns_context:
                self._context.term()
        return self._exit_code

    def stop(self) -> None:
        """Leave (with a goodbye) as on SIGTERM; for an agent that does not own its process."""
        self._stop.set()

    async def _connection(self) -> None:
        """Register, then receive and heartbeat; start over (with back-off) when the coordinator goes silent."""
        backoff = 0.5
        runtime = self.backend.describe()
        while not self._stop.is_set():
            self._close_socket()
            self._sock = transport.dealer(self._context, self.endpoint, self.curve)
            self._io = transport.FastSocket(self._sock)
            self._registered = False
            self._register_again = False
            self._coordinator_left = False
            self._drop_queued_shards()
            await self._send(Hello(self.name, runtime))
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
        next_beat = time.monotonic()
        while not self._stop.is_set() and not self._register_again and not self._coordinator_left:
            if self._hung:  # a frozen board: connected, silent, until the fleet stops
                await self._stop.wait()
                return
            now = time.monotonic()
            deadline = self.heartbeat_s * self.misses
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
            self._welcomed(message)
        elif isinstance(message, Shard):
            self._queue.put_nowait(message)
        elif isinstance(message, ModelChunk) or (isinstance(message, Error) and message.code == "unknown_model"):
            self._chunks.put_nowait(message)
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

    # --- settings, models, warm-up ---------------------------------------------------------------
    def _welcomed(self, welcome: Welcome) -> None:
        try:
            settings = NodeSettings.from_wire(welcome.settings)
        except ProtocolError as exc:
            log.error("node %s: %s", self.name, exc)
            self._exit_code = EXIT_REFUSED
            self._stop.set()
            return
        self._registered = True
        self.heartbeat_s = welcome.heartbeat_s
        self.misses = settings.heartbeat_misses
        log.info("node %s: registered with %s", self.name, self.endpoint)
        for variant, reason in settings.excluded.items():
            log.warning("node %s: the coordinator left out %s: %s", self.name, variant, reason)
        if settings == self.settings and self._preparing is not None:
            if self._preparing.done():  # registered again with the same settings: ready at once
                self._preparing = asyncio.create_task(self._report_ready())
            return  # still preparing: it reports when done
        if self._preparing is not None:
            self._preparing.cancel()
        self.settings = settings
        self._preparing = asyncio.create_task(self._prepare(settings))

    async def _prepare(self, settings: NodeSettings) -> None:
        """Fetch what the cache lacks, load and warm up every variant, then tell the coordinator."""
        files, failed = {}, {}
        for spec in settings.variants:
            try:
                files[spec.id] = await self._ensure_file(spec, settings.chunk_bytes)
            except (ValueError, OSError) as exc:
                failed[spec.id] = f"model file not fetched: {exc}"
                log.error("node %s: %s", self.name, failed[spec.id])
        loadable = NodeSettings(
            **{**settings.__dict__, "variants": tuple(v for v in settings.variants if v.id in files)}
        )
        if self.runner is not None:
            self.runner.close()
        self.runner = await asyncio.to_thread(ShardRunner, self.name, loadable, files, self.backend, self.engine_dir)
        self.runner.failed.update(failed)
        if self.stand_ins and settings.emulate:
            self.runner.use_stand_ins()
        if self._events_task is None and (settings.events or self.extra_events):
            self._events_task = asyncio.create_task(self._scheduled_events((*settings.events, *self.extra_events)))
        if settings.emulate and self.whole_process:  # emulated: faults on demand, for soak tests (benchmarks/chaos.py)
            loop = asyncio.get_running_loop()
            loop.add_signal_handler(signal.SIGUSR1, self._toggle_stall)
            loop.add_signal_handler(signal.SIGUSR2, self._toggle_garble)
        await self._report_ready()

    async def _report_ready(self) -> None:
        runner = self.runner
        assert runner is not None
        log.info(
            "node %s: ready with %d variant(s) on %s after %.2f s of warm-up",
            self.name, len(runner.variants), ", ".join(runner.providers) or "-", runner.warmup_s,
        )  # fmt: skip
        await self._send(
            Ready(self.name, list(runner.variants), runner.providers, runner.fingerprint(), runner.warmup_s,
                  list(runner.warnings), dict(runner.failed))
        )  # fmt: skip

    async def _ensure_file(self, spec: VariantSpec, chunk_bytes: int) -> Path:
        """The variant's file from the cache, or fetched from the coordinator in chunks and checked."""
        lock = self._fetch_locks.setdefault(spec.sha256, asyncio.Lock())
        async with lock:
            return await self._fetch_file(spec, chunk_bytes)

    async def _fetch_file(self, spec: VariantSpec, chunk_bytes: int) -> Path:
        if self.cache.holds(spec):
            return self.cache.path(spec)
        while not self._chunks.empty():  # answers to an earlier, abandoned fetch
            self._chunks.get_nowait()
        data = bytearray()
        tries = 0
        while len(data) < spec.size:
            length = min(chunk_bytes, spec.size - len(data))
            await self._send(FetchModel(spec.sha256, len(data), length))
            try:
                answer = await asyncio.wait_for(self._next_chunk(spec.sha256, len(data)), CHUNK_TIMEOUT_S)
            except asyncio.TimeoutError:  # not the builtin TimeoutError before Python 3.11
                tries += 1
                if tries >= CHUNK_TRIES:
                    raise ValueError(f"{spec.id}: no answer for bytes {len(data)}.. after {tries} tries") from None
                continue
            if isinstance(answer, Error):
                raise ValueError(f"{spec.id}: the coordinator refused it: {answer.message}")
            if answer.total != spec.size or len(answer.data) == 0:
                raise ValueError(f"{spec.id}: the coordinator sent {answer.total} bytes in all; expected {spec.size}")
            data += answer.data.tobytes()
            self.fetched_bytes += len(answer.data)
        path = self.cache.store(spec, bytes(data))
        log.info("node %s: fetched %s (%d bytes, sha256 checked)", self.name, spec.id, spec.size)
        return path

    async def _next_chunk(self, sha256: str, offset: int) -> ModelChunk | Error:
        while True:
            answer = await self._chunks.get()
            if isinstance(answer, Error) and answer.request_id == sha256:
                return answer
            if isinstance(answer, ModelChunk) and answer.sha256 == sha256 and answer.offset == offset:
                return answer

    # --- emulated faults ----------------------------------------------------------------------------
    def _toggle_stall(self) -> None:
        if self.runner is not None:
            stalled = self.runner.toggle_stall()
            log.warning("node %s: %s", self.name, "emulating a stuck inference" if stalled else "inference unstuck")

    def _toggle_garble(self) -> None:
        if self.runner is not None:
            self.runner.garbled = not self.runner.garbled
            log.warning(
                "node %s: results %s", self.name, "garbled from now on" if self.runner.garbled else "sound again"
            )

    async def _scheduled_events(self, events: tuple[EventSpec, ...]) -> None:
        """Apply the node's emulation schedule: speed changes, a hang, a stall, garbled results, or vanishing."""
        for event in sorted(events, key=lambda e: e.at_s):
            await asyncio.sleep(max(0.0, self._started + event.at_s - time.monotonic()))
            runner = self.runner
            assert runner is not None  # events start once the runner is made
            if event.speed is not None:
                log.warning("node %s: emulated speed now %.2f of the profile's", self.name, event.speed)
                runner.speed = event.speed
            elif event.action == "hang":
                log.warning("node %s: emulating a hang", self.name)
                if not self.whole_process:
                    self._hung = True  # this board alone goes silent; its fleet goes on
                else:
                    os.kill(os.getpid(), signal.SIGSTOP)  # frozen, as a board that stopped responding
            elif event.action == "stall":
                log.warning("node %s: emulating a stuck inference (heartbeats go on)", self.name)
                runner.stall()
            elif event.action == "garble":
                log.warning("node %s: emulating malformed results", self.name)
                runner.garbled = True
            elif event.action == "vanish":
                log.warning("node %s: emulating a board that vanishes", self.name)
                if self.whole_process:
                    os._exit(EXIT_VANISHED)  # no goodbye, no clean-up: as if the power went
                self._vanished = True  # this board's connection drops without a goodbye; its fleet goes on
                self._exit_code = EXIT_VANISHED
                self._close_socket()
                self._stop.set()

    # --- shards -------------------------------------------------------------------------------------
    async def _execute(self) -> None:
        while True:
            shard = await self._queue.get()
            runner = self.runner
            started = time.perf_counter()
            try:
                if runner is None:
                    raise ShardRejected("unknown_variant", f"node {self.name} is still warming up")
                ran = await asyncio.to_thread(runner.run, shard.variant, shard.inputs, shard.outputs)
            except ShardRejected as exc:
                await self._send(Error(exc.code, str(exc), shard.request_id, shard.shard_id, shard.attempt))
                continue
            except Exception as exc:  # a runtime failure must not kill the node
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
                ShardResult(
                    shard.request_id, shard.shard_id, shard.attempt, ran.predictions, busy, ran.outputs, ran.host_bound
                )
            )

    def _drop_queued_shards(self) -> None:
        # After a reconnect the coordinator has given these shards to others.
        while not self._queue.empty():
            self._queue.get_nowait()

    async def _send(self, message: Message) -> None:
        if self._io is None or self._hung:
            return
        try:
            await self._io.send(encode(message))
        except zmq.ZMQError as exc:
            log.warning("node %s: could not send %s: %s", self.name, message.kind, exc)
