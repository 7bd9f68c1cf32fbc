"""
How results are shown: charts saved as PNG (save_figure), the confusion-matrix chart, and Markdown tables.

    >>> print(markdown_table(["model", "accuracy %"], [["pfeiffer", pct(0.9823)]]))
    | model | accuracy % |
    | --- | ---: |
    | pfeiffer | 98.2 |
"""

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np


def markdown_table(header, rows, align=None):
    """A Markdown table: a header row, one row per list of cells (any values, shown with str()); align: one of
    "left"/"right" per column (default: the first column left, the others right)."""
    align = align or ["left"] + ["right"] * (len(header) - 1)
    rule = ["---" if a == "left" else "---:" for a in align]
    return "\n".join("| " + " | ".join(map(str, cells)) + " |" for cells in [header, rule, *rows])


def pct(x):
    return "-" if x is None else f"{100 * x:.1f}"


def save_figure(fig, path):
    """A matplotlib figure to a PNG file, laid out, then closed."""
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def confusion_figure(results):
    """One confusion matrix per folder, each row (true class) as shares, with the counts written in."""
    fig, axes = plt.subplots(1, len(results), figsize=(4.5 * len(results), 4.2), squeeze=False)
    for ax, (folder, r) in zip(axes[0], results.items()):
        counts = np.array(r["confusion_matrix"])
        shares = counts / np.maximum(counts.sum(1, keepdims=True), 1)
        names = r.get("label_names") or [str(i) for i in range(len(counts))]
        ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
        for (i, j), n in np.ndenumerate(counts):
            ax.text(
                j, i, str(n), ha="center", va="center", color="white" if shares[i, j] > 0.5 else "black", fontsize=8
            )
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(names)), names, fontsize=8)
        ax.set(xlabel="predicted", ylabel="true", title=f"{Path(folder).name}: accuracy {pct(r['accuracy'])}%")
    return fig
