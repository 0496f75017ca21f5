"""Whose work is whose. Pure: no I/O.

A request or stream is known by the connection that opened it and the id that client gave it:
two clients may use the same id, and none can name, cancel, close or probe another's work.
``status`` shows a client its own work only; who it is comes from its CURVE key when the cluster
uses CURVE (every connection with that key is the same client), else from its connection.
"""

from __future__ import annotations


def scoped_key(client: bytes, given_id: str) -> str:
    """The core's key of a request or stream: its client's id, scoped by the client's connection.

    The leading '@' keeps it apart from pooled demands and pseudo requests; ids from clients never
    hold ':' (see validation.check_id), so no key of one client can be another's.
    """
    return f"@{client.hex()}/{given_id}"


def principal(client: bytes, owner: str | None) -> str:
    """Who a client is, for status: its CURVE key's name, or without CURVE its connection."""
    return owner if owner is not None else f"connection {client.hex()}"
