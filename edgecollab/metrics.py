"""Prometheus metrics of a running coordinator, read from its state when scraped.

Nothing is updated on the request path: a collector turns the coordinator's counters,
exploration table and connections into metric families at scrape time.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from .coordinator.streams import LATENCY_BUCKETS_S

if TYPE_CHECKING:
    from .coordinator.server import Coordinator
    from .coordinator.streams import OpenStream

# Coordinator counters exported as edgecollab_<name>_total.
COUNTERS = {
    "inputs_served": "Inputs predicted for completed requests",
    "replans": "Times the queued rest of a running request was planned again",
    "solves": "Joint plans solved (off the event loop)",
    "handler_errors": "Exceptions caught at a handler boundary (each answered and logged)",
    "bad_results": "Shard results of the wrong shape or type, sent again",
    "nodes_lost": "Boards declared dead or gone",
    "protocol_errors": "Malformed messages received",
    "late_replies": "Shard results dropped as late or duplicate",
    "peers_cut_off": "Peers cut off for malformed messages",
    "refused_workers": "Workers refused at registration",
    "frames_served": "Stream frames answered with a prediction",
    "frames_dropped": "Stream frames dropped by a back-pressure policy (each answered as dropped)",
    "frames_resent": "Stream frames sent again after their board was lost or refused them",
    "frame_batches": "Micro-batches of stream frames sent to boards",
}


class CoordinatorCollector(Collector):
    def __init__(self, coordinator: Coordinator) -> None:
        self.coordinator = coordinator

    def collect(self) -> Iterator[Metric]:
        c = self.coordinator
        counters = dict(c.counters)
        outcomes = CounterMetricFamily("edgecollab_requests", "Requests answered, by outcome", labels=["outcome"])
        for outcome, count in sorted(dict(c.outcomes).items()):
            outcomes.add_metric([outcome], count)
        yield outcomes
        for name, help_text in COUNTERS.items():
            yield CounterMetricFamily(f"edgecollab_{name}", help_text, value=counters.get(name, 0))
        throughput = GaugeMetricFamily(
            "edgecollab_node_throughput_ips", "Estimated inferences/s per board and variant", labels=["node", "variant"]
        )
        for row in c.table.rows():
            throughput.add_metric([str(row["node"]), str(row["variant"])], float(row["ips"]))  # type: ignore[arg-type]
        yield throughput
        in_flight = GaugeMetricFamily(
            "edgecollab_node_in_flight_shards", "Shards sent and not answered", labels=["node"]
        )
        for name in list(c.peers.links):
            in_flight.add_metric([name], c.core.in_flight(name))
        yield in_flight
        yield GaugeMetricFamily("edgecollab_nodes_alive", "Registered boards", value=len(c.peers.links))
        yield GaugeMetricFamily("edgecollab_requests_running", "Requests being dispatched", value=len(c.core.requests))
        yield GaugeMetricFamily(
            "edgecollab_efficiency", "Achieved / expected throughput, learned", value=c.table.efficiency
        )
        yield from _stream_metrics(c.core.streams.values())
        last = dict(c.last_request)
        for key, help_text in (
            ("expected_ips", "Throughput the last completed request's plan expected"),
            ("achieved_ips", "Throughput the last completed request achieved"),
            ("expected_accuracy", "Accuracy the last completed request's plan expected"),
        ):
            if key in last:
                yield GaugeMetricFamily(f"edgecollab_last_request_{key}", help_text, value=last[key])


def _stream_metrics(streams: Iterable[OpenStream]) -> Iterator[Metric]:
    """Per open stream: frames in, answered and dropped, and its latency histogram (arrival to answer)."""
    frames = CounterMetricFamily(
        "edgecollab_stream_frames", "Frames of a stream, by outcome", labels=["stream", "outcome"]
    )
    target = GaugeMetricFamily("edgecollab_stream_target_fps", "A stream's declared rate", labels=["stream"])
    latency = HistogramMetricFamily(
        "edgecollab_stream_latency_seconds", "Coordinator-side latency of a stream's frames", labels=["stream"]
    )
    for s in list(streams):
        sid = s.stream_id
        for outcome, count in (("received", s.frames), ("answered", s.results), ("dropped", s.dropped)):
            frames.add_metric([sid, outcome], count)
        target.add_metric([sid], s.spec.target_fps)
        cumulative, buckets = 0, []
        for bound, count in zip(LATENCY_BUCKETS_S, s.latency_counts, strict=True):
            cumulative += count
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
        latency.add_metric([sid], buckets, s.latency_sum_s)
    yield frames
    yield target
    yield latency


def registry_for(coordinator: Coordinator) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(CoordinatorCollector(coordinator))
    return registry
