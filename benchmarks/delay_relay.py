"""A TCP relay that holds every byte for a fixed time in each direction: link delay in user space.

    python benchmarks/delay_relay.py --listen 127.0.0.1:5555 --to 10.213.0.1:40000 --delay-ms 10

The network benchmark runs one in each board's namespace, between the worker and the
shaped link, where the kernel has no ``sch_netem`` to delay packets itself. Bandwidth is
left to the link's qdisc: the relay only adds the delay, and a bounded queue per
direction keeps TCP's back-pressure end to end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal

CHUNK = 64 * 1024
QUEUE_CHUNKS = 64  # at most 4 MiB held per direction


async def carry(source: asyncio.StreamReader, sink: asyncio.StreamWriter, delay_s: float) -> None:
    """Copy ``source`` to ``sink``, each chunk written ``delay_s`` after it was read."""
    loop = asyncio.get_running_loop()
    held: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(QUEUE_CHUNKS)

    async def read() -> None:
        while data := await source.read(CHUNK):
            await held.put((loop.time() + delay_s, data))
        await held.put((0.0, b""))

    async def write() -> None:
        while True:
            due, data = await held.get()
            if not data:
                break
            await asyncio.sleep(max(0.0, due - loop.time()))
            sink.write(data)
            await sink.drain()

    reader = asyncio.create_task(read())
    try:
        await write()
    finally:
        reader.cancel()
        sink.close()


async def relay(listen: tuple[str, int], to: tuple[str, int], delay_s: float) -> None:
    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*to)
        except OSError:
            writer.close()
            return
        with contextlib.suppress(OSError):
            await asyncio.gather(carry(reader, up_writer, delay_s), carry(up_reader, writer, delay_s))

    server = await asyncio.start_server(connection, *listen)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", type=address, required=True, help="HOST:PORT the worker connects to")
    parser.add_argument("--to", type=address, required=True, help="HOST:PORT of the coordinator")
    parser.add_argument("--delay-ms", type=float, required=True, help="one-way delay added in each direction")
    args = parser.parse_args()
    asyncio.run(relay(args.listen, args.to, args.delay_ms / 1e3))


if __name__ == "__main__":
    main()
