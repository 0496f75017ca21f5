"""A TCP relay that holds every byte for a fixed time in each direction: link delay in user space.

    python benchmarks/delay_relay.py --listen 127.0.0.1:5555 --to 10.213.0.1:40000 --delay-ms 10 [--rate-mbps 50]

The network benchmark runs one in each board's namespace, between the worker and the
shaped link, where the kernel has no ``sch_netem`` to delay packets itself. Bandwidth is
left to the link's qdisc there: the relay only adds the delay, and a bounded queue per
direction keeps TCP's back-pressure end to end. With ``--rate-mbps`` the relay also paces
each direction to that rate (a slow link on loopback, no namespace needed; the sites test).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal

CHUNK = 64 * 1024
QUEUE_CHUNKS = 64  # at most 4 MiB held per direction


async def carry(source: asyncio.StreamReader, sink: asyncio.StreamWriter, delay_s: float, rate_mbps: float) -> None:
    """Copy ``source`` to ``sink``, each chunk written ``delay_s`` after it was read, at most ``rate_mbps``
    (0: as fast as it comes)."""
    loop = asyncio.get_running_loop()
    held: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(QUEUE_CHUNKS)

    async def read() -> None:
        while data := await source.read(CHUNK):
            await held.put((loop.time() + delay_s, data))
        await held.put((0.0, b""))

    async def write() -> None:
        link_free_at = 0.0  # when the paced link has carried what was written
        while True:
            due, data = await held.get()
            if not data:
                break
            if rate_mbps > 0:
                link_free_at = max(link_free_at, loop.time()) + len(data) * 8 / (rate_mbps * 1e6)
                due = max(due, link_free_at)
            await asyncio.sleep(max(0.0, due - loop.time()))
            sink.write(data)
            await sink.drain()

    reader = asyncio.create_task(read())
    try:
        await write()
    finally:
        reader.cancel()
        sink.close()


async def relay(listen: tuple[str, int], to: tuple[str, int], delay_s: float, rate_mbps: float = 0.0) -> None:
    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*to)
        except OSError:
            writer.close()
            return
        with contextlib.suppress(OSError):
            await asyncio.gather(
                carry(reader, up_writer, delay_s, rate_mbps), carry(up_reader, writer, delay_s, rate_mbps)
            )

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
    parser.add_argument("--rate-mbps", type=float, default=0.0, help="pace each direction to this rate (0: no pacing)")
    args = parser.parse_args()
    asyncio.run(relay(args.listen, args.to, args.delay_ms / 1e3, args.rate_mbps))


if __name__ == "__main__":
    main()
