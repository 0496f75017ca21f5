"""What both front doors share: the coordinator client, the model catalogue, admission by priority."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from ..client import Client
from ..config import GatewayConfig
from ..errors import RequestFailed
from . import v2

# The catalogue (tasks, readiness, counters) is asked of the coordinator at most this often.
CATALOGUE_TTL_S = 0.5


class PriorityGate:
    """At most ``limit`` calls at the coordinator at once; the others wait, lowest priority number first
    and in arrival order within a level. One event loop only."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.running = 0
        self._waiting: list[tuple[int, int, asyncio.Future[None]]] = []  # a heap: (priority, arrival, wake-up)
        self._arrivals = itertools.count()

    @asynccontextmanager
    async def slot(self, priority: int) -> AsyncIterator[None]:
        if self.running >= self.limit or self._waiting:
            wake: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            heapq.heappush(self._waiting, (priority, next(self._arrivals), wake))
            try:
                await wake
            except asyncio.CancelledError:
                if wake.done() and not wake.cancelled():  # handed a slot as it gave up: pass it on
                    self._release()
                raise
        else:
            self.running += 1
        try:
            yield
        finally:
            self._release()

    def _release(self) -> None:
        """Hand the slot to the first waiter still waiting, or free it."""
        while self._waiting:
            _, _, wake = heapq.heappop(self._waiting)
            if not wake.done():
                wake.set_result(None)
                return
        self.running -= 1

    @property
    def waiting(self) -> int:
        return sum(not w.done() for _, _, w in self._waiting)


class V2Service:
    """The gateway's side of the coordinator: one ``Client`` (one DEALER socket) for every v2 request."""

    def __init__(self, client: Client, settings: GatewayConfig) -> None:
        self.client = client
        self.settings = settings
        self.gate = PriorityGate(settings.max_in_flight)
        self._models: dict[str, v2.ModelInfo] = {}
        self._fetched_at = float("-inf")
        self._fetching: asyncio.Task[None] | None = None
        self.last_inference_ms: dict[str, int] = {}  # per model: when its last request was answered (Unix ms)

    @property
    def version(self) -> str:
        try:
            return version("edgecollab")
        except PackageNotFoundError:
            return "unknown"

    async def models(self, fresh: bool = False) -> dict[str, v2.ModelInfo]:
        """The tasks the coordinator serves; asked again when older than CATALOGUE_TTL_S (or ``fresh``).
        Concurrent callers share one query. A coordinator that does not answer is 503."""
        if fresh or time.monotonic() - self._fetched_at > CATALOGUE_TTL_S:
            if self._fetching is None or self._fetching.done():
                self._fetching = asyncio.create_task(self._fetch())
            await asyncio.shield(self._fetching)
        return self._models

    async def _fetch(self) -> None:
        try:
            answer = await asyncio.wait_for(self.client.query("models"), timeout=5.0)
        except TimeoutError:
            raise v2.V2Error(503, "UNAVAILABLE", "the coordinator did not answer within 5 s") from None
        except RequestFailed as exc:
            raise v2.error_for_code(exc.code, str(exc)) from None
        self._models = v2.catalogue(answer)
        self._fetched_at = time.monotonic()

    async def live(self) -> bool:
        return True  # the process answers; readiness says whether the cluster serves

    async def ready(self) -> bool:
        """Profiled and serving: every task the cluster serves has a ready board."""
        try:
            models = await self.models()
        except v2.V2Error:
            return False
        return bool(models) and all(m.ready for m in models.values())

    async def model(self, name: str, version: str = "") -> v2.ModelInfo:
        return v2.find_model(await self.models(), name, version or None)

    async def infer(self, request: v2.V2Request) -> v2.V2Response:
        """Run one v2 request on the cluster; a ``V2Error`` for anything but success."""
        model = await self.model(request.model, request.version)
        call = v2.prepare(model, request, self.settings.timeout_s)
        try:
            async with asyncio.timeout(call.timeout_s):
                async with self.gate.slot(call.priority):
                    result = await self.client.infer(call.inputs, **call.client_options())
        except TimeoutError:
            # Leaving ``client.infer`` by cancellation told the coordinator to drop what is left of it.
            raise v2.V2Error(
                504, "DEADLINE_EXCEEDED", f"timeout: no answer within the request's {call.timeout_s:g} s"
            ) from None
        except RequestFailed as exc:
            raise v2.error_for_code(exc.code, str(exc)) from None
        self.last_inference_ms[model.name] = int(time.time() * 1e3)
        return v2.respond(call, result.outputs, result.predictions, result.variants, result.nodes, result.report)

    async def statistics(self, name: str = "", version: str = "") -> dict[str, Any]:
        models = await self.models(fresh=True)
        chosen = [v2.find_model(models, name, version or None)] if name else list(models.values())
        entries = [v2.model_statistics(m, version, self.last_inference_ms.get(m.name, 0)) for m in chosen]
        return {"model_stats": [entry for model_entries in entries for entry in model_entries]}
