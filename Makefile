# Set-up is part of every target: the virtual environment is (re)made when it is
# missing, broken, or older than pyproject.toml.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-test
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
FASHION_MNIST := /usr/share/datasets/fashion-mnist

.PHONY: test rtsp-server run lint models worker-wheel board-check bench bench-runtime bench-network bench-peers bench-v2 bench-all bench-render clean

$(STAMP): pyproject.toml
	@$(BIN)/python -c '' 2>/dev/null || { rm -rf $(VENV) && $(PYTHON) -m venv $(VENV); }
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $@

# The video tests serve an RTSP camera with GStreamer's RTSP server, run by Debian's Python.
RTSP_CHECK := import gi; gi.require_version("GstRtspServer", "1.0"); from gi.repository import GstRtspServer
rtsp-server:
	@/usr/bin/python3 -c '$(RTSP_CHECK)' 2>/dev/null || { $(SUDO) apt-get update -q && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-good; }

# Triton's perf_analyzer for the gateway's test, unpacked from PyPI's wheels beside the venv; it links Debian's libb64.
PERF_ANALYZER := $(VENV)/perf_analyzer/bin/perf_analyzer
$(PERF_ANALYZER): $(STAMP)
	@ldconfig -p | grep -q 'libb64\.so\.0d' || { $(SUDO) apt-get update -q && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q libb64-0d; }
	$(BIN)/python benchmarks/perf_analyzer_unpack.py $(VENV)/perf_analyzer

test: $(STAMP) rtsp-server $(PERF_ANALYZER)
	$(BIN)/pytest

run: $(STAMP)
	$(BIN)/edgecollab run

lint: $(STAMP)
	$(BIN)/ruff check edgecollab tests models benchmarks
	$(BIN)/ruff format --check edgecollab tests models benchmarks
	$(BIN)/mypy

# The board's own wheel (edgecollab-worker: numpy, pyzmq, msgpack, onnxruntime), to copy to boards.
worker-wheel: $(STAMP)
	$(BIN)/edgecollab worker-wheel --out dist

# The worker in a board OS's userland under qemu vs a coordinator here (root; docs/deployment.md):
#   make board-check ARCH=arm64|armhf|amd64 [SUITE=bookworm|bullseye]
ARCH  ?= arm64
SUITE ?= bookworm
board-check: $(STAMP)
	@command -v debootstrap >/dev/null && [ -e /usr/bin/qemu-aarch64-static ] || { $(SUDO) apt-get update && $(SUDO) apt-get install -y debootstrap qemu-user-static binfmt-support; }
	$(SUDO) $(BIN)/python benchmarks/board_check.py --arch $(ARCH) --suite $(SUITE)

# Retrain the variant ladder: installs the training split (Debian) and PyTorch (CPU).
models: $(STAMP)
	@[ -f $(FASHION_MNIST)/train-images-idx3-ubyte.gz ] || { $(SUDO) apt-get update && $(SUDO) apt-get install -y dataset-fashion-mnist; }
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[train]'
	$(BIN)/python models/train.py --data $(FASHION_MNIST)
	$(BIN)/python models/upscale.py
	$(BIN)/python models/detect.py --data $(FASHION_MNIST)
	$(BIN)/edgecollab models verify

# Benchmarks write JSON and plots to benchmarks/results/ (see docs/benchmarks.md).
bench: $(STAMP)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[plot]'
	$(BIN)/python benchmarks/planner_scaling.py
	$(BIN)/python benchmarks/promises.py
	$(BIN)/python benchmarks/policies.py

# Efficiency, coordinator overhead, adaptation, many tenants, streams and the closed loop (docs/benchmarks.md).
bench-runtime: $(STAMP) rtsp-server
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[plot]'
	$(BIN)/python benchmarks/efficiency.py
	$(BIN)/python benchmarks/overhead.py
	$(BIN)/python benchmarks/adaptation.py
	$(BIN)/python benchmarks/tenants.py
	$(BIN)/python benchmarks/streams.py
	$(BIN)/python benchmarks/closed_loop.py
	$(BIN)/python benchmarks/rtsp_cameras.py

# Every worker in a network namespace behind a shaped link (docs/benchmarks.md); needs root, says so otherwise.
bench-network: $(STAMP)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[plot]'
	$(BIN)/python benchmarks/network.py

# Ray Serve and PyTriton side by side with edgecollab, in their own environment (never needed by the tests).
PEERS := .venv-peers
bench-peers:
	@$(PEERS)/bin/python -c '' 2>/dev/null || $(PYTHON) -m venv $(PEERS)
	$(PEERS)/bin/pip install --quiet --disable-pip-version-check -e '.[plot]' 'ray[serve]>=2.40' 'nvidia-pytriton>=0.5'
	@# tritonclient keeps protobuf below 7; newer grpcio-reflection (a Ray Serve dependency) needs 7.
	$(PEERS)/bin/pip install --quiet --disable-pip-version-check 'protobuf>=6.31,<7' 'grpcio-reflection>=1.72,<1.80'
	$(PEERS)/bin/python benchmarks/peers.py
	$(PEERS)/bin/python benchmarks/peers.py --closed-loop
	$(PEERS)/bin/python benchmarks/peers.py --cameras 8,16,32,48

# Triton's perf_analyzer against edgecollab's v2 gateway and PyTriton, side by side (docs/benchmarks.md).
# perf_analyzer ships in tritonclient's wheels up to 2.51.0; benchmarks/perf_analyzer_unpack.py takes it
# and the CUDA runtime it links (no GPU needed) out of PyPI's wheels; it links Debian's libb64 too.
bench-v2:
	@$(PEERS)/bin/python -c '' 2>/dev/null || $(PYTHON) -m venv $(PEERS)
	@ldconfig -p | grep -q 'libb64\.so\.0d' || { $(SUDO) apt-get update -q && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q libb64-0d; }
	$(PEERS)/bin/pip install --quiet --disable-pip-version-check -e '.[plot]' 'nvidia-pytriton>=0.7'
	@[ -x $(PEERS)/perf_analyzer/bin/perf_analyzer ] || $(PEERS)/bin/python benchmarks/perf_analyzer_unpack.py $(PEERS)/perf_analyzer
	$(PEERS)/bin/python benchmarks/v2_perf_analyzer.py

# Every benchmark the README and docs/benchmarks.md quote, one after another, then the docs' tables
# rendered from what they wrote (about 2 hours on the development machine; network needs root).
bench-all: bench bench-runtime bench-network
	$(BIN)/python benchmarks/applications.py
	$(MAKE) bench-peers
	$(MAKE) bench-v2
	$(BIN)/python benchmarks/chaos.py
	$(MAKE) bench-render

# Rewrite the figures in README.md and docs/benchmarks.md from benchmarks/results/ (tests check they agree).
bench-render: $(STAMP)
	$(BIN)/python benchmarks/render.py

clean:
	rm -rf $(VENV) $(PEERS) .pytest_cache .mypy_cache .ruff_cache
