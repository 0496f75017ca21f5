"""Plots (matplotlib, the optional ``plot`` extra)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import EdgecollabError
from .planner import TradeOff


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
