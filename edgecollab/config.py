"""The cluster configuration (``cluster.toml``): the one place configuration is validated.

Relative paths resolve against the config file's folder. Every error names the
file and the field that was wrong and says what was expected.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ._toml import read_toml
from .errors import ConfigError

EMULATION_PROFILES = ("jetson-nano", "rpi4", "odroid-xu4")
DEFAULT_CONFIG = Path("cluster.toml")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CoordinatorConfig(_Strict):
    workers: str = Field("tcp://127.0.0.1:5555", description="ROUTER endpoint the workers connect to")
    clients: str = Field("tcp://127.0.0.1:5556", description="ROUTER endpoint the clients connect to")
    shard_size: int = Field(32, ge=1, le=4096, description="inputs per shard (micro-batch)")
    shard_seconds: float = Field(
        0.02, ge=0, le=10, description="a large request's shards are cut to take about this long on their board"
    )
    window: int = Field(2, ge=1, le=64, description="shards in flight per node, so transfer and compute overlap")
    profile_shards: int = Field(6, ge=1, le=100, description="timed shards per (node, variant) when profiling")
    profile_cache: str = Field(".edgecollab/exploration.json", description="exploration table cache file")
    startup_timeout_s: float = Field(60.0, gt=0, description="how long a request waits for configured nodes")
    heartbeat_s: float = Field(1.0, gt=0, description="heartbeat interval, both ways")
    heartbeat_misses: int = Field(3, ge=1, description="missed heartbeats after which a peer is dead")
    policy: str = Field("adaptive", description="default policy when a request names none")
    confidence: float = Field(
        0.9, ge=0.5, lt=1.0,
        description="probability a plan aims to meet its target with: rows are planned at their lower bound and "
        "a task's margin is this quantile of its measured spread",
    )  # fmt: skip
    metrics_port: int | None = Field(None, ge=0, le=65535, description="serve Prometheus metrics on this port")
    metrics_host: str = Field("127.0.0.1", description="address the metrics endpoint listens on")
    max_requests: int = Field(32, ge=1, description="requests admitted at once (waiting or running); more get 'busy'")
    work_stealing: bool = Field(True, description="idle nodes take queued shards of slower ones near the end")
    replan_on_drift: bool = Field(True, description="re-plan running requests when a node's speed drifts")
    max_streams: int = Field(256, ge=1, description="streams open at once; more are refused 'busy'")
    client_queue_messages: int = Field(
        1000, ge=1, le=100_000, description="answers a client may leave unread (twice: ZeroMQ's queue, then ours)"
    )
    max_input_bytes: int = Field(
        2 * 1024**3, ge=1, description="bytes of inputs held at once (requests waiting or running); past it 'busy'"
    )
    stream_latency_ms: float = Field(
        100.0, gt=0, le=60_000, description="latency bound of a stream that states none (send to answer, ms)"
    )
    stream_queue_frames: int = Field(
        256, ge=1, le=100_000, description="frames a stream may have unanswered; past it its back-pressure policy acts"
    )
    shutdown_grace_s: float = Field(
        10.0, ge=0, description="on SIGTERM, how long running requests may finish before they fail 'shutting_down'"
    )
    stall_factor: float = Field(
        10.0, ge=1, le=1000, description="a node whose work in flight is this many times overdue is suspect"
    )
    stall_floor_s: float = Field(
        3.0, gt=0, le=3600, description="...and at least this many seconds overdue (noise on a loaded host)"
    )

    # A site: this coordinator joins a parent coordinator as one node (see docs/architecture.md).
    parent: str | None = Field(None, description="the parent coordinator's workers endpoint: join it as a site")
    site: str | None = Field(
        None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$", description="this site's node name in the parent's config"
    )
    parent_key: str | None = Field(None, description="this site's secret CURVE certificate, as the parent knows it")
    parent_public_key: str | None = Field(None, description="the parent coordinator's public CURVE certificate")

    @field_validator("workers", "clients", "parent")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("tcp://", "ipc://", "inproc://")):
            raise ValueError(f"expected a ZeroMQ endpoint like tcp://127.0.0.1:5555, got {value!r}")
        return value

    @model_validator(mode="after")
    def _site_complete(self) -> CoordinatorConfig:
        if (self.parent is None) != (self.site is None):
            raise ValueError("parent and site go together: a site needs its parent's endpoint and its name there")
        if (self.parent_key is None) != (self.parent_public_key is None):
            raise ValueError("parent_key and parent_public_key go together (CURVE to the parent needs both)")
        if self.parent_key is not None and self.parent is None:
            raise ValueError("parent_key is for a site: set parent and site too")
        return self


class EmulationEvent(_Strict):
    """A scheduled change of an emulated board: a new speed, a hang, a stall, bad results, or vanishing."""

    at_s: float = Field(ge=0, description="seconds after the worker process started")
    speed: float | None = Field(None, gt=0, le=100, description="speed factor from then on (1 = the profile's)")
    action: Literal["hang", "vanish", "stall", "garble"] | None = Field(
        None,
        description="hang: stop responding; vanish: exit at once; stall: inference stops, heartbeats go on;"
        " garble: results come back malformed (a prediction short, NaN in float outputs)",
    )

    @model_validator(mode="after")
    def _one_change(self) -> EmulationEvent:
        if (self.speed is None) == (self.action is None):
            raise ValueError("an event sets exactly one of speed or action")
        return self


class NodeConfig(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    emulate: str | None = Field(None, description=f"board profile to emulate: one of {', '.join(EMULATION_PROFILES)}")
    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    threads: int = Field(1, ge=1, le=64, description="ONNX Runtime intra-op threads")
    fp16: bool = Field(False, description="TensorRT: build fp16 engines (with TensorrtExecutionProvider)")
    engine_cache: bool = Field(True, description="TensorRT: keep built engines on the board's disk")
    variants: tuple[str, ...] | None = Field(None, description="variants to load (default: all of the task)")
    events: tuple[EmulationEvent, ...] = Field((), description="scheduled speed changes and faults (emulated only)")
    link_mbps: float | None = Field(None, gt=0, description="bandwidth of the node's link, for link-aware planning")
    key: str | None = Field(None, description="the node's secret CURVE certificate (with [security] curve)")

    @field_validator("emulate")
    @classmethod
    def _known_profile(cls, value: str | None) -> str | None:
        if value is not None and value not in EMULATION_PROFILES:
            raise ValueError(f"unknown board profile {value!r}; expected one of {', '.join(EMULATION_PROFILES)}")
        return value

    @model_validator(mode="after")
    def _events_need_emulation(self) -> NodeConfig:
        if self.events and self.emulate is None:
            raise ValueError("events can only be scheduled on an emulated node (set emulate)")
        return self


class SecurityConfig(_Strict):
    """CURVE encryption and authentication for both sockets (off for the local emulated cluster)."""

    curve: bool = False
    coordinator_key: str | None = Field(None, description="the coordinator's secret certificate (on the coordinator)")
    coordinator_public_key: str | None = Field(None, description="the coordinator's public certificate (for peers)")
    authorized_keys: str | None = Field(None, description="folder of public certificates allowed to connect")
    client_key: str | None = Field(None, description="this client's secret certificate (submit, status, run, ...)")
    operators: tuple[str, ...] = Field(
        (), description="names of the certificates (in authorized_keys) whose status shows every client's work"
    )

    @model_validator(mode="after")
    def _complete(self) -> SecurityConfig:
        if self.operators and not self.curve:
            raise ValueError("operators need curve = true: without CURVE no client can prove who it is")
        if self.curve and not self.authorized_keys:
            raise ValueError("curve = true needs authorized_keys, an allow-list of public certificates")
        if self.curve and not self.coordinator_public_key:
            raise ValueError("curve = true needs coordinator_public_key, so peers can authenticate the coordinator")
        return self


class GatewayConfig(_Strict):
    """The Open Inference Protocol (v2) front door: HTTP and gRPC for Triton and KServe clients.

    It is a client of the coordinator, in its own process (``edgecollab gateway``), so the coordinator's
    loop carries no HTTP; with ``start = true`` the coordinator starts one beside itself.
    """

    start: bool = Field(False, description="the coordinator starts a gateway process beside itself")
    http: str | None = Field("127.0.0.1:8000", description="HOST:PORT of the HTTP/REST endpoint (none: no HTTP)")
    grpc: str | None = Field("127.0.0.1:8001", description="HOST:PORT of the gRPC endpoint (none: no gRPC)")
    tls_cert: str | None = Field(None, description="PEM certificate chain: serve HTTPS and gRPC over TLS")
    tls_key: str | None = Field(None, description="PEM private key of tls_cert")
    tls_client_ca: str | None = Field(None, description="PEM CA bundle: clients must present a certificate it signed")
    token_file: str | None = Field(None, description="file whose first line is the bearer token clients must send")
    allow_insecure: bool = Field(
        False, description="bind an address other than loopback without TLS and a token or client certificates"
    )
    max_in_flight: int = Field(
        64, ge=1, le=4096, description="requests the gateway has at the coordinator at once; more wait by priority"
    )
    timeout_s: float = Field(600.0, gt=0, description="longest a request waits for its answer, unless it says less")

    @model_validator(mode="after")
    def _complete(self) -> GatewayConfig:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("tls_client_ca (mutual TLS) needs tls_cert and tls_key")
        if self.http is None and self.grpc is None:
            raise ValueError("a gateway needs http or grpc (HOST:PORT)")
        for field, value in (("http", self.http), ("grpc", self.grpc)):
            if value is not None:
                parse_host_port(value, field)
        return self


def parse_host_port(text: str, field: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:8000`` for IPv6) as (host, port); ValueError naming ``field`` otherwise."""
    host, _, port = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{field} must be HOST:PORT with a port from 0 to 65535; got {text!r}")
    return host, int(port)


class ModelsConfig(_Strict):
    """Which tasks of the manifest the cluster serves. ``task = "x"`` alone (the one-task form) still works."""

    manifest: str | None = Field(None, description="model manifest (default: the repo's models/zoo.toml)")
    tasks: tuple[str, ...] = Field(
        ("fashion-mnist",), min_length=1, description="the tasks served; requests and streams name theirs"
    )
    task: str = Field("", description="the default task, for requests that name none (default: the first of tasks)")

    @model_validator(mode="before")
    @classmethod
    def _default_task(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("task") and "tasks" not in data:
            return {**data, "tasks": [data["task"]]}  # the one-task form: task = "x"
        if isinstance(data, dict) and not data.get("task") and data.get("tasks"):
            return {**data, "task": data["tasks"][0]}
        return data

    @property
    def served(self) -> tuple[str, ...]:
        """The tasks served, the default first."""
        return (self.task, *(t for t in self.tasks if t != self.task))

    @model_validator(mode="after")
    def _default_is_served(self) -> ModelsConfig:
        if not self.task:
            object.__setattr__(self, "task", self.tasks[0])
        if self.task not in self.tasks:
            raise ValueError(f"task (the default) is {self.task!r}, which is not one of tasks {list(self.tasks)}")
        if len(set(self.tasks)) != len(self.tasks):
            raise ValueError(f"tasks must not repeat; got {list(self.tasks)}")
        return self


class ClusterConfig(_Strict):
    coordinator: CoordinatorConfig = CoordinatorConfig()
    nodes: tuple[NodeConfig, ...]
    models: ModelsConfig = ModelsConfig()
    security: SecurityConfig = SecurityConfig()
    gateway: GatewayConfig = GatewayConfig()
    # Where the file was read from; relative paths resolve against its folder.
    base_dir: Path = Field(default_factory=Path.cwd, exclude=True)

    @model_validator(mode="after")
    def _unique_names(self) -> ClusterConfig:
        if not self.nodes:
            raise ValueError("at least one [[nodes]] table is needed")
        if self.security.curve:
            keyless = [n.name for n in self.nodes if n.key is None]
            if keyless:
                raise ValueError(f"curve = true needs a key for every node; missing for {', '.join(keyless)}")
        names = [n.name for n in self.nodes]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"node names must be unique; repeated: {', '.join(duplicates)}")
        return self

    def node(self, name: str) -> NodeConfig:
        for node in self.nodes:
            if node.name == name:
                return node
        raise ConfigError(f"no node named {name!r} in the config; nodes: {', '.join(n.name for n in self.nodes)}")

    def resolve(self, path: str) -> Path:
        return (self.base_dir / path).resolve()

    def link_seconds_per_input(self, bytes_per_input: int) -> dict[str, float]:
        """Seconds each node's link needs to carry one input, for nodes whose bandwidth is configured."""
        return {n.name: bytes_per_input * 8 / (n.link_mbps * 1e6) for n in self.nodes if n.link_mbps is not None}

    @property
    def manifest_path(self) -> Path | None:
        return self.resolve(self.models.manifest) if self.models.manifest else None


def parse_fault(text: str) -> EmulationEvent:
    """``slow=FACTOR@SECONDS``, or ``hang``, ``stall``, ``garble`` or ``vanish`` ``@SECONDS``, as an emulation event."""
    change, _, at = text.partition("@")
    try:
        at_s = float(at)
        if change.startswith("slow="):
            return EmulationEvent(at_s=at_s, speed=float(change.removeprefix("slow=")))
        if change in ("hang", "vanish", "stall", "garble"):
            return EmulationEvent(at_s=at_s, action=change)
    except (ValueError, ValidationError):
        pass
    raise ConfigError(
        f"fault {text!r} is not one of slow=FACTOR@SECONDS, hang@SECONDS, vanish@SECONDS, stall@SECONDS, garble@SECONDS"
    )


def with_faults(node: NodeConfig, faults: list[str]) -> NodeConfig:
    """The node with extra scheduled events (validated like the config's own)."""
    if not faults:
        return node
    events = (*node.events, *(parse_fault(f) for f in faults))
    try:
        return NodeConfig.model_validate({**node.model_dump(), "events": events})
    except ValidationError as exc:
        raise ConfigError(f"node {node.name}: {_first_error(exc)}") from None


def on_loopback(endpoint: str) -> str:
    """How a peer on this machine reaches an endpoint bound to every interface: on loopback."""
    return endpoint.replace("0.0.0.0", "127.0.0.1").replace("*", "127.0.0.1")


def with_endpoints(gateway: GatewayConfig, http: str | None, grpc: str | None) -> GatewayConfig:
    """The gateway's settings with ``http`` and ``grpc`` in place of the config's, where given (validated)."""
    given = {field: value for field, value in (("http", http), ("grpc", grpc)) if value is not None}
    if not given:
        return gateway
    try:
        return GatewayConfig.model_validate({**gateway.model_dump(), **given})
    except ValidationError as exc:
        raise ConfigError(f"gateway: {_first_error(exc)}") from None


def _first_error(exc: ValidationError) -> str:
    return str(exc.errors()[0]["msg"]).removeprefix("Value error, ")


def parse_config(data: dict[str, Any], source: Path) -> ClusterConfig:
    """Validate already-parsed TOML data; ``source`` is named in errors and anchors relative paths."""
    try:
        return ClusterConfig.model_validate({**data, "base_dir": source.parent.resolve()})
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = list(err["loc"])
            if len(loc) >= 2 and loc[0] == "nodes" and isinstance(loc[1], int):
                nodes = data.get("nodes", [])
                label = nodes[loc[1]].get("name") if loc[1] < len(nodes) and isinstance(nodes[loc[1]], dict) else None
                loc[1] = f"[{loc[1]}]" + (f" ({label})" if label else "")
            where = ".".join(str(p) for p in loc).replace(".[", "[") or "(top level)"
            message = err["msg"].removeprefix("Value error, ")
            lines.append(f"  {where}: {message}")
        raise ConfigError(f"invalid config {source}:\n" + "\n".join(lines)) from None


def load_config(path: Path | str | None = None) -> ClusterConfig:
    source = Path(path) if path is not None else DEFAULT_CONFIG
    return parse_config(read_toml(source, "config file", ConfigError), source)
