"""The inference runtimes a board may have, behind one interface.

ONNX Runtime where it installs (x86-64, arm64, Jetson's own builds); OpenCV's ``dnn`` module, which
reads ONNX, on boards with no ONNX Runtime at all (armhf: Debian ships ``python3-opencv``, PyPI has
no armv7 wheel of onnxruntime). Each backend says what it is (``describe``, sent in the Hello) and
opens sessions that run a batch and return the model's outputs in order. No sockets here.
"""

from __future__ import annotations

import logging
import os
import platform
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ConfigError

log = logging.getLogger(__name__)

# The highest ONNX opset (default domain) each ONNX Runtime release implements
# (ONNX Runtime's docs/Versioning.md). A release newer than the table runs at least the last row's.
ORT_MAX_OPSET = {
    (1, 10): 15, (1, 11): 16, (1, 12): 17, (1, 13): 17, (1, 14): 18, (1, 15): 19, (1, 16): 19,
    (1, 17): 20, (1, 18): 21, (1, 19): 21, (1, 20): 21, (1, 21): 22, (1, 22): 22, (1, 23): 23,
}  # fmt: skip


class Session:
    """One loaded model: ``run`` takes a batch and gives every output, in the model's order."""

    input_name: str
    output_names: list[str]
    providers: list[str]

    def run(self, inputs: np.ndarray) -> list[np.ndarray]:
        raise NotImplementedError


class Backend:
    name: str
    version: str

    def describe(self) -> dict[str, Any]:
        """What a worker reports of itself at registration (the coordinator filters variants by it)."""
        return {
            "arch": platform.machine(),
            "cores": os.cpu_count() or 1,
            "python": platform.python_version(),
            "os": _os_name(),
            "backend": self.name,
            "backend_version": self.version,
            "providers": self.available_providers(),
            "max_opset": self.max_opset(),
        }

    def available_providers(self) -> list[str]:
        return ["CPUExecutionProvider"]

    def max_opset(self) -> int | None:
        """None: not declared; each variant is tried at warm-up instead."""
        return None

    def open(
        self, path: Path, providers: tuple[str, ...], threads: int, engine_dir: Path | None, fp16: bool
    ) -> tuple[Session, list[str]]:
        """A session for the model file, and warnings (a provider missing, and what was used instead).
        ``engine_dir``: where TensorRT keeps built engines (None: build them at every start)."""
        raise NotImplementedError


class OrtSession(Session):
    def __init__(self, session: Any) -> None:
        self._session = session
        self.input_name = session.get_inputs()[0].name
        self.output_names = [o.name for o in session.get_outputs()]
        self.providers = list(session.get_providers())
        spec = session.get_inputs()[0]
        self.input_type = spec.type  # e.g. "tensor(uint8)"
        self.input_shape = list(spec.shape)

    def run(self, inputs: np.ndarray) -> list[np.ndarray]:
        return [np.asarray(v) for v in self._session.run(None, {self.input_name: inputs})]


class OrtBackend(Backend):
    name = "onnxruntime"

    def __init__(self) -> None:
        import onnxruntime

        self._ort = onnxruntime
        self.version = onnxruntime.__version__

    def available_providers(self) -> list[str]:
        return list(self._ort.get_available_providers())

    def max_opset(self) -> int | None:
        try:
            release = tuple(int(part) for part in self.version.split(".")[:2])
        except ValueError:
            return None
        known = [opset for version, opset in ORT_MAX_OPSET.items() if version <= release]
        return max(known) if known else None

    def open(
        self, path: Path, providers: tuple[str, ...], threads: int, engine_dir: Path | None, fp16: bool
    ) -> tuple[Session, list[str]]:
        available = set(self.available_providers())
        warnings = []
        chosen: list[Any] = []
        for provider in providers:
            if provider not in available:
                warnings.append(
                    f"{provider} is not in this onnxruntime {self.version} (it has {', '.join(sorted(available))})"
                )
            elif provider == "TensorrtExecutionProvider":
                options = {"trt_fp16_enable": "True" if fp16 else "False"}
                if engine_dir is not None:
                    engine_dir.mkdir(parents=True, exist_ok=True)
                    options.update(trt_engine_cache_enable="True", trt_engine_cache_path=str(engine_dir))
                chosen.append((provider, options))
            else:
                chosen.append(provider)
        if "CPUExecutionProvider" not in providers:
            chosen.append("CPUExecutionProvider")  # the last resort, so a session can always be made
        options = self._ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        session = OrtSession(self._ort.InferenceSession(str(path), sess_options=options, providers=chosen))
        # A provider can be present yet fail to start (no CUDA driver): ONNX Runtime then falls back quietly.
        for item in chosen:
            provider = item if isinstance(item, str) else item[0]
            if provider not in session.providers:
                warnings.append(f"{provider} could not start here; the session runs on {', '.join(session.providers)}")
        return session, warnings


class OpenCvSession(Session):
    def __init__(self, net: Any) -> None:
        self._net = net
        self.input_name = "input"
        self.output_names = list(net.getUnconnectedOutLayersNames())
        self.providers = ["CPUExecutionProvider"]

    def run(self, inputs: np.ndarray) -> list[np.ndarray]:
        # OpenCV's dnn computes in float32; the models cast their input to float first anyway.
        self._net.setInput(np.ascontiguousarray(inputs, dtype=np.float32))
        return [np.asarray(v) for v in self._net.forward(self.output_names)]


class OpenCvBackend(Backend):
    name = "opencv-dnn"

    def __init__(self) -> None:
        import cv2

        self._cv2 = cv2
        self.version = cv2.__version__

    def open(
        self, path: Path, providers: tuple[str, ...], threads: int, engine_dir: Path | None, fp16: bool
    ) -> tuple[Session, list[str]]:
        self._cv2.setNumThreads(threads)
        net = self._cv2.dnn.readNetFromONNX(str(path))
        others = [p for p in providers if p != "CPUExecutionProvider"]
        warnings = [f"{', '.join(others)}: OpenCV's dnn runs on the CPU only here"] if others else []
        return OpenCvSession(net), warnings


BACKENDS = {"onnxruntime": OrtBackend, "opencv": OpenCvBackend}


def pick_backend(name: str | None = None) -> Backend:
    """The named backend, or the first that imports: ONNX Runtime, then OpenCV."""
    names = [name] if name else list(BACKENDS)
    reasons = []
    for candidate in names:
        if candidate not in BACKENDS:
            raise ConfigError(f"unknown runtime {candidate!r}; expected one of {', '.join(BACKENDS)}")
        try:
            return BACKENDS[candidate]()
        except ImportError as exc:
            reasons.append(f"{candidate}: {exc}")
    raise ConfigError(
        "no inference runtime here (" + "; ".join(reasons) + "): install onnxruntime (pip install onnxruntime)"
        " or, where it has no wheel (armhf), Debian's python3-opencv"
    )


def _os_name() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return platform.platform()
