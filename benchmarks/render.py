"""The figures of README.md and docs/benchmarks.md, rendered from the results files.

    .venv/bin/python benchmarks/render.py           # rewrite every block in place
    .venv/bin/python benchmarks/render.py --check   # exit 1 if a block differs from what the results say

Each figure the docs quote sits between ``<!-- figures:NAME -->`` and ``<!-- /figures -->``;
the block is what ``BLOCKS[NAME]`` renders from ``benchmarks/results/``, with the commit and
date of the run beside it. tests/test_figures.py fails when a block is not what this renders.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DOCS = (
    ROOT / "README.md",
    ROOT / "docs" / "benchmarks.md",
    ROOT / "docs" / "reliability.md",
    ROOT / "docs" / "deployment.md",
)
BLOCK = re.compile(r"(<!-- figures:([a-z0-9_-]+) -->\n)(.*?)(<!-- /figures -->)", re.S)


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((RESULTS / f"{name}.json").read_text())
    return data


def ran(*names: str) -> str:
    """Where figures come from: each file's commit (short) and date."""
    parts = []
    for name in names:
        d = load(name)
        modified = " (tree modified)" if d.get("code_modified") else ""
        parts.append(f"`{name}.json`: commit {d['commit'][:7]}{modified}, {d['date'][:10]}")
    return "*From " + "; ".join(parts) + ".*"


def n(value: float, digits: int = 0) -> str:
    return f"{value:,.{digits}f}"


def pct(value: float, digits: int = 2) -> str:
    return f"{value * 100:.{digits}f} %"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


# --- the blocks --------------------------------------------------------------------------------
def headline() -> str:
    pol, peers = load("policies"), load("peers")
    eff, streams = load("efficiency"), load("streams")
    systems = {s["system"]: s for s in peers["systems"]}
    ec = systems["edgecollab"]
    vs = [
        f"{s['ratio_to_edgecollab']['throughput'] and 1 / s['ratio_to_edgecollab']['throughput']:.1f}× "
        f"{name} ({n(s['achieved_ips'])} inf/s, targets met {s['targets_met']}/{len(peers['workload'])})"
        for name, s in systems.items()
        if name != "edgecollab"
    ]
    big = [r for r in eff["summary"] if r["inputs"] >= 10_000]
    per_task = []
    for task, t in pol["tasks"].items():
        met, a = t["targets_met"], t["adaptive"]
        quality = "accuracy" if task == "fashion-mnist" else "mAP"
        others = ", ".join(f"`{p}` {met[p]}" for p in met if p != "adaptive")
        per_task.append(
            f"on {task} `adaptive` met {met['adaptive']} of {t['feasible_requests']} feasible targets ({others}), "
            f"kept {t['promises']['adaptive']['kept']} of its {t['promises']['adaptive']['made']} promises, and "
            f"where it and `uniform` both met, its measured {quality} was "
            f"{a['quality_gain_over_uniform_points']:+.1f} points from `uniform`'s"
        )
    verdict = "dominates every baseline" if pol["adaptive_dominates"] else "does not yet dominate every baseline"
    return (
        f"On the paper's testbed, emulated here, each policy on a fresh coordinator from the same table, "
        f"{pol['seeds']} seeds of requests: "
        + "; ".join(per_task)
        + f" — `adaptive` {verdict} (per request, and why, in docs/benchmarks.md). On the default workload it "
        f"delivered {n(ec['achieved_ips'])} inf/s (targets met {ec['targets_met']}/{len(peers['workload'])}), "
        + ", ".join(vs)
        + f", in one run. Requests of 10,000 inputs and more reach {min(r['efficiency'] for r in big):.2f}–"
        f"{max(r['efficiency'] for r in big):.2f} of the physical limit. {streams['run']['spec']['sources']} "
        f"cameras at {streams['run']['spec']['fps']:g} fps for {streams['run']['spec']['duration_s']:g} s: "
        f"{n(streams['run']['total']['results'])} of {n(streams['run']['total']['frames'])} frames "
        f"answered, worst-source p99 {streams['run']['total']['worst_source_p99_ms']:.1f} ms"
        + (
            f"; {streams['large_run']['spec']['sources']} cameras: worst-source p99 "
            f"{streams['large_run']['total']['worst_source_p99_ms']:.1f} ms at "
            f"{streams['large_run']['total']['coordinator_cpu_ms_per_frame']:.3f} ms of coordinator CPU per frame"
            if streams.get("large_run")
            else ""
        )
        + ". All on emulated boards sharing "
        "this machine's two cores; caveats beside each figure in docs/benchmarks.md.\n\n"
        + ran("policies", "peers", "efficiency", "streams")
    )


def efficiency() -> str:
    d = load("efficiency")
    rows = [
        [
            "no target (every board on its most accurate variant)"
            if r["workload"] == "accurate"
            else "target 8,000 inf/s",
            n(r["inputs"]),
            n(r["ideal_ips"]),
            n(r["achieved_ips"]),
            f"{r['efficiency']:.2f}",
            f"{r['startup']:.2f}",
            f"{r['tail']:.2f}",
            f"{r['transfer_and_overhead']:.2f}",
        ]
        for r in d["summary"]
    ]
    header = [
        "workload",
        "inputs",
        "ideal inf/s",
        "achieved inf/s",
        "efficiency",
        "start-up",
        "tail",
        "transfer + overhead",
    ]
    return table(header, rows) + f"\n\nMedians of {d['repeats']} requests each. " + ran("efficiency")


def overhead() -> str:
    d = load("overhead")
    rows = [
        [
            str(r["shard_size"]),
            n(r["shards_per_s"]),
            n(r["inputs_per_s"]),
            f"{r['coordinator_cpu_us_per_shard']:.0f} µs",
            f"{r['coordinator_cpu_us_per_input']:.1f} µs",
        ]
        for r in d["rows"]
    ]
    one = next(r["one_input_requests"] for r in d["rows"] if "one_input_requests" in r)
    text = table(["shard size", "shard round trips/s", "inputs/s", "coordinator CPU per shard", "per input"], rows)
    text += (
        f"\n\nOne-input requests one after another ({one['requests']}): {n(one['requests_per_s'])} requests/s, "
        f"round trip p50 {one['latency_ms_p50']:.2f} ms, p99 {one['latency_ms_p99']:.2f} ms, "
        f"{one['coordinator_cpu_us_per_request'] / 1e3:.2f} ms of coordinator CPU each, "
        f"{one['solves_per_request']:.4f} joint-plan solves per request. CPU seconds follow the host's speed: "
        "compare figures of one run only. " + ran("overhead")
    )
    return text


def peers() -> str:
    d = load("peers")
    systems = d["systems"]
    rows = [
        [
            f"**{s['system']}**" if s["system"] == "edgecollab" else s["system"],
            n(s["achieved_ips"]),
            f"{s['ratio_to_edgecollab']['throughput']:.2f}",
            pct(s["accuracy"]),
            f"{s['targets_met']}/{len(d['workload'])}",
            f"{s['one_input_latency_ms_p50']:.1f} ms",
        ]
        for s in systems
    ]
    text = table(
        ["system", "throughput (inf/s)", "ratio", "accuracy", "targets met", "one-input round trip (p50)"], rows
    )
    header = ["request"] + [s["system"] for s in systems]
    per = []
    for i, w in enumerate(d["workload"]):
        cells = [f"{n(w['inputs'])} @ {n(w['target_ips'])}"]
        for s in systems:
            r = s["requests"][i]
            cells.append(f"{n(r['achieved_ips'])} {'✓' if r['met'] else '✗'} (`{r.get('variant', '')}`)")
        per.append(cells)
    skipped = "".join(f" {k} was skipped: {v}." for k, v in d.get("skipped", {}).items())
    return text + "\n\n" + table(header, per) + "\n\n" + ran("peers") + skipped


def peers_closed_loop() -> str:
    d = load("peers_closed_loop")
    systems = d["systems"]
    names = list(systems)
    batches = [r["batch"] for r in systems[names[0]]]
    rows = []
    for i, b in enumerate(batches):
        cells = [str(b)]
        for name in names:
            r = systems[name][i]
            value = (
                f"{n(r['requests_per_s'])} req/s, p50 {r['p50_ms']:.1f} ms"
                if b == 1
                else f"{n(r['inputs_per_s'])} inputs/s"
            )
            cells.append(value)
        rows.append(cells)
    rows.append(
        ["machine CPU ms per batch-1 request", *[f"{systems[m][0]['machine_cpu_ms_per_request']:.2f}" for m in names]]
    )
    load_ = d["load"]
    caption = (
        f"\n\n`{load_['variant']}`, {load_['workers']} un-emulated workers, {load_['in_flight']} requests in flight, "
        f"{load_['duration_s']:g} s per batch size. "
    )
    return table(["batch", *names], rows) + caption + ran("peers_closed_loop")


def v2_perf_analyzer() -> str:
    d = load("v2_perf_analyzer")
    points = {(r["server"], r["protocol"], r["batch"], r["concurrency"]): r for r in d["points"]}
    rows = []
    for ratio in d["edgecollab_over_pytriton"]:
        key = (ratio["protocol"], ratio["batch"], ratio["concurrency"])
        ours, theirs = points[("edgecollab", *key)], points[("pytriton", *key)]
        rows.append(
            [
                key[0].upper(), str(key[1]), str(key[2]),
                n(ours["inferences_per_s"]), n(theirs["inferences_per_s"]), f"**{ratio['throughput_ratio']:.2f}**",
                f"{ours['p50_ms']:.1f} / {ours['p99_ms']:.1f}", f"{theirs['p50_ms']:.1f} / {theirs['p99_ms']:.1f}",
                f"{ours['server_cpu_ms_per_request']:.2f}", f"{theirs['server_cpu_ms_per_request']:.2f}",
            ]
        )  # fmt: skip
    header = [
        "protocol", "batch", "concurrency", "edgecollab inf/s", "PyTriton inf/s", "ratio",
        "edgecollab p50 / p99 ms", "PyTriton p50 / p99 ms",
        "edgecollab server CPU ms/req", "PyTriton server CPU ms/req",
    ]  # fmt: skip
    ahead = sum(r["throughput_ratio"] >= 1 for r in d["edgecollab_over_pytriton"])
    loose = [r for r in d["points"] if r.get("stability_percentage", 25) > 25]
    named = sorted({"{server} {protocol} b={batch} c={concurrency}".format(**r) for r in loose})
    settled = f"{len(loose)} point(s) settled only under a looser stability criterion ({', '.join(named)}). "
    settled = settled if loose else ""
    setup = d["setup"]
    caption = (
        f"\n\nedgecollab's throughput is at or above PyTriton's at {ahead} of {len(rows)} points. "
        f"`{setup['variant']}` on "
        f"{setup['workers']} un-emulated workers (edgecollab) or instances (PyTriton), one client, "
        f"{setup['client']}, with the same flags for both, {setup['window_ms']} ms measurement windows. {settled}"
    )
    return table(header, rows) + caption + ran("v2_perf_analyzer")


def _batches(streams: dict[str, Any]) -> str:
    variant = max(streams["variants"], key=streams["variants"].get) if streams.get("variants") else "?"
    per_batch = streams.get("frames_per_batch")
    return f"{per_batch:.1f}, `{variant}`" if per_batch is not None else f"`{variant}`"


def scale() -> str:
    d = load("scale")
    rows = []
    for r in d["counts"]:
        large, small, streams = r["large"], r["one_input"], r["streams"]
        rows.append(
            [
                str(r["boards"]),
                f"{large['efficiency']:.2f} ({n(large['achieved_ips'])} inf/s)",
                f"{large['coordinator_cpu_ms_per_shard']:.2f}",
                f"{n(small['requests_per_s'])} req/s, p99 {small['p99_ms']:.0f} ms",
                f"{small['coordinator_cpu_ms_per_request']:.2f}",
                f"{n(streams['worst_source_p99_ms'], 1)} ms",
                f"{streams['coordinator_cpu_ms_per_frame']:.3f} / {streams['client_cpu_ms_per_frame']:.3f}",
                _batches(streams),
                f"{streams['coordinator_core_share']:.2f} / {streams['machine_cores_busy']:.2f}"
                + (f" (idle {r['idle_coordinator_cores']:.3f})" if "idle_coordinator_cores" in r else ""),
                f"{n(r['plan']['solve_ms'])} ms{' (bound hit)' if r['plan'].get('timed_out') else ''}",
                _churn(r.get("churn")),
            ]
        )
    header = [
        "boards", "large request: throughput / limit", "coord. CPU ms / shard", "one-input requests",
        "coord. CPU ms / request", f"{d['setup']['cameras']} cameras: worst p99", "CPU ms / frame: coord. / cameras",
        "frames per batch, variant", "cameras: coord. cores / machine cores (coord. idle)",
        f"plan, {d['counts'][0]['plan']['demands']} demands",
        "cameras while a board leaves and joins: worst p99, longest wait, answered",
    ]  # fmt: skip
    caption = (
        f"\n\n{d['setup']['inputs']:,}-input request at the fastest plan; {d['setup']['in_flight']} one-input "
        f"requests in flight and 30 fps cameras for {d['setup']['duration_s']:g} s each. Boards run by "
        "`edgecollab fleet --stand-ins`: the cost model sets their time, the cheapest variant computes; the last "
        "board is a worker process of its own, killed a third into the churn run and started again two thirds in. "
    )
    return table(header, rows) + caption + ran("scale")


def _churn(churn: dict[str, Any] | None) -> str:
    if churn is None:
        return "not measured"
    answered = f"{n(churn['results'])} / {n(churn['frames'])}"
    return f"{n(churn['worst_source_p99_ms'], 1)} ms, {n(churn['max_ms'])} ms, {answered}"


def peers_cameras() -> str:
    d = load("peers_cameras")
    systems = d["systems"]
    names = list(systems)
    counts = sorted({r["sources"] for rows in systems.values() for r in rows})
    rows = []
    for c in counts:
        cells = [str(c)]
        for name in names:
            r = next((r for r in systems[name] if r["sources"] == c), None)
            cells.append(
                "not run (past the bound before)" if r is None else f"{r['p50_ms']:.1f} / {r['p99_ms']:.1f} ms"
            )
        rows.append(cells)
    largest = ", ".join(f"{k} {v if v is not None else 'none'}" for k, v in d["largest_within_100ms"].items())
    return (
        table(["30 fps cameras", *[f"{m} p50 / p99" for m in names]], rows)
        + f"\n\nLargest count within a 100 ms p99: {largest}. "
        + ran("peers_cameras")
    )


def planner_scaling() -> str:
    d = load("planner_scaling")
    demands = sorted({r["demands"] for r in d["rows"]})
    nodes = sorted({r["nodes"] for r in d["rows"]})
    variants = next(r["variants"] for r in d["rows"] if "variants" in r)
    rows = []
    for k in nodes:
        cells = [f"{k} × {variants}"]
        for m in demands:
            r = next(r for r in d["rows"] if r["nodes"] == k and r["demands"] == m)
            if "stopped" in r:
                cells.append(f"stopped: {r['stopped']}")
                continue
            mark = "" if r["feasible"] else " (infeasible)"
            cells.append(f"{r['solve_ms']:,.0f} ms, {r['loss_to_bound_points']:.3f}{mark}")
        rows.append(cells)
    worst = max(r["loss_to_bound_points"] for r in d["rows"] if "stopped" not in r)
    return (
        table(["nodes × variants", *[f"{m} demand{'s' if m > 1 else ''}" for m in demands]], rows)
        + f"\n\nEach cell: median solve of {d['repeats']}, then points of accuracy below the LP bound (at most "
        f"{worst:.3f} here). " + ran("planner_scaling")
    )


def adaptation() -> str:
    d = load("adaptation")
    names = {("slow", True): "slow to 1/3, adaptive", ("slow", False): "slow to 1/3, stale plan (no re-plan, no steal)",
             ("vanish", True): "vanish, adaptive", ("vanish", False): "vanish, stale plan"}  # fmt: skip
    rows = [
        [
            names.get((r["scenario"], r["adaptation"]), r["scenario"]),
            f"{n(r['achieved_ips'])} ({'met' if r['met'] else 'missed'})",
            "—" if r.get("reaction_s") is None else f"{r['reaction_s']:.2f} s",
            f"{r['seconds_below_target_after_event']:.1f} s",
            f"{r['replans']} / {r['steals']} / {r['retries']}",
            str(r["inputs_lost"]),
        ]
        for r in d["rows"]
    ]
    target = d["rows"][0]["target_ips"]
    header = [f"scenario (target {n(target)} inf/s)", "achieved inf/s", "reaction after the event",
              "time under target after it", "re-plans / steals / retries", "inputs lost"]  # fmt: skip
    return table(header, rows) + "\n\n" + ran("adaptation")


def network() -> str:
    d = load("network")
    small = d["small_summary"]
    rows = []
    for workload in dict.fromkeys(r["workload"] for r in small):
        loop = next(r for r in small if r["workload"] == workload and r["placement"] == "loopback")
        shaped = next(r for r in small if r["workload"] == workload and r["placement"] != "loopback")
        rows.append(
            [
                workload,
                n(loop["achieved_ips"]),
                n(shaped["achieved_ips"]),
                f"{shaped['achieved_ips'] / loop['achieved_ips']:.2f}",
            ]
        )
    text = table(["small inputs: workload", "loopback inf/s", "shaped links inf/s", "ratio"], rows)
    large = d["large_summary"]
    workloads = list(dict.fromkeys(r["workload"] for r in large))
    rows = []
    for scenario in dict.fromkeys(r["scenario"] for r in large):
        cells = [scenario]
        for w in workloads:
            r = next(r for r in large if r["scenario"] == scenario and r["workload"] == w)
            cells.append(f"{n(r['achieved_ips'])} inf/s, {pct(r['accuracy'])}, met {r['met']}/{r['requests']}")
        rows.append(cells)
    text += "\n\n" + table(["large inputs (224×224): scenario", *workloads], rows)
    return text + f"\n\nShaping: {d['network']['shaping']}. " + ran("network")


def tenants() -> str:
    d = load("tenants")
    s = d["small_requests"]
    text = (
        f"{s['sources']} sources × {s['rate_per_source']:g} one-input requests/s for {s['duration_s']:g} s: "
        f"{n(s['served'])} of {n(s['sent'])} served, {s['busy']} `busy`, {s['nodes_lost']} boards lost, round trip "
        f"p50 {s['round_trip_ms_p50']:.1f} ms, p99 {s['round_trip_ms_p99']:.1f} ms (max {s['round_trip_ms_max']:.1f}), "
        f"{s['solves']} joint-plan solves ({s['solves_per_request']:.4f} per request), "
        f"{s['coordinator_cpu_ms_per_request']:.2f} ms of coordinator CPU per request.\n\n"
    )
    labels = {
        "tight_alone": "tight, alone",
        "tight_together": "tight, with the loose one",
        "loose_together": "loose, with the tight one",
    }
    rows = [
        [
            labels[k],
            f"{n(r['achieved_ips'])} inf/s",
            n(r["target_ips"]),
            "yes" if r["met"] else "no",
            pct(r["expected_accuracy"]),
        ]
        for k, r in d["joint"].items()
        if k in labels
    ]
    text += table(["", "achieved", "target", "met", "expected accuracy"], rows)
    change = d["joint"]["accuracy_change_points"]
    return text + f"\n\nThe tight request's accuracy beside the loose one: {change:+.2f} points. " + ran("tenants")


def streams() -> str:
    d = load("streams")
    t, spec = d["run"]["total"], d["run"]["spec"]
    mix = ", ".join(
        f"`{v}` {c / t['results'] * 100:.0f} %" for v, c in sorted(t["variants"].items(), key=lambda kv: -kv[1])
    )
    text = (
        f"**{spec['sources']} cameras × {spec['fps']:g} fps for {spec['duration_s']:g} s: {n(t['results'])} of "
        f"{n(t['frames'])} frames answered, {t['dropped']} dropped, p50 {t['p50_ms']:.1f} ms, "
        f"p99 {t['p99_ms']:.1f} ms, "
        f"worst source p99 {t['worst_source_p99_ms']:.1f} ms**, accuracy {pct(t['accuracy'])} ({mix}), "
        f"{t['solves']} solves, {t['frames_per_batch']:.1f} frames per micro-batch, "
        f"{t['coordinator_cpu_ms_per_frame']:.3f} ms of coordinator CPU per frame"
        + (
            f" ({t['client_cpu_ms_per_frame']:.3f} ms in the camera process).\n\n"
            if "client_cpu_ms_per_frame" in t
            else ".\n\n"
        )
    )
    large = d.get("large_run")
    if large:
        lt, ls = large["total"], large["spec"]
        text += (
            f"**{ls['sources']} cameras × {ls['fps']:g} fps for {ls['duration_s']:g} s** (from one process beside "
            f"the coordinator's): {n(lt['results'])} of {n(lt['frames'])} frames answered, {lt['dropped']} dropped, "
            f"p50 {lt['p50_ms']:.1f} ms, p99 {lt['p99_ms']:.1f} ms, **worst source p99 "
            f"{lt['worst_source_p99_ms']:.1f} ms**, accuracy {pct(lt['accuracy'])}, {lt['frames_per_batch']:.1f} "
            f"frames per micro-batch; CPU per frame from /proc: **{lt['coordinator_cpu_ms_per_frame']:.3f} ms in "
            f"the coordinator**, {lt['client_cpu_ms_per_frame']:.3f} ms in the camera process.\n\n"
        )
    rows = [
        [
            str(r["sources"]),
            f"{r['p50_ms']:.1f} ms",
            f"{r['p99_ms']:.1f} ms",
            f"{r['worst_source_p99_ms']:.1f} ms",
            pct(r["accuracy"]),
            f"{n(r['results'])} / {n(r['frames'])}",
            f"{r['frames_per_batch']:.1f}",
            f"{r['coordinator_cpu_ms_per_frame']:.3f} / {r['client_cpu_ms_per_frame']:.3f} ms"
            if "client_cpu_ms_per_frame" in r
            else f"{r['coordinator_cpu_ms_per_frame']:.2f} ms",
        ]
        for r in d["sweep"]
    ]
    header = [
        "30 fps cameras",
        "p50",
        "p99",
        "worst source p99",
        "accuracy",
        "answered",
        "frames per batch",
        "CPU per frame: coordinator / cameras",
    ]
    largest = d["largest_sources_within_100ms"]
    text += table(header, rows) + f"\n\nLargest count within 100 ms p99, every frame answered: {largest}."
    faster = d.get("faster") or []
    if faster:
        fast_rows = [
            [
                f"{p['sources']} × {p['fps_per_source']:g} fps = {n(p['sources'] * p['fps_per_source'])} frames/s",
                f"{n(p['fps'])} frames/s",
                f"{p['worst_source_p99_ms']:.1f} ms",
                pct(p["accuracy"]),
                f"{n(p['results'])} / {n(p['frames'])}",
                f"{p['coordinator_cpu_ms_per_frame']:.3f} / {p['client_cpu_ms_per_frame']:.3f} ms",
                f"{p['coordinator_cpu_ms_per_frame'] * p['fps'] / 1e3:.2f} / {p['machine_cores_busy']:.2f}",
            ]
            for p in faster
        ]
        fast_header = [
            "sent", "answered", "worst source p99", "accuracy", "answered / sent",
            "CPU per frame: coordinator / cameras", "cores: coordinator / machine",
        ]  # fmt: skip
        most = d.get("largest_frames_per_s_within_100ms")
        text += (
            "\n\nPast the streams' limit, the same cameras sending faster (10 s each, `degrade`):\n\n"
            + table(fast_header, fast_rows)
            + "\n\nMost frames/s with every frame answered within 100 ms at the worst source's p99: "
            + (n(most) if most else "none of these")
            + "."
        )
    return text + " " + ran("streams")


def applications() -> str:
    d = load("applications")
    rows = []
    for phase, requests in d["phases"].items():
        for i, r in enumerate(requests):
            quality = "top-1" if r["task"] == "fashion-mnist" else "mAP@0.5"
            variants = ", ".join(f"`{v}` {n(c)}" for v, c in sorted(r["variants"].items(), key=lambda kv: -kv[1]))
            met = "✓" if r["met"] else "✗"
            expected = f"{pct(r['expected_quality'])} {quality}"
            cells = [phase if i == 0 else "", r["task"], n(r["target_ips"]), n(r["achieved_ips"]), met, expected]
            rows.append([*cells, pct(r["measured_quality"]), variants])
    header = ["phase", "task", "target /s", "achieved /s", "met", "expected quality", "measured", "variants (inputs)"]
    return table(header, rows) + "\n\n" + ran("applications")


def policies_block(task: str) -> str:
    d = load("policies")
    t = d["tasks"][task]
    quality = "accuracy" if task == "fashion-mnist" else "mAP"
    policies = list(t["targets_met"])
    header = ["seed", "inputs @ target", *[f"`{p}`" for p in policies]]
    rows = []
    for seed, by_policy in t["seeds"].items():
        for i, first in enumerate(by_policy["adaptive"]):
            label = f"{n(first['inputs'])} @ {n(first['target_ips'])}" + (
                "" if first["feasible_in_run"] else " (none can)"
            )
            cells = []
            for p in policies:
                r = by_policy[p][i]
                promise = "" if r["feasible"] else " (not promised)"
                cells.append(f"{n(r['achieved_ips'])}, {pct(r['accuracy'], 1)} {'✓' if r['met'] else '✗'}{promise}")
            rows.append([seed if i == 0 else "", label, *cells])
    text = table(header, rows) + "\n\n"
    a = t["adaptive"]
    summary = [
        [f"`{p}`", f"{t['targets_met'][p]}/{t['feasible_requests']}",
         f"{t['promises'][p]['kept']}/{t['promises'][p]['made']}"]
        for p in policies
    ]  # fmt: skip
    text += table(["policy", "feasible targets met", "promises kept (feasible plans that met)"], summary)
    verdict = "dominates" if a["dominates"] else "does **not** dominate"
    text += (
        f"\n\n`adaptive` {verdict} on {task}: it met {a['meets_share_of_feasible'] * 100:.0f} % of the feasible "
        f"targets ({'at least' if a['meets_every_baseline'] else 'fewer than'} every baseline), and over the "
        f"{t['requests_both_met']} requests both met its measured {quality} was "
        f"{a['quality_gain_over_uniform_points']:+.2f} points from `uniform`'s "
        f"(the bar: {a['quality_bar_points']:+.1f}). " + ran("policies")
    )
    return text


def oracle() -> str:
    d = load("policies")
    rows = []
    for task, t in d["tasks"].items():
        for r in t["oracle"]:
            planner = pct(r["planner_accuracy"]) if r["planner_accuracy"] is not None else "no plan"
            best = pct(r["oracle_accuracy"]) if r["oracle_accuracy"] is not None else "none reaches it"
            rows.append([task, n(r["inputs"]), n(r["target_ips"]), best, planner])
    header = ["task", "inputs", "target /s", "exhaustive oracle", "planner (MILP)"]
    return table(header, rows) + "\n\n" + ran("policies")


def promises() -> str:
    d = load("promises")
    rows = []
    for r in d["runs"]:
        pol = r["policies"]
        where = r["expected_accuracy_where_both_met"]
        rows.append([
            r["task"], f"{r['spread'] * 100:.0f} %", f"{r['confidence']:g}",
            *[str(pol[p]["met"]) for p in pol],
            f"{pol['adaptive']['broken']}/{pol['adaptive']['promised']}",
            f"{pct(where['adaptive'])} vs {pct(where['uniform'])} ({r['both_met']})",
        ])  # fmt: skip
    header = ["task", "error per row", "confidence", *[f"`{p}` met" for p in d["runs"][0]["policies"]],
              "`adaptive` promises broken", "expected quality where both met (requests)"]  # fmt: skip
    lead = f"Targets met of {d['runs'][0]['requests']} ({d['tables']} noisy tables × {d['targets_per_table']} targets):"
    return lead + "\n\n" + table(header, rows) + "\n\n" + ran("promises")


def chaos() -> str:
    d = load("chaos")
    faults = ", ".join(f"{k} {v}" for k, v in d["faults"].items())
    return (
        f"{d['rounds']} rounds ({faults}): {d['inputs_lost']} inputs lost of "
        f"{n(d['rounds'] * d['inputs_per_request'])}, "
        f"{d['frames_lost']} frames lost of {n(d['frames'])}. " + ran("chaos")
    )


def rtsp_cameras() -> str:
    d = load("rtsp_cameras")
    rows = [
        [str(r["cameras"]), f"{r['fps_per_camera']:.1f}", f"{r['decode_ms_per_frame']:.2f} ms",
         f"{r['p50_ms']:.1f}", f"{r['worst_p99_ms']:.1f}", f"{r['map50']:.3f}" if r["map50"] is not None else "-",
         f"{r['frames_answered']:,}", f"{r['lost_to_source'] + r['dropped_behind'] + r['dropped_by_stream']:,}"]
        for r in d["runs"]
    ]  # fmt: skip
    header = ["cameras", "answered fps per camera", "decode + preprocess CPU per frame", "p50 ms",
              "worst source p99 ms", "mAP@0.5", "frames answered", "frames lost"]  # fmt: skip
    lead = (
        f"**{d['most_cameras_within_limit']} RTSP cameras (640×480 H.264, 30 fps) with the worst source's p99"
        f" within {d['p99_limit_ms']:.0f} ms.**"
    )
    return lead + "\n\n" + table(header, rows) + "\n\n" + ran("rtsp_cameras")


BOARD_RUNS = ("board-arm64-bookworm", "board-armhf-bookworm", "board-amd64-bullseye")


def short_reason(reason: str) -> str:
    """A left-out variant's reason, short enough for a table cell (a runtime's own messages run long)."""
    node = re.search(r"Node \[([A-Za-z]+)@", reason)
    if node:
        return f"the runtime cannot import its {node.group(1)} node"
    return reason if len(reason) <= 80 else reason[:80] + "…"


def boards() -> str:
    """One row per board check that has run (make board-check): install, runtime, speed, agreement."""
    rows, names = [], []
    for name in BOARD_RUNS:
        if not (RESULTS / f"{name}.json").exists():
            continue
        d = load(name)
        names.append(name)
        b, inst, rt = d["board"], d["install"], d["board"]["runtime"]
        checks = [v for c in d["checks"].values() for v in c["variants"].values()]
        agree = min(v["same_prediction"] for v in checks)
        diff = max(v.get("max_abs_diff", 0.0) for v in checks)
        compared = sorted({k for c in d["checks"].values() for k in c["variants"]})
        kinds = {"Debian packages" if v.startswith("Debian") else "PyPI wheels" if v.startswith("wheel") else "built"
                 for v in inst["sources"].values()}  # fmt: skip
        sources = ", ".join(sorted(kinds))
        ips = ", ".join(f"{v} {n(x)}" for v, x in d["profiled_ips"].items())
        left = "; ".join(f"{v}: {short_reason(r)}" for v, r in d["left_out"].items()) or "none"
        rows.append([
            f"{b['arch']} ({rt['arch']}), {rt['os']}", inst["python"],
            f"{rt['backend']} {rt['backend_version']} ({sources})", ", ".join(rt["providers"]),
            f"{inst['seconds']:.0f} s, {inst['venv_mb']} MB", f"{d['worker_ready_s']:.1f} s",
            f"{ips} ({b['qemu_cpu'] or 'native'})", ", ".join(compared), f"{pct(agree)}, {diff:.1e}", left,
            "pass" if d["passed"] else "**fail**",
        ])  # fmt: skip
    if not rows:
        return "*No board check has run yet: `make board-check ARCH=arm64`.*"
    header = ["userland", "Python", "runtime (from)", "providers", "install", "join → ready", "inf/s (emulated CPU)",
              "compared with x86", "same class, max diff", "left out", "check"]  # fmt: skip
    return table(header, rows) + "\n\n" + ran(*names)


BLOCKS: dict[str, Callable[[], str]] = {
    "boards": boards,
    "rtsp_cameras": rtsp_cameras,
    "headline": headline,
    "efficiency": efficiency,
    "overhead": overhead,
    "peers": peers,
    "peers_closed_loop": peers_closed_loop,
    "peers_cameras": peers_cameras,
    "planner_scaling": planner_scaling,
    "adaptation": adaptation,
    "network": network,
    "tenants": tenants,
    "streams": streams,
    "applications": applications,
    "policies": lambda: policies_block("fashion-mnist"),
    "policies-fashion-detect": lambda: policies_block("fashion-detect"),
    "oracle": oracle,
    "promises": promises,
    "chaos": chaos,
    "v2_perf_analyzer": v2_perf_analyzer,
    "scale": scale,
}


def render(text: str) -> str:
    """``text`` with every figures block rendered anew."""
    return BLOCK.sub(lambda m: m.group(1) + BLOCKS[m.group(2)]() + "\n" + m.group(4), text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when a doc's figures are not what results say")
    args = parser.parse_args()
    stale = []
    for path in DOCS:
        text = path.read_text()
        rendered = render(text)
        if rendered != text:
            stale.append(path)
            if not args.check:
                path.write_text(rendered)
    if args.check and stale:
        print(
            "stale figures in " + ", ".join(str(p.relative_to(ROOT)) for p in stale) + ": run benchmarks/render.py",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
