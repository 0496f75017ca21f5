"""What the coordinator tells a board at registration: its settings from the coordinator's config and
the variants it may run. The coordinator builds a ``NodeSettings`` and sends ``to_wire()`` in its
``Welcome``; the worker reads it back with ``NodeSettings.from_wire``. No sockets here."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from .protocol import ProtocolError

# Largest piece of a model file one ModelChunk carries: a board on a slow link is never stuck behind one
# huge message, and the coordinator never holds more than this per fetch in memory.
CHUNK_BYTES = 1024 * 1024


@dataclass(frozen=True)
class VariantSpec:
    """One variant a board may run: its file (by content) and how to feed and read it."""

    id: str  # the manifest's id, e.g. "cnn-8" or "fashion-detect/det-small"
    task: str
    sha256: str
    size: int  # bytes
    input_shape: tuple[int, ...]  # one input, without the batch dimension
    input_dtype: str
    top1: bool  # scored by the argmax of its first output
    macs: int  # per input, for the emulated cost model
    quantized: bool
    opset: int  # the highest ONNX opset (default domain) the file is stamped with


@dataclass(frozen=True)
class EventSpec:
    """A scheduled change of an emulated board (see the config's ``events``)."""

    at_s: float
    speed: float | None = None
    action: str | None = None


@dataclass(frozen=True)
class NodeSettings:
    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    threads: int = 1
    emulate: str | None = None  # a board profile of ``emulation.BOARD_PROFILES``
    events: tuple[EventSpec, ...] = ()
    variants: tuple[VariantSpec, ...] = ()
    fp16: bool = False  # TensorRT: build fp16 engines
    engine_cache: bool = True  # TensorRT: keep built engines on the board's disk
    chunk_bytes: int = CHUNK_BYTES
    heartbeat_misses: int = 3  # coordinator heartbeats missed before the worker registers again
    excluded: dict[str, str] = field(default_factory=dict)  # variants left out for this board, and why

    def to_wire(self) -> dict[str, Any]:
        data = asdict(self)
        data["providers"] = list(self.providers)
        data["events"] = [asdict(e) for e in self.events]
        data["variants"] = [{**asdict(v), "input_shape": list(v.input_shape)} for v in self.variants]
        return data

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> NodeSettings:
        """Settings from a Welcome, or ``ProtocolError`` naming what does not fit."""
        try:
            variants = tuple(
                VariantSpec(**{**v, "input_shape": tuple(int(d) for d in v["input_shape"])})
                for v in data.get("variants", [])
            )
            events = tuple(EventSpec(**e) for e in data.get("events", []))
            rest = {k: v for k, v in data.items() if k not in ("variants", "events")}
            settings = cls(**{**rest, "providers": tuple(rest.get("providers", ("CPUExecutionProvider",)))},
                           variants=variants, events=events)  # fmt: skip
        except (TypeError, KeyError, ValueError) as exc:
            raise ProtocolError(f"the coordinator's settings do not fit this worker: {exc}") from None
        if not 1 <= settings.chunk_bytes <= 16 * CHUNK_BYTES:
            raise ProtocolError(f"settings.chunk_bytes {settings.chunk_bytes} is outside 1..{16 * CHUNK_BYTES}")
        return settings
