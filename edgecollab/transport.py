"""ZeroMQ socket factory: every socket edgecollab opens gets its limits here."""

from __future__ import annotations

import zmq
import zmq.asyncio

from .protocol import MAX_ARRAY_BYTES
from .security import ClientCurve, KeyPair

# A message larger than this makes libzmq drop the peer: nothing legitimate comes close.
MAX_MESSAGE_BYTES = MAX_ARRAY_BYTES + 1024 * 1024
HIGH_WATER_MARK = 1000


def router(context: zmq.asyncio.Context, endpoint: str, keys: KeyPair | None = None) -> zmq.asyncio.Socket:
    """A bound ROUTER that raises EHOSTUNREACH for unknown peers instead of dropping silently.

    With ``keys`` it is a CURVE server: only peers the context's authenticator admits get in.
    """
    sock = context.socket(zmq.ROUTER)
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    _limits(sock)
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
