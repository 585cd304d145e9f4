"""Matplotlib figures for the run report, returned as PNG bytes."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")  # no display needed
import matplotlib.pyplot as plt  # noqa: E402


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def curves(
    history: list[dict], series: dict[str, str], title: str, ylabel: str, right: dict[str, str] | None = None
) -> bytes:
    """Per-epoch lines: series maps a metric key to its legend label; `right` goes on a second axis."""
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    epochs = [row["epoch"] for row in history]
    for key, label in series.items():
        if all(key in row for row in history):
            ax.plot(epochs, [row[key] for row in history], marker="o", label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if right:
        ax2 = ax.twinx()
        for key, label in right.items():
            if all(key in row for row in history):
                ax2.plot(epochs, [row[key] for row in history], marker="s", color="tab:red", label=label)
        ax2.set_ylabel(", ".join(right.values()))
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    ax.legend(handles, labels, fontsize=8)
    ax.xaxis.get_major_locator().set_params(integer=True)
    return _png(fig)


def code_usage_histogram(counts, title: str) -> bytes:
    """How often each code is used, most used first."""
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    ordered = sorted((int(c) for c in counts), reverse=True)
    total = max(1, sum(ordered))
    ax.bar(range(len(ordered)), [c / total for c in ordered], width=1.0)
    ax.set_xlabel("code (sorted by use)")
    ax.set_ylabel("share of positions")
    ax.set_title(title)
    ax.grid(alpha=0.3, axis="y")
    return _png(fig)


def histogram(values: list[float], title: str, xlabel: str) -> bytes:
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    ax.hist(values, bins=min(50, max(5, len(values) // 5)))
    ax.set_xlabel(xlabel)
    ax.set_ylabel("inputs")
    ax.set_title(title)
    ax.grid(alpha=0.3, axis="y")
    return _png(fig)
