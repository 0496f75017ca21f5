"""Messages and their wire codec. No sockets here."""

from __future__ import annotations

from .codec import MAX_ARRAY_BYTES, ProtocolError, decode, encode
from .messages import (
    BACKPRESSURE_POLICIES,
    ERROR_CODES,
    PROTOCOL_VERSION,
    QUERY_TOPICS,
    Answer,
    Error,
    FrameResults,
    Frames,
    Goodbye,
    Heartbeat,
    Hello,
    Message,
    Query,
    Result,
    Shard,
    ShardResult,
    StreamClose,
    StreamOpen,
    Submit,
    Welcome,
)

__all__ = [
    "BACKPRESSURE_POLICIES",
    "ERROR_CODES",
    "MAX_ARRAY_BYTES",
    "PROTOCOL_VERSION",
    "QUERY_TOPICS",
    "Answer",
    "Error",
    "FrameResults",
    "Frames",
    "Goodbye",
    "Heartbeat",
    "Hello",
    "Message",
    "ProtocolError",
    "Query",
    "Result",
    "Shard",
    "ShardResult",
    "StreamClose",
    "StreamOpen",
    "Submit",
    "Welcome",
    "decode",
    "encode",
]
