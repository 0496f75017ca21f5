"""Plots (matplotlib, the optional ``plot`` extra)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import EdgecollabError
from .planner import TradeOff
from .workload import node_rates


def pyplot() -> Any:
    """matplotlib's pyplot on a file-only backend, or a clear error naming the extra to install."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise EdgecollabError("plotting needs matplotlib: pip install 'edgecollab[plot]'") from None
    return plt


def save(fig: Any, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    pyplot().close(fig)


def plot_pareto(curves: dict[str, list[TradeOff]], front: list[TradeOff], path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for policy, points in curves.items():
        ax.plot([p.expected_ips for p in points], [p.expected_accuracy * 100 for p in points], marker="o", label=policy)
    ax.plot(
        [p.expected_ips for p in front], [p.expected_accuracy * 100 for p in front], "k--", lw=1, label="Pareto front"
    )
    ax.set_xlabel("expected throughput (inferences/s)")
    ax.set_ylabel("expected accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend()
    save(fig, path)


def plot_run(rows: list[dict[str, Any]], nodes: list[str], path: Path) -> None:
    """Per-node throughput (top) and the variants each node ran (bottom) over a workload's time.

    Requests are laid end to end in the order they ran, each drawn from its report's timeline.
    """
    plt = pyplot()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 6), sharex=True, height_ratios=(3, 2))
    timelines = [r["_report"]["timeline"] for r in rows]
    variants = sorted({s["variant"] for timeline in timelines for s in timeline["series"]})
    colours = dict(zip(variants, plt.get_cmap("tab10").colors, strict=False))
    row_of = {node: i for i, node in enumerate(nodes)}
    times: list[float] = []
    rate: dict[str, list[float]] = {node: [] for node in nodes}
    offset = 0.0
    for r, timeline in zip(rows, timelines, strict=True):
        width = timeline["bin_s"]
        mid_times, rates = node_rates(timeline)
        times += [offset + t for t in mid_times]
        for node in nodes:
            rate[node] += rates.get(node, [0.0] * len(mid_times))
        for series in timeline["series"]:
            if series["node"] not in row_of:
                continue
            for b, inputs in enumerate(series["inputs"]):
                if inputs:
                    left = offset + b * width
                    bottom.barh(row_of[series["node"]], width, left=left, color=colours[series["variant"]], height=0.7)
        if r["target_ips"]:
            top.hlines(r["target_ips"], offset, offset + r["wall_s"], colors="k", linestyles="dashed", lw=1)
        offset += r["wall_s"]
        for ax in (top, bottom):
            ax.axvline(offset, color="grey", lw=0.5)
    for node in nodes:
        top.plot(times, rate[node], lw=1.2, label=node)
    top.plot(times, [sum(rate[n][i] for n in nodes) for i in range(len(times))], "k", lw=1.5, label="cluster")
    top.set_ylabel("inferences/s")
    top.set_title("throughput per node (dashed: each request's target)")
    top.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    top.grid(alpha=0.3)
    bottom.set_yticks(range(len(nodes)), nodes)
    bottom.set_xlabel("seconds (requests end to end)")
    bottom.set_title("variants each node ran")
    bottom.legend(
        handles=[plt.Rectangle((0, 0), 1, 1, color=colours[v]) for v in variants],
        labels=variants,
        fontsize=8,
        loc="upper left",
        bbox_to_anchor=(1.01, 1),
    )
    save(fig, path)
