"""The Open Inference Protocol (v2) gateway: Triton and KServe clients, and ``perf_analyzer``, unchanged.

A gateway is a client of the coordinator (one DEALER socket, CURVE when the cluster uses it) that
serves v2 over HTTP/REST (aiohttp) and gRPC (grpc.aio). It holds no state the coordinator needs:
several can run side by side, and the coordinator's loop carries no HTTP.

    v2.py           the protocol mapped onto tasks, variants and requests (pure)
    service.py      the coordinator client, the model catalogue, admission by priority
    http_api.py     the HTTP routes and the binary tensor extension
    grpc_api.py     GRPCInferenceService, ModelStreamInfer included
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import signal
import ssl
from pathlib import Path

import grpc
from aiohttp import web

from ..client import Client
from ..config import GatewayConfig, parse_host_port
from ..errors import ConfigError
from ..security import ClientCurve
from .grpc_api import V2Servicer, add_servicer
from .http_api import make_app
from .service import V2Service

__all__ = ["Gateway"]

log = logging.getLogger(__name__)
# gRPC messages may be as large as the coordinator takes (a request of many inputs).
MAX_MESSAGE_BYTES = 2**30


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(settings: GatewayConfig) -> None:
    """Bind beyond loopback only with TLS and a way to tell clients apart (a token or client
    certificates), or when told to (``allow_insecure``)."""
    guarded = settings.tls_cert is not None and (settings.token_file is not None or settings.tls_client_ca is not None)
    for field, address in (("http", settings.http), ("grpc", settings.grpc)):
        if address is None or guarded or settings.allow_insecure:
            continue
        host, _ = parse_host_port(address, field)
        if not _is_loopback(host):
            raise ConfigError(
                f"gateway {field} = {address!r} is not a loopback address: set tls_cert and tls_key with token_file "
                "or tls_client_ca, or allow_insecure = true to serve it unprotected"
            )


class Gateway:
    """One gateway's servers. ``async with Gateway(...)`` starts them; ``serve()`` runs until SIGTERM."""

    def __init__(
        self, settings: GatewayConfig, coordinator: str, *, curve: ClientCurve | None = None, base_dir: Path = Path()
    ) -> None:
        check_exposure(settings)
        self.settings = settings
        self.coordinator = coordinator
        self.curve = curve
        self.base_dir = base_dir
        self.http_port: int | None = None  # the ports bound (a port 0 in the settings is chosen by the OS)
        self.grpc_port: int | None = None
        self._client: Client | None = None
        self._runner: web.AppRunner | None = None
        self._grpc: grpc.aio.Server | None = None

    def _path(self, name: str | None) -> Path | None:
        return None if name is None else (self.base_dir / name).resolve()

    def _token(self) -> str | None:
        path = self._path(self.settings.token_file)
        if path is None:
            return None
        try:
            lines = path.read_text().splitlines()
        except OSError as exc:
            raise ConfigError(f"gateway token_file {path}: {exc.strerror}") from None
        token = lines[0].strip() if lines else ""
        if not token:
            raise ConfigError(f"gateway token_file {path} is empty; its first line must be the token")
        return token

    def _read(self, name: str | None) -> bytes | None:
        path = self._path(name)
        if path is None:
            return None
        try:
            return path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"gateway: cannot read {path}: {exc.strerror}") from None

    def _ssl_context(self) -> ssl.SSLContext | None:
        if self.settings.tls_cert is None:
            return None
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            context.load_cert_chain(str(self._path(self.settings.tls_cert)), str(self._path(self.settings.tls_key)))
            if self.settings.tls_client_ca is not None:
                context.verify_mode = ssl.CERT_REQUIRED
                context.load_verify_locations(str(self._path(self.settings.tls_client_ca)))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"gateway TLS: {exc}") from None
        return context

    async def __aenter__(self) -> Gateway:
        token = self._token()
        self._client = Client(self.coordinator, timeout_s=self.settings.timeout_s, curve=self.curve)
        await self._client.__aenter__()
        service = V2Service(self._client, self.settings)
        try:
            if self.settings.http is not None:
                host, port = parse_host_port(self.settings.http, "http")
                self._runner = web.AppRunner(make_app(service, token), access_log=None)
                await self._runner.setup()
                site = web.TCPSite(self._runner, host, port, ssl_context=self._ssl_context())
                await site.start()
                self.http_port = self._runner.addresses[0][1]
                log.info("gateway: v2 HTTP on %s:%d", host, self.http_port)
            if self.settings.grpc is not None:
                host, port = parse_host_port(self.settings.grpc, "grpc")
                options = [
                    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ]
                self._grpc = grpc.aio.server(options=options)
                add_servicer(V2Servicer(service, token), self._grpc)
                address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
                if self.settings.tls_cert is not None:
                    key, cert = self._read(self.settings.tls_key), self._read(self.settings.tls_cert)
                    ca = self._read(self.settings.tls_client_ca)
                    credentials = grpc.ssl_server_credentials([(key, cert)], ca, require_client_auth=ca is not None)
                    self.grpc_port = self._grpc.add_secure_port(address, credentials)
                else:
                    self.grpc_port = self._grpc.add_insecure_port(address)
                await self._grpc.start()
                log.info("gateway: v2 gRPC on %s:%d", host, self.grpc_port)
        except BaseException:
            await self.__aexit__()
            raise
        log.info("gateway: a client of the coordinator at %s", self.coordinator)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._grpc is not None:
            await self._grpc.stop(grace=1.0)
        if self._runner is not None:
            await self._runner.cleanup()
        if self._client is not None:
            await self._client.__aexit__(None, None, None)

    async def serve(self) -> None:
        """Run until SIGTERM or SIGINT."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        async with self:
            await stop.wait()
