"""The coordinator's I/O shell: two ROUTER sockets, one for workers and one for clients.

Planning and state live in ``ResourceManager`` and ``RequestRun`` (pure); this module
only moves messages. Per request, every usable node gets ``window`` lanes: a lane takes
the node's next shard (or one orphaned by a lost node), sends it, and awaits its result,
so at most ``window`` shards are in flight per node and transfer overlaps compute.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import statistics
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import zmq
import zmq.asyncio
from prometheus_client import start_http_server
from zmq.auth.asyncio import AsyncioAuthenticator

from .. import transport
from ..config import ClusterConfig
from ..errors import EdgecollabError
from ..metrics import registry_for
from ..planner import (
    ADAPTS_AT_RUN_TIME,
    POLICIES,
    ExplorationTable,
    Measurement,
    Plan,
    PlanningError,
    PlanRequest,
    ProfileCache,
    make_plan,
)
from ..protocol import (
    QUERY_TOPICS,
    Answer,
    Error,
    Goodbye,
    Heartbeat,
    Hello,
    ProtocolError,
    Query,
    Result,
    Shard,
    ShardResult,
    Submit,
    Welcome,
    decode,
    encode,
)
from ..protocol.messages import Message
from ..security import authorized_keys, server_curve
from ..zoo import load_manifest
from .request_run import RequestRun, ShardFailed, ShardTask
from .resource_manager import NotReady, ResourceManager, shard_cost_s

log = logging.getLogger(__name__)

NON_RETRYABLE = ("invalid_input", "unknown_variant")
# A peer that sends this many malformed messages is cut off: its later messages are dropped unanswered.
MAX_PROTOCOL_STRIKES = 10
# Drift re-plans are at most this frequent: each re-plan solves a program on the event loop.
DRIFT_REPLAN_INTERVAL_S = 0.5


class NodeLost(EdgecollabError):
    """The node a shard was sent to died or left before answering."""


@dataclass
class WorkerConn:
    name: str
    identity: bytes  # ZeroMQ routing id of the worker's DEALER
    providers: list[str]
    variants: list[str]
    fingerprint: str
    window: asyncio.Semaphore  # bounds shards in flight on this node, across requests
    last_seen: float = field(default_factory=time.monotonic)
    last_result_at: float | None = None  # monotonic time of its latest shard result
    alive: bool = True
    # (request id, shard id, attempt) -> the lane awaiting that shard's reply
    pending: dict[tuple[str, int, int], asyncio.Future[Message]] = field(default_factory=dict)


@dataclass
class ActiveRequest:
    """A request being dispatched: its book-keeping and the lanes feeding it."""

    run: RequestRun
    request: PlanRequest
    policy: str
    inputs: np.ndarray
    lanes: dict[str, list[asyncio.Task[None]]] = field(default_factory=dict)  # node -> its lanes for this request
    changed: asyncio.Event = field(default_factory=asyncio.Event)  # pulsed when shards become available
    done: asyncio.Event = field(default_factory=asyncio.Event)  # set when finished or failed
    failure: Error | None = None
    first_plan: Plan = field(init=False)
    dispatch_started: float = field(default_factory=time.monotonic)  # after waiting for the cluster and planning

    def __post_init__(self) -> None:
        self.first_plan = self.run.plan


class Coordinator:
    def __init__(
        self, config: ClusterConfig, *, workers_endpoint: str | None = None, clients_endpoint: str | None = None
    ) -> None:
        self.config = config
        self.settings = config.coordinator
        self.workers_endpoint = workers_endpoint or self.settings.workers
        self.clients_endpoint = clients_endpoint or self.settings.clients
        manifest = load_manifest(config.manifest_path)
        task = manifest.tasks.get(config.models.task)
        if task is None:
            raise EdgecollabError(f"task {config.models.task!r} is not in the manifest {manifest.path}")
        self.input_shape = task.input_shape
        self.input_dtype = np.dtype(task.input_dtype)
        self.table = ExplorationTable({v.name: v.accuracy for v in manifest.for_task(task.name)})
        self.table.link_seconds.update(config.link_seconds_per_input(task.bytes_per_input))
        self.rm = ResourceManager([n.name for n in config.nodes], self.table)
        self.cache = ProfileCache(config.resolve(self.settings.profile_cache))
        self.counters: Counter[str] = Counter()  # protocol errors, late replies, lost nodes, ...
        self.workers: dict[bytes, WorkerConn] = {}
        self.by_name: dict[str, WorkerConn] = {}
        self.active: dict[str, ActiveRequest] = {}  # running requests by id
        self.admitted: set[str] = set()  # ids of requests waiting for the cluster or running; bounded
        self._received: set[str] = set()  # ids read off the socket whose task may not have started yet
        self._last_drift_replan = 0.0  # monotonic time of the last re-plan caused by drift
        self._key_owner: dict[str, str] = {}  # with CURVE: z85 public key -> certificate name (node or client)
        self.outcomes: Counter[str] = Counter()  # requests answered, by outcome ("completed" or an error code)
        self.last_request: dict[str, float] = {}  # expected and achieved figures of the last completed request
        self._strikes: Counter[bytes] = Counter()  # peer identity -> malformed messages it sent; offenders only
        self._cut_off: set[bytes] = set()  # identities whose messages are dropped
        self._state_changed = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stop = asyncio.Event()
        self._draining = False  # shutting down: new requests are refused
        self.rm.on_state_change(lambda state: self._pulse(self._state_changed))

    # --- life cycle ------------------------------------------------------------------------
    async def serve(self, started: asyncio.Event | None = None) -> None:
        """Run until SIGTERM/SIGINT or ``stop()``."""
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
            authenticator = AsyncioAuthenticator(context)
            authenticator.start()
            authenticator.configure_curve(domain="*", location=str(allowed))
        self._workers_sock = transport.router(context, self.workers_endpoint, keys)
        self._clients_sock = transport.router(context, self.clients_endpoint, keys)
        log.info("coordinator: workers on %s, clients on %s", self.workers_endpoint, self.clients_endpoint)
        loops = [
            asyncio.create_task(
                self._receive_loop(self._workers_sock, "worker", self._send_worker, self._on_worker_message)
            ),
            asyncio.create_task(
                self._receive_loop(self._clients_sock, "client", self._send_client, self._on_client_message)
            ),
            asyncio.create_task(self._liveness_loop()),
            asyncio.create_task(self._startup_timer()),
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
        try:
            await self._stop.wait()
            await self._shut_down()
            linger_ms = 1000  # let the last answers and goodbyes leave
        finally:
            for task in [*loops, *self._tasks]:
                task.cancel()
            await asyncio.gather(*loops, *self._tasks, return_exceptions=True)
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
        self._draining = True
        grace = self.settings.shutdown_grace_s
        log.warning("coordinator: shutting down; %d request(s) get up to %.1f s to finish", len(self.admitted), grace)
        deadline = time.monotonic() + grace
        while self.admitted and time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._state_changed.wait(), timeout=min(0.1, deadline - time.monotonic()))
        for active in self.active.values():
            run = active.run
            self._fail(
                active,
                Error(
                    "shutting_down",
                    f"the coordinator shut down after {run.predicted_inputs:,} of {run.total_inputs:,} inputs; "
                    "submit the request again when it is back",
                    run.request_id,
                ),
            )
        self._pulse(self._state_changed)  # requests still waiting for the cluster give up now
        answering = time.monotonic() + 2.0
        while self.admitted and time.monotonic() < answering:
            await asyncio.sleep(0.01)
        for conn in self.by_name.values():
            if conn.alive:
                await self._send_worker(conn.identity, Goodbye(conn.name, "coordinator shutting down"))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @staticmethod
    def _pulse(event: asyncio.Event) -> None:
        # Wakes every current waiter; later waiters wait for the next pulse.
        event.set()
        event.clear()

    async def _startup_timer(self) -> None:
        await asyncio.sleep(self.settings.startup_timeout_s)
        if not self.rm.expected <= self.rm.registered:
            missing = sorted(self.rm.expected - self.rm.registered)
            log.warning("coordinator: start-up timeout; going on without %s", ", ".join(missing))
        self.rm.expire_startup()

    # --- workers ---------------------------------------------------------------------------
    async def _receive_loop(
        self,
        sock: zmq.asyncio.Socket,
        peer: str,
        reply: Callable[[bytes, Message], Awaitable[object]],
        handle: Callable[[bytes, Message, str | None], Awaitable[None]],
    ) -> None:
        """Decode every message on a ROUTER; a malformed one is answered, counted and dropped.

        With CURVE on, the peer's public key (``User-Id``, set by the authenticator) goes with it.
        """
        while True:
            frames = await sock.recv_multipart(copy=False)
            identity, payload = frames[0].bytes, [f.buffer for f in frames[1:]]
            if identity in self._cut_off:
                self.counters["dropped_from_cut_off_peers"] += 1
                continue
            user_id = str(frames[-1].get("User-Id")) if self._key_owner and len(frames) > 1 else None
            try:
                message = decode(payload)
            except ProtocolError as exc:
                self.counters["protocol_errors"] += 1
                log.warning("coordinator: malformed message from a %s: %s", peer, exc)
                await reply(identity, Error("protocol", str(exc)))
                self._strike(identity)
                continue
            await handle(identity, message, user_id)

    def _strike(self, identity: bytes) -> None:
        """Count a malformed message; cut the peer off at ``MAX_PROTOCOL_STRIKES``."""
        if len(self._strikes) > 10_000:  # many offenders: forget the old tallies rather than grow
            self._strikes.clear()
        self._strikes[identity] += 1
        if self._strikes[identity] >= MAX_PROTOCOL_STRIKES:
            del self._strikes[identity]
            self._cut_off.add(identity)
            self.counters["peers_cut_off"] += 1
            log.warning("coordinator: cut off a peer after %d malformed messages", MAX_PROTOCOL_STRIKES)
            conn = self.workers.get(identity)
            if conn is not None:
                self._lose(conn, "cut off for malformed messages")

    async def _on_worker_message(self, identity: bytes, message: Message, user_id: str | None) -> None:
        if isinstance(message, Hello):
            await self._register(identity, message, user_id)
            return
        conn = self.workers.get(identity)
        if conn is None:
            await self._send_worker(identity, Error("unregistered", "unknown worker: register with a hello first"))
            return
        conn.last_seen = time.monotonic()
        if isinstance(message, ShardResult | Error) and isinstance(getattr(message, "request_id", None), str):
            future = conn.pending.pop((message.request_id, message.shard_id, message.attempt), None)
            if future is not None and not future.done():
                future.set_result(message)
            else:
                self.counters["late_replies"] += 1
        elif isinstance(message, Goodbye):
            self._lose(conn, f"left: {message.reason}")
        elif not isinstance(message, Heartbeat):
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
            self._lose(existing, "replaced by a new worker of the same name")
        elif existing is not None:
            self._lose(existing, "registered again")
        conn = WorkerConn(
            hello.node, identity, hello.providers, hello.variants, hello.fingerprint,
            asyncio.Semaphore(self.settings.window),
        )  # fmt: skip
        self.workers[identity] = conn
        self.by_name[conn.name] = conn
        await self._send_worker(identity, Welcome(conn.name, self.settings.heartbeat_s))
        cached = self.cache.load(conn.name, conn.fingerprint)
        log.info("coordinator: node %s registered (%s)", conn.name, "profile cached" if cached else "profiling")
        self.rm.node_joined(conn.name)
        if cached is None:
            self._spawn(self._profile(conn))
        else:
            self._node_usable(conn.name, cached)

    async def _refuse(self, identity: bytes, reason: str) -> None:
        self.counters["refused_workers"] += 1
        log.warning("coordinator: refused a worker: %s", reason)
        await self._send_worker(identity, Error("refused", reason))

    def _lose(self, conn: WorkerConn, reason: str) -> None:
        if not conn.alive:
            return
        conn.alive = False
        self.counters["nodes_lost"] += 1
        log.warning("coordinator: node %s lost (%s)", conn.name, reason)
        self.workers.pop(conn.identity, None)
        if self.by_name.get(conn.name) is conn:
            del self.by_name[conn.name]
            self.rm.node_left(conn.name)
        for future in conn.pending.values():
            if not future.done():
                future.set_exception(NodeLost(f"node {conn.name} lost ({reason})"))
        conn.pending.clear()
        for active in self.active.values():
            active.run.orphan_queue_of(conn.name)  # its unsent shards are now anyone's
            self._pulse(active.changed)
        self._replan_all(f"{conn.name} lost")

    async def _liveness_loop(self) -> None:
        limit = self.settings.heartbeat_s * self.settings.heartbeat_misses
        while True:
            await asyncio.sleep(self.settings.heartbeat_s)
            now = time.monotonic()
            for conn in list(self.workers.values()):
                if now - conn.last_seen > limit:
                    self._lose(conn, f"no heartbeat for {now - conn.last_seen:.1f} s")
                else:
                    await self._send_worker(conn.identity, Heartbeat("coordinator"))

    async def _send_worker(self, identity: bytes, message: Message) -> bool:
        try:
            await self._workers_sock.send_multipart([identity, *encode(message)], copy=False)
            return True
        except zmq.ZMQError as exc:
            if exc.errno != zmq.EHOSTUNREACH:
                raise
            conn = self.workers.get(identity)
            if conn is not None:
                self._lose(conn, "unreachable")
            return False

    async def _run_shard(self, conn: WorkerConn, request_id: str, shard: ShardTask, inputs: np.ndarray) -> Message:
        key = (request_id, shard.shard_id, shard.attempt)
        # Registered before sending: the reply may be handled before the send call returns.
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        conn.pending[key] = future
        message = Shard(request_id, shard.shard_id, shard.attempt, shard.variant, inputs[shard.start : shard.stop])
        if not conn.alive or not await self._send_worker(conn.identity, message):
            conn.pending.pop(key, None)
            if future.done():
                future.exception()  # failed by _lose: mark it seen so asyncio does not complain
            raise NodeLost(f"node {conn.name} is unreachable")
        return await future

    async def _profile(self, conn: WorkerConn) -> None:
        """Time real shards of every variant the node loaded; record throughput and latency.

        Shards go out as dispatch sends them, ``window`` at a time, so the throughput
        (inputs ÷ elapsed time) includes the coordinator's per-shard cost and the load
        of the other nodes profiling at the same time. Latency is the median round trip.
        """
        size = self.settings.shard_size
        sample = np.random.default_rng(0).integers(0, 256, (size, *self.input_shape)).astype(self.input_dtype)
        window = asyncio.Semaphore(self.settings.window)
        measurements: dict[str, Measurement] = {}

        async def timed(variant: str, shard_id: int) -> float | None:
            async with window:
                started = time.perf_counter()
                task = ShardTask(shard_id, 0, size, variant, conn.name)
                reply = await self._run_shard(conn, f"profile:{variant}", task, sample)
                if not isinstance(reply, ShardResult):
                    log.warning("coordinator: profiling %s on %s failed: %s", variant, conn.name, reply)
                    return None
                return time.perf_counter() - started

        try:
            for variant in [v for v in conn.variants if v in self.table.accuracy]:
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
        except NodeLost:
            return
        if conn.alive:
            self.cache.store(conn.name, conn.fingerprint, measurements)
            self._node_usable(conn.name, measurements)
            log.info("coordinator: node %s profiled (%d variants)", conn.name, len(measurements))

    def _node_usable(self, node: str, measurements: dict[str, Measurement]) -> None:
        """A node has a profile: it joins the running requests, which are re-planned to use it."""
        self.rm.node_profiled(node, measurements)
        for active in self.active.values():
            self._start_lanes(active, node)
        self._replan_all(f"{node} joined")

    # --- clients ---------------------------------------------------------------------------
    async def _on_client_message(self, identity: bytes, message: Message, user_id: str | None) -> None:
        if isinstance(message, Submit):
            # Known from the moment it is read: a status query queued behind it must see it.
            self._received.add(message.request_id)
            self._spawn(self._serve_request(identity, message))
        elif isinstance(message, Query):
            await self._send_client(identity, self._answer(message))
        else:
            self.counters["protocol_errors"] += 1
            await self._send_client(identity, Error("protocol", f"a client may not send {message.kind}"))

    async def _send_client(self, identity: bytes, message: Message) -> None:
        try:
            await self._clients_sock.send_multipart([identity, *encode(message)], copy=False)
        except zmq.ZMQError as exc:
            if exc.errno != zmq.EHOSTUNREACH:
                raise
            log.warning("coordinator: client gone before its %s could be sent", message.kind)

    def _answer(self, query: Query) -> Answer | Error:
        """Answer a query from the coordinator's current state; nothing is dispatched."""
        if query.topic == "status":
            return Answer(query.request_id, self.status())
        if query.topic == "table":
            return Answer(query.request_id, {"rows": self.table.rows(), "efficiency": self.table.efficiency})
        if query.topic == "plan":
            params = query.params
            try:
                request = PlanRequest(int(params["inputs"]), params.get("target_ips"), params.get("min_accuracy"))
                policy = str(params.get("policy") or self.settings.policy)
                share = 1.0 / (len(self.active) + 1)
                plan = make_plan(policy, self.table.scaled(share), request, self.rm.usable_nodes())
            except (KeyError, TypeError, ValueError, PlanningError) as exc:
                return Error("invalid_input", f"cannot plan {params}: {exc}", query.request_id)
            return Answer(query.request_id, plan.as_dict())
        return Error(
            "invalid_input", f"unknown query topic {query.topic!r}; expected one of {', '.join(QUERY_TOPICS)}",
            query.request_id,
        )  # fmt: skip

    def status(self) -> dict[str, Any]:
        """Nodes, the resource manager's state, running requests and error counters."""
        usable = set(self.rm.usable_nodes())
        return {
            "state": self.rm.state,
            "expected_nodes": sorted(self.rm.expected),
            "efficiency": self.table.efficiency,
            "nodes": [
                {
                    "name": conn.name,
                    "alive": conn.alive,
                    "profiled": conn.name in usable,
                    "providers": conn.providers,
                    "variants": conn.variants,
                    "in_flight": len(conn.pending),
                    "ips": {v: self.table.ips(conn.name, v) for v in self.table.variants_of(conn.name)},
                    "seconds_since_heard": time.monotonic() - conn.last_seen,
                }
                for conn in sorted(self.by_name.values(), key=lambda c: c.name)
            ],
            "requests": [
                {
                    "id": rid,
                    "policy": active.policy,
                    "inputs": active.run.total_inputs,
                    "done": active.run.predicted_inputs,
                    "target_ips": active.request.target_ips,
                    "elapsed_s": time.monotonic() - active.run.arrived,
                }
                for rid, active in self.active.items()
            ],
            "waiting": sorted((self.admitted | self._received) - set(self.active)),  # ids not yet planned
            "counters": dict(self.counters),
        }

    def _check_submit(self, submit: Submit) -> str | None:
        """Why a request is invalid, or None."""
        expected = f"{self.input_dtype} inputs of shape (N, {', '.join(map(str, self.input_shape))}) with N >= 1"
        x = submit.inputs
        if x.dtype != self.input_dtype or x.ndim != 1 + len(self.input_shape) or tuple(x.shape[1:]) != self.input_shape:
            return f"expected {expected}; got {x.dtype} of shape {tuple(x.shape)}"
        if len(x) == 0:
            return f"expected {expected}; got no inputs"
        if submit.target_ips is not None and not submit.target_ips > 0:
            return f"target_ips must be a positive number of inferences per second, got {submit.target_ips}"
        if submit.min_accuracy is not None and not 0 < submit.min_accuracy <= 1:
            return f"min_accuracy must be a fraction in (0, 1], got {submit.min_accuracy}"
        if submit.policy is not None and submit.policy not in POLICIES:
            return f"unknown policy {submit.policy!r}; expected one of {', '.join(POLICIES)}"
        if not submit.request_id or submit.request_id in self.admitted:
            return f"request id {submit.request_id!r} is empty or already running"
        return None

    async def _serve_request(self, identity: bytes, submit: Submit) -> None:
        try:
            await self._serve_received_request(identity, submit)
        finally:
            self._received.discard(submit.request_id)

    async def _serve_received_request(self, identity: bytes, submit: Submit) -> None:
        arrived = time.monotonic()
        rid = submit.request_id
        problem = self._check_submit(submit)
        if problem:
            await self._answer_request(identity, Error("invalid_input", problem, rid))
            return
        if self._draining:
            await self._answer_request(
                identity, Error("shutting_down", "the coordinator is shutting down; submit again when it is back", rid)
            )
            return
        if len(self.admitted) >= self.settings.max_requests:
            self.counters["busy"] += 1
            limit = self.settings.max_requests
            await self._answer_request(
                identity, Error("busy", f"the coordinator is serving its limit of {limit} requests; retry later", rid)
            )
            return
        self.admitted.add(rid)
        try:
            await self._admitted_request(identity, submit, arrived)
        finally:
            self.admitted.discard(rid)

    async def _admitted_request(self, identity: bytes, submit: Submit, arrived: float) -> None:
        rid = submit.request_id
        deadline = arrived + self.settings.startup_timeout_s
        while not self.rm.accepts_requests() and time.monotonic() < deadline and not self._draining:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._state_changed.wait(), timeout=min(0.5, deadline - time.monotonic()))
        if self._draining:
            await self._answer_request(
                identity, Error("shutting_down", "the coordinator shut down before this request started", rid)
            )
            return
        policy = submit.policy or self.settings.policy
        request = PlanRequest(len(submit.inputs), submit.target_ips, submit.min_accuracy)
        try:
            plan = self.rm.plan_request(rid, request, policy)
        except (NotReady, PlanningError) as exc:
            await self._answer_request(
                identity, Error("busy" if isinstance(exc, NotReady) else "invalid_input", str(exc), rid)
            )
            return
        if submit.strict and not plan.feasible:
            self.rm.finish_request(rid)
            why = "; ".join(plan.notes) or "no plan meets it"
            await self._answer_request(
                identity,
                Error(
                    "infeasible",
                    f"cannot meet target_ips={submit.target_ips} min_accuracy={submit.min_accuracy} on the cluster "
                    f"as it is (the best plan gives {plan.expected_ips:,.0f} inf/s at "
                    f"{plan.expected_accuracy * 100:.2f} %): {why}",
                    rid,
                ),
            )
            return
        active = ActiveRequest(RequestRun(rid, plan, self.settings.shard_size, arrived), request, policy, submit.inputs)
        self.active[rid] = active
        self._replan_all(f"request {rid[:8]} arrived", skip=rid)
        try:
            for node in self.rm.usable_nodes():
                self._start_lanes(active, node)
            await active.done.wait()
        finally:
            for lane in [t for tasks in active.lanes.values() for t in tasks]:
                lane.cancel()
            self.rm.finish_request(rid)
            del self.active[rid]
            self._replan_all(f"request {rid[:8]} finished")
        if active.failure is not None:
            await self._answer_request(identity, active.failure)
            return
        if active.run.replans == 0:  # a re-planned request's first plan no longer says what to expect
            self.rm.request_outcome(active.first_plan, active.run.total_inputs / active.run.wall_seconds())
        nodes = sorted({t.node for t in active.run.tallies.values()})
        report = self._report(active, nodes)
        self.counters["inputs_served"] += active.run.total_inputs
        self.last_request = {k: float(report[k]) for k in ("expected_ips", "achieved_ips", "expected_accuracy")}
        await self._answer_request(identity, Result(rid, active.run.predictions, report))

    async def _answer_request(self, identity: bytes, answer: Result | Error) -> None:
        self.outcomes["completed" if isinstance(answer, Result) else answer.code] += 1
        await self._send_client(identity, answer)

    def _start_lanes(self, active: ActiveRequest, node: str) -> None:
        if node in active.lanes or active.done.is_set():
            return
        active.lanes[node] = [asyncio.create_task(self._lane(active, node)) for _ in range(self.settings.window)]

    def _replan_all(self, reason: str, skip: str | None = None) -> None:
        """Re-plan the queued inputs of every running request on the cluster as it is now."""
        now = time.monotonic()
        for rid, active in self.active.items():
            run = active.run
            remaining = run.queued_inputs
            if rid == skip or remaining == 0 or active.policy not in ADAPTS_AT_RUN_TIME or not self.rm.usable_nodes():
                continue
            target = None
            if active.request.target_ips is not None:
                # What the rest must reach to finish by the request's own deadline — never less than the
                # request's own target: time gained early is kept as slack for the tail, not spent on accuracy.
                time_left = run.arrived + active.request.inputs / active.request.target_ips - now
                target = max(active.request.target_ips, remaining / max(time_left, 1e-3))
            try:
                plan = self.rm.replan(PlanRequest(remaining, target, active.request.min_accuracy), active.policy)
            except PlanningError as exc:
                log.warning("coordinator: could not re-plan request %s: %s", rid[:8], exc)
                continue
            run.replan(plan)
            self.counters["replans"] += 1
            for node in {a.node for a in plan.assignments}:
                self._start_lanes(active, node)
            self._pulse(active.changed)
            log.info("coordinator: re-planned %d inputs of request %s (%s)", remaining, rid[:8], reason)

    async def _lane(self, active: ActiveRequest, node: str) -> None:
        run = active.run
        try:
            while not active.done.is_set():
                conn = self.by_name.get(node)
                if conn is None or not conn.alive:
                    return
                shard = run.next_shard(node, conn.variants)
                if shard is None and self.settings.work_stealing and active.policy in ADAPTS_AT_RUN_TIME:
                    shard = run.steal(node, self.table.seconds_per_input, conn.variants)
                if shard is None:
                    # Nothing to send now: a re-plan, an orphan or a steal may give this node work later.
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(active.changed.wait(), timeout=0.25)
                    continue
                async with conn.window:
                    sent = time.monotonic()
                    try:
                        reply = await self._run_shard(conn, run.request_id, shard, active.inputs)
                    except NodeLost:
                        reply = None
                self._settle_shard(active, node, shard, reply, sent)
                if reply is None:
                    return  # this node is gone
        finally:
            self._lane_ended(active, node)

    def _delivery_seconds(self, node: str, sent: float, now: float, busy_s: float) -> float:
        conn = self.by_name.get(node)
        previous = conn.last_result_at if conn else None
        if conn:
            conn.last_result_at = now
        return shard_cost_s(sent, previous, now, busy_s)

    def _settle_shard(
        self, active: ActiveRequest, node: str, shard: ShardTask, reply: Message | None, sent: float
    ) -> None:
        run = active.run
        if isinstance(reply, ShardResult):
            accepted = run.complete(shard.shard_id, shard.attempt, reply.predictions, node, reply.busy_s)
            now = time.monotonic()
            seconds = self._delivery_seconds(node, sent, now, reply.busy_s)
            drifted = accepted and seconds > 0 and self.rm.observe(node, shard.variant, shard.size / seconds)
            if drifted and self.settings.replan_on_drift and now - self._last_drift_replan >= DRIFT_REPLAN_INTERVAL_S:
                self._last_drift_replan = now
                self._replan_all(f"{node} drifted")
            if run.finished:
                active.done.set()
            return
        if isinstance(reply, Error) and reply.code in NON_RETRYABLE:
            self._fail(active, Error(reply.code, f"node {node}: {reply.message}", run.request_id))
            return
        try:
            run.requeue(shard)
        except ShardFailed as exc:
            self._fail(active, Error("node_lost", str(exc), run.request_id))
        self._pulse(active.changed)

    def _fail(self, active: ActiveRequest, error: Error) -> None:
        if active.failure is None:
            active.failure = error
        active.done.set()

    def _lane_ended(self, active: ActiveRequest, node: str) -> None:
        tasks = active.lanes.get(node, [])
        if all(t.done() or t is asyncio.current_task() for t in tasks):
            active.lanes.pop(node, None)
        if not active.done.is_set() and not active.lanes and not active.run.finished:
            self._fail(active, Error("node_lost", "every node running this request was lost", active.run.request_id))

    def _report(self, active: ActiveRequest, nodes: list[str]) -> dict[str, Any]:
        run, request = active.run, active.request
        wall = run.wall_seconds()
        notes = list(run.plan.notes)
        missing = sorted(self.rm.expected - set(nodes))
        if missing:
            notes.append(f"ran without {', '.join(missing)} (not registered, not profiled in time, or not needed)")
        return {
            "request_id": run.request_id,
            "policy": active.policy,
            "inputs": run.total_inputs,
            "target_ips": request.target_ips,
            "min_accuracy": request.min_accuracy,
            "wall_s": wall,
            "achieved_ips": run.total_inputs / wall,
            "expected_ips": active.first_plan.expected_ips,
            "expected_accuracy": active.first_plan.expected_accuracy,
            "feasible": active.first_plan.feasible,
            "retries": run.retries,
            "steals": run.steals,
            "replans": run.replans,
            "dispatch_started_s": active.dispatch_started - run.arrived,
            "notes": notes,
            "timeline": run.timeline(),
            "assignment": [
                {
                    "node": tally.node,
                    "variant": tally.variant,
                    "planned_inputs": tally.planned_inputs,
                    "inputs": tally.inputs,
                    "shards": tally.shards,
                    "busy_s": tally.busy_s,
                    "last_result_s": tally.last_result_s,
                }
                for tally in run.tallies.values()
                if tally.inputs or tally.planned_inputs
            ],
        }
