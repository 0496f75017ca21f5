"""Real video sources: a file, an RTSP or HTTP camera, a V4L2 device or a folder of images, decoded
with PyAV (FFmpeg's libraries) and turned into the task's input where they are decoded.

A source is named by a URI. Decoding and preprocessing run in a thread of their own per source and
hand frames to the event loop through a bounded queue, so a 1080p decode never stalls the loop. Each
frame keeps its presentation timestamp (``pts``, seconds) and its wall-clock arrival, and the map
from the model's input back to the frame, so detections come back in the frame's coordinates.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import EdgecollabError

if TYPE_CHECKING:
    from .client import Client

LIVE_SCHEMES = ("rtsp://", "rtsps://", "http://", "https://")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
QUEUE_FRAMES = 64  # decoded frames a source may hold ahead of the cluster
MAX_BACKOFF_S = 10.0


class SourceError(EdgecollabError):
    """A source that cannot be opened or read; the message names the URI and FFmpeg's reason."""


# --- preprocessing: a decoded frame becomes the model's input ------------------------------------
@dataclass(frozen=True)
class Preparation:
    """How a task's frames are made: colour, fit and the input size (channels, height, width)."""

    channels: int
    height: int
    width: int
    dtype: str = "uint8"
    fit: str = "letterbox"  # "letterbox": keep the aspect, pad; "stretch": scale each axis to fit
    pad: int = 0
    layout: str = "chw"  # the input's axes: channels first ("chw") or last ("hwc")

    @classmethod
    def from_admission(cls, admission: dict[str, Any]) -> Preparation:
        """From a stream's admission: the task's input shape and dtype, and its declared preprocessing."""
        shape, prep = admission["input_shape"], admission.get("preprocess", {})
        layout = prep.get("layout", "chw")
        channels, height, width = (
            (shape if layout == "chw" else (shape[2], shape[0], shape[1])) if len(shape) == 3 else (0, 0, 0)
        )
        if channels not in (1, 3):
            expected = "(1 or 3, H, W)" if layout == "chw" else "(H, W, 1 or 3)"
            raise SourceError(f"the task takes inputs of shape {shape}; a video source needs {expected} ({layout})")
        return cls(channels, height, width, admission["input_dtype"], prep.get("fit", "letterbox"),
                   prep.get("pad", 0), layout)  # fmt: skip


@dataclass(frozen=True)
class FrameMap:
    """From the model's input pixels back to the source frame's: ``frame = (model - offset) / scale``."""

    scale_x: float
    scale_y: float
    offset_x: float
    offset_y: float

    def boxes_to_frame(self, boxes: np.ndarray) -> np.ndarray:
        """``[..., 4]`` boxes (x1, y1, x2, y2) in input pixels, in the frame's pixels."""
        out = np.asarray(boxes, dtype=np.float32).copy()
        out[..., 0::2] = (out[..., 0::2] - self.offset_x) / self.scale_x
        out[..., 1::2] = (out[..., 1::2] - self.offset_y) / self.scale_y
        return out


def prepare(frame: Any, prep: Preparation) -> tuple[np.ndarray, FrameMap]:
    """A PyAV ``VideoFrame`` as the task's input ((C, H, W), or (H, W, C) for layout "hwc"), and the map
    back. FFmpeg's swscale resizes and converts the colour in one pass."""
    fw, fh = frame.width, frame.height
    if prep.fit == "stretch":
        w, h = prep.width, prep.height
    else:
        scale = min(prep.width / fw, prep.height / fh)
        w, h = max(1, round(fw * scale)), max(1, round(fh * scale))
    fmt = "gray" if prep.channels == 1 else "rgb24"
    pixels = frame.reformat(width=w, height=h, format=fmt, interpolation="AREA").to_ndarray()
    pixels = pixels.reshape(h, w, prep.channels)
    x0, y0 = (prep.width - w) // 2, (prep.height - h) // 2
    canvas = np.full((prep.height, prep.width, prep.channels), prep.pad, np.uint8)
    canvas[y0 : y0 + h, x0 : x0 + w] = pixels
    mapping = FrameMap(w / fw, h / fh, float(x0), float(y0))
    axes = canvas if prep.layout == "hwc" else canvas.transpose(2, 0, 1)
    return np.ascontiguousarray(axes).astype(prep.dtype, copy=False), mapping


# --- sources ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DecodedFrame:
    seq: int  # 0, 1, ... in decode order
    pts: float | None  # presentation time in seconds (None when the container gives none)
    arrival: float  # wall clock (time.time()) when it was decoded
    input: np.ndarray  # the model's input, (C, H, W)
    mapping: FrameMap
    size: tuple[int, int]  # the source frame's (width, height)
    image: np.ndarray | None = None  # the frame itself (H, W, 3 RGB), kept only to annotate it


@dataclass
class SourceCounters:
    decoded: int = 0
    lost_to_source: int = 0  # frames the source did not deliver while it was down (estimated from its rate)
    dropped_behind: int = 0  # decoded frames dropped because the cluster fell behind (oldest first)
    reconnects: int = 0
    seconds_down: float = 0.0
    decode_cpu_s: float = 0.0  # thread CPU spent decoding and preprocessing

    @property
    def decode_ms_per_frame(self) -> float:
        return 1e3 * self.decode_cpu_s / self.decoded if self.decoded else 0.0


def kind_of(uri: str) -> str:
    """``file``, ``live`` (RTSP, HTTP), ``device`` (V4L2) or ``folder``; a missing path is refused here."""
    if uri.startswith(LIVE_SCHEMES):
        return "live"
    path = Path(uri.removeprefix("file://"))
    if uri.startswith("/dev/video"):
        return "device"
    if path.is_dir():
        return "folder"
    if path.is_file():
        return "file"
    raise SourceError(f"source {uri!r}: no such file, folder or device; expected a path, file://, rtsp://, http(s)://")


class VideoSource:
    """Decodes one source in a thread into a bounded queue. Iterate ``frames()`` from asyncio."""

    def __init__(
        self, uri: str, *, realtime: bool = True, fps: float | None = None, keep_images: bool = False,
        policy: str = "block",
    ) -> None:  # fmt: skip
        self.uri = uri
        self.keep_images = keep_images
        self.policy = policy  # the stream's back-pressure policy, for frames decoded faster than answered
        self.kind = kind_of(uri)
        self.prep: Preparation | None = None
        self.realtime = realtime  # a file plays at its own rate (live sources always do)
        self.fps = fps  # the source's rate; None: from the container
        self.counters = SourceCounters()
        self._queue: queue.Queue[DecodedFrame | BaseException | None] = queue.Queue(QUEUE_FRAMES)
        self._stop = threading.Event()
        self._closed = threading.Event()  # the consumer is gone: the thread stops waiting to hand frames on
        self._failure: SourceError | None = None
        self._thread: threading.Thread | None = None
        self._seq = 0
        self.rate: float | None = fps

    def open(self) -> VideoSource:
        """Open the source now, so a bad URI fails at once with FFmpeg's reason (and its rate is known)."""
        self._container = self._open_container()
        self.rate = self.fps or _rate_of(self._container) or 30.0
        return self

    def start(self, prep: Preparation) -> None:
        """Decode and prepare frames in a thread of their own from now on."""
        self.prep = prep
        args = (self._container,)
        self._thread = threading.Thread(target=self._run, args=args, name=f"decode {self.uri}", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._closed.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with contextlib.suppress(queue.Full):  # wake a reader still waiting for a frame (it gets the end)
            self._queue.put_nowait(None)

    async def frames(self) -> AsyncIterator[DecodedFrame]:
        while True:
            item = await asyncio.to_thread(self._queue.get)
            if item is None:
                if self._failure is not None:
                    raise self._failure
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def _open_container(self) -> Any:
        import av

        options = {"rtsp_transport": "tcp"} if self.uri.startswith(("rtsp://", "rtsps://")) else {}
        target = self.uri.removeprefix("file://")
        try:
            if self.kind == "folder":
                return _ImageFolder(Path(target))
            if self.kind == "device":
                return av.open(target, format="v4l2", timeout=(10.0, 5.0))
            return av.open(target, options=options, timeout=(10.0, 5.0))
        except (OSError, av.FFmpegError) as exc:  # FFmpeg's reason is in the exception's text
            raise SourceError(f"source {self.uri!r} cannot be opened: {exc}") from None

    def _run(self, container: Any) -> None:
        backoff = 0.5
        try:
            while not self._stop.is_set():
                try:
                    self._decode(container)
                except Exception as exc:  # a live source that drops out comes back below
                    if self.kind != "live":
                        self._put(SourceError(f"source {self.uri!r} failed while decoding: {exc}"))
                        return
                finally:
                    container.close()
                if self.kind != "live" or self._stop.is_set():
                    break
                down_since = time.monotonic()
                while not self._stop.is_set():  # reconnect with back-off; the gap is counted
                    time.sleep(backoff)
                    backoff = min(backoff * 2, MAX_BACKOFF_S)
                    try:
                        container = self._open_container()
                        break
                    except SourceError:
                        continue
                gap = time.monotonic() - down_since
                self.counters.reconnects += 1
                self.counters.seconds_down += gap
                self.counters.lost_to_source += round(gap * (self.rate or 0.0))
                backoff = 0.5
        finally:
            while not self._closed.is_set():  # the end, once the consumer has room for it
                try:
                    self._queue.put(None, timeout=0.2)
                    break
                except queue.Full:
                    continue

    def _decode(self, container: Any) -> None:
        started_wall, first_pts = time.monotonic(), None
        cpu = time.thread_time()
        for frame in _video_frames(container):
            if self._stop.is_set():
                return
            pts = float(frame.pts * frame.time_base) if frame.pts is not None and frame.time_base else None
            assert self.prep is not None
            inputs, mapping = prepare(frame, self.prep)
            now = time.thread_time()
            self.counters.decode_cpu_s += now - cpu
            cpu = now
            if self.kind == "file" and self.realtime and pts is not None:
                first_pts = pts if first_pts is None else first_pts
                time.sleep(max(0.0, started_wall + (pts - first_pts) - time.monotonic()))
            image = frame.to_ndarray(format="rgb24") if self.keep_images else None
            size = (frame.width, frame.height)
            self._put(DecodedFrame(self._seq, pts, time.time(), inputs, mapping, size, image))
            self._seq += 1
            self.counters.decoded += 1
            cpu = time.thread_time()

    def _put(self, item: DecodedFrame | BaseException) -> None:
        """Hand a frame on. A file waits for the cluster (nothing of it is lost) unless it plays in real
        time with ``drop-oldest``; a live source cannot wait: its oldest frame not yet taken goes (with
        the ``fail`` policy the stream fails instead). Every frame dropped here is counted."""
        waits = self.kind in ("file", "folder") and not (self.realtime and self.policy == "drop-oldest")
        if waits or not isinstance(item, DecodedFrame):
            self._queue.put(item)
            return
        if self.policy == "fail" and self._queue.full():
            self._failure = SourceError(
                f"source {self.uri!r}: decoding got {QUEUE_FRAMES} frames ahead of the cluster and the"
                " stream's back-pressure policy is 'fail'"
            )
            self._stop.set()  # raised once the frames before it are taken
            return
        while True:
            try:
                self._queue.put_nowait(item)
                return
            except queue.Full:
                try:
                    self._queue.get_nowait()
                    self.counters.dropped_behind += 1
                except queue.Empty:
                    pass


def _video_frames(container: Any) -> Iterator[Any]:
    if isinstance(container, _ImageFolder):
        yield from container.frames()
        return
    yield from container.decode(video=0)


def _rate_of(container: Any) -> float | None:
    if isinstance(container, _ImageFolder):
        return None
    rate = container.streams.video[0].average_rate
    return float(rate) if rate else None


class _ImageFolder:
    """A folder of images in name order, each a frame (pts: its index)."""

    def __init__(self, folder: Path) -> None:
        self.paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.paths:
            raise SourceError(f"folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")

    def frames(self) -> Iterator[Any]:
        import av

        for path in self.paths:
            with av.open(str(path)) as image:
                yield from image.decode(video=0)

    def close(self) -> None:
        pass


# --- a stream fed by a source ------------------------------------------------------------------------
@dataclass(frozen=True)
class SourceResult:
    """One decoded frame's answer: outputs (boxes in the source frame's pixels), variant, node, latency."""

    source: str
    seq: int
    pts: float | None
    prediction: int
    outputs: dict[str, np.ndarray]
    variant: str
    node: str
    latency_ms: float  # from decode to answer
    dropped: bool = False
    reason: str = ""
    image: np.ndarray | None = None  # the decoded frame, with ``keep_images`` (to annotate it)


class SourceStream:
    """``Client.stream(source=URI)``: decodes the source and streams its frames; ``async for`` its results.

    The stream is declared at the source's own rate (or ``fps``). Every decoded frame is answered
    exactly once, in decode order (a dropped one says so); boxes come back in the frame's pixels.
    """

    def __init__(
        self, client: Client, uri: str, fps: float | None, realtime: bool, options: dict[str, Any],
        keep_images: bool = False,
    ) -> None:  # fmt: skip
        self.client = client
        self.uri = uri
        policy = options.get("backpressure") or "block"
        self.source = VideoSource(uri, realtime=realtime, fps=fps, keep_images=keep_images, policy=policy)
        self.options = options
        self.admission: dict[str, Any] = {}
        self.summary: dict[str, Any] | None = None

    @property
    def counters(self) -> SourceCounters:
        return self.source.counters

    async def __aenter__(self) -> SourceStream:
        await asyncio.to_thread(self.source.open)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self.source.close)

    async def __aiter__(self) -> AsyncIterator[SourceResult]:
        source = self.source
        stream = self.client.stream(source.rate or 30.0, **self.options)
        frames: dict[int, DecodedFrame] = {}
        async with stream:
            self.admission = stream.admission
            source.start(Preparation.from_admission(self.admission))

            async def feed() -> None:
                try:
                    async for frame in source.frames():
                        frames[frame.seq] = frame
                        await stream.send(frame.input, ids=[frame.seq])
                except BaseException:
                    await stream.cancel()  # the source failed: the stream's iteration ends, the error is raised below
                    raise
                await stream.close()

            feeder = asyncio.create_task(feed())
            answered_all = False
            try:
                async for r in stream:
                    frame = frames.pop(r.id)
                    result_outputs = dict(r.outputs)
                    if "boxes" in result_outputs:
                        result_outputs["boxes"] = frame.mapping.boxes_to_frame(result_outputs["boxes"])
                    yield SourceResult(
                        self.uri, frame.seq, frame.pts, r.prediction, result_outputs, r.variant, r.node,
                        (time.time() - frame.arrival) * 1e3, r.dropped, r.reason, frame.image,
                    )  # fmt: skip
                answered_all = True
            finally:
                # Every frame answered: let the feeder's close() finish (the stream's summary); given up: stop it.
                if not answered_all and not feeder.done():
                    feeder.cancel()
                await asyncio.gather(feeder, return_exceptions=True)
            if not feeder.cancelled() and feeder.exception() is not None:
                raise feeder.exception()  # type: ignore[misc]
            self.summary = stream.summary


# --- annotated video: what the cluster saw, drawn on the frames ---------------------------------------
SHOW_SCORE = 0.5  # detections drawn from this score on
COLOURS = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212)]  # fmt: skip


class Annotator:
    """Writes one source's frames, with its detections (or class) drawn on, to an H.264 file."""

    def __init__(self, path: Path, fps: float, labels: list[str] | None = None) -> None:
        import av

        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.labels = labels
        self._container = av.open(str(path), "w")
        self._stream: Any = None
        self._fps = max(1, round(fps))
        self._count = 0

    def write(self, result: SourceResult) -> None:
        import av
        from PIL import Image, ImageDraw

        if result.image is None:
            return
        image = Image.fromarray(result.image)
        draw = ImageDraw.Draw(image)
        if "boxes" in result.outputs:
            scores, labels = result.outputs["scores"], result.outputs["labels"]
            for box, score, label in zip(result.outputs["boxes"], scores, labels, strict=True):
                if score < SHOW_SCORE:
                    continue
                colour = COLOURS[int(label) % len(COLOURS)]
                draw.rectangle([float(v) for v in box], outline=colour, width=max(1, image.width // 200))
                draw.text((float(box[0]) + 2, float(box[1]) + 1), f"{self._name(int(label))} {score:.2f}", fill=colour)
        elif result.prediction >= 0:
            draw.text((4, 4), self._name(result.prediction), fill=(255, 255, 0))
        draw.text(
            (4, image.height - 14),
            f"{result.variant} on {result.node}, {result.latency_ms:.0f} ms",
            fill=(255, 255, 255),
        )
        if self._stream is None:
            self._stream = self._container.add_stream("libx264", rate=self._fps, options={"crf": "23"})
            self._stream.width, self._stream.height = image.width - image.width % 2, image.height - image.height % 2
            self._stream.pix_fmt = "yuv420p"
        pixels = np.asarray(image)[: self._stream.height, : self._stream.width]
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(pixels), format="rgb24")
        frame.pts = self._count
        self._count += 1
        self._container.mux(self._stream.encode(frame))

    def _name(self, label: int) -> str:
        return self.labels[label] if self.labels and 0 <= label < len(self.labels) else str(label)

    def close(self) -> None:
        if self._stream is not None:
            self._container.mux(self._stream.encode())
        self._container.close()


# --- several sources at once, as `edgecollab stream --source` runs them ------------------------------
@dataclass
class SourceTally:
    uri: str
    frames: int = 0
    dropped: int = 0
    latencies_ms: list[float] | None = None
    variants: dict[str, int] | None = None
    counters: SourceCounters | None = None
    started: float = 0.0
    finished: float = 0.0

    def row(self) -> dict[str, Any]:
        lat = np.array(self.latencies_ms or [np.nan])
        c = self.counters or SourceCounters()
        elapsed = max((self.finished or time.monotonic()) - self.started, 1e-9) if self.started else 1e-9
        return {
            "source": self.uri,
            "frames": self.frames,
            "dropped": self.dropped,
            "decode_fps": c.decoded / elapsed,
            "answered_fps": self.frames / elapsed,
            "decode_ms_per_frame": c.decode_ms_per_frame,
            "lost_to_source": c.lost_to_source,
            "dropped_behind": c.dropped_behind,
            "reconnects": c.reconnects,
            "seconds_down": c.seconds_down,
            "p50_ms": float(np.percentile(lat, 50)),
            "p99_ms": float(np.percentile(lat, 99)),
            "variants": dict(self.variants or {}),
        }


def result_line(result: SourceResult) -> dict[str, Any]:
    """One frame's answer as ``--save-results`` writes it: plain lists, boxes in the frame's pixels."""
    return {
        "source": result.source,
        "seq": result.seq,
        "pts": result.pts,
        "outputs": {k: v.tolist() for k, v in result.outputs.items()} or {"prediction": result.prediction},
        "variant": result.variant,
        "node": result.node,
        "latency_ms": round(result.latency_ms, 3),
    }


async def run_sources(
    client: Client,
    uris: list[str],
    *,
    task: str | None = None,
    fps: float | None = None,
    realtime: bool = True,
    duration_s: float | None = None,
    on_result: Any = None,
    annotate: Path | None = None,
    on_tick: Any = None,
) -> list[SourceTally]:
    """Stream every source at once over one client until each ends (or ``duration_s`` passes); with
    ``annotate``, each source's frames are written there as a video with what the cluster saw.
    ``on_tick(tallies)`` is called twice a second meanwhile (the live table)."""
    tallies = [SourceTally(uri, latencies_ms=[], variants={}) for uri in uris]

    async def one(index: int, uri: str) -> SourceTally:
        tally = tallies[index]
        options = {"task": task}
        stream = SourceStream(client, uri, fps, realtime, options, keep_images=annotate is not None)
        annotator: Annotator | None = None
        async with stream:
            if annotate is not None:
                annotator = Annotator(annotate / f"{index}-{_safe_name(uri)}.mp4", stream.source.rate or 30.0)
            tally.counters = stream.counters
            tally.started = time.monotonic()
            async for r in stream:
                if r.dropped:
                    tally.dropped += 1
                else:
                    tally.frames += 1
                    assert tally.latencies_ms is not None and tally.variants is not None
                    tally.latencies_ms.append(r.latency_ms)
                    tally.variants[r.variant] = tally.variants.get(r.variant, 0) + 1
                if on_result is not None:
                    on_result(r)
                if annotator is not None:
                    await asyncio.to_thread(annotator.write, r)
                if duration_s is not None and time.monotonic() - tally.started >= duration_s:
                    break
            if annotator is not None:
                annotator.close()
        tally.finished = time.monotonic()
        return tally

    streams = [asyncio.create_task(one(i, uri)) for i, uri in enumerate(uris)]
    while on_tick is not None and not all(s.done() for s in streams):
        await asyncio.wait(streams, timeout=0.5)
        on_tick(tallies)
    return list(await asyncio.gather(*streams))


def _safe_name(uri: str) -> str:
    """A file name for a source: its last path part, letters, digits, '.', '-' and '_' only."""
    tail = Path(uri.rstrip("/").rsplit("/", 1)[-1]).stem or "source"
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in tail)[:60]


# --- a camera's view of the test scenes, for tests, benchmarks and the guide -------------------------
def camera_frame(scene: np.ndarray, scale: int) -> np.ndarray:
    """A (1, H, W) grayscale test scene, ``scale`` times larger and tinted like a colour camera's frame."""
    big = np.kron(scene[0].astype(np.float32), np.ones((scale, scale), np.float32))
    tinted: np.ndarray = np.clip(np.stack([big * 1.05, big, big * 0.9], axis=-1), 0, 255).astype(np.uint8)
    return tinted


def write_scene_video(
    path: Path, scenes: np.ndarray, *, scale: int = 8, fps: int = 30, crf: int = 16,
    size: tuple[int, int] | None = None,
) -> tuple[float, float]:  # fmt: skip
    """An H.264 file of the scenes, one per frame, at ``fps``: each scene ``scale`` times larger, or
    resized to ``size`` (width, height; a 4:3 camera's frame, say). Returns the scale (x, y) from the
    scenes' pixels to the frames'."""
    import av
    from PIL import Image

    height, width = scenes.shape[2] * scale, scenes.shape[3] * scale
    frame_w, frame_h = size or (width, height)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps, options={"crf": str(crf)})
        stream.width, stream.height = frame_w, frame_h
        stream.pix_fmt = "yuv420p"
        for i, scene in enumerate(scenes):
            picture = camera_frame(scene, scale)
            if size is not None:
                picture = np.asarray(Image.fromarray(picture).resize(size, Image.Resampling.BILINEAR))
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(picture), format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return frame_w / scenes.shape[3], frame_h / scenes.shape[2]
