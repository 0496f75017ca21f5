"""The client side: submit inputs to a coordinator and get predictions back, in input order."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar, overload

import numpy as np
import zmq
import zmq.asyncio

from .errors import InvalidInputError, RequestFailed, request_failed
from .protocol import (
    MAX_BUNDLE,
    Answer,
    Cancel,
    Error,
    FrameResults,
    Frames,
    Message,
    ProtocolError,
    Query,
    Result,
    StreamClose,
    StreamOpen,
    Submit,
    decode_all,
    encode_bundle,
)
from .security import ClientCurve
from .worker import transport

if TYPE_CHECKING:
    from .video import SourceStream

T = TypeVar("T")
# While a request is outstanding, the client checks this often that the coordinator still knows it.
WATCH_INTERVAL_S = 2.0
# With a progress callback, the client asks how far its request is this often.
PROGRESS_INTERVAL_S = 0.25
CLOSE_LINGER_MS = 200

ProgressCallback = Callable[[int, int], None]  # (inputs predicted so far, inputs in the request)


@dataclass(frozen=True)
class InferenceResult:
    predictions: np.ndarray  # predicted class per input, in input order (-1 for a task not scored top1)
    report: dict[str, Any]  # the plan, achieved throughput, per-node figures (see docs/protocol.md)
    # The outputs asked for with ``outputs=``, by name, one row per input in input order: ``top5`` and
    # ``top5_scores``, or every output of the model under the model's own names.
    outputs: dict[str, np.ndarray] = field(default_factory=dict)
    variants: list[str] = field(default_factory=list)  # per input: the variant that produced it
    nodes: list[str] = field(default_factory=list)  # per input: the board that ran it

    @property
    def achieved_ips(self) -> float:
        """Inputs per second from the request's arrival at the coordinator to its last prediction."""
        return float(self.report["achieved_ips"])

    @property
    def feasible(self) -> bool:
        """Whether the plan could meet the target and minimum accuracy (see ``notes`` if not)."""
        return bool(self.report["feasible"])

    @property
    def notes(self) -> list[str]:
        return list(self.report["notes"])

    @property
    def per_node(self) -> dict[str, dict[str, int]]:
        """Inputs each node predicted, by variant."""
        shares: dict[str, dict[str, int]] = {}
        for a in self.report["assignment"]:
            if a["inputs"]:
                shares.setdefault(a["node"], {})[a["variant"]] = int(a["inputs"])
        return shares


def _inference_result(result: Result) -> InferenceResult:
    """Copies out of the message's frames, and the provenance spelt out per input."""
    variant_of, node_of = result.provenance[:, 0].tolist(), result.provenance[:, 1].tolist()
    return InferenceResult(
        result.predictions.copy(),
        result.report,
        {name: tensor.copy() for name, tensor in result.outputs.items()},
        [result.variants[i] for i in variant_of],
        [result.nodes[i] for i in node_of],
    )


@dataclass(frozen=True)
class FrameResult:
    """The answer for one frame of a stream."""

    seq: int  # its sequence number: frames are numbered 0, 1, ... in send order
    id: Any  # the caller's id for the frame (None when it gave none)
    prediction: int  # predicted class; -1 when the frame was dropped
    variant: str  # the variant that ran it ("" when dropped)
    node: str  # the board that ran it ("" when dropped)
    latency_ms: float  # from ``send`` to its answer's arrival here
    dropped: bool = False  # dropped by the stream's back-pressure policy; ``reason`` says why
    reason: str = ""
    outputs: dict[str, np.ndarray] = field(default_factory=dict)  # this frame's outputs, if asked for


class Stream:
    """A stream of frames at a declared rate; from ``Client.stream``. Use it as an async context manager.

    ``await stream.send(frames)`` sends one frame or a batch; ``async for r in stream`` yields a
    ``FrameResult`` per frame, in send order, as soon as each (and every earlier one) is answered.
    Iteration ends once the stream is closed and every frame sent has been yielded. With the
    ``block`` policy, ``send`` waits while ``queue_frames`` frames are unanswered. ``close()``
    waits for every frame sent; ``cancel()`` gives the stream up at once.
    """

    def __init__(self, client: Client, spec: StreamOpen) -> None:
        self.client = client
        self.spec = spec
        self.admission: dict[str, Any] = {}  # the coordinator's answer: expected fps and accuracy, degraded, notes
        self.summary: dict[str, Any] | None = None  # the coordinator's figures once closed
        self._next_seq = 0
        self._next_out = 0
        self._sent: dict[int, tuple[float, Any]] = {}  # seq -> (when sent, caller's id) until answered
        self._ready: dict[int, FrameResult] = {}  # answered, not yet yielded
        self._changed = asyncio.Event()
        self._failure: BaseException | None = None
        self._closing = False
        self._cancelled = False

    @property
    def stream_id(self) -> str:
        return self.spec.stream_id

    async def __aenter__(self) -> Stream:
        self.client._streams[self.stream_id] = self
        try:
            answer = await self.client._exchange(self.stream_id, self.spec)
        except BaseException:
            self.client._streams.pop(self.stream_id, None)
            raise
        assert isinstance(answer, Answer)
        self.admission = answer.data
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        """Left normally: close (every frame sent is answered). Left by an exception or a cancel: the
        coordinator is told to drop the stream at once, frames queued included."""
        try:
            if self._failure is None and self.summary is None and not self._cancelled:
                if exc_type is None:
                    await self.close()
                else:
                    await self.cancel()
        finally:
            self.client._streams.pop(self.stream_id, None)

    async def send(self, frames: np.ndarray, ids: Sequence[Any] | None = None) -> list[int]:
        """Send one frame (of the model's input shape) or a batch of them; their sequence numbers."""
        if self._failure is not None:
            raise self._failure
        if self._closing or self._cancelled:
            raise RuntimeError("the stream is closed; open a new one to send more frames")
        batch = np.ascontiguousarray(frames)
        if list(batch.shape) == list(self.admission.get("input_shape", ())):
            batch = batch[np.newaxis]
        if ids is not None and len(ids) != len(batch):
            raise ValueError(f"ids: expected one per frame ({len(batch)}); got {len(ids)}")
        limit = int(self.admission.get("queue_frames", len(batch)))
        seqs: list[int] = []
        for start in range(0, len(batch), limit):
            part = batch[start : start + limit]
            if self.spec.backpressure == "block":
                while len(self._sent) + len(part) > limit and self._failure is None:
                    self._changed.clear()
                    await self._changed.wait()
                if self._failure is not None:
                    raise self._failure
            first = self._next_seq
            self._next_seq += len(part)
            now = time.monotonic()
            for i in range(len(part)):
                self._sent[first + i] = (now, ids[start + i] if ids is not None else None)
            await self.client._send(Frames(self.stream_id, first, part))
            seqs.extend(range(first, first + len(part)))
        return seqs

    def __aiter__(self) -> AsyncIterator[FrameResult]:
        return self

    async def __anext__(self) -> FrameResult:
        while True:
            if self._cancelled:
                raise StopAsyncIteration
            result = self._ready.pop(self._next_out, None)
            if result is not None:
                self._next_out += 1
                return result
            if self._failure is not None:
                raise self._failure
            if self._closing and self._next_out >= self._next_seq:
                raise StopAsyncIteration
            self._changed.clear()
            await self._changed.wait()

    async def close(self) -> dict[str, Any]:
        """Send no more frames; wait until every frame sent is answered. The coordinator's summary."""
        if self.summary is not None:
            return self.summary
        self._closing = True
        self._changed.set()
        answer = await self.client._exchange(self.stream_id, StreamClose(self.stream_id))
        assert isinstance(answer, Answer)
        self.summary = answer.data
        self._changed.set()
        return self.summary

    async def cancel(self) -> None:
        """Give the stream up: the coordinator drops it and the frames it still holds at once (they are
        never answered); iteration ends. No summary comes back."""
        if self.summary is not None or self._failure is not None or self._cancelled:
            return
        self._cancelled = True
        self.client._cancel(self.stream_id)
        self._changed.set()

    def _deliver(self, message: FrameResults) -> None:
        now = time.monotonic()
        for row, (seq, prediction) in enumerate(zip(message.seqs.tolist(), message.predictions.tolist(), strict=True)):
            sent = self._sent.pop(seq, None)
            if sent is None:
                continue  # not a frame this stream is waiting for
            outputs = {name: tensor[row].copy() for name, tensor in message.outputs.items() if len(tensor) > row}
            self._ready[seq] = FrameResult(
                seq, sent[1], prediction, message.variant, message.node, (now - sent[0]) * 1e3, message.dropped,
                message.reason, outputs,
            )  # fmt: skip
        self._changed.set()

    def _fail(self, error: BaseException) -> None:
        self._failure = error
        self._changed.set()


class Client:
    """An asyncio client; one DEALER socket serves any number of concurrent requests.

    ``async with Client("tcp://127.0.0.1:5556") as c: result = await c.infer(images, target_ips=300)``
    """

    def __init__(self, endpoint: str, *, timeout_s: float = 600.0, curve: ClientCurve | None = None) -> None:
        self.endpoint = endpoint
        self.curve = curve  # CURVE keys when the coordinator requires them
        self.timeout_s = timeout_s
        self._context: zmq.asyncio.Context | None = None
        self._sock: zmq.asyncio.Socket | None = None
        self._io: transport.FastSocket | None = None
        self._waiting: dict[str, asyncio.Future[Result | Answer]] = {}
        self._reader: asyncio.Task[None] | None = None
        self._heard = False  # whether the coordinator ever answered this client (it may still be starting)
        self._streams: dict[str, Stream] = {}  # open streams by id: their frame answers are routed there
        self._outbox: list[Message] = []  # posted this turn, to leave as one bundle
        self._outbox_sent: asyncio.Future[None] | None = None
        self._flusher: asyncio.Future[None] | None = None

    async def __aenter__(self) -> Client:
        self._context = zmq.asyncio.Context()
        self._sock = transport.dealer(self._context, self.endpoint, self.curve)
        self._io = transport.FastSocket(self._sock)
        self._reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._flusher is not None:  # what was posted last (a cancel on the way out) leaves first
            await asyncio.gather(self._flusher, return_exceptions=True)
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        if self._sock is not None:
            if self._io is not None:
                self._io.close()
            # A moment for what is queued to leave (a cancel sent as the caller gave up), never longer.
            self._sock.close(linger=CLOSE_LINGER_MS)
        if self._context is not None:
            self._context.term()

    async def infer(
        self,
        inputs: np.ndarray,
        *,
        target_ips: float | None = None,
        min_accuracy: float | None = None,
        policy: str | None = None,
        strict: bool = False,
        progress: ProgressCallback | None = None,
        outputs: str | None = None,
        task: str | None = None,
        variant: str | None = None,
    ) -> InferenceResult:
        """Send one request and wait for all its predictions, in input order.

        The coordinator serves the most accurate plan that meets ``target_ips`` (inferences/s) and
        ``min_accuracy``; when none does, it serves the fastest plan and says so in the report's
        ``notes`` — or, with ``strict``, refuses with ``InfeasibleTargetError``. ``progress`` is
        called with (inputs done, inputs) while the request runs. ``outputs`` is ``"predictions"``
        (the default for a classifier), ``"top5"`` or ``"all"`` (every model output; the default
        for other tasks). ``task`` names the application (none: the cluster's default task);
        ``variant`` pins one of its variants for every input (none: the plan chooses per board).
        Raises a ``RequestFailed``.
        """
        request_id = uuid.uuid4().hex
        submit = Submit(
            request_id, np.ascontiguousarray(inputs), target_ips, min_accuracy, policy, strict, outputs, task, variant
        )
        reporter = None
        if progress is not None:
            reporter = asyncio.create_task(self._report_progress(request_id, len(inputs), progress))
        try:
            result = await self._exchange(request_id, submit, watch=True)
        except (asyncio.CancelledError, RequestFailed) as exc:
            # Cancelled, or the client stopped waiting (its timeout): free the boards of what is left.
            if not isinstance(exc, RequestFailed) or exc.code == "timeout":
                self._cancel(request_id)
            raise
        finally:
            if reporter is not None:
                reporter.cancel()
                await asyncio.gather(reporter, return_exceptions=True)
        assert isinstance(result, Result)
        if progress is not None:
            progress(len(inputs), len(inputs))
        return _inference_result(result)

    @overload
    def stream(
        self,
        target_fps: float,
        *,
        min_accuracy: float | None = ...,
        max_latency_ms: float | None = ...,
        task: str | None = ...,
        degrade: bool = ...,
        backpressure: str = ...,
        outputs: str | None = ...,
    ) -> Stream: ...

    @overload
    def stream(
        self,
        target_fps: None = ...,
        *,
        source: str,
        fps: float | None = ...,
        realtime: bool = ...,
        min_accuracy: float | None = ...,
        max_latency_ms: float | None = ...,
        task: str | None = ...,
        degrade: bool = ...,
        backpressure: str = ...,
        outputs: str | None = ...,
    ) -> SourceStream: ...

    def stream(
        self,
        target_fps: float | None = None,
        *,
        source: str | None = None,
        fps: float | None = None,
        realtime: bool = True,
        min_accuracy: float | None = None,
        max_latency_ms: float | None = None,
        task: str | None = None,
        degrade: bool = False,
        backpressure: str = "block",
        outputs: str | None = None,
    ) -> Stream | SourceStream:
        """A stream of frames at ``target_fps``: ``async with client.stream(30) as s: ...``.

        On entry the coordinator admits it into the joint plan at that rate, with ``min_accuracy``
        and each frame answered within ``max_latency_ms`` (default: the coordinator's). When it
        cannot, entry raises ``InfeasibleTargetError``, or with ``degrade`` the stream is admitted
        anyway and ``stream.admission["degraded"]`` says so. ``backpressure``: ``block`` (``send``
        waits), ``drop-oldest`` (queued frames are dropped, each answered as dropped) or ``fail``.
        ``outputs`` as for ``infer``: each ``FrameResult.outputs`` then holds that frame's row of each.

        With ``source=URI`` (a video file, ``rtsp://``, ``http(s)://``, ``/dev/videoN`` or a folder of
        images) the frames come from the source instead, decoded with PyAV at its own rate (``fps``
        overrides it; a file plays as fast as the cluster takes it with ``realtime=False``):
        ``async with client.stream(source="cam.mp4") as s: async for r in s: ...`` yields a
        ``video.SourceResult`` per decoded frame, with its ``pts`` and boxes in the frame's pixels.
        """
        if source is not None:  # a video source (edgecollab.video): frames decoded here, at the source's rate
            from .video import SourceStream

            options = {"min_accuracy": min_accuracy, "max_latency_ms": max_latency_ms, "task": task, "degrade": degrade,
                       "backpressure": backpressure, "outputs": outputs}  # fmt: skip
            return SourceStream(self, source, fps, realtime, options)
        if target_fps is None:
            raise InvalidInputError("invalid_input", "a stream needs target_fps (frames sent by you) or source=URI")
        spec = StreamOpen(
            uuid.uuid4().hex, target_fps, min_accuracy, max_latency_ms, degrade, backpressure, task, outputs
        )
        return Stream(self, spec)

    def _cancel(self, request_id: str) -> None:
        """Tell the coordinator to drop a request or stream, without waiting."""
        if self._io is not None:
            self._post(Cancel(request_id))

    async def _send(self, message: Message) -> None:
        """Send a message (after those posted before it); returns once it is on its way."""
        if self._sock is None:
            raise RuntimeError("use the client as 'async with Client(...) as client'")
        await self._post(message)

    def _post(self, message: Message) -> asyncio.Future[None]:
        """Queue a message for the coordinator. Messages posted in one turn of the event loop leave together
        as one bundle (the cameras of one client sending their frames: one send, not one per frame), in
        order; the future is done when they have left."""
        self._outbox.append(message)
        if self._outbox_sent is None:
            self._outbox_sent = asyncio.get_running_loop().create_future()
            self._flusher = asyncio.ensure_future(self._flush())
        return self._outbox_sent

    async def _flush(self) -> None:
        await asyncio.sleep(0)  # let this turn's other senders post theirs
        messages, sent = self._outbox, self._outbox_sent
        self._outbox, self._outbox_sent = [], None
        assert sent is not None and self._io is not None
        try:
            for start in range(0, len(messages), MAX_BUNDLE):
                await self._io.send(encode_bundle(messages[start : start + MAX_BUNDLE]))
        except Exception as exc:
            if not sent.done():
                sent.set_exception(exc)
            sent.exception()  # retrieved: a sender that stopped waiting leaves no "never retrieved" warning
            return
        if not sent.done():
            sent.set_result(None)

    async def _report_progress(self, request_id: str, total: int, progress: ProgressCallback) -> None:
        while True:
            await asyncio.sleep(PROGRESS_INTERVAL_S)
            try:
                status = await self.query("status")
            except RequestFailed:
                continue  # progress is best effort; the request itself reports failures
            for running in status.get("requests", []):
                if running.get("id") == request_id:
                    progress(int(running["done"]), total)

    async def query(self, topic: str, **params: Any) -> dict[str, Any]:
        """Ask the coordinator about the cluster: ``status``, ``table`` or ``plan`` (see ``Query``)."""
        request_id = uuid.uuid4().hex
        answer = await self._exchange(request_id, Query(request_id, topic, params))
        assert isinstance(answer, Answer)
        return answer.data

    async def _exchange(
        self, request_id: str, message: Submit | Query | StreamOpen | StreamClose, watch: bool = False
    ) -> Result | Answer:
        """Send and await the answer; with ``watch``, fail early if the coordinator forgets the request."""
        if self._sock is None:
            raise RuntimeError("use the client as 'async with Client(...) as client'")
        future: asyncio.Future[Result | Answer] = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = future
        deadline = asyncio.get_running_loop().time() + self.timeout_s
        try:
            await self._send(message)
            while True:
                left = deadline - asyncio.get_running_loop().time()
                if left <= 0:
                    raise request_failed("timeout", f"no answer from {self.endpoint} within {self.timeout_s:.0f} s")
                try:
                    return await asyncio.wait_for(asyncio.shield(future), min(left, WATCH_INTERVAL_S))
                except TimeoutError:
                    if watch and not await self._coordinator_knows(request_id):
                        with contextlib.suppress(TimeoutError):  # its answer may be on the way
                            return await asyncio.wait_for(asyncio.shield(future), WATCH_INTERVAL_S)
                        raise request_failed(
                            "request_lost",
                            f"the coordinator at {self.endpoint} no longer knows this request (it restarted?); "
                            "submit it again",
                        ) from None
        finally:
            self._waiting.pop(request_id, None)

    async def _coordinator_knows(self, request_id: str) -> bool:
        request = uuid.uuid4().hex
        try:
            answer = await asyncio.wait_for(self._exchange(request, Query(request, "status")), 3 * WATCH_INTERVAL_S)
        except TimeoutError:
            if not self._heard:
                return True  # never answered yet: still starting, perhaps; the client's timeout decides
            raise request_failed(
                "coordinator_unreachable", f"the coordinator at {self.endpoint} stopped answering"
            ) from None
        assert isinstance(answer, Answer)
        known = {r["id"] for r in answer.data.get("requests", [])} | set(answer.data.get("waiting", []))
        return request_id in known

    async def _read(self) -> None:
        assert self._sock is not None
        while True:
            assert self._io is not None
            frames = await self._io.receive()
            self._heard = True
            for message in decode_all([f.buffer for f in frames]):  # one message, or each of a bundle's
                self._route(message)

    def _route(self, message: Message | ProtocolError) -> None:
        """Hand a message from the coordinator to the request or stream it answers."""
        if isinstance(message, ProtocolError):
            return  # nothing to route a malformed reply to; the request times out
        if isinstance(message, FrameResults):
            stream = self._streams.get(message.stream_id)
            if stream is not None:
                stream._deliver(message)
            return
        request_id = getattr(message, "request_id", "")
        future = self._waiting.get(request_id)
        if future is None or future.done():
            stream = self._streams.get(request_id)
            if stream is not None and isinstance(message, Error):  # the stream failed while open
                stream._fail(request_failed(message.code, message.message))
            return
        if isinstance(message, Result | Answer):
            future.set_result(message)
        elif isinstance(message, Error):
            future.set_exception(request_failed(message.code, message.message))


class SyncClient:
    """The client for scripts and notebooks: blocking calls, served by an event loop on its own thread.

    ``with edgecollab.SyncClient("tcp://127.0.0.1:5556") as c: result = c.infer(images, target_ips=300)``
    """

    def __init__(self, endpoint: str, *, timeout_s: float = 600.0, curve: ClientCurve | None = None) -> None:
        self._loop = asyncio.new_event_loop()
        # A thread of its own, so it also works where an event loop already runs (Jupyter).
        self._thread = threading.Thread(target=self._loop.run_forever, name="edgecollab-client", daemon=True)
        self._thread.start()
        self._client = Client(endpoint, timeout_s=timeout_s, curve=curve)
        self._call(self._client.__aenter__())

    def _call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def infer(
        self,
        inputs: np.ndarray,
        *,
        target_ips: float | None = None,
        min_accuracy: float | None = None,
        policy: str | None = None,
        strict: bool = False,
        progress: ProgressCallback | None = None,
        outputs: str | None = None,
        task: str | None = None,
        variant: str | None = None,
    ) -> InferenceResult:
        """Like ``Client.infer``, blocking; ``progress`` is called on the client's own thread."""
        return self._call(
            self._client.infer(
                inputs, target_ips=target_ips, min_accuracy=min_accuracy, policy=policy, strict=strict,
                progress=progress, outputs=outputs, task=task, variant=variant,
            )
        )  # fmt: skip

    def query(self, topic: str, **params: Any) -> dict[str, Any]:
        """Like ``Client.query``, blocking."""
        return self._call(self._client.query(topic, **params))

    @overload
    def stream(
        self,
        target_fps: float,
        *,
        min_accuracy: float | None = ...,
        max_latency_ms: float | None = ...,
        task: str | None = ...,
        degrade: bool = ...,
        backpressure: str = ...,
        outputs: str | None = ...,
    ) -> SyncStream: ...

    @overload
    def stream(
        self,
        target_fps: None = ...,
        *,
        source: str,
        fps: float | None = ...,
        realtime: bool = ...,
        min_accuracy: float | None = ...,
        max_latency_ms: float | None = ...,
        task: str | None = ...,
        degrade: bool = ...,
        backpressure: str = ...,
        outputs: str | None = ...,
    ) -> SyncSourceStream: ...

    def stream(
        self,
        target_fps: float | None = None,
        *,
        source: str | None = None,
        fps: float | None = None,
        realtime: bool = True,
        min_accuracy: float | None = None,
        max_latency_ms: float | None = None,
        task: str | None = None,
        degrade: bool = False,
        backpressure: str = "block",
        outputs: str | None = None,
    ) -> SyncStream | SyncSourceStream:
        """Like ``Client.stream``, blocking: ``with client.stream(30) as s: s.send(frame); for r in s: ...``,
        or ``with client.stream(source="cam.mp4") as s: for r in s: ...``."""
        options: dict[str, Any] = {"min_accuracy": min_accuracy, "max_latency_ms": max_latency_ms, "task": task,
                                   "degrade": degrade, "backpressure": backpressure, "outputs": outputs}  # fmt: skip
        if source is not None:
            return SyncSourceStream(self, self._client.stream(source=source, fps=fps, realtime=realtime, **options))
        if target_fps is None:
            raise InvalidInputError("invalid_input", "a stream needs target_fps (frames sent by you) or source=URI")
        return SyncStream(self, self._client.stream(target_fps, **options))

    def close(self) -> None:
        if self._loop.is_closed():
            return
        self._call(self._client.__aexit__(None, None, None))
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SyncStream:
    """``Stream`` with blocking calls; send from one thread and iterate from another if you like."""

    def __init__(self, owner: SyncClient, stream: Stream) -> None:
        self._owner = owner
        self.stream = stream

    @property
    def admission(self) -> dict[str, Any]:
        return self.stream.admission

    def __enter__(self) -> SyncStream:
        self._owner._call(self.stream.__aenter__())
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        self._owner._call(self.stream.__aexit__(exc_type, *exc))

    def send(self, frames: np.ndarray, ids: Sequence[Any] | None = None) -> list[int]:
        return self._owner._call(self.stream.send(frames, ids))

    def close(self) -> dict[str, Any]:
        return self._owner._call(self.stream.close())

    def cancel(self) -> None:
        self._owner._call(self.stream.cancel())

    def __iter__(self) -> Iterator[FrameResult]:
        while True:
            try:
                yield self._owner._call(self.stream.__anext__())
            except StopAsyncIteration:
                return


class SyncSourceStream:
    """``video.SourceStream`` with blocking calls: iterate it for a ``SourceResult`` per decoded frame."""

    def __init__(self, owner: SyncClient, stream: SourceStream) -> None:
        self._owner = owner
        self.stream = stream

    def __enter__(self) -> SyncSourceStream:
        self._owner._call(self.stream.__aenter__())
        return self

    def __exit__(self, *exc: object) -> None:
        self._owner._call(self.stream.__aexit__(*exc))

    def __iter__(self) -> Iterator[Any]:
        results = self.stream.__aiter__()

        async def following() -> Any:
            return await results.__anext__()

        while True:
            try:
                yield self._owner._call(following())
            except StopAsyncIteration:
                return
