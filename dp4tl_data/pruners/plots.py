"""Plots of pruner output: the vote histogram with the kept classes (or clusters) marked."""

from __future__ import annotations

import numpy as np

from ..errors import KeepListError, require
from ..keeplist import KeepList

KEPT_COLOR = "#1f77b4"
PRUNED_COLOR = "#c7c7c7"


def plot_votes(keep: KeepList, path: str) -> None:
    """Write a PNG of `keep.scores["votes"]`, one bar per class sorted by score, kept bars
    coloured; class names label the bars when there are at most 100."""
    require("matplotlib", "pruners")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scores = keep.scores or {}
    votes = np.asarray(scores.get("votes", []), dtype=np.float64)
    if votes.ndim != 1 or len(votes) == 0:
        raise KeepListError("the keep-list has no per-class vote scores to plot")
    kept_ids = scores.get("kept")
    if kept_ids is None and keep.classes is not None:
        kept_ids = sorted(keep.classes.id_set)
    kept = np.zeros(len(votes), dtype=bool)
    for i in kept_ids or []:
        if isinstance(i, int) and 0 <= i < len(votes):
            kept[i] = True
    names = scores.get("names")
    labels = (
        list(names) if isinstance(names, list) and len(names) == len(votes) else [str(i) for i in range(len(votes))]
    )
    order = np.lexsort((np.arange(len(votes)), ~kept, -votes))
    many = len(votes) > 100
    fig, ax = plt.subplots(figsize=(10.0 if many else max(6.0, 0.16 * len(votes) + 2), 4.0))
    ax.bar(
        np.arange(len(votes)), votes[order], color=[KEPT_COLOR if kept[i] else PRUNED_COLOR for i in order], width=0.85
    )
    if not many:
        ax.set_xticks(np.arange(len(votes)))
        ax.set_xticklabels([labels[i] for i in order], rotation=90, fontsize=6)
    else:  # bars too thin to name: mark where the kept classes end, name the top few
        ax.axvline(int(kept.sum()) - 0.5, color=KEPT_COLOR, linestyle="--", linewidth=1)
        ax.set_xlabel("classes, by score (dashed: last kept class)")
        for x, i in enumerate(order[:5]):
            if votes[i] > 0:
                ax.annotate(labels[i], (x, votes[i]), xytext=(8, -4 - 9 * x), textcoords="offset points", fontsize=7)
    unit = scores.get("unit", "classes")
    method = keep.provenance.get("method") or "pruner"
    ratio = keep.provenance.get("ratio")
    title = f"{method}: {int(kept.sum())} of {len(votes)} {unit} kept"
    if isinstance(ratio, (int, float)):
        title += f" (pruning ratio {ratio:g})"
    ax.set_title(title)
    ax.set_ylabel(str(scores.get("kind", "score")))
    ax.legend(
        handles=[plt.Rectangle((0, 0), 1, 1, color=KEPT_COLOR), plt.Rectangle((0, 0), 1, 1, color=PRUNED_COLOR)],
        labels=["kept", "pruned"],
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
