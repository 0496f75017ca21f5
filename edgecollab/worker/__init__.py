"""The board's worker: the part of edgecollab that runs on a board.

It registers with the coordinator, takes its settings and model files from it (checked by sha256,
cached on disk), warms up, and runs shards on ONNX Runtime (or OpenCV's dnn where a board has no
ONNX Runtime), with board emulation for the lab.

This folder is self-contained: it imports only the standard library, numpy, pyzmq, msgpack and an
inference runtime, and runs on Python 3.9 and later. So the same files are the full package's
``edgecollab.worker`` and the board's own small distribution, ``edgecollab-worker`` (import name
``edgecollab_worker``, built from ``pyproject.toml`` here; see docs/deployment.md): one codec, one
protocol, one worker. Nothing here may import from the rest of ``edgecollab``.
"""

__version__ = "0.1.0"
