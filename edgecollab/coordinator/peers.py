"""The coordinator's peers: the worker registry (CURVE identity, heartbeats), lost connections, misbehaving
peers, and each slow client's outbox. An I/O shell: every decision about work is the core's; this module
tells the core who is there (``NodeRegistered``, ``NodeLost``, ``ClientGone``) and moves messages."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zmq
import zmq.asyncio
from zmq.auth.asyncio import AsyncioAuthenticator

from ..config import ClusterConfig, CoordinatorConfig
from ..errors import ConfigError
from ..protocol import (
    MAX_BUNDLE,
    Error,
    FetchModel,
    Goodbye,
    Heartbeat,
    Hello,
    LinkProbe,
    Message,
    ModelChunk,
    Ready,
    Welcome,
    encode,
    encode_bundle,
)
from ..security import KeyPair, authorized_keys, server_curve
from ..worker import transport
from ..worker.settings import NodeSettings
from .events import ClientGone, Event, NodeLost

log = logging.getLogger(__name__)

# A peer that sends this many malformed messages is cut off: its later messages are dropped unanswered.
MAX_PROTOCOL_STRIKES = 10
CLIENT_RETRY_S = 0.005  # how often a slow client's queued messages are offered again
MAX_PROBE_BYTES = 4 * 1024 * 1024  # the largest link probe a site may ask for
PROBE_BYTES_PER_MINUTE = 16 * 1024 * 1024  # link probes one node may ask for in a minute


@dataclass
class WorkerLink:
    """A registered worker's connection; a link not in the registry is gone.

    Registered at its Hello (with what it runs on and the settings it was sent); ``ready`` from its
    Ready on, when its variants are loaded and warmed up and the core may give it work."""

    name: str
    identity: bytes  # ZeroMQ routing id of the worker's DEALER
    runtime: dict[str, Any]  # as the worker reported it: arch, cores, python, backend, providers, max_opset
    settings: NodeSettings
    files: dict[str, Path]  # the model files it may fetch, by sha256
    ready: bool = False
    providers: list[str] = field(default_factory=list)
    variants: list[str] = field(default_factory=list)
    fingerprint: str = ""
    warmup_s: float | None = None
    warnings: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # variants that would not load or run there, and why
    last_seen: float = field(default_factory=time.monotonic)
    link_mbps: float | None = None  # a site's link from here, as the site measured it
    probe_bytes: int = 0  # bytes of link probes sent to it since probe_window_started
    probe_window_started: float = 0.0

    @property
    def is_site(self) -> bool:
        """A coordinator under this one, registered as one node: it reports its front, it is not profiled."""
        return self.runtime.get("backend") == "site"

    def ready_with(self, ready: Ready) -> None:
        """Take a worker's Ready; a variant it claims that it was never sent is named in ``failed``, not served."""
        sent = {v.id for v in self.settings.variants}
        self.ready, self.providers = True, list(ready.providers)
        self.variants = [v for v in dict.fromkeys(ready.variants) if v in sent]
        self.fingerprint, self.warmup_s = ready.fingerprint, ready.warmup_s
        self.warnings, self.failed = list(ready.warnings), dict(ready.failed)
        for variant in dict.fromkeys(ready.variants):
            if variant not in sent:
                self.failed[variant] = "claimed by the worker, but not one of the variants it was sent"

    def take_probe(self, size: int, now: float) -> str | None:
        """Book a link probe of ``size`` bytes to this node, or say why not: a probe costs this coordinator's
        own link, so a node gets at most ``PROBE_BYTES_PER_MINUTE`` of them."""
        if now - self.probe_window_started > 60.0:
            self.probe_window_started, self.probe_bytes = now, 0
        if not 0 <= size <= MAX_PROBE_BYTES or self.probe_bytes + size > PROBE_BYTES_PER_MINUTE:
            return (
                f"a link probe asks for 0..{MAX_PROBE_BYTES} bytes, at most {PROBE_BYTES_PER_MINUTE} a minute per "
                f"node; {self.name} asked for {size} with {self.probe_bytes} sent this minute"
            )
        self.probe_bytes += size
        return None

    def left_out(self) -> dict[str, str]:
        """Variants this board does not run, and why: its runtime cannot (coordinator's check), or they failed there."""
        return {**self.settings.excluded, **self.failed}


class Peers:
    def __init__(
        self,
        settings: CoordinatorConfig,
        configured_nodes: list[str],
        feed: Callable[[Event], Awaitable[None]],
        spawn: Callable[[Any], None],
        counters: Any,
        has_work_of: Callable[[bytes], bool],
        provision: Callable[[str, dict[str, Any]], tuple[NodeSettings, dict[str, Path]]],
    ) -> None:
        self.settings = settings
        self.configured = configured_nodes
        self.provision = provision  # node, its runtime -> its settings, and the files it may fetch
        self._feed = feed  # hands an event to the core and carries out what it says
        self._spawn = spawn
        self.counters = counters
        self.links: dict[str, WorkerLink] = {}  # registered workers by node name
        self._by_identity: dict[bytes, WorkerLink] = {}  # the same links, by routing id
        self.key_owner: dict[str, str] = {}  # with CURVE: z85 public key -> certificate name (node or client)
        self._strikes: dict[bytes, int] = {}  # peer identity -> malformed messages it sent; offenders only
        self.cut_off: set[bytes] = set()  # identities whose messages are dropped
        self._client_backlog: dict[bytes, deque[list[Any]]] = {}  # slow clients' messages not yet taken
        self.has_work_of = has_work_of  # the core's view: whether a client has a request or stream open

    def attach(
        self, workers: transport.FastSocket, clients: transport.FastSocket,
        workers_watch: transport.ConnectionWatch, clients_watch: transport.ConnectionWatch,
    ) -> None:  # fmt: skip
        self._workers_io, self._clients_io = workers, clients
        self._workers_watch, self._clients_watch = workers_watch, clients_watch

    def start_curve(
        self, context: zmq.asyncio.Context, config: ClusterConfig
    ) -> tuple[KeyPair | None, AsyncioAuthenticator | None]:
        """With CURVE on: the server's keys, and a running authenticator whose allow-list is the certificates
        of every node and client; each key's certificate name is who that peer is."""
        curve = server_curve(config)
        if curve is None:
            return None, None
        keys, allowed = curve
        self.key_owner = {k.decode(): name for k, name in authorized_keys(allowed).items()}
        unknown = sorted(set(config.security.operators) - set(self.key_owner.values()))
        if unknown:
            raise ConfigError(
                f"[security] operators {', '.join(unknown)}: no such certificate in {allowed}"
                f" (it holds {', '.join(sorted(self.key_owner.values()))})"
            )
        authenticator = AsyncioAuthenticator(context)
        authenticator.start()
        authenticator.configure_curve(domain="*", location=str(allowed))
        return keys, authenticator

    def worker(self, identity: bytes) -> WorkerLink | None:
        return self._by_identity.get(identity)

    def is_current(self, link: WorkerLink) -> bool:
        return self.links.get(link.name) is link

    # --- registration ------------------------------------------------------------------------
    def owner_of(self, user_id: str | None) -> str | None:
        """The certificate name of a peer's CURVE key (its ``User-Id``); None without CURVE or for an unknown key."""
        return self.key_owner.get(user_id or "")

    async def register(self, identity: bytes, hello: Hello, user_id: str | None) -> WorkerLink | None:
        """Admit a worker that said hello, or refuse it with a reason (None then)."""
        if hello.node not in self.configured:
            await self._refuse(
                identity, f"node {hello.node!r} is not in the coordinator's config ({', '.join(self.configured)})"
            )
            return None
        # With CURVE the key decides who a worker is: its certificate must be the node's own.
        owner = self.owner_of(user_id)
        if self.key_owner and owner != hello.node:
            await self._refuse(identity, f"this key belongs to {owner or 'nobody'!r}, not to node {hello.node!r}")
            return None
        existing = self.links.get(hello.node)
        if existing is not None and existing.identity != identity:
            if time.monotonic() - existing.last_seen < self.settings.heartbeat_s * self.settings.heartbeat_misses:
                await self._refuse(identity, f"node name {hello.node!r} is already registered by another live worker")
                return None
            await self.lose(existing, "replaced by a new worker of the same name")
        elif existing is not None:
            await self.lose(existing, "registered again")
        node_settings, files = self.provision(hello.node, hello.runtime)
        link = WorkerLink(hello.node, identity, hello.runtime, node_settings, files)
        self.links[link.name] = link
        self._by_identity[identity] = link
        for variant, reason in node_settings.excluded.items():
            log.warning("coordinator: node %s will not run %s: %s", link.name, variant, reason)
        await self.send_worker(identity, Welcome(link.name, self.settings.heartbeat_s, node_settings.to_wire()))
        return link

    async def send_chunk(self, link: WorkerLink, fetch: FetchModel) -> None:
        """A piece of one of the link's own model files, at most ``chunk_bytes`` of it."""
        path = link.files.get(fetch.sha256)
        limit = link.settings.chunk_bytes
        if path is None or fetch.offset < 0 or not 0 < fetch.length <= limit:
            reason = (
                f"model {fetch.sha256[:12]}… is not one of node {link.name}'s variants"
                if path is None
                else f"a fetch takes 1..{limit} bytes from offset 0 on; got {fetch.length} from {fetch.offset}"
            )
            await self.send_worker(link.identity, Error("unknown_model", reason, fetch.sha256))
            return
        with open(path, "rb") as f:
            f.seek(fetch.offset)
            data = f.read(fetch.length)
        total = path.stat().st_size
        self.counters["model_bytes_sent"] += len(data)
        await self.send_worker(
            link.identity, ModelChunk(fetch.sha256, fetch.offset, total, np.frombuffer(data, dtype=np.uint8))
        )

    async def answer_probe(self, link: WorkerLink, probe: LinkProbe) -> None:
        """A site measuring its link: that many bytes back, within the node's probe budget."""
        refused = link.take_probe(probe.size, time.monotonic())
        if refused is not None:
            await self.send_worker(link.identity, Error("busy", refused))
            return
        self.counters["probe_bytes_sent"] += probe.size
        await self.send_worker(link.identity, LinkProbe(probe.nonce, probe.size, np.zeros(probe.size, np.uint8)))

    async def _refuse(self, identity: bytes, reason: str) -> None:
        self.counters["refused_workers"] += 1
        log.warning("coordinator: refused a worker: %s", reason)
        await self.send_worker(identity, Error("refused", reason))

    async def lose(self, link: WorkerLink, reason: str) -> None:
        if not self.is_current(link):
            return
        log.warning("coordinator: node %s lost (%s)", link.name, reason)
        del self.links[link.name]
        self._by_identity.pop(link.identity, None)
        await self._feed(NodeLost(link.name, reason, time.monotonic()))

    async def lose_by_name(self, node: str, reason: str) -> None:
        link = self.links.get(node)
        if link is not None:
            await self.lose(link, reason)
        else:
            await self._feed(NodeLost(node, reason, time.monotonic()))

    async def cut_off_worker(self, node: str, reason: str) -> None:
        """Stop serving a worker: refuse its later messages and tell it why."""
        link = self.links.get(node)
        if link is None:
            return
        self.cut_off.add(link.identity)
        self.counters["peers_cut_off"] += 1
        await self.send_worker(link.identity, Error("refused", reason))
        await self.lose(link, reason)

    async def say_goodbye(self, reason: str) -> None:
        for link in list(self.links.values()):
            await self.send_worker(link.identity, Goodbye(link.name, reason))

    # --- liveness ----------------------------------------------------------------------------
    async def liveness_loop(self) -> None:
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
                for link in self.links.values():
                    link.last_seen += lag
            await self.connections_closed()
            unread = self._workers_io.unread()
            for link in list(self.links.values()):
                if now - link.last_seen > limit and not unread:
                    await self.lose(link, f"no heartbeat for {now - link.last_seen:.1f} s")
                elif self.is_current(link):
                    await self.send_worker(link.identity, Heartbeat("coordinator"))

    def seen(self, from_clients: bool, identity: bytes, frame: Any) -> None:
        (self._clients_watch if from_clients else self._workers_watch).seen(identity, frame)

    async def connections_closed(self) -> None:
        """Workers whose connection closed are lost; clients whose connection closed have their work dropped."""
        for identity in self._workers_watch.closed():
            link = self._by_identity.get(identity)
            if link is not None:
                self.counters["nodes_disconnected"] += 1
                await self.lose(link, "its connection closed")
        for identity in self._clients_watch.closed():
            self._client_backlog.pop(identity, None)
            if self.has_work_of(identity):
                self.counters["clients_disconnected"] += 1
                await self._feed(ClientGone(identity, "it disconnected", time.monotonic()))

    async def strike(self, identity: bytes) -> None:
        """Count a malformed message; cut the peer off at ``MAX_PROTOCOL_STRIKES``."""
        if len(self._strikes) > 10_000:  # many offenders: forget the old tallies rather than grow
            self._strikes.clear()
        self._strikes[identity] = self._strikes.get(identity, 0) + 1
        if self._strikes[identity] >= MAX_PROTOCOL_STRIKES:
            del self._strikes[identity]
            self.cut_off.add(identity)
            self.counters["peers_cut_off"] += 1
            log.warning("coordinator: cut off a peer after %d malformed messages", MAX_PROTOCOL_STRIKES)
            link = self._by_identity.get(identity)
            if link is not None:
                await self.lose(link, "cut off for malformed messages")

    # --- sending -----------------------------------------------------------------------------
    async def send_worker(self, identity: bytes, message: Message) -> bool:
        try:
            await self._workers_io.send([identity, *encode(message)])
            return True
        except zmq.ZMQError as exc:
            if exc.errno != zmq.EHOSTUNREACH:
                raise
            return False

    async def send_client(self, identity: bytes, message: Message) -> None:
        await self.send_client_all(identity, [message])

    async def send_client_all(self, identity: bytes, messages: Sequence[Message]) -> None:
        """Send messages to a client, in order and as one bundle (a bundle of one is the message itself), without
        ever waiting: a client that does not read gets a queue of its own (``client_queue_messages`` at most,
        then it is cut off and its work dropped), so no one else waits."""
        for start in range(0, len(messages), MAX_BUNDLE):
            await self._send_client_frames(identity, encode_bundle(messages[start : start + MAX_BUNDLE]))

    async def _send_client_frames(self, identity: bytes, encoded: list[Any]) -> None:
        if identity in self.cut_off:
            return
        frames = [identity, *encoded]
        backlog = self._client_backlog.get(identity)
        try:
            if backlog is None and self._clients_io.try_send(frames):
                return
        except zmq.ZMQError as exc:
            if exc.errno != zmq.EHOSTUNREACH:
                raise
            log.warning("coordinator: client gone before a message could be sent")
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

    async def _drop_client(self, identity: bytes, reason: str) -> None:
        """Cut off a client that stopped reading: its messages are dropped, its requests and streams too."""
        self._client_backlog.pop(identity, None)
        self.cut_off.add(identity)
        self.counters["clients_cut_off"] += 1
        log.warning("coordinator: cut off a client: %s", reason)
        await self._feed(ClientGone(identity, reason, time.monotonic()))
