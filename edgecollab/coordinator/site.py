"""A site's uplink: this coordinator joins a parent coordinator as one node.

To the parent a site is a worker like any other (``hello``, ``welcome``, ``ready``, heartbeats,
``shard`` / ``shard_result``), with two differences: instead of being profiled it reports its
front (``site_front``: per variant, what all its boards give together; ``planner/site.py``), again
whenever the front moves, and it takes as many shards in flight as its boards' windows add up to.

A shard from the parent is a request to this site's own coordinator, pinned to the variant the parent
chose: the site's dispatch spreads it over its boards and its answer goes back as the shard's result.
So the parent plans across sites exactly as across boards, and each site spreads its share — and
every guarantee of the parent (an answer taken once, a lost node's work sent elsewhere) holds between
the levels. The uplink is a client of its own coordinator, over a real socket, like the gateway.

The site also measures its link from the parent (``LinkProbe``: a small and a large ask, a few
times, the parent sending that many bytes back) when it joins and every ``LINK_EVERY_S``, and puts
the bandwidth in its front: the parent caps the site's rows by it, as a configured ``link_mbps``
caps a board's (a configured one wins).

A site with no serving board says goodbye to its parent, and registers again once one serves.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
import platform
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import zmq
import zmq.asyncio

from ..client import Client
from ..errors import RequestFailed
from ..planner import Measurement
from ..planner.site import PROBE_ROUNDS, PROBE_SIZES, front_moved, front_to_wire, link_mbps_from, link_moved
from ..protocol import (
    Error,
    Goodbye,
    Heartbeat,
    Hello,
    LinkProbe,
    Message,
    ProtocolError,
    Ready,
    Shard,
    ShardResult,
    SiteFront,
    Welcome,
    decode,
    encode,
)
from ..security import ClientCurve
from ..worker import transport
from ..worker.settings import NodeSettings

log = logging.getLogger(__name__)

FRONT_EVERY_S = 1.0  # how often the front is looked at (and reported when it moved)
LINK_EVERY_S = 60.0  # how often the link from the parent is measured again
PROBE_TIMEOUT_S = 30.0  # a probe unanswered this long ends its round (the link is measured again later)
MAX_BACKOFF_S = 10.0


@dataclass(frozen=True)
class SiteState:
    """What the site can give now: its front, the shards in flight that keep its boards busy, its boards."""

    front: dict[str, Measurement]
    slots: int
    boards: int


class SiteUplink:
    def __init__(
        self,
        site: str,
        parent: str,
        own_clients: str,
        state_now: Callable[[], SiteState],
        task_of: Mapping[str, str],
        *,
        parent_curve: ClientCurve | None = None,
        client_curve: ClientCurve | None = None,
        heartbeat_s: float = 1.0,
        misses: int = 3,
    ) -> None:
        self.site = site
        self.parent = parent
        self.own_clients = own_clients  # this site's own coordinator, as a client reaches it
        self.state_now = state_now
        self.task_of = dict(task_of)  # variant -> its task, for the requests a shard becomes
        self.parent_curve = parent_curve
        self.client_curve = client_curve
        self.heartbeat_s = heartbeat_s
        self.misses = misses
        self.shards_served = 0
        self._reported: dict[str, Measurement] = {}
        self.link_mbps: float | None = None  # the link from the parent, as last measured
        self._reported_link: float | None = None
        self._probes = _LinkProbes()
        self._io: transport.FastSocket | None = None
        self._client: Client | None = None
        self._serving: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        """Stay joined to the parent until cancelled: register, serve, and register again after a loss."""
        context = zmq.asyncio.Context()
        backoff = 0.5
        try:
            async with Client(self.own_clients, curve=self.client_curve) as client:
                self._client = client
                while True:
                    if not self.state_now().front:
                        await asyncio.sleep(FRONT_EVERY_S)  # nothing to offer yet
                        continue
                    sock = transport.dealer(context, self.parent, self.parent_curve)
                    self._io = transport.FastSocket(sock)
                    try:
                        joined = await self._connection()
                    finally:
                        for task in list(self._serving):
                            task.cancel()  # the parent gives these shards to others
                        self._io.close()
                        self._io = None
                        sock.close(linger=0)
                    backoff = 0.5 if joined else min(backoff * 2, MAX_BACKOFF_S)
                    await asyncio.sleep(backoff)
        finally:
            context.term()

    async def _connection(self) -> bool:
        """One registration with the parent, until it goes silent, says goodbye or forgets us; or the site
        has nothing left to offer. True if the parent welcomed us."""
        assert self._io is not None
        self._reported, self._reported_link = {}, None
        self._probes = _LinkProbes()
        welcomed = False
        await self._send(Hello(self.site, self._runtime()))
        last_heard = time.monotonic()
        next_beat = next_front = time.monotonic()
        while True:
            now = time.monotonic()
            if now - last_heard > self.heartbeat_s * self.misses * (1 if welcomed else 5):
                log.warning("site %s: parent %s silent; registering again", self.site, self.parent)
                return welcomed
            if welcomed and now >= next_beat:
                await self._send(Heartbeat(self.site))
                next_beat = now + self.heartbeat_s
            if welcomed and now >= next_front:
                next_front = now + FRONT_EVERY_S
                if not await self._report_front():
                    await self._send(Goodbye(self.site, "no board of the site serves"))
                    log.warning("site %s: no board serves; left the parent until one does", self.site)
                    return welcomed
            if welcomed:
                probe = self._probes.next(now)
                if probe is not None:
                    await self._send(probe)
            frames = await self._io.receive_within(self.heartbeat_s / 4)
            if frames is None:
                continue
            try:
                message = decode([f.buffer for f in frames])
            except ProtocolError as exc:
                log.error("site %s: dropped a malformed message from the parent: %s", self.site, exc)
                continue
            last_heard = time.monotonic()
            if isinstance(message, Welcome):
                welcomed = await self._welcomed(message)
                if not welcomed:
                    return False
                next_front = time.monotonic()
            elif isinstance(message, Shard):
                task = asyncio.create_task(self._serve(message))
                self._serving.add(task)
                task.add_done_callback(self._serving.discard)
            elif isinstance(message, LinkProbe):
                measured = self._probes.answered(message, last_heard)
                if measured is not None:
                    self.link_mbps = measured
                    log.info("site %s: link from the parent %.1f Mbit/s", self.site, measured)
            elif isinstance(message, Goodbye):
                log.warning("site %s: the parent left (%s)", self.site, message.reason)
                return welcomed
            elif isinstance(message, Error) and message.code in ("unregistered", "refused"):
                log.error("site %s: the parent says %s: %s", self.site, message.code, message.message)
                return welcomed and message.code == "unregistered"
            elif isinstance(message, Error):
                log.warning("site %s: parent error %s: %s", self.site, message.code, message.message)

    async def _welcomed(self, welcome: Welcome) -> bool:
        try:
            settings = NodeSettings.from_wire(welcome.settings)
        except ProtocolError as exc:
            log.error("site %s: the parent's settings do not fit: %s", self.site, exc)
            return False
        self.heartbeat_s = welcome.heartbeat_s
        self.misses = settings.heartbeat_misses
        offered = [v.id for v in settings.variants]
        served = [v for v in offered if v in self.task_of]
        failed = {v: f"site {self.site} does not serve {v}" for v in offered if v not in self.task_of}
        fingerprint = hashlib.sha256(f"site:{self.site}:{','.join(served)}".encode()).hexdigest()[:16]
        log.info("site %s: joined %s with %d variant(s)", self.site, self.parent, len(served))
        await self._send(Ready(self.site, served, [], fingerprint, 0.0, [], failed))
        return True

    async def _report_front(self) -> bool:
        """Report the front when it moved; False when the site has nothing to offer."""
        state = self.state_now()
        if not state.front:
            return False
        if front_moved(self._reported, state.front) or link_moved(self._reported_link, self.link_mbps):
            self._reported, self._reported_link = dict(state.front), self.link_mbps
            front = front_to_wire(state.front)
            await self._send(SiteFront(self.site, front, state.slots, state.boards, self.link_mbps or 0.0))
        return True

    async def _serve(self, shard: Shard) -> None:
        """A shard of the parent's is a request here, pinned to the variant the parent chose."""
        assert self._client is not None
        started = time.perf_counter()
        try:
            result = await self._client.infer(
                shard.inputs, task=self.task_of.get(shard.variant), variant=shard.variant, outputs=shard.outputs
            )
        except RequestFailed as exc:
            code = exc.code if exc.code in ("invalid_input", "unknown_variant") else "node_lost"
            await self._send(
                Error(code, f"site {self.site}: {exc.reason}", shard.request_id, shard.shard_id, shard.attempt)
            )
            return
        except Exception as exc:  # a failure here must not leave the parent's shard unanswered
            log.exception("site %s: serving a shard of the parent failed", self.site)
            why = f"site {self.site}: {type(exc).__name__}: {exc}"
            await self._send(Error("node_lost", why, shard.request_id, shard.shard_id, shard.attempt))
            return
        self.shards_served += 1
        busy = time.perf_counter() - started
        await self._send(
            ShardResult(shard.request_id, shard.shard_id, shard.attempt, result.predictions, busy, result.outputs)
        )

    async def _send(self, message: Message) -> None:
        if self._io is None:
            return
        try:
            await self._io.send(encode(message))
        except zmq.ZMQError as exc:
            log.warning("site %s: could not send %s: %s", self.site, message.kind, exc)

    def _runtime(self) -> dict[str, object]:
        return {"backend": "site", "arch": platform.machine(), "python": platform.python_version()}


class _LinkProbes:
    """Rounds of link probes, one in flight at a time: small and large asks interleaved, ``PROBE_ROUNDS``
    of each, their round trips timed; a round's estimate, then the next round ``LINK_EVERY_S`` later."""

    def __init__(self) -> None:
        self._nonces = itertools.count(1)
        self._to_send: list[int] = []
        self._next_round = 0.0  # the first round starts once the site has joined
        self._out: tuple[int, int, float] | None = None  # (nonce, size, sent at)
        self._samples: list[tuple[int, float]] = []

    def next(self, now: float) -> LinkProbe | None:
        """The probe to send now, if any."""
        if self._out is not None:
            if now - self._out[2] < PROBE_TIMEOUT_S:
                return None
            self._out, self._to_send = None, []  # lost: this round ends unmeasured
        if not self._to_send:
            if now < self._next_round:
                return None
            self._next_round = now + LINK_EVERY_S
            self._to_send, self._samples = list(PROBE_SIZES) * PROBE_ROUNDS, []
        size = self._to_send.pop(0)
        self._out = (next(self._nonces), size, now)
        return LinkProbe(self._out[0], size, np.zeros(0, np.uint8))

    def answered(self, probe: LinkProbe, now: float) -> float | None:
        """Take an answer; the round's estimate (Mbit/s) once its last probe is answered."""
        if self._out is None or probe.nonce != self._out[0] or len(probe.payload) != self._out[1]:
            return None  # late, or not what was asked
        self._samples.append((self._out[1], now - self._out[2]))
        self._out = None
        return link_mbps_from(self._samples) if not self._to_send else None
