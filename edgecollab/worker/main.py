"""``edgecollab-worker``: a board joins a coordinator with nothing on it but this package.

    edgecollab-worker --coordinator tcp://HOST:PORT --node NAME [--keys DIR] [--cache DIR]

Settings (providers, threads, emulation) and model files come from the coordinator. Exit codes:
0 stopped, 2 bad arguments or keys, 3 refused by the coordinator, 4 an emulated board vanished.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import sys
from pathlib import Path

from . import __version__, logs
from .agent import WorkerAgent
from .backends import BACKENDS, pick_backend
from .cache import ModelCache, default_cache_dir
from .errors import EdgecollabError
from .keys import ClientCurve, curve_from_folder
from .settings import EventSpec

EXIT_USAGE = 2
NODE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edgecollab-worker", description=__doc__.split("\n\n")[0])
    p.add_argument("--coordinator", required=True, help="the coordinator's workers endpoint, tcp://HOST:PORT")
    p.add_argument("--node", required=True, help="this board's node name in the coordinator's config")
    p.add_argument("--keys", type=Path, help="folder with NODE.key_secret and coordinator.key (CURVE on)")
    p.add_argument("--cache", type=Path, help=f"where model files are kept (default {default_cache_dir()})")
    p.add_argument("--runtime", choices=sorted(BACKENDS), help="inference runtime (default: the first that imports)")
    p.add_argument("-v", "--verbose", action="count", default=0, help="-v info, -vv debug")
    p.add_argument("--log-json", action="store_true", help="one JSON object per log line")
    p.add_argument("--version", action="version", version=f"edgecollab-worker {__version__}")
    return p


def run_worker(
    node: str,
    coordinator: str,
    *,
    curve: ClientCurve | None = None,
    cache: Path | None = None,
    runtime: str | None = None,
    events: tuple[EventSpec, ...] = (),
) -> int:
    """Run a worker until it is stopped; its exit code. Bad arguments raise ``EdgecollabError``."""
    if not NODE_NAME.match(node):
        raise EdgecollabError(f"--node {node!r}: expected letters, digits, '.', '_' or '-', at most 64")
    if not re.match(r"^(tcp|ipc)://\S+$", coordinator):
        raise EdgecollabError(f"--coordinator {coordinator!r}: expected an endpoint such as tcp://10.0.0.1:5555")
    agent = WorkerAgent(
        node, coordinator, pick_backend(runtime), ModelCache(cache or default_cache_dir()), curve, events
    )
    return asyncio.run(agent.run())


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    logs.configure(max(args.verbose, 1), args.log_json)  # a board's log says when it is ready
    try:
        curve = curve_from_folder(args.keys, args.node) if args.keys is not None else None
        code = run_worker(args.node, args.coordinator, curve=curve, cache=args.cache, runtime=args.runtime)
    except EdgecollabError as exc:
        logging.getLogger("edgecollab_worker").error("%s", exc)
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    sys.exit(code)


if __name__ == "__main__":
    main()
