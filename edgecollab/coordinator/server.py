"""The coordinator's I/O shell: two ROUTER sockets, one for workers and one for clients.

Every scheduling decision lives in ``DispatchCore`` (pure). This module reads the
sockets, turns messages into the core's events, carries out the instructions it returns
(send a shard, answer or fail a request, solve a joint plan on a solver thread), keeps
workers' connections (registration, CURVE identity, heartbeats, profiling), and answers
queries. Each handler is a supervision boundary: an exception there is logged, counted
and answered, and the loops go on. If a loop itself dies, the process exits loudly.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import signal
import statistics
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import zmq
import zmq.asyncio
from prometheus_client import start_http_server
from zmq.auth.asyncio import AsyncioAuthenticator

from .. import transport
from ..config import ClusterConfig
from ..errors import ConfigError, EdgecollabError
from ..metrics import registry_for
from ..planner import ExplorationTable, Measurement, PlanningError, PlanRequest, ProfileCache, make_plan
from ..planner.joint import Demand, plan_jointly
from ..protocol import (
    QUERY_TOPICS,
    Answer,
    Cancel,
    Error,
    Frames,
    Goodbye,
    Heartbeat,
    Hello,
    ProtocolError,
    Query,
    Shard,
    ShardResult,
    StreamClose,
    StreamOpen,
    Submit,
    Welcome,
    decode,
    encode,
)
from ..protocol.messages import Message
from ..security import authorized_keys, server_curve
from ..zoo import load_manifest
from .dispatch import (
    AnswerRequest,
    ClientGone,
    CutOff,
    DispatchCore,
    Event,
    FailRequest,
    FramesArrived,
    Instruction,
    NodeLost,
    NodeProfiled,
    NodeRegistered,
    PlanSolved,
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
from .resource_manager import ResourceManager
from .validation import check_plan_params

log = logging.getLogger(__name__)

# A peer that sends this many malformed messages is cut off: its later messages are dropped unanswered.
MAX_PROTOCOL_STRIKES = 10
CLIENT_RETRY_S = 0.005  # how often a slow client's queued messages are offered again
# The core's timer: waiting requests time out, stranded ones fail.
TICK_S = 0.1
# Profiling times one shard at a time at these batch sizes, this many times each (the median counts).
LATENCY_BATCHES = (1, 4, 16)
LATENCY_SAMPLES = 3


class CoordinatorFailed(EdgecollabError):
    """A loop of the coordinator stopped; the process must exit rather than look alive."""


class WorkerGone(EdgecollabError):
    """The node a profiling shard was sent to died or left before answering."""


@dataclass
class WorkerLink:
    name: str
    identity: bytes  # ZeroMQ routing id of the worker's DEALER
    providers: list[str]
    variants: list[str]
    fingerprint: str
    last_seen: float = field(default_factory=time.monotonic)
    alive: bool = True


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
        variants = {t.name: manifest.for_task(t.name) for t in tasks}
        ids = {t.name: [manifest.id_of(v) for v in variants[t.name]] for t in tasks}  # names scoped by task
        self.table = ExplorationTable({manifest.id_of(v): v.accuracy for t in tasks for v in variants[t.name]})
        self.table.link_seconds.update(config.link_seconds_per_input(tasks[0].bytes_per_input))
        self.table.input_scale.update(
            {v: t.bytes_per_input / tasks[0].bytes_per_input for t in tasks for v in ids[t.name]}
        )
        # What a profiling shard of each variant holds: inputs of its own task.
        self._task_of_variant = {v: t for t in tasks for v in ids[t.name]}
        self.rm = ResourceManager([n.name for n in config.nodes], self.table)
        served = [
            ServedTask(t.name, t.input_shape, np.dtype(t.input_dtype), t.quality, frozenset(ids[t.name])) for t in tasks
        ]
        self.core = DispatchCore(self.settings, self.rm, served)
        self.counters = self.core.counters  # one tally for the shell and the core
        self.cache = ProfileCache(config.resolve(self.settings.profile_cache))
        self.workers: dict[bytes, WorkerLink] = {}
        self.by_name: dict[str, WorkerLink] = {}
        # (request id, shard id, attempt) of profiling shards -> the coroutine awaiting the reply
        self._profiling: dict[tuple[str, int, int], asyncio.Future[Message]] = {}
        self._key_owner: dict[str, str] = {}  # with CURVE: z85 public key -> certificate name (node or client)
        self._strikes: dict[bytes, int] = {}  # peer identity -> malformed messages it sent; offenders only
        self._cut_off: set[bytes] = set()  # identities whose messages are dropped
        self._client_backlog: dict[bytes, deque[list[Any]]] = {}  # slow clients' messages not yet taken
        self._solver = ThreadPoolExecutor(1, thread_name_prefix="edgecollab-solver")  # HiGHS releases the GIL
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stop = asyncio.Event()

    @property
    def outcomes(self) -> dict[str, int]:
        return dict(self.core.outcomes)

    @property
    def last_request(self) -> dict[str, float]:
        return dict(self.core.last_request)

    # --- life cycle ------------------------------------------------------------------------
    async def serve(self, started: asyncio.Event | None = None) -> None:
        """Run until SIGTERM/SIGINT or ``stop()``; ``CoordinatorFailed`` if a loop dies."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        context = zmq.asyncio.Context()
        authenticator = None
        curve = server_curve(self.config)
        keys = None
        if curve is not None:
            keys, allowed = curve
            self._key_owner = {k.decode(): name for k, name in authorized_keys(allowed).items()}
            unknown = sorted(set(self.config.security.operators) - set(self._key_owner.values()))
            if unknown:
                raise ConfigError(
                    f"[security] operators {', '.join(unknown)}: no such certificate in {allowed}"
                    f" (it holds {', '.join(sorted(self._key_owner.values()))})"
                )
            authenticator = AsyncioAuthenticator(context)
            authenticator.start()
            authenticator.configure_curve(domain="*", location=str(allowed))
        self._workers_sock = transport.router(context, self.workers_endpoint, keys)
        # A client's own queue in ZeroMQ; past it, its messages wait in the shell (_send_client), bounded too.
        hwm = self.settings.client_queue_messages
        self._clients_sock = transport.router(context, self.clients_endpoint, keys, send_hwm=hwm)
        # A peer whose connection closes is gone at once: a worker is lost, a client's work dropped.
        self._workers_watch = transport.ConnectionWatch(self._workers_sock)
        self._clients_watch = transport.ConnectionWatch(self._clients_sock)
        self._workers_io = transport.FastSocket(self._workers_sock)
        self._clients_io = transport.FastSocket(self._clients_sock)
        log.info("coordinator: workers on %s, clients on %s", self.workers_endpoint, self.clients_endpoint)
        loops = [
            asyncio.create_task(self._receive_loop(self._workers_io, "worker", self._send_worker, self._on_worker)),
            asyncio.create_task(self._receive_loop(self._clients_io, "client", self._send_client, self._on_client)),
            asyncio.create_task(self._liveness_loop()),
            asyncio.create_task(self._tick_loop()),
        ]
        metrics_server = None
        if self.settings.metrics_port is not None:
            metrics_server, _ = start_http_server(
                self.settings.metrics_port, addr=self.settings.metrics_host, registry=registry_for(self)
            )
            log.info(
                "coordinator: metrics on http://%s:%d/metrics", self.settings.metrics_host, self.settings.metrics_port
            )
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
            for task in [stopping, *loops, *self._tasks]:
                task.cancel()
            await asyncio.gather(stopping, *loops, *self._tasks, return_exceptions=True)
            self._solver.shutdown(wait=False, cancel_futures=True)
            self._workers_io.close()
            self._clients_io.close()
            self._workers_watch.close()
            self._clients_watch.close()
            self._workers_sock.close(linger=linger_ms)
            self._clients_sock.close(linger=linger_ms)
            if authenticator is not None:
                authenticator.stop()
            if metrics_server is not None:
                metrics_server.shutdown()
            context.term()

    def stop(self) -> None:
        self._stop.set()

    async def _shut_down(self) -> None:
        """Refuse new requests, give running ones the grace period, fail the rest, and tell the workers."""
        grace = self.settings.shutdown_grace_s
        await self._feed(ShuttingDown(False, time.monotonic()))
        log.warning("coordinator: shutting down; %d request(s) get up to %.1f s", len(self.core.requests), grace)
        deadline = time.monotonic() + grace
        while self.core.requests and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await self._feed(ShuttingDown(True, time.monotonic()))
        for link in list(self.by_name.values()):
            await self._send_worker(link.identity, Goodbye(link.name, "coordinator shutting down"))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.counters["handler_errors"] += 1
            log.error("coordinator: a task failed", exc_info=task.exception())

    # --- the core --------------------------------------------------------------------------
    async def _feed(self, event: Event) -> None:
        """Hand one event to the core and carry out what it says."""
        try:
            instructions = self.core.handle(event)
        except Exception:
            self.counters["handler_errors"] += 1
            log.exception("coordinator: the dispatch core failed on %s", type(event).__name__)
            if isinstance(event, RequestOpened):
                rid = event.submit.request_id
                await self._send_client(event.client, Error("internal", "the coordinator failed on this request", rid))
            return
        await self._carry_out(instructions)

    async def _carry_out(self, instructions: Sequence[Instruction]) -> None:
        for instruction in instructions:
            if isinstance(instruction, SendShard):
                link = self.by_name.get(instruction.node)
                if link is None or not await self._send_worker(link.identity, instruction.shard):
                    await self._lose_by_name(instruction.node, "unreachable")
            elif isinstance(instruction, AnswerRequest):
                await self._send_client(instruction.client, instruction.result)
            elif isinstance(instruction, FailRequest):
                await self._send_client(instruction.client, instruction.error)
            elif isinstance(instruction, StreamReply):
                await self._send_client(instruction.client, instruction.message)
            elif isinstance(instruction, Replan):
                self._spawn(self._solve(instruction))
            elif isinstance(instruction, WakeAt):
                self._spawn(self._wake(instruction.at))
            elif isinstance(instruction, CutOff):
                link = self.by_name.get(instruction.node)
                if link is not None:
                    self._cut_off.add(link.identity)
                    self.counters["peers_cut_off"] += 1
                    await self._send_worker(link.identity, Error("refused", instruction.reason))
                    await self._lose(link, instruction.reason)

    async def _solve(self, replan: Replan) -> None:
        log.info("coordinator: solving a joint plan of %d demand(s) (%s)", len(replan.demands), replan.reason)
        loop = asyncio.get_running_loop()
        try:
            plan = await loop.run_in_executor(self._solver, plan_jointly, replan.table, replan.demands, replan.nodes)
            problem = ""
        except Exception as exc:  # a failed solve must not leave requests waiting for it
            plan, problem = None, f"{type(exc).__name__}: {exc}"
        await self._feed(PlanSolved(replan.generation, plan, problem, time.monotonic()))

    async def _wake(self, at: float) -> None:
        await asyncio.sleep(max(at - time.monotonic(), 0.0))
        await self._feed(Tick(time.monotonic()))

    async def _tick_loop(self) -> None:
        started = time.monotonic()
        startup_told = False
        while True:
            await asyncio.sleep(TICK_S)
            now = time.monotonic()
            if not startup_told and now - started >= self.settings.startup_timeout_s:
                startup_told = True
                missing = sorted(self.rm.expected - self.rm.registered)
                if missing:
                    log.warning("coordinator: start-up timeout; going on without %s", ", ".join(missing))
                await self._feed(StartupExpired(now))
            await self._feed(Tick(now))

    # --- sockets ---------------------------------------------------------------------------
    async def _receive_loop(
        self,
        sock: transport.FastSocket,
        peer: str,
        reply: Callable[[bytes, Message], Awaitable[object]],
        handle: Callable[[bytes, Message, str | None], Awaitable[None]],
    ) -> None:
        """Decode every message on a ROUTER; a malformed one is answered, counted and dropped.

        With CURVE on, the peer's public key (``User-Id``, set by the authenticator) goes with it.
        """
        while True:
            frames = await sock.receive()
            identity, payload = frames[0].bytes, [f.buffer for f in frames[1:]]
            if identity in self._cut_off:
                self.counters["dropped_from_cut_off_peers"] += 1
                continue
            user_id = str(frames[-1].get("User-Id")) if self._key_owner and len(frames) > 1 else None
            await self._peers_gone()
            (self._clients_watch if sock is self._clients_io else self._workers_watch).seen(identity, frames[0])
            try:
                message = decode(payload)
            except ProtocolError as exc:
                self.counters["protocol_errors"] += 1
                log.warning("coordinator: malformed message from a %s: %s", peer, exc)
                await reply(identity, Error("protocol", str(exc)))
                await self._strike(identity)
                continue
            try:
                await handle(identity, message, user_id)
            except Exception:  # the boundary: one bad message never stops the loop
                self.counters["handler_errors"] += 1
                log.exception("coordinator: handling a %s from a %s failed", message.kind, peer)
                rid = getattr(message, "request_id", "")
                await reply(identity, Error("internal", f"the coordinator failed on this {message.kind}", rid))

    async def _strike(self, identity: bytes) -> None:
        """Count a malformed message; cut the peer off at ``MAX_PROTOCOL_STRIKES``."""
        if len(self._strikes) > 10_000:  # many offenders: forget the old tallies rather than grow
            self._strikes.clear()
        self._strikes[identity] = self._strikes.get(identity, 0) + 1
        if self._strikes[identity] >= MAX_PROTOCOL_STRIKES:
            del self._strikes[identity]
            self._cut_off.add(identity)
            self.counters["peers_cut_off"] += 1
            log.warning("coordinator: cut off a peer after %d malformed messages", MAX_PROTOCOL_STRIKES)
            link = self.workers.get(identity)
            if link is not None:
                await self._lose(link, "cut off for malformed messages")

    async def _send_worker(self, identity: bytes, message: Message) -> bool:
        try:
            await self._workers_io.send([identity, *encode(message)])
            return True
        except zmq.ZMQError as exc:
            if exc.errno != zmq.EHOSTUNREACH:
                raise
            return False

    async def _send_client(self, identity: bytes, message: Message) -> None:
        """Send to a client without ever waiting: a client that does not read gets a queue of its own
        (``client_queue_messages`` at most, then it is cut off and its work dropped), so no one else waits."""
        if identity in self._cut_off:
            return
        frames = [identity, *encode(message)]
        backlog = self._client_backlog.get(identity)
        try:
            if backlog is None and self._clients_io.try_send(frames):
                return
        except zmq.ZMQError as exc:
            if exc.errno != zmq.EHOSTUNREACH:
                raise
            log.warning("coordinator: client gone before its %s could be sent", message.kind)
            return
        if backlog is None:
            backlog = self._client_backlog[identity] = deque()
            self._spawn(self._flush_client(identity, backlog))
        backlog.append(frames)
        if len(backlog) > self.settings.client_queue_messages:
            await self._drop_client(identity, f"it left {len(backlog)} messages unread")

    async def _flush_client(self, identity: bytes, backlog: deque[list[Any]]) -> None:
        """Send a slow client's queued messages, in order, as it reads them."""
        while backlog and self._client_backlog.get(identity) is backlog:
            try:
                if self._clients_io.try_send(backlog[0]):
                    backlog.popleft()
                    continue
            except zmq.ZMQError:  # gone meanwhile
                break
            await asyncio.sleep(CLIENT_RETRY_S)
        if self._client_backlog.get(identity) is backlog:
            del self._client_backlog[identity]

    async def _peers_gone(self) -> None:
        """Workers whose connection closed are lost; clients whose connection closed have their work dropped."""
        for identity in self._workers_watch.closed():
            link = self.workers.get(identity)
            if link is not None:
                self.counters["nodes_disconnected"] += 1
                await self._lose(link, "its connection closed")
        for identity in self._clients_watch.closed():
            self._client_backlog.pop(identity, None)
            if self.core.has_work_of(identity):
                self.counters["clients_disconnected"] += 1
                await self._feed(ClientGone(identity, "it disconnected", time.monotonic()))

    async def _drop_client(self, identity: bytes, reason: str) -> None:
        """Cut off a client that stopped reading: its messages are dropped, its requests and streams too."""
        self._client_backlog.pop(identity, None)
        self._cut_off.add(identity)
        self.counters["clients_cut_off"] += 1
        log.warning("coordinator: cut off a client: %s", reason)
        await self._feed(ClientGone(identity, reason, time.monotonic()))

    # --- workers ---------------------------------------------------------------------------
    async def _on_worker(self, identity: bytes, message: Message, user_id: str | None) -> None:
        if isinstance(message, Hello):
            await self._register(identity, message, user_id)
            return
        link = self.workers.get(identity)
        if link is None:
            await self._send_worker(identity, Error("unregistered", "unknown worker: register with a hello first"))
            return
        link.last_seen = time.monotonic()
        if isinstance(message, ShardResult | Error) and message.request_id:
            waiter = self._profiling.pop((message.request_id, message.shard_id, message.attempt), None)
            if waiter is not None:
                if not waiter.done():
                    waiter.set_result(message)
            elif isinstance(message, ShardResult):
                await self._feed(ShardReturned(link.name, message, link.last_seen))
            else:
                await self._feed(ShardRefused(link.name, message, link.last_seen))
        elif isinstance(message, Goodbye):
            await self._lose(link, f"left: {message.reason}")
        elif not isinstance(message, Heartbeat | Error):
            self.counters["protocol_errors"] += 1
            await self._send_worker(identity, Error("protocol", f"a worker may not send {message.kind}"))

    async def _register(self, identity: bytes, hello: Hello, user_id: str | None) -> None:
        configured = [n.name for n in self.config.nodes]
        if hello.node not in configured:
            await self._refuse(
                identity, f"node {hello.node!r} is not in the coordinator's config ({', '.join(configured)})"
            )
            return
        # With CURVE the key decides who a worker is: its certificate must be the node's own.
        owner = self._key_owner.get(user_id or "")
        if self._key_owner and owner != hello.node:
            await self._refuse(identity, f"this key belongs to {owner or 'nobody'!r}, not to node {hello.node!r}")
            return
        existing = self.by_name.get(hello.node)
        if existing is not None and existing.identity != identity:
            if time.monotonic() - existing.last_seen < self.settings.heartbeat_s * self.settings.heartbeat_misses:
                await self._refuse(identity, f"node name {hello.node!r} is already registered by another live worker")
                return
            await self._lose(existing, "replaced by a new worker of the same name")
        elif existing is not None:
            await self._lose(existing, "registered again")
        link = WorkerLink(hello.node, identity, hello.providers, hello.variants, hello.fingerprint)
        self.workers[identity] = link
        self.by_name[link.name] = link
        await self._send_worker(identity, Welcome(link.name, self.settings.heartbeat_s))
        cached = self.cache.load(link.name, link.fingerprint)
        log.info("coordinator: node %s registered (%s)", link.name, "profile cached" if cached else "profiling")
        await self._feed(NodeRegistered(link.name, tuple(link.variants), time.monotonic()))
        if cached is None:
            self._spawn(self._profile(link))
        else:
            await self._feed(NodeProfiled(link.name, cached, time.monotonic()))

    async def _refuse(self, identity: bytes, reason: str) -> None:
        self.counters["refused_workers"] += 1
        log.warning("coordinator: refused a worker: %s", reason)
        await self._send_worker(identity, Error("refused", reason))

    async def _lose_by_name(self, node: str, reason: str) -> None:
        link = self.by_name.get(node)
        if link is not None:
            await self._lose(link, reason)
        else:
            await self._feed(NodeLost(node, reason, time.monotonic()))

    async def _lose(self, link: WorkerLink, reason: str) -> None:
        if not link.alive:
            return
        link.alive = False
        log.warning("coordinator: node %s lost (%s)", link.name, reason)
        self.workers.pop(link.identity, None)
        if self.by_name.get(link.name) is link:
            del self.by_name[link.name]
        for key in [k for k in self._profiling if k[0].startswith(f"profile:{link.name}:")]:
            waiter = self._profiling.pop(key)
            if not waiter.done():
                waiter.set_exception(WorkerGone(f"node {link.name} lost ({reason})"))
        await self._feed(NodeLost(link.name, reason, time.monotonic()))

    async def _liveness_loop(self) -> None:
        """Heartbeats out; a worker silent for ``heartbeat_misses`` intervals is lost.

        Silence counts only while the coordinator was reading: if the loop woke late, or messages
        are still waiting on the socket, the verdict waits — a busy coordinator never declares a
        live board dead.
        """
        interval = self.settings.heartbeat_s
        limit = interval * self.settings.heartbeat_misses
        expected = time.monotonic() + interval
        while True:
            await asyncio.sleep(max(expected - time.monotonic(), 0.0))
            now = time.monotonic()
            lag = now - expected
            expected = now + interval
            if lag > interval / 2:  # the loop was busy: that time is not the workers' silence
                for link in self.workers.values():
                    link.last_seen += lag
            await self._peers_gone()
            unread = self._workers_io.unread()
            for link in list(self.workers.values()):
                if now - link.last_seen > limit and not unread:
                    await self._lose(link, f"no heartbeat for {now - link.last_seen:.1f} s")
                elif link.alive:
                    await self._send_worker(link.identity, Heartbeat("coordinator"))

    async def _profile(self, link: WorkerLink) -> None:
        """Time real shards of every variant the node loaded; record throughput and latency.

        Shards go out ``window`` at a time, as dispatch sends them, so the throughput (inputs ÷
        elapsed time) includes the coordinator's per-shard cost and the load of the other nodes
        profiling at the same time. Latency is the median round trip.
        """
        size = self.settings.shard_size
        rows = max(size, *LATENCY_BATCHES)
        samples = {
            t.name: np.random.default_rng(0).integers(0, 256, (rows, *t.input_shape)).astype(t.input_dtype)
            for t in self._task_of_variant.values()
        }
        window = asyncio.Semaphore(self.settings.window)
        measurements: dict[str, Measurement] = {}

        async def timed(variant: str, shard_id: int, batch: int = size) -> float | None:
            async with window:
                started = time.perf_counter()
                key = (f"profile:{link.name}:{variant}", shard_id, 0)
                waiter: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
                self._profiling[key] = waiter
                sample = samples[self._task_of_variant[variant].name][:batch]
                if not link.alive or not await self._send_worker(link.identity, Shard(*key, variant, sample)):
                    self._profiling.pop(key, None)
                    raise WorkerGone(f"node {link.name} is unreachable")
                reply = await waiter
                if not isinstance(reply, ShardResult):
                    log.warning("coordinator: profiling %s on %s failed: %s", variant, link.name, reply)
                    return None
                return time.perf_counter() - started

        try:
            for variant in [v for v in link.variants if v in self.table.accuracy]:
                if await timed(variant, 0) is None:  # warm-up: first runs allocate
                    continue
                started = time.perf_counter()
                round_trips = await asyncio.gather(
                    *(timed(variant, i) for i in range(1, 1 + self.settings.profile_shards))
                )
                elapsed = time.perf_counter() - started
                done = [t for t in round_trips if t is not None]
                if len(done) == len(round_trips):
                    measurements[variant] = Measurement(
                        ips=size * len(done) / elapsed, latency_ms=statistics.median(done) * 1e3
                    )
            # Round trips of one shard at a time at a few batch sizes: what a frame waits (streams).
            for variant in list(measurements):
                latencies = []
                for batch in LATENCY_BATCHES:
                    trips = [await timed(variant, 1000 * batch + i, batch) for i in range(LATENCY_SAMPLES)]
                    done = [t for t in trips if t is not None]
                    if done:
                        latencies.append((batch, statistics.median(done) * 1e3))
                measurements[variant] = dataclasses.replace(measurements[variant], latencies=tuple(latencies))
        except WorkerGone:
            return
        if link.alive:
            self.cache.store(link.name, link.fingerprint, measurements)
            log.info("coordinator: node %s profiled (%d variants)", link.name, len(measurements))
            await self._feed(NodeProfiled(link.name, measurements, time.monotonic()))

    # --- clients ---------------------------------------------------------------------------
    async def _on_client(self, identity: bytes, message: Message, user_id: str | None) -> None:
        # With CURVE a client is its key (every connection with it); without, its connection.
        owner = self._key_owner.get(user_id or "") if self._key_owner else None
        if isinstance(message, Frames):
            await self._feed(FramesArrived(identity, message, time.monotonic()))
        elif isinstance(message, Submit):
            await self._feed(RequestOpened(identity, message, time.monotonic(), owner))
        elif isinstance(message, Cancel):
            await self._feed(RequestCancelled(identity, message, time.monotonic()))
        elif isinstance(message, StreamOpen):
            await self._feed(StreamOpened(identity, message, time.monotonic(), owner))
        elif isinstance(message, StreamClose):
            await self._feed(StreamClosed(identity, message, time.monotonic()))
        elif isinstance(message, Query):
            operator = owner is not None and owner in self.config.security.operators
            viewer = None if operator else principal(identity, owner)
            self._spawn(self._answer_query(identity, message, viewer))
        else:
            self.counters["protocol_errors"] += 1
            await self._send_client(identity, Error("protocol", f"a client may not send {message.kind}"))

    async def _answer_query(self, identity: bytes, query: Query, viewer: str | None) -> None:
        """Answer a query; ``viewer`` is who asks (None: an operator, who sees every client's work)."""
        try:
            answer = await self._answer(query, viewer)
        except Exception:  # the boundary: a query never stops anything
            self.counters["handler_errors"] += 1
            log.exception("coordinator: answering a %r query failed", query.topic)
            answer = Error("internal", f"the coordinator failed on this {query.topic!r} query", query.request_id)
        await self._send_client(identity, answer)

    async def _answer(self, query: Query, viewer: str | None) -> Answer | Error:
        """Answer a query from the coordinator's current state; nothing is dispatched."""
        if query.topic == "status":
            return Answer(query.request_id, self.status(viewer))
        if query.topic == "table":
            return Answer(query.request_id, {"rows": self.table.rows(), "efficiency": self.table.efficiency})
        if query.topic == "plan":
            return await self._plan_query(query)
        return Error(
            "invalid_input", f"unknown query topic {query.topic!r}; expected one of {', '.join(QUERY_TOPICS)}",
            query.request_id,
        )  # fmt: skip

    async def _plan_query(self, query: Query) -> Answer | Error:
        """What a request would get now, next to the work running: solved on the solver thread."""
        params = query.params
        problem = check_plan_params(params)
        if problem is not None:
            return Error("invalid_input", f"plan query: {problem}", query.request_id)
        request = PlanRequest(params["inputs"], params.get("target_ips"), params.get("min_accuracy"))
        policy = params.get("policy") or self.settings.policy
        nodes = self.rm.usable_nodes()
        table = self.table.scaled(1.0)
        loop = asyncio.get_running_loop()
        try:
            if policy in ("adaptive", "mixed"):
                key = f"query:{query.request_id}"
                demands = (
                    *(d for d in self.core.running_demands(time.monotonic()) if d.key != key),
                    Demand(key, request.target_ips, request.min_accuracy, policy == "adaptive"),
                )
                joint = await loop.run_in_executor(self._solver, plan_jointly, table, demands, nodes)
                plan = joint.demands[key].for_inputs(policy, request.inputs)
            else:
                plan = make_plan(policy, table, request, nodes)
        except PlanningError as exc:
            return Error("invalid_input", f"cannot plan {dict(params)}: {exc}", query.request_id)
        return Answer(query.request_id, plan.as_dict())

    def status(self, viewer: str | None = None) -> dict[str, Any]:
        """Nodes, the resource manager's state, the joint plan, counters, and the requests and streams
        ``viewer`` may see: its own, or every client's for an operator (None)."""
        usable = set(self.rm.usable_nodes())
        now = time.monotonic()
        return {
            "state": self.rm.state,
            "expected_nodes": sorted(self.rm.expected),
            "efficiency": self.table.efficiency,
            "nodes": [
                {
                    "name": link.name,
                    "alive": link.alive,
                    "profiled": link.name in usable or link.name in self.rm.suspect,
                    "suspect": link.name in self.rm.suspect,  # alive but its work in flight is far overdue
                    "providers": link.providers,
                    "variants": link.variants,
                    "in_flight": self.core.in_flight(link.name),
                    "ips": {v: self.table.ips(link.name, v) for v in self.table.variants_of(link.name)},
                    "seconds_since_heard": now - link.last_seen,
                }
                for link in sorted(self.by_name.values(), key=lambda c: c.name)
            ],
            **self.core.work_seen_by(viewer, now),
            "counters": dict(self.counters),
        }
