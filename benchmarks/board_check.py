"""The board check: the thin worker installed in a board OS's own userland, run under qemu against a
coordinator on this machine, and its answers compared with an x86 run of the same variants.

    sudo python benchmarks/board_check.py --arch arm64            # Raspberry Pi 4: Debian 12, wheels
    sudo python benchmarks/board_check.py --arch armhf            # Odroid XU4: Debian 12, Debian's packages
    sudo python benchmarks/board_check.py --arch amd64 --suite bullseye   # Debian 11's Python 3.9

(``make board-check ARCH=...``). Needs root, debootstrap and qemu-user-static. Steps, each timed:
1. the userland, built once with ``debootstrap --variant=minbase`` (kept in --boards);
2. the worker installed in it as a user would: the edgecollab-worker wheel into a venv, its
   dependencies from PyPI wheels, or (armhf, where PyPI has none) from Debian's packages;
3. a coordinator here, the worker in the userland (under qemu, ``QEMU_CPU`` the board's core),
   started with only --coordinator, --node and --cache: settings and models come over the bus;
4. real requests (every output of the model) and a stream, compared with ONNX Runtime on x86.
Writes benchmarks/results/board-ARCH-SUITE.json; exits 1 when the outputs disagree.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from common import MANIFEST, RESULTS, run_info, write_results

from edgecollab.boards import build_worker_wheel
from edgecollab.client import SyncClient
from edgecollab.inspection import ask
from edgecollab.local import LocalCluster, die_with_parent
from edgecollab.zoo import load_manifest, load_test_set, open_session

MIRROR = "http://deb.debian.org/debian"
HOST_CA = "/etc/ssl/certs/ca-certificates.crt"
QEMU_CPU = {"arm64": "cortex-a72", "armhf": "cortex-a15"}  # the Pi 4's core; the XU4's big core
BOARD_VARIANTS = ["cnn-8", "resnet-8-int8", "linear"]
INPUTS = 1000
STREAM_FRAMES = 200
# Debian's packages for a board with no PyPI wheels (armhf); OpenCV's dnn stands in for ONNX Runtime.
DEBIAN_RUNTIME = ["python3-numpy", "python3-zmq", "python3-msgpack", "python3-opencv"]
PREDICTIONS_AGREE = 0.999  # share of inputs with the same class as on x86
OUTPUTS_WITHIN = 1e-3  # largest absolute difference of any output value


def sh(*command: str, timeout: float = 3600, **options: Any) -> str:
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False, **options)
    if done.returncode != 0:
        raise SystemExit(f"failed ({done.returncode}): {' '.join(command)}\n{done.stdout[-2000:]}{done.stderr[-3000:]}")
    return done.stdout


def userland(boards: Path, arch: str, suite: str) -> tuple[Path, float | None]:
    """The board OS's root folder (built when missing) and how long building it took (None: it was there)."""
    root = boards / f"{arch}-{suite}"
    if (root / "usr" / "bin" / "python3").exists():
        return root, None
    started = time.monotonic()
    partial = root.with_suffix(".part")
    shutil.rmtree(partial, ignore_errors=True)
    boards.mkdir(parents=True, exist_ok=True)
    include = "python3,python3-venv,python3-pip,ca-certificates"
    sh("debootstrap", "--variant=minbase", f"--arch={arch}", f"--include={include}", suite, str(partial), MIRROR)
    partial.rename(root)
    return root, time.monotonic() - started


@contextlib.contextmanager
def mounted(root: Path) -> Iterator[None]:
    """/proc and /dev for the userland. Never the host's /sys: ONNX Runtime's cpuinfo would read the x86
    topology there, and ``import onnxruntime`` dies with SIGSEGV under qemu."""
    shutil.copy("/etc/resolv.conf", root / "etc" / "resolv.conf")
    # The host's CA bundle, so pip in the userland trusts what the host trusts (a proxy's CA, say).
    shutil.copy(HOST_CA, root / "etc" / "ssl" / "host-ca.crt")
    points = [(root / "proc", ["-t", "proc", "proc"]), (root / "dev", ["--bind", "/dev"])]
    done = []
    try:
        for point, how in points:
            sh("mount", *how, str(point))
            done.append(point)
        yield
    finally:
        for point in reversed(done):
            subprocess.run(["umount", "-l", str(point)], check=False)


def inside(root: Path, *command: str, timeout: float = 3600, env: dict[str, str] | None = None) -> str:
    environment = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "LANG": "C.UTF-8",
                   "PIP_CERT": "/etc/ssl/host-ca.crt", "PIP_DISABLE_PIP_VERSION_CHECK": "1", **(env or {})}  # fmt: skip
    return sh("chroot", str(root), *command, timeout=timeout, env=environment)


def install(root: Path, arch: str, wheel: Path) -> dict[str, Any]:
    """Install the worker as a user on the board would; how long it took and where each part came from."""
    shutil.copy(wheel, root / "root" / wheel.name)
    venv = "/opt/edgecollab-worker"
    shutil.rmtree(root / venv.lstrip("/"), ignore_errors=True)
    started = time.monotonic()
    sources: dict[str, str] = {}
    if arch == "armhf":
        inside(root, "apt-get", "update", "-q")
        inside(root, "apt-get", "install", "-y", "-q", "--no-install-recommends", *DEBIAN_RUNTIME,
               env={"DEBIAN_FRONTEND": "noninteractive"})  # fmt: skip
        inside(root, "python3", "-m", "venv", "--system-site-packages", venv)
        inside(root, f"{venv}/bin/pip", "install", "--quiet", f"/root/{wheel.name}")
        for module, package in zip(["numpy", "zmq", "msgpack", "cv2"], DEBIAN_RUNTIME, strict=True):
            version = inside(root, "dpkg-query", "-W", "-f=${Version}", package)
            sources[module] = f"Debian package {package} {version}"
    else:
        inside(root, "python3", "-m", "venv", venv)
        inside(root, f"{venv}/bin/pip", "install", "--quiet", "--upgrade", "pip")  # Debian 11's pip 20 has no --report
        inside(root, f"{venv}/bin/pip", "install", "--quiet", "--report", "/root/report.json", f"/root/{wheel.name}")
        report = json.loads((root / "root" / "report.json").read_text())
        for item in report["install"]:
            url = item.get("download_info", {}).get("url", "")
            name = item["metadata"]["name"]
            kind = "wheel" if url.endswith(".whl") else "built from source"
            sources[name] = f"{kind} {item['metadata']['version']} ({url.rsplit('/', 1)[-1]})"
    seconds = time.monotonic() - started
    size = sh("du", "-sm", str(root / venv.lstrip("/"))).split()[0]
    python = inside(root, "python3", "-c", "import platform; print(platform.python_version())").strip()
    return {"seconds": round(seconds, 1), "sources": sources, "venv_mb": int(size), "python": python}


def coordinator_config(folder: Path, node: str) -> Path:
    path = folder / "cluster.toml"
    path.write_text(
        "[coordinator]\nstartup_timeout_s = 1200\nprofile_shards = 3\n"
        f'profile_cache = "{folder / "exploration.json"}"\n'
        f'[models]\nmanifest = "{MANIFEST}"\n'
        f'[[nodes]]\nname = "{node}"\nthreads = 1\nvariants = {json.dumps(BOARD_VARIANTS)}\n'
    )
    return path


def wait_ready(endpoint: str, node: str, timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    status: dict[str, Any] = {}
    while time.monotonic() < deadline:
        status = ask(endpoint, "status", 30)
        entry = next((n for n in status["nodes"] if n["name"] == node), None)
        if entry is not None and entry["ready"] and entry["profiled"] and status["state"] == "serving":
            return entry
        time.sleep(1.0)
    raise SystemExit(f"the board did not become ready in {timeout_s:.0f} s: {status}")


def reference(variants: set[str], inputs: np.ndarray) -> dict[str, dict[str, np.ndarray]]:
    """Every output of each variant, run on this machine's ONNX Runtime (x86)."""
    manifest = load_manifest(MANIFEST, check_files=False)
    out = {}
    for name in variants:
        variant = manifest.variant(name)
        session = open_session(manifest.resolve(variant.file), manifest.task_of(variant))
        values = session.run(None, {session.get_inputs()[0].name: inputs})
        out[name] = {o.name: np.asarray(v) for o, v in zip(session.get_outputs(), values, strict=True)}
    return out


def compare(result_variants: list[str], predictions: np.ndarray, outputs: dict[str, np.ndarray] | None,
            inputs: np.ndarray) -> dict[str, Any]:  # fmt: skip
    """Agreement with x86 per variant: share of equal predictions and the largest output difference."""
    used = np.array(result_variants)
    ref = reference(set(result_variants), inputs)
    per_variant = {}
    for name in sorted(set(result_variants)):
        rows = used == name
        expected = next(iter(ref[name].values()))[rows].argmax(axis=1)
        entry: dict[str, Any] = {
            "inputs": int(rows.sum()),
            "same_prediction": float(np.mean(predictions[rows] == expected)),
        }
        if outputs:
            entry["max_abs_diff"] = max(float(np.max(np.abs(outputs[k][rows] - ref[name][k][rows]))) for k in ref[name])
        per_variant[name] = entry
    return per_variant


def serve_and_compare(endpoint: str, images: np.ndarray) -> dict[str, Any]:
    checks: dict[str, Any] = {}
    with SyncClient(endpoint, timeout_s=1800) as client:
        for label, options in (("most accurate", {}), ("fastest", {"target_ips": 1e6})):
            started = time.monotonic()
            result = client.infer(images, outputs="all", **options)
            checks[label] = {
                "seconds": round(time.monotonic() - started, 2),
                "achieved_ips": round(result.achieved_ips, 1),
                "variants": compare(result.variants, result.predictions, result.outputs, images),
            }
        frames = images[:STREAM_FRAMES]
        got: dict[int, tuple[int, str]] = {}
        with client.stream(20.0, degrade=True) as stream:
            for frame in frames:
                stream.send(frame[None])
            stream.close()
            for r in stream:
                got[r.seq] = (r.prediction, r.variant)
        order = sorted(got)
        stream_variants = [got[s][1] for s in order]
        checks["stream"] = {
            "frames": len(frames),
            "answered": len(got),
            "variants": compare(stream_variants, np.array([got[s][0] for s in order]), None, frames[order]),
        }
    return checks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", choices=["arm64", "armhf", "amd64"], required=True)
    parser.add_argument("--suite", default="bookworm", help="Debian release of the userland (bookworm, bullseye)")
    parser.add_argument("--boards", type=Path, default=Path("/var/tmp/edgecollab-boards"), help="userlands kept here")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("the board check needs root (debootstrap, chroot, mount): run it with sudo")
    for tool in ("debootstrap", "chroot"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is missing: apt-get install debootstrap qemu-user-static binfmt-support")
    binfmt = Path("/proc/sys/fs/binfmt_misc")
    if not (binfmt / "status").exists():
        sh("mount", "-t", "binfmt_misc", "binfmt_misc", str(binfmt))
    node = f"board-{args.arch}"
    root, built_s = userland(args.boards, args.arch, args.suite)
    work = args.boards / f"run-{args.arch}-{args.suite}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    wheel = build_worker_wheel(work / "dist")
    manifest = load_manifest(MANIFEST, check_files=False)
    test_set = load_test_set(manifest, manifest.task_of(manifest.variant(BOARD_VARIANTS[0])))
    images = np.ascontiguousarray(test_set.inputs[:INPUTS])
    with mounted(root):
        installed = install(root, args.arch, wheel)
        print(f"installed in {installed['seconds']} s: {installed['sources']}", file=sys.stderr)
        shutil.rmtree(root / "var" / "cache" / "edgecollab", ignore_errors=True)  # a first start: nothing cached
        with LocalCluster(coordinator_config(work, node), nodes=[], log_dir=work / "logs") as local:
            environment = {"PATH": "/usr/bin:/bin", "HOME": "/root", "LANG": "C.UTF-8"}
            if args.arch in QEMU_CPU:
                environment["QEMU_CPU"] = QEMU_CPU[args.arch]
            worker_bin = "/opt/edgecollab-worker/bin/edgecollab-worker"
            cache = "/var/cache/edgecollab"
            chroot = shutil.which("chroot") or "chroot"
            command = [chroot, str(root), worker_bin, "--coordinator", local.workers_endpoint, "--node", node,
                       "--cache", cache]  # fmt: skip
            started = time.monotonic()
            with open(work / "board.log", "wb") as log:
                worker = subprocess.Popen(command, stdout=log, stderr=log, env=environment, preexec_fn=die_with_parent)
            try:
                entry = wait_ready(local.clients_endpoint, node, 1800)
                ready_s = time.monotonic() - started
                checks = serve_and_compare(local.clients_endpoint, images)
            finally:
                worker.terminate()
                worker.wait(60)
    agreements = [v for check in checks.values() for v in check["variants"].values()]
    ok = all(
        v["same_prediction"] >= PREDICTIONS_AGREE and v.get("max_abs_diff", 0.0) <= OUTPUTS_WITHIN for v in agreements
    )
    ok = ok and checks["stream"]["answered"] == STREAM_FRAMES
    results = {
        **run_info(),
        "board": {
            "arch": args.arch,
            "suite": args.suite,
            "qemu_cpu": QEMU_CPU.get(args.arch),
            "runtime": entry["runtime"],
        },
        "userland_build_s": None if built_s is None else round(built_s, 1),
        "install": installed,
        "worker_ready_s": round(ready_s, 1),
        "warmup_s": entry["warmup_s"],
        "warnings": entry["warnings"],
        "left_out": entry["left_out"],
        "profiled_ips": entry["ips"],
        "checks": checks,
        "thresholds": {"same_prediction": PREDICTIONS_AGREE, "max_abs_diff": OUTPUTS_WITHIN},
        "passed": ok,
    }
    write_results(RESULTS / f"board-{args.arch}-{args.suite}.json", results, lambda path: None)
    print(
        json.dumps({k: results[k] for k in ("install", "worker_ready_s", "profiled_ips", "checks", "passed")}, indent=1)
    )
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
