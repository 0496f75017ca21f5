"""ZeroMQ socket factory: every socket edgecollab opens gets its limits here."""

from __future__ import annotations

import zmq
import zmq.asyncio

from .protocol import MAX_ARRAY_BYTES

# A message larger than this makes libzmq drop the peer: nothing legitimate comes close.
MAX_MESSAGE_BYTES = MAX_ARRAY_BYTES + 1024 * 1024
HIGH_WATER_MARK = 1000


def router(context: zmq.asyncio.Context, endpoint: str) -> zmq.asyncio.Socket:
    """A bound ROUTER that raises EHOSTUNREACH for unknown peers instead of dropping silently."""
    sock = context.socket(zmq.ROUTER)
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    _limits(sock)
    sock.bind(endpoint)
    return sock


def dealer(context: zmq.asyncio.Context, endpoint: str) -> zmq.asyncio.Socket:
    sock = context.socket(zmq.DEALER)
    _limits(sock)
    sock.setsockopt(zmq.RECONNECT_IVL, 100)
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, 5000)
    sock.connect(endpoint)
    return sock


def _limits(sock: zmq.asyncio.Socket) -> None:
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, HIGH_WATER_MARK)
    sock.setsockopt(zmq.RCVHWM, HIGH_WATER_MARK)
    sock.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
