"""Start a coordinator and one worker process per node of a config on this machine.

This is what ``edgecollab run`` and the tests use. Each process is real and talks over
real loopback TCP sockets on free ports; children die with their parent. The network
benchmark places workers in network namespaces of their own (``WorkerPlace``).
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from .config import load_config

_PR_SET_PDEATHSIG = 1
# Looked up here, in the parent: the child between fork and exec must not dlopen (a thread of the parent
# may have held the loader's lock at the fork, and the child would wait for it for ever).
_PRCTL: Callable[[int, int], int] | None
try:
    _PRCTL = ctypes.CDLL("libc.so.6", use_errno=True).prctl
except (OSError, AttributeError):
    _PRCTL = None


def die_with_parent() -> None:
    """Linux: the child gets SIGTERM when the process that started it dies, even by SIGKILL (``preexec_fn``)."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGTERM)


def free_tcp_endpoint(host: str = "127.0.0.1") -> str:
    with socket.socket() as s:
        s.bind((host, 0))
        return f"tcp://{host}:{s.getsockname()[1]}"


@dataclass(frozen=True)
class WorkerPlace:
    """Where a worker runs when not beside the coordinator, e.g. in a network namespace of its own."""

    prefix: tuple[str, ...] = ()  # command that starts it there, e.g. ("ip", "netns", "exec", "board-1")
    coordinator: str | None = None  # the endpoint it reaches the coordinator at from there


class LocalCluster:
    """Coordinator + workers as child processes. Use as a context manager."""

    def __init__(
        self,
        config_path: Path | str = "cluster.toml",
        *,
        nodes: list[str] | None = None,
        log_dir: Path | None = None,
        verbose: int = 0,
        log_json: bool = False,
        faults: dict[str, list[str]] | None = None,
        workers_endpoint: str | None = None,
        worker_places: dict[str, WorkerPlace] | None = None,
        confidence: float | None = None,
    ) -> None:
        self.config_path = Path(config_path).resolve()
        self.config = load_config(self.config_path)  # fail early, in this process, on a bad config
        self.node_names = nodes if nodes is not None else [n.name for n in self.config.nodes]
        self.workers_endpoint = workers_endpoint or free_tcp_endpoint()
        self.clients_endpoint = free_tcp_endpoint()
        self.log_dir = log_dir or Path(tempfile.mkdtemp(prefix="edgecollab-"))
        self.verbose = verbose  # -v count handed to every process
        self.log_json = log_json
        self.faults = faults or {}  # node -> worker --fault arguments, e.g. ["slow=0.33@5"]
        self.worker_places = worker_places or {}  # node -> where its worker runs, when not beside the coordinator
        self.coordinator: subprocess.Popen[bytes] | None = None
        self.confidence = confidence  # the coordinator's plans aim at this, not the config's (None: the config's)
        self.workers: dict[str, subprocess.Popen[bytes]] = {}

    def _spawn(self, name: str, *args: str, prefix: tuple[str, ...] = ()) -> subprocess.Popen[bytes]:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - owned by the child
        options = ["-v"] * self.verbose + (["--log-json"] if self.log_json else [])
        command = [*prefix, sys.executable, "-m", "edgecollab", *options, *args]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        try:
            return subprocess.Popen(command, stdout=log, stderr=log, preexec_fn=die_with_parent, env=env)
        finally:
            log.close()

    def start(self) -> LocalCluster:
        self.start_coordinator()
        for name in self.node_names:
            self.start_worker(name)
        return self

    def start_coordinator(self) -> subprocess.Popen[bytes]:
        confidence = ["--confidence", str(self.confidence)] if self.confidence is not None else []
        self.coordinator = self._spawn(
            "coordinator", "coordinator", "--config", str(self.config_path),
            "--workers", self.workers_endpoint, "--clients", self.clients_endpoint, *confidence,
        )  # fmt: skip
        return self.coordinator

    def start_worker(self, name: str) -> subprocess.Popen[bytes]:
        faults = [arg for fault in self.faults.get(name, []) for arg in ("--fault", fault)]
        place = self.worker_places.get(name, WorkerPlace())
        process = self._spawn(
            name, "worker", "--config", str(self.config_path), "--node", name,
            "--coordinator", place.coordinator or self.workers_endpoint, *faults, prefix=place.prefix,
        )  # fmt: skip
        self.workers[name] = process
        return process

    def signal_worker(self, name: str, sig: signal.Signals) -> None:
        self.workers[name].send_signal(sig)

    def stop(self, timeout_s: float = 5.0) -> None:
        processes = [p for p in [*self.workers.values(), self.coordinator] if p is not None]
        for p in processes:
            if p.poll() is None:
                p.send_signal(signal.SIGCONT)  # a stopped process cannot handle SIGTERM
                p.terminate()
        deadline = time.monotonic() + timeout_s
        for p in processes:
            try:
                p.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def __enter__(self) -> LocalCluster:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
