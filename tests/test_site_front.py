"""A site's front (planner/site.py) and how the dispatch core takes a site: pure, no sockets."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from edgecollab.config import CoordinatorConfig
from edgecollab.coordinator.events import NodeProfiled, RequestOpened
from edgecollab.coordinator.peers import WorkerLink
from edgecollab.coordinator.site import LINK_EVERY_S, PROBE_TIMEOUT_S, _LinkProbes
from edgecollab.planner import ExplorationTable, Measurement
from edgecollab.planner.site import (
    PROBE_ROUNDS,
    PROBE_SIZES,
    front_from_wire,
    front_moved,
    front_to_wire,
    link_mbps_from,
    link_moved,
    site_front,
)
from edgecollab.protocol import LinkProbe
from edgecollab.worker.settings import NodeSettings

from .core_helpers import core_with, sends, solve
from .test_dispatch import SHAPE, run_to_end, submit

ACCURACY = {"tiny": 0.80, "small": 0.88, "big": 0.93, "slow-and-worse": 0.85}


def table(rows: dict[str, dict[str, float]]) -> ExplorationTable:
    t = ExplorationTable(ACCURACY)
    for node, speeds in rows.items():
        for variant, ips in speeds.items():
            t.record(node, variant, Measurement(ips, 1000 * 32 / ips, ((1, 2.0), (16, 16000 / ips))))
    return t


def test_the_front_sums_the_boards_and_keeps_the_fastest_boards_latency() -> None:
    t = table({"a": {"small": 1000.0, "big": 200.0}, "b": {"small": 3000.0, "big": 600.0}, "c": {"big": 100.0}})
    front = site_front(t, ["a", "b", "c"], {"task": ["small", "big"]})
    assert front["small"].ips == pytest.approx(4000.0) and front["big"].ips == pytest.approx(900.0)
    assert front["small"].latencies == t.get("b", "small").latencies  # a frame waits on the fastest board


def test_a_variant_another_beats_on_speed_and_accuracy_is_off_the_front() -> None:
    t = table({"a": {"tiny": 5000.0, "small": 4000.0, "slow-and-worse": 1000.0, "big": 500.0}})
    front = site_front(t, ["a"], {"task": ["tiny", "small", "slow-and-worse", "big"]})
    assert set(front) == {"tiny", "small", "big"}  # slow-and-worse: small is faster and more accurate


def test_tasks_have_fronts_of_their_own_and_boards_not_serving_are_left_out() -> None:
    t = table({"a": {"tiny": 5000.0, "big": 100.0}, "gone": {"tiny": 1e6}})
    front = site_front(t, ["a"], {"one": ["tiny"], "two": ["big"]})  # big is slower, but the only one of its task
    assert set(front) == {"tiny", "big"} and front["tiny"].ips == 5000.0
    assert site_front(t, [], {"one": ["tiny"]}) == {}


def test_the_front_is_reported_again_only_when_it_moves() -> None:
    old = {"small": Measurement(1000.0, 10.0)}
    assert not front_moved(old, {"small": Measurement(1050.0, 10.0)})
    assert front_moved(old, {"small": Measurement(1200.0, 10.0)})
    assert front_moved(old, {"small": Measurement(1000.0, 10.0), "big": Measurement(100.0, 50.0)})


def test_a_front_survives_the_wire_and_a_bad_one_is_named() -> None:
    front = {"small": Measurement(1000.0, 10.0, ((1, 1.5), (16, 9.0)))}
    assert front_from_wire(front_to_wire(front), ["small"]) == front
    with pytest.raises(ValueError, match="'big' is not one the site registered with"):
        front_from_wire({"big": {"ips": 1.0, "latency_ms": 1.0}}, ["small"])
    with pytest.raises(ValueError, match="positive finite"):
        front_from_wire({"small": {"ips": float("nan"), "latency_ms": 1.0}}, ["small"])
    with pytest.raises(ValueError, match=r"must be \{ips, latency_ms"):
        front_from_wire({"small": {"latency_ms": 1.0}}, ["small"])


def test_a_site_takes_its_slots_in_flight_and_a_new_front_replaces_its_rows() -> None:
    rows = {"site": {"fast": Measurement(8000.0, 4.0), "slow": Measurement(2000.0, 4.0)}}
    core = core_with(rows, SHAPE, shard_size=8, window=2)
    core.handle(NodeProfiled("site", rows["site"], 0.0, slots=6))  # a site of three boards, window 2 each
    out = solve(core, core.handle(RequestOpened(b"c", submit(400, target_ips=3000.0), 0.1)), 0.11)
    assert len(sends(out)) == 6  # its slots, not the coordinator's window of 2
    run_to_end(core, out)
    core.handle(NodeProfiled("site", {"slow": Measurement(1500.0, 4.0)}, 2.0, slots=2))  # a board left it
    assert core.table.variants_of("site") == ["slow"] and core.nodes["site"].slots == 2
    core.validate_state()


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"parent": "tcp://127.0.0.1:7000"}, "parent and site go together"),
        ({"site": "north"}, "parent and site go together"),
        ({"parent": "tcp://p:7000", "site": "north", "parent_key": "k"}, "parent_key and parent_public_key"),
        ({"parent": "127.0.0.1:7000", "site": "north"}, "expected a ZeroMQ endpoint"),
        ({"parent_key": "k", "parent_public_key": "p"}, "parent_key is for a site"),
    ],
)
def test_a_site_config_needs_its_parts_together(fields: dict[str, str], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        CoordinatorConfig(**fields)


def test_the_link_is_the_extra_bytes_over_the_extra_time_of_the_median_round_trips() -> None:
    small, large = 4 * 1024, 1024 * 1024
    # 10 ms of latency each way, and 8 Mbit/s: the large probe's extra bytes take 1.044 s more.
    extra_s = (large - small) * 8 / 8e6
    samples = [(small, 0.020), (large, 0.020 + extra_s), (small, 0.090), (large, 0.021 + extra_s), (small, 0.021)]
    assert link_mbps_from(samples) == pytest.approx(8.0, rel=0.01)  # the outlier (90 ms) does not count
    assert link_mbps_from([(small, 0.02), (small, 0.03)]) is None  # one size: no slope
    assert link_mbps_from([(small, 0.05), (large, 0.04)]) is None  # no time for more bytes: no figure
    assert link_moved(None, 8.0) and link_moved(8.0, 10.0) and not link_moved(8.0, 9.0) and not link_moved(8.0, None)


def test_link_probes_go_one_at_a_time_and_a_round_gives_one_estimate() -> None:
    probes, now, estimate = _LinkProbes(), 100.0, None
    for _ in range(len(PROBE_SIZES) * PROBE_ROUNDS):
        probe = probes.next(now)
        assert probe is not None and probes.next(now) is None  # one in flight
        stranger = LinkProbe(probe.nonce + 7, probe.size, np.zeros(probe.size, np.uint8))
        assert probes.answered(stranger, now) is None  # not the probe asked for: ignored
        now += 0.01 + probe.size * 8 / 20e6  # a 20 Mbit/s link
        estimate = probes.answered(LinkProbe(probe.nonce, probe.size, np.zeros(probe.size, np.uint8)), now)
    assert estimate == pytest.approx(20.0, rel=0.01)
    assert probes.next(now) is None and probes.next(now + LINK_EVERY_S) is not None  # the next round, later
    # That probe is never answered: past the timeout its round ends, and the next round comes in its time.
    assert probes.next(now + LINK_EVERY_S + PROBE_TIMEOUT_S + 1) is None
    assert probes.next(now + 2 * LINK_EVERY_S) is not None


def test_a_node_s_link_probes_have_a_budget() -> None:
    link = WorkerLink("site", b"id", {"backend": "site"}, NodeSettings(), {})
    assert link.take_probe(1024 * 1024, 0.0) is None
    assert "0..4194304 bytes" in (link.take_probe(64 * 1024 * 1024, 1.0) or "")
    for _ in range(15):
        assert link.take_probe(1024 * 1024, 2.0) is None
    refused = link.take_probe(1024 * 1024, 3.0)
    assert refused is not None and "with 16777216 sent this minute" in refused
    assert link.take_probe(1024 * 1024, 63.0) is None  # a new minute


def test_a_site_s_measured_link_caps_its_rows_in_the_core() -> None:
    rows = {"site": {"fast": Measurement(8000.0, 4.0)}}
    core = core_with(rows, SHAPE)
    core.handle(NodeProfiled("site", rows["site"], 0.0, slots=2, link_s_per_input=1 / 1000))
    assert core.table.seconds_per_input("site", "fast") == pytest.approx(1 / 1000)  # the link, not 1/8000
