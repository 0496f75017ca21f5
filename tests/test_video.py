"""Video sources decoded with PyAV, end to end on a real cluster: a camera-like H.264 file made here
from the detection task's test scenes, every decoded frame answered once, in order, with its pts,
and detections mapped back to the frame scoring like the same scenes sent as arrays."""

from __future__ import annotations

import asyncio
import http.server
import io
import json
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import av
import numpy as np
import pytest
from PIL import Image

from edgecollab.client import Client, SyncClient
from edgecollab.local import LocalCluster, free_tcp_endpoint
from edgecollab.video import (
    QUEUE_FRAMES,
    DecodedFrame,
    FrameMap,
    Preparation,
    SourceError,
    VideoSource,
    camera_frame,
    prepare,
    write_scene_video,
)
from edgecollab.zoo import load_manifest, load_test_set
from edgecollab.zoo.scoring import DetectionSet, mean_average_precision

from .cluster_helpers import edgecollab
from .conftest import SHIPPED_MANIFEST

# Debian's Python runs the RTSP server: GStreamer's bindings (python3-gi) are Debian packages, which
# `make test` installs when they are missing.
SYSTEM_PYTHON = "/usr/bin/python3"
RTSP_SERVER = Path(__file__).parents[1] / "benchmarks" / "rtsp_server.py"
SCENES = 90
SCALE = 8  # 64-pixel scenes become 512 x 512 frames
FPS = 30


def scenes() -> DetectionSet:
    manifest = load_manifest(SHIPPED_MANIFEST, check_files=False)
    test_set = load_test_set(manifest, manifest.task_of(manifest.variant("det-small")))
    assert isinstance(test_set, DetectionSet)
    return test_set.subset(np.arange(SCENES))


def write_video(path: Path, truth: DetectionSet) -> None:
    write_scene_video(path, truth.inputs, scale=SCALE, fps=FPS)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    folder = tmp_path_factory.mktemp("video")
    (folder / "cluster.toml").write_text(
        f'[models]\nmanifest = "{SHIPPED_MANIFEST}"\ntasks = ["fashion-detect"]\n'
        '[[nodes]]\nname = "rpi4"\nemulate = "rpi4"\nvariants = ["det-small"]\n'
        '[[nodes]]\nname = "jetson-nano"\nemulate = "jetson-nano"\nvariants = ["det-small"]\n'
    )
    with LocalCluster(folder / "cluster.toml", log_dir=folder / "logs") as local:
        yield local


def test_letterboxing_maps_boxes_back_to_the_frame() -> None:
    frame = av.VideoFrame.from_ndarray(np.full((480, 640, 3), 200, np.uint8), format="rgb24")
    inputs, mapping = prepare(frame, Preparation(1, 64, 64))
    assert inputs.shape == (1, 64, 64) and inputs.dtype == np.uint8
    assert (inputs[0, :8] == 0).all() and (inputs[0, 8:56] > 150).all()  # 64 x 48 of picture, padded top and bottom
    assert mapping == FrameMap(0.1, 0.1, 0.0, 8.0)
    assert np.allclose(mapping.boxes_to_frame(np.array([[0.0, 8.0, 64.0, 56.0]])), [[0, 0, 640, 480]])
    rgb, _ = prepare(frame, Preparation(3, 32, 32, "float32", fit="stretch", layout="hwc"))
    assert rgb.shape == (32, 32, 3) and rgb.dtype == np.float32 and (rgb > 150).all()
    admitted = {"input_shape": [224, 224, 3], "input_dtype": "uint8", "preprocess": {"layout": "hwc"}}
    assert Preparation.from_admission(admitted) == Preparation(3, 224, 224, "uint8", layout="hwc")
    with pytest.raises(SourceError, match=r"inputs of shape \[10\]; a video source needs \(1 or 3, H, W\)"):
        Preparation.from_admission({"input_shape": [10], "input_dtype": "float32"})


def test_a_video_file_is_answered_frame_by_frame_and_scores_like_the_arrays(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    truth = scenes()
    video = tmp_path / "camera.mp4"
    write_video(video, truth)

    async def go() -> tuple[list[object], dict[str, np.ndarray], float]:
        async with Client(cluster.clients_endpoint, timeout_s=120) as client:
            arrays = await client.infer(truth.inputs, outputs="all")
            async with client.stream(source=str(video), realtime=False) as stream:
                results = [r async for r in stream]
            return results, arrays.outputs, stream.counters.decode_ms_per_frame

    results, array_outputs, decode_ms = asyncio.run(go())
    assert [r.seq for r in results] == list(range(SCENES))  # type: ignore[attr-defined]
    assert [r.pts for r in results] == pytest.approx([i / FPS for i in range(SCENES)])  # type: ignore[attr-defined]
    assert not any(r.dropped for r in results) and decode_ms > 0  # type: ignore[attr-defined]
    found = {k: np.stack([r.outputs[k] for r in results]) for k in ("boxes", "scores", "labels")}  # type: ignore[attr-defined]
    in_frame = DetectionSet(truth.inputs, truth.boxes * SCALE, truth.labels, truth.image_index)
    from_video = mean_average_precision(found, in_frame)
    from_arrays = mean_average_precision(array_outputs, truth)
    assert from_arrays > 0.5
    assert abs(from_video - from_arrays) <= 0.03, (from_video, from_arrays)


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("/nonexistent/camera.mp4", r"source '/nonexistent/camera.mp4': no such file, folder or device"),
        ("rtsp://127.0.0.1:9/none", r"source 'rtsp://127.0.0.1:9/none' cannot be opened: .*Connection refused"),
    ],
)
def test_a_source_that_cannot_be_opened_fails_at_once_with_its_uri_and_ffmpegs_reason(
    cluster: LocalCluster, uri: str, message: str
) -> None:
    async def go() -> None:
        async with Client(cluster.clients_endpoint, timeout_s=30) as client, client.stream(source=uri):
            pass

    with pytest.raises(SourceError, match=message):
        asyncio.run(go())


def test_the_stream_command_saves_a_json_line_per_frame_of_a_source(cluster: LocalCluster, tmp_path: Path) -> None:
    truth = scenes().subset(np.arange(20))
    video = tmp_path / "short.mp4"
    write_video(video, truth)
    out = tmp_path / "out.jsonl"
    args = ["stream", "--source", str(video), "--task", "fashion-detect", "--save-results", str(out), "--json",
            "--no-realtime", "--annotate", str(tmp_path / "seen"), "--config", str(cluster.config_path),
            "--coordinator", cluster.clients_endpoint]  # fmt: skip
    done = edgecollab(*args)
    assert done.returncode == 0, done.stderr
    (row,) = json.loads(done.stdout)["sources"]
    assert row["source"] == str(video) and row["frames"] == 20 and row["dropped"] == 0 and row["reconnects"] == 0
    assert row["decode_ms_per_frame"] > 0 and 0 < row["p50_ms"] <= row["p99_ms"]
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["seq"] for line in lines] == list(range(20))
    assert all(set(line) == {"source", "seq", "pts", "outputs", "variant", "node", "latency_ms"} for line in lines)
    boxes = np.array([line["outputs"]["boxes"] for line in lines])
    assert boxes.shape == (20, 64, 4) and boxes.max() > 64  # in the 512-pixel frame's coordinates, not the model's
    with av.open(str(tmp_path / "seen" / "0-short.mp4")) as seen:  # what the cluster saw, drawn on each frame
        drawn = [f.to_ndarray(format="rgb24") for f in seen.decode(video=0)]
    assert len(drawn) == 20 and drawn[0].shape == (512, 512, 3)
    raw = camera_frame(truth.inputs[0], SCALE)
    assert np.abs(drawn[0].astype(int) - raw.astype(int)).max() > 100  # boxes and captions were drawn on
    missing = edgecollab("stream", "--source", str(tmp_path / "none.mp4"), "--config", str(cluster.config_path))
    assert missing.returncode == 2 and "no such file, folder or device" in missing.stderr


def test_a_sync_client_plays_a_file_at_its_own_rate(cluster: LocalCluster, tmp_path: Path) -> None:
    truth = scenes().subset(np.arange(30))
    video = tmp_path / "second.mp4"
    write_video(video, truth)
    with SyncClient(cluster.clients_endpoint, timeout_s=60) as client, client.stream(source=str(video)) as stream:
        started = time.monotonic()
        results = list(stream)
        elapsed = time.monotonic() - started
    assert [r.seq for r in results] == list(range(30)) and results[-1].pts == pytest.approx(29 / FPS)
    assert elapsed >= 29 / FPS * 0.9  # played at 30 fps, not as fast as the cluster answers


def rtsp_server(port: int, video: Path, log: Path) -> subprocess.Popen[bytes]:
    """tests/rtsp_server.py under Debian's Python (GStreamer's RTSP server), ready once it says so."""
    # No preexec_fn: this process runs PyAV's decoder threads, and Python code between fork and exec (a
    # dealloc of a frame converter waiting on threads the child does not have) can hang the fork. The
    # test stops the server itself.
    with open(log, "ab") as out:
        server = subprocess.Popen(
            [SYSTEM_PYTHON, str(RTSP_SERVER), str(port), str(video)], stdout=subprocess.PIPE, stderr=out
        )
    assert server.stdout is not None
    ready = server.stdout.readline()
    server.stdout.close()  # it says nothing more
    assert ready == b"serving\n", (log.read_text(), server.poll())
    return server


def test_an_rtsp_camera_that_drops_out_is_reconnected_and_the_gap_counted(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    video = tmp_path / "rtsp.mp4"
    write_video(video, scenes())  # 90 frames: 3 s at 30 fps
    port = int(free_tcp_endpoint().rsplit(":", 1)[1])
    uri = f"rtsp://127.0.0.1:{port}/camera"
    server = rtsp_server(port, video, tmp_path / "rtsp.log")

    async def go() -> tuple[list[Any], Any]:
        nonlocal server
        results: list[Any] = []
        async with Client(cluster.clients_endpoint, timeout_s=60) as client, client.stream(source=uri) as stream:
            async for r in stream:
                results.append(r)
                if len(results) == 20:  # mid-stream: the camera goes away for a second, then comes back
                    server.terminate()
                    server.wait(10)
                    await asyncio.sleep(1.0)
                    server = rtsp_server(port, video, tmp_path / "rtsp.log")
                if stream.counters.reconnects and len(results) >= 60:
                    break
            return results, stream.counters

    try:
        results, counters = asyncio.run(go())
    finally:
        server.terminate()
        server.wait(10)
    assert [r.seq for r in results] == list(range(len(results)))  # every decoded frame answered once, in order
    assert not any(r.dropped for r in results)
    assert counters.reconnects >= 1 and counters.seconds_down >= 0.9 and counters.lost_to_source >= 27
    assert all(r.prediction == -1 and r.outputs["boxes"].shape == (64, 4) for r in results)  # detections, after too


class MjpegCamera(http.server.BaseHTTPRequestHandler):
    """An IP camera's MJPEG over HTTP (multipart/x-mixed-replace), 30 fps of the test scenes."""

    frames: ClassVar[list[bytes]] = []  # set by the test before it serves

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
        self.end_headers()
        try:
            for jpeg in self.frames:
                self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\n")
                self.wfile.write(f"Content-Length: {len(jpeg)}\r\n\r\n".encode() + jpeg + b"\r\n")
                time.sleep(1 / FPS)
        except (BrokenPipeError, ConnectionResetError):  # the client has what it wanted
            pass

    def log_message(self, *args: object) -> None:
        pass


def test_an_http_mjpeg_camera_is_decoded_and_answered_in_order(cluster: LocalCluster) -> None:
    truth = scenes().subset(np.arange(40))
    frames = []
    for scene in truth.inputs:
        out = io.BytesIO()
        Image.fromarray(camera_frame(scene, SCALE)).save(out, format="JPEG", quality=90)
        frames.append(out.getvalue())
    MjpegCamera.frames = frames
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), MjpegCamera)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    uri = f"http://127.0.0.1:{server.server_address[1]}/stream.mjpg"

    async def go() -> list[Any]:
        async with Client(cluster.clients_endpoint, timeout_s=60) as client, client.stream(source=uri, fps=FPS) as s:
            got = []
            async for r in s:
                got.append(r)
                if len(got) == 30:
                    break
            return got

    try:
        results = asyncio.run(go())
    finally:
        server.shutdown()
        server.server_close()
    assert [r.seq for r in results] == list(range(30)) and not any(r.dropped for r in results)
    found = {k: np.stack([r.outputs[k] for r in results]) for k in ("boxes", "scores", "labels")}
    first = truth.subset(np.arange(30))
    in_frame = DetectionSet(first.inputs, first.boxes * SCALE, first.labels, first.image_index)
    assert mean_average_precision(found, in_frame) > 0.5  # the frames are the scenes, in order


def frame_numbered(seq: int) -> DecodedFrame:
    return DecodedFrame(seq, None, 0.0, np.zeros((1, 2, 2), np.uint8), FrameMap(1, 1, 0, 0), (2, 2))


@pytest.mark.parametrize(("uri_kind", "policy"), [("live", "block"), ("file", "drop-oldest")])
def test_frames_decoded_faster_than_answered_drop_oldest_first_and_are_counted(
    tmp_path: Path, uri_kind: str, policy: str
) -> None:
    (tmp_path / "f.mp4").write_bytes(b"")
    uri = "rtsp://127.0.0.1:9/camera" if uri_kind == "live" else str(tmp_path / "f.mp4")
    source = VideoSource(uri, policy=policy)  # a real-time file with drop-oldest behaves as a camera
    for seq in range(QUEUE_FRAMES + 6):
        source._put(frame_numbered(seq))
    kept = [source._queue.get_nowait() for _ in range(QUEUE_FRAMES)]
    assert source.counters.dropped_behind == 6 and [f.seq for f in kept] == list(range(6, QUEUE_FRAMES + 6))  # type: ignore[union-attr]


def test_a_live_source_with_the_fail_policy_fails_the_stream_when_it_falls_behind() -> None:
    source = VideoSource("rtsp://127.0.0.1:9/camera", policy="fail")
    for seq in range(QUEUE_FRAMES + 1):
        source._put(frame_numbered(seq))
    assert source._stop.is_set() and source._queue.qsize() == QUEUE_FRAMES  # decoding stops; the frames in hand stay
    threading.Thread(target=source._queue.put, args=(None,), daemon=True).start()  # as the decode thread ends

    async def drain() -> list[DecodedFrame]:
        return [f async for f in source.frames()]

    with pytest.raises(
        SourceError, match=r"64 frames ahead of the cluster and the stream's back-pressure policy is 'fail'"
    ):
        asyncio.run(drain())
