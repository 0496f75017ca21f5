"""Messages and their wire codec. No sockets here."""

from __future__ import annotations

from .codec import MAX_ARRAY_BYTES, ProtocolError, decode, encode
from .messages import (
    ERROR_CODES,
    PROTOCOL_VERSION,
    QUERY_TOPICS,
    Answer,
    Error,
    Goodbye,
    Heartbeat,
    Hello,
    Message,
    Query,
    Result,
    Shard,
    ShardResult,
    Submit,
    Welcome,
)

__all__ = [
    "ERROR_CODES",
    "MAX_ARRAY_BYTES",
    "PROTOCOL_VERSION",
    "QUERY_TOPICS",
    "Answer",
    "Error",
    "Goodbye",
    "Heartbeat",
    "Hello",
    "Message",
    "ProtocolError",
    "Query",
    "Result",
    "Shard",
    "ShardResult",
    "Submit",
    "Welcome",
    "decode",
    "encode",
]
