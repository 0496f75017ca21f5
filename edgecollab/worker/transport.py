"""ZeroMQ socket factory: every socket edgecollab opens gets its limits here."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import zmq
import zmq.asyncio
from zmq.utils.monitor import parse_monitor_message

from .keys import ClientCurve, KeyPair
from .protocol import MAX_ARRAY_BYTES

# A message larger than this makes libzmq drop the peer: nothing legitimate comes close.
MAX_MESSAGE_BYTES = MAX_ARRAY_BYTES + 1024 * 1024
HIGH_WATER_MARK = 1000
# A FastSocket lets the event loop run after this many receives in a row that needed no wait.
YIELD_EVERY = 16
SEND_RETRY_S = 0.001
COPY_BELOW_BYTES = 64 * 1024
_NOBLOCK = int(zmq.NOBLOCK)
_NOBLOCK_MORE = int(zmq.NOBLOCK | zmq.SNDMORE)


def router(
    context: zmq.asyncio.Context, endpoint: str, keys: KeyPair | None = None, send_hwm: int = HIGH_WATER_MARK
) -> zmq.asyncio.Socket:
    """A bound ROUTER that raises EHOSTUNREACH for unknown peers instead of dropping silently.

    With ``keys`` it is a CURVE server: only peers the context's authenticator admits get in.
    ``send_hwm``: messages queued per peer before a send would block (set before bind: it is copied then).
    """
    sock = context.socket(zmq.ROUTER)
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    _limits(sock)
    sock.setsockopt(zmq.SNDHWM, send_hwm)
    if keys is not None:
        sock.curve_secretkey = keys.secret
        sock.curve_publickey = keys.public
        sock.curve_server = True
    sock.bind(endpoint)
    return sock


def dealer(context: zmq.asyncio.Context, endpoint: str, curve: ClientCurve | None = None) -> zmq.asyncio.Socket:
    sock = context.socket(zmq.DEALER)
    _limits(sock)
    if curve is not None:
        sock.curve_secretkey = curve.keys.secret
        sock.curve_publickey = curve.keys.public
        sock.curve_serverkey = curve.server_public
    sock.setsockopt(zmq.RECONNECT_IVL, 100)
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, 5000)
    sock.connect(endpoint)
    return sock


def _limits(sock: zmq.asyncio.Socket) -> None:
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, HIGH_WATER_MARK)
    sock.setsockopt(zmq.RCVHWM, HIGH_WATER_MARK)
    sock.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)


class FastSocket:
    """Sends and receives on a ZeroMQ socket straight from the event loop, without pyzmq's futures.

    Nearly always a ROUTER or DEALER can take a message at once, or has one waiting; then a plain
    non-blocking call does it (pyzmq's asyncio wrapper spent a third of the coordinator's time per
    message on futures and loop rounds). The socket's file descriptor only signals that its state
    *may* have changed, and any send or receive can consume that signal, so the receiver checks
    ``EVENTS`` before it sleeps, and every send checks it too and wakes the receiver if a
    message came in meanwhile. Sends that would block (the peer's
    queue is at its high-water mark) retry every millisecond, and later sends queue behind them,
    so messages keep their order.
    """

    def __init__(self, sock: zmq.asyncio.Socket) -> None:
        self.sock = sock  # owns the libzmq socket; only its close and options are used
        self._now: zmq.Socket[bytes] = zmq.Socket.shadow(sock.underlying)
        self._changed = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._fd = int(self._now.getsockopt(zmq.FD))
        self._loop.add_reader(self._fd, self._changed.set)
        self._blocked = asyncio.Lock()  # held while a send waits for room
        self._received_at_once = 0  # receives in a row that did not wait

    def close(self) -> None:
        """Stop watching the socket (before it is closed)."""
        self._loop.remove_reader(self._fd)

    async def send(self, frames: Sequence[bytes | memoryview]) -> None:
        if not self._blocked.locked() and self.try_send(frames):
            return
        async with self._blocked:  # a FIFO: blocked sends leave one by one, in order
            while not self.try_send(frames):
                await asyncio.sleep(SEND_RETRY_S)

    def try_send(self, frames: Sequence[bytes | memoryview]) -> bool:
        """Send at once, or return False when the peer's queue is full (other errors, e.g. EHOSTUNREACH, raise)."""
        copy = _small(frames)
        try:
            # Frame by frame with plain int flags: pyzmq's send_multipart combines enum flags per frame, a
            # tenth of a small message's cost. A message's first frame is the one a full queue refuses.
            for frame in frames[:-1]:
                self._now.send(frame, _NOBLOCK_MORE, copy=copy)
            self._now.send(frames[-1], _NOBLOCK, copy=copy)
        except zmq.Again:
            return False
        finally:
            # Any send, done, refused (EAGAIN) or failed, may have taken the signal of a message that
            # arrived: without this check the receiver could sleep on a message already there.
            self.unread()
        return True

    def send_now(self, frames: Sequence[bytes | memoryview]) -> bool:
        """Send at once if the socket can take it, without waiting (False when it could not)."""
        if self._blocked.locked():
            return False
        try:
            return self.try_send(frames)
        except zmq.ZMQError:
            return False

    def unread(self) -> bool:
        """Whether a message waits to be received (and if so, the receiver is woken for it)."""
        waiting = bool(int(self._now.getsockopt(zmq.EVENTS)) & zmq.POLLIN)
        if waiting:
            self._changed.set()
        return waiting

    async def receive(self) -> list[zmq.Frame]:
        frames = await self.receive_within(None)
        assert frames is not None
        return frames

    def take_waiting(self, most: int) -> list[list[zmq.Frame]]:
        """The messages already waiting, up to ``most``, without waiting for more."""
        taken: list[list[zmq.Frame]] = []
        while len(taken) < most and int(self._now.getsockopt(zmq.EVENTS)) & zmq.POLLIN:  # cheaper than EAGAIN
            taken.append(self._now.recv_multipart(flags=_NOBLOCK, copy=False))
        return taken

    async def receive_within(self, timeout_s: float | None) -> list[zmq.Frame] | None:
        """The next message, or None if none came within ``timeout_s`` (None: wait for ever)."""
        if self._received_at_once >= YIELD_EVERY:  # a busy socket must not starve the loop's other tasks
            self._received_at_once = 0
            await asyncio.sleep(0)
        while True:
            try:
                frames = self._now.recv_multipart(flags=zmq.NOBLOCK, copy=False)
                self._received_at_once += 1
                return frames
            except zmq.Again:
                self._received_at_once = 0
            self._changed.clear()
            if int(self._now.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
                continue  # a message came in between
            if timeout_s is None:
                await self._changed.wait()
                continue
            try:
                await asyncio.wait_for(self._changed.wait(), timeout_s)
            except asyncio.TimeoutError:  # not the builtin TimeoutError before Python 3.11
                return None
            timeout_s = 0.0  # woken: take what came, or report none


def _small(frames: Sequence[bytes | memoryview]) -> bool:
    """Whether to copy: small frames are cheaper copied than tracked as zero-copy frames."""
    return all(memoryview(f).nbytes <= COPY_BELOW_BYTES for f in frames)


class ConnectionWatch:
    """Which peer of a ROUTER came on which connection, and whose connection has closed.

    ZeroMQ does not tell a ROUTER that a peer left. Its socket monitor reports a closed connection
    by file descriptor, and every message carries the descriptor it came on (``SRCFD``). Look at
    ``closed()`` before ``seen()`` for each message: the kernel may hand a closed connection's
    descriptor to a new one, and its ``disconnected`` event is queued before the new peer's first
    message arrives.
    """

    def __init__(self, sock: zmq.asyncio.Socket) -> None:
        self._monitor = sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        self._events: zmq.Socket[bytes] = zmq.Socket.shadow(self._monitor.underlying)  # read without waiting
        self._sock = sock
        self._fd_of: dict[bytes, int] = {}  # peer identity -> descriptor of its connection
        self._peers_on: dict[int, set[bytes]] = {}

    def seen(self, identity: bytes, frame: zmq.Frame) -> None:
        try:
            fd = int(frame.get(zmq.SRCFD))  # deprecated in libzmq: a build without it leaves heartbeats alone
        except zmq.ZMQError:
            return
        if self._fd_of.get(identity) != fd:
            self._fd_of[identity] = fd
            self._peers_on.setdefault(fd, set()).add(identity)

    def closed(self) -> list[bytes]:
        """Peers whose connection closed since the last call."""
        gone: list[bytes] = []
        while int(self._events.getsockopt(zmq.EVENTS)) & zmq.POLLIN:  # cheaper than a receive that fails
            event = parse_monitor_message(self._events.recv_multipart())
            if event["event"] == zmq.EVENT_DISCONNECTED:
                for identity in self._peers_on.pop(int(event["value"]), set()):
                    del self._fd_of[identity]
                    gone.append(identity)
        return gone

    def close(self) -> None:
        self._sock.disable_monitor()
        self._monitor.close(linger=0)
