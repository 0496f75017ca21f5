"""The coordinator's I/O shell: two ROUTER sockets, one for workers and one for clients.

Every scheduling decision lives in ``DispatchCore`` (pure). This module runs the loops: it reads
the sockets, turns messages into the core's events, and carries out the instructions the core
returns (send a shard, answer or fail a request, solve a joint plan on a solver thread). Its
helpers: ``peers.py`` (registry, CURVE identity, heartbeats, lost connections, slow clients),
``profiling.py`` and ``queries.py``. Each handler is a supervision boundary: an exception there
is logged, counted and answered, and the loops go on. If a loop itself dies, the process exits.
"""

from __future__ import annotations

import asyncio
import logging
import math
import signal
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import zmq.asyncio
from prometheus_client import start_http_server

from ..config import ClusterConfig, on_loopback
from ..errors import EdgecollabError
from ..metrics import registry_for
from ..planner import ExplorationTable, ProfileCache
from ..planner.joint import plan_jointly
from ..planner.site import front_from_wire, site_front
from ..protocol import (
    Cancel,
    Error,
    FetchModel,
    Frames,
    Goodbye,
    Heartbeat,
    Hello,
    LinkProbe,
    Message,
    ProtocolError,
    Query,
    Ready,
    ShardResult,
    SiteFront,
    StreamClose,
    StreamOpen,
    Submit,
    decode_all,
)
from ..security import client_curve, site_curve
from ..worker import transport
from ..worker.settings import NodeSettings
from ..zoo import load_manifest
from .dispatch import DispatchCore
from .events import (
    AnswerRequest,
    CutOff,
    Event,
    FailRequest,
    FramesArrived,
    Instruction,
    NodeProfiled,
    PlanSolved,
    ProfileAnswer,
    Replan,
    RequestCancelled,
    RequestOpened,
    SendShard,
    ServedTask,
    ShardRefused,
    ShardReturned,
    ShuttingDown,
    StartupExpired,
    StreamClosed,
    StreamOpened,
    StreamReply,
    Tick,
    WakeAt,
)
from .ownership import principal
from .peers import Peers, WorkerLink
from .profiling import Profiler
from .provisioning import model_files, settings_for
from .queries import Queries, describe_tasks
from .site import SiteState, SiteUplink
from .validation import outputs_mode

log = logging.getLogger(__name__)

# The core's timer: waiting requests time out, stalled nodes are found, stranded work fails.
TICK_S = 0.1
# What the table learned is written beside its profiles at most this often (and at shut-down).
SAVE_LEARNED_S = 2.0
# Messages taken from a socket in one turn of its loop, and handed to the core as one batch.
MAX_BATCH = 256


class CoordinatorFailed(EdgecollabError):
    """A loop of the coordinator stopped; the process must exit rather than look alive."""


class Coordinator:
    def __init__(
        self, config: ClusterConfig, *, workers_endpoint: str | None = None, clients_endpoint: str | None = None
    ) -> None:
        self.config = config
        self.settings = config.coordinator
        self.workers_endpoint = workers_endpoint or self.settings.workers
        self.clients_endpoint = clients_endpoint or self.settings.clients
        manifest = load_manifest(config.manifest_path)
        tasks = manifest.served(config.models.served)  # the default task first
        ids = {t.name: [manifest.id_of(v) for v in manifest.for_task(t.name)] for t in tasks}  # names scoped by task
        accuracy = {manifest.id_of(v): v.accuracy for t in tasks for v in manifest.for_task(t.name)}
        table = ExplorationTable(accuracy)
        table.tasks = {v: t.name for t in tasks for v in ids[t.name]}
        table.confidence = self.settings.confidence
        self._bytes_per_input = tasks[0].bytes_per_input  # what link_seconds are for (input_scale: other tasks)
        table.link_seconds.update(config.link_seconds_per_input(self._bytes_per_input))
        table.input_scale.update({v: t.bytes_per_input / tasks[0].bytes_per_input for t in tasks for v in ids[t.name]})
        served = [
            ServedTask(
                t.name,
                t.input_shape,
                np.dtype(t.input_dtype),
                t.quality,
                frozenset(ids[t.name]),
                t.preprocess.model_dump() if t.preprocess else {"fit": "letterbox", "pad": 0, "layout": "chw"},
            )
            for t in tasks
        ]
        self.core = DispatchCore(self.settings, [n.name for n in config.nodes], table, served)
        self._variants_by_task = ids
        self.shell_counters: Counter[str] = Counter()  # what the shell sees: malformed messages, peers cut off, ...
        self._solver = ThreadPoolExecutor(1, thread_name_prefix="edgecollab-solver")  # HiGHS releases the GIL
        nodes = [n.name for n in config.nodes]
        self.peers = Peers(
            self.settings, nodes, self._feed, self._spawn, self.shell_counters, self.core.has_work_of, self._provision
        )
        self._manifest = manifest
        # What a profiling shard of each variant holds: inputs of its own task.
        inputs_of = {v: (t.input_shape, np.dtype(t.input_dtype)) for t in tasks for v in ids[t.name]}
        cache = ProfileCache(config.resolve(self.settings.profile_cache))
        table.realisations.update(cache.load_realisations())  # what earlier runs learned, kept with the table
        self._saved_version = table.version
        outputs_of = {v: outputs_mode(t, None)[0] for t in served for v in ids[t.name]}
        self.profiler = Profiler(
            self.settings, self._feed, self._spawn, cache, inputs_of, self.peers.is_current, outputs_of
        )
        self.queries = Queries(
            self.core, self.peers, lambda: self.counters, self._solver, describe_tasks(manifest, tasks)
        )
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stop = asyncio.Event()
        self._saved_at = float("-inf")
        self._wake: asyncio.TimerHandle | None = None  # the core's next wake-up

    def _provision(self, node: str, runtime: dict[str, Any]) -> tuple[NodeSettings, dict[str, Path]]:
        """A registering board's settings, and the model files it may fetch (see provisioning.py)."""
        settings = settings_for(self.config, self._manifest, self.config.node(node), runtime)
        return settings, model_files(self._manifest, settings)

    @property
    def table(self) -> ExplorationTable:
        return self.core.table

    @property
    def counters(self) -> dict[str, int]:
        """The core's counters and the shell's, together."""
        core, shell = self.core.counters, self.shell_counters
        return {k: core[k] + shell[k] for k in core.keys() | shell.keys()}

    @property
    def outcomes(self) -> dict[str, int]:
        return dict(self.core.outcomes)

    @property
    def last_request(self) -> dict[str, float]:
        return dict(self.core.last_request)

    def status(self, viewer: str | None = None) -> dict[str, Any]:
        return self.queries.status(viewer)

    # --- life cycle ----------------------------------------------------------------------------
    async def serve(self, started: asyncio.Event | None = None) -> None:
        """Run until SIGTERM/SIGINT or ``stop()``; ``CoordinatorFailed`` if a loop dies."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        context = zmq.asyncio.Context()
        keys, authenticator = self.peers.start_curve(context, self.config)
        workers_sock = transport.router(context, self.workers_endpoint, keys)
        # A client's own queue in ZeroMQ; past it, its messages wait in the peers' outbox, bounded too.
        hwm = self.settings.client_queue_messages
        clients_sock = transport.router(context, self.clients_endpoint, keys, send_hwm=hwm)
        # A peer whose connection closes is gone at once: a worker is lost, a client's work dropped.
        watches = transport.ConnectionWatch(workers_sock), transport.ConnectionWatch(clients_sock)
        workers_io, clients_io = transport.FastSocket(workers_sock), transport.FastSocket(clients_sock)
        self.peers.attach(workers_io, clients_io, *watches)
        log.info("coordinator: workers on %s, clients on %s", self.workers_endpoint, self.clients_endpoint)
        loops = [
            asyncio.create_task(self._receive_loop(workers_io, False, self.peers.send_worker, self._on_worker)),
            asyncio.create_task(self._receive_loop(clients_io, True, self.peers.send_client, self._on_client)),
            asyncio.create_task(self.peers.liveness_loop()),
            asyncio.create_task(self._tick_loop()),
        ]
        if self.settings.parent is not None:  # a site: join the parent as one node
            loops.append(asyncio.create_task(self._uplink().run()))
        metrics_server = None
        if self.settings.metrics_port is not None:
            host, port = self.settings.metrics_host, self.settings.metrics_port
            metrics_server, _ = start_http_server(port, addr=host, registry=registry_for(self))
            log.info("coordinator: metrics on http://%s:%d/metrics", host, port)
        if started is not None:
            started.set()
        linger_ms = 0
        stopping = asyncio.create_task(self._stop.wait())
        try:
            done, _ = await asyncio.wait([stopping, *loops], return_when=asyncio.FIRST_COMPLETED)
            broken = [t for t in done if t is not stopping]
            if broken:
                failure = broken[0].exception() if not broken[0].cancelled() else None
                log.critical("coordinator: a loop stopped (%r); exiting", failure)
                raise CoordinatorFailed(f"a coordinator loop stopped: {failure!r}") from failure
            await self._shut_down()
            linger_ms = 1000  # let the last answers and goodbyes leave
        finally:
            if self._wake is not None:
                self._wake.cancel()
            for task in [stopping, *loops, *self._tasks]:
                task.cancel()
            await asyncio.gather(stopping, *loops, *self._tasks, return_exceptions=True)
            self._solver.shutdown(wait=False, cancel_futures=True)
            for closing in (workers_io, clients_io, *watches):
                closing.close()
            workers_sock.close(linger=linger_ms)
            clients_sock.close(linger=linger_ms)
            if authenticator is not None:
                authenticator.stop()
            if metrics_server is not None:
                metrics_server.shutdown()
            context.term()

    def stop(self) -> None:
        self._stop.set()

    def _uplink(self) -> SiteUplink:
        assert self.settings.parent is not None and self.settings.site is not None
        task_of = {v: task for task, variants in self._variants_by_task.items() for v in variants}
        return SiteUplink(
            self.settings.site, self.settings.parent, on_loopback(self.clients_endpoint), self.site_state, task_of,
            parent_curve=site_curve(self.config), client_curve=client_curve(self.config),
        )  # fmt: skip

    def site_state(self) -> SiteState:
        """What this coordinator offers a parent as a site: its boards' front, their windows and count."""
        boards = self.core.nodes.usable()
        front = site_front(self.table, boards, self._variants_by_task)
        return SiteState(front, len(boards) * self.settings.window, len(boards))

    async def _shut_down(self) -> None:
        """Refuse new requests, give running ones the grace period, fail the rest, and tell the workers."""
        grace = self.settings.shutdown_grace_s
        await self._feed(ShuttingDown(False, time.monotonic()))
        log.warning("coordinator: shutting down; %d request(s) get up to %.1f s", len(self.core.requests), grace)
        deadline = time.monotonic() + grace
        while self.core.requests and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await self._feed(ShuttingDown(True, time.monotonic()))
        self._save_learned(time.monotonic(), force=True)
        await self.peers.say_goodbye("coordinator shutting down")

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.shell_counters["handler_errors"] += 1
            log.error("coordinator: a task failed", exc_info=task.exception())

    # --- the core ------------------------------------------------------------------------------
    async def _feed(self, event: Event) -> None:
        """Hand one event to the core and carry out what it says."""
        await self._feed_batch([event])

    async def _feed_batch(self, events: Sequence[Event]) -> None:
        """Hand events that came together to the core as one batch and carry out what it says. An event the
        core failed on (a bug) is logged and counted, and a request it opened is answered ``internal``."""
        if not events:
            return
        failed: Sequence[tuple[Event, Exception | None]]
        try:
            instructions, failed = self.core.handle_batch(events)
        except Exception:
            instructions, failed = [], [(e, None) for e in events]
            log.exception("coordinator: the dispatch core failed on a batch of %d event(s)", len(events))
        for event, exc in failed:
            self.shell_counters["handler_errors"] += 1
            if exc is not None:
                log.error("coordinator: the dispatch core failed on %s", type(event).__name__, exc_info=exc)
            if isinstance(event, RequestOpened):
                rid = event.submit.request_id
                error = Error("internal", "the coordinator failed on this request", rid)
                await self.peers.send_client(event.client, error)
        await self._carry_out(instructions)

    async def _carry_out(self, instructions: Sequence[Instruction]) -> None:
        """Do what the core says. What it says to each client goes as one bundle, in order (one send each)."""
        peers = self.peers
        to_clients: dict[bytes, list[Message]] = {}
        for instruction in instructions:
            if isinstance(instruction, SendShard):
                link = peers.links.get(instruction.node)
                if link is None or not await peers.send_worker(link.identity, instruction.shard):
                    await peers.lose_by_name(instruction.node, "unreachable")
            elif isinstance(instruction, AnswerRequest):
                to_clients.setdefault(instruction.client, []).append(instruction.result)
            elif isinstance(instruction, FailRequest):
                to_clients.setdefault(instruction.client, []).append(instruction.error)
            elif isinstance(instruction, StreamReply):
                to_clients.setdefault(instruction.client, []).append(instruction.message)
            elif isinstance(instruction, Replan):
                self._spawn(self._solve(instruction))
            elif isinstance(instruction, WakeAt):
                self._wake_at(instruction.at)
            elif isinstance(instruction, CutOff):
                await peers.cut_off_worker(instruction.node, instruction.reason)
            elif isinstance(instruction, ProfileAnswer):
                self.profiler.answer(instruction)
        for client, messages in to_clients.items():
            await peers.send_client_all(client, messages)

    async def _solve(self, replan: Replan) -> None:
        log.info("coordinator: solving a joint plan of %d demand(s) (%s)", len(replan.demands), replan.reason)
        loop = asyncio.get_running_loop()
        try:
            plan = await loop.run_in_executor(self._solver, plan_jointly, replan.table, replan.demands, replan.nodes)
            problem = ""
        except Exception as exc:  # a failed solve must not leave requests waiting for it
            plan, problem = None, f"{type(exc).__name__}: {exc}"
        await self._feed(PlanSolved(replan.generation, plan, problem, time.monotonic()))

    def _wake_at(self, at: float) -> None:
        """One timer for the core's wake-ups. The core asks for one only when it is earlier than every
        wake-up it still waits for (one it asked for earlier is then past), so the latest ask is the one."""
        if self._wake is not None:
            self._wake.cancel()
        loop = asyncio.get_running_loop()
        self._wake = loop.call_at(max(at, loop.time()), lambda: self._spawn(self._woken()))

    async def _woken(self) -> None:
        self._wake = None
        await self._feed(Tick(time.monotonic()))

    async def _tick_loop(self) -> None:
        started = time.monotonic()
        startup_told = False
        while True:
            await asyncio.sleep(TICK_S)
            now = time.monotonic()
            if not startup_told and now - started >= self.settings.startup_timeout_s:
                startup_told = True
                missing = sorted(self.core.manager.expected - set(self.peers.links))
                if missing:
                    log.warning("coordinator: start-up timeout; going on without %s", ", ".join(missing))
                await self._feed(StartupExpired(now))
            await self._feed(Tick(now))
            self._save_learned(now)

    def _save_learned(self, now: float, force: bool = False) -> None:
        """Write what the table learned (rows corrected by real shards, each task's realisation) beside its
        profiles, at most every SAVE_LEARNED_S: a restarted coordinator plans from where this one was."""
        if self.table.version == self._saved_version or (not force and now - self._saved_at < SAVE_LEARNED_S):
            return
        self._saved_version, self._saved_at = self.table.version, now
        try:
            self.profiler.cache.store_learned(self.table)
        except OSError as exc:
            log.warning("coordinator: could not save what the table learned: %s", exc)

    # --- messages in ---------------------------------------------------------------------------
    async def _receive_loop(
        self,
        sock: transport.FastSocket,
        from_clients: bool,
        reply: Callable[[bytes, Message], Awaitable[object]],
        handle: Callable[[bytes, Message, str | None], Awaitable[None]],
    ) -> None:
        """Decode every message on a ROUTER; a malformed one is answered, counted and dropped.

        Each turn takes every message waiting (up to ``MAX_BATCH``): those that are work for the core
        (results, frames, requests) go to it as one batch of events, so its bookkeeping — the re-plan
        check, the fill over the boards — runs once per turn, not once per message. Any other message
        is handled by ``handle`` in its turn, after the events before it. With CURVE on, the peer's
        public key (``User-Id``, set by the authenticator) goes with each message.
        """
        peer = "client" if from_clients else "worker"
        as_event = self._client_event if from_clients else self._worker_event
        while True:
            batch = [await sock.receive(), *sock.take_waiting(MAX_BATCH - 1)]
            await self.peers.connections_closed()
            now = time.monotonic()
            events: list[Event] = []
            for frames in batch:
                identity, payload = frames[0].bytes, [f.buffer for f in frames[1:]]
                if identity in self.peers.cut_off:
                    self.shell_counters["dropped_from_cut_off_peers"] += 1
                    continue
                user_id = str(frames[-1].get("User-Id")) if self.peers.key_owner and len(frames) > 1 else None
                self.peers.seen(from_clients, identity, frames[0])
                for message in decode_all(payload):  # one message, or each of a bundle's
                    if isinstance(message, ProtocolError):
                        self.shell_counters["protocol_errors"] += 1
                        log.warning("coordinator: malformed message from a %s: %s", peer, message)
                        await reply(identity, Error("protocol", str(message)))
                        await self.peers.strike(identity)
                        continue
                    try:
                        event = as_event(identity, message, user_id, now)
                        if event is not None:
                            events.append(event)
                            continue
                        await self._feed_batch(events)  # what came before it goes first
                        events = []
                        await handle(identity, message, user_id)
                    except Exception:  # the boundary: one bad message never stops the loop
                        self.shell_counters["handler_errors"] += 1
                        log.exception("coordinator: handling a %s from a %s failed", message.kind, peer)
                        rid = getattr(message, "request_id", "")
                        await reply(identity, Error("internal", f"the coordinator failed on this {message.kind}", rid))
            await self._feed_batch(events)

    def _worker_event(self, identity: bytes, message: Message, user_id: str | None, now: float) -> Event | None:
        """A registered worker's result or refusal, as the core's event; None for anything else."""
        if not isinstance(message, ShardResult | Error) or (isinstance(message, Error) and not message.request_id):
            return None
        link = self.peers.worker(identity)
        if link is None:
            return None
        link.last_seen = now
        if isinstance(message, ShardResult):
            return ShardReturned(link.name, message, now)
        return ShardRefused(link.name, message, now)

    def _client_event(self, identity: bytes, message: Message, user_id: str | None, now: float) -> Event | None:
        """A client's frames, request, cancel or stream open/close, as the core's event; None for a query."""
        if isinstance(message, Frames):
            return FramesArrived(identity, message, now)
        if isinstance(message, Cancel):
            return RequestCancelled(identity, message, now)
        if isinstance(message, StreamClose):
            return StreamClosed(identity, message, now)
        # With CURVE a client is its key (every connection with it); without, its connection.
        owner = self.peers.owner_of(user_id)
        if isinstance(message, Submit):
            return RequestOpened(identity, message, now, owner)
        if isinstance(message, StreamOpen):
            return StreamOpened(identity, message, now, owner)
        return None

    async def _on_worker(self, identity: bytes, message: Message, user_id: str | None) -> None:
        if isinstance(message, Hello):
            await self.peers.register(identity, message, user_id)
            return
        link = self.peers.worker(identity)
        if link is None:
            await self.peers.send_worker(identity, Error("unregistered", "unknown worker: register with a hello first"))
            return
        link.last_seen = time.monotonic()
        if isinstance(message, FetchModel):
            await self.peers.send_chunk(link, message)
        elif isinstance(message, Ready) and not link.ready:
            link.ready_with(message)
            log.info("coordinator: node %s ready after %.2f s of warm-up", link.name, message.warmup_s)
            for warning in message.warnings:
                log.warning("coordinator: node %s: %s", link.name, warning)
            await self.profiler.registered(link)
        elif isinstance(message, SiteFront) and link.ready:
            try:
                front = front_from_wire(message.front, link.variants)
            except ValueError as exc:
                self.shell_counters["protocol_errors"] += 1
                await self.peers.send_worker(identity, Error("protocol", str(exc)))
                return
            slots = max(1, min(message.slots, 64 * self.settings.window))  # a site's claim, bounded
            link.link_mbps = message.link_mbps if math.isfinite(message.link_mbps) and message.link_mbps > 0 else None
            log.info(
                "coordinator: site %s reports %d variant(s) on %d board(s), link %s Mbit/s",
                link.name, len(front), message.boards, f"{link.link_mbps:.1f}" if link.link_mbps else "not measured",
            )  # fmt: skip
            await self._feed(NodeProfiled(link.name, front, link.last_seen, slots, self._measured_link_s(link)))
        elif isinstance(message, LinkProbe):
            await self.peers.answer_probe(link, message)
        elif isinstance(message, Goodbye):
            await self.peers.lose(link, f"left: {message.reason}")
        elif not isinstance(message, Heartbeat | Error | Ready | SiteFront | LinkProbe):
            self.shell_counters["protocol_errors"] += 1
            await self.peers.send_worker(identity, Error("protocol", f"a worker may not send {message.kind}"))

    def _measured_link_s(self, link: WorkerLink) -> float | None:
        """Seconds a site's measured link takes per input, unless its config entry sets ``link_mbps`` (that wins)."""
        if link.link_mbps is None or self.config.node(link.name).link_mbps is not None:  # registered, so configured
            return None
        return self._bytes_per_input * 8 / (link.link_mbps * 1e6)

    async def _on_client(self, identity: bytes, message: Message, user_id: str | None) -> None:
        owner = self.peers.owner_of(user_id)
        if isinstance(message, Query):
            operator = owner is not None and owner in self.config.security.operators
            self._spawn(self._answer_query(identity, message, None if operator else principal(identity, owner)))
        else:
            self.shell_counters["protocol_errors"] += 1
            await self.peers.send_client(identity, Error("protocol", f"a client may not send {message.kind}"))

    async def _answer_query(self, identity: bytes, query: Query, viewer: str | None) -> None:
        try:
            answer = await self.queries.answer(query, viewer)
        except Exception:  # the boundary: a query never stops anything
            self.shell_counters["handler_errors"] += 1
            log.exception("coordinator: answering a %r query failed", query.topic)
            answer = Error("internal", f"the coordinator failed on this {query.topic!r} query", query.request_id)
        await self.peers.send_client(identity, answer)
