"""The real-data proof: prune a real many-class source for a digit target, pretrain on each
pruned stream, and measure transfer with few-shot linear probes.

Pipeline (each step through the library's own commands or API):

1. build the source and target shards from installed packages (`realdata.build`);
2. ``dp4tl train-surrogate``, ``dp4tl features``, ``dp4tl prune lm | reverse-lm | fm | random-class``;
3. per keep-list and seed: pretrain a small CNN on ``PrunedStream`` of the source shards;
4. embed the target with the pretrained network and fit logistic-regression probes on 1, 5
   and 10 labels per class (the same draws for every arm) and on every label.

Methodology: paired seeds (every arm trains with seeds 0..n-1), a same-number-of-SGD-steps
control (pruned data, as many steps as the full run), images kept reported next to classes
kept, and an untrained network as the floor.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ..errors import require
from ..world import stable_seed

log = logging.getLogger(__name__)


@dataclass
class ProofConfig:
    """Sizes of the experiment; the defaults are the full proof (about 30 min on 2 CPU cores)."""

    per_class: int = 160
    families: Sequence[str] = ("glyph", "animal", "fashion", "mnist")
    surrogate_arch: str = "small_resnet18"
    surrogate_width: int = 16
    surrogate_epochs: int = 2
    width: int = 16
    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.1
    ratios: Sequence[float] = (0.5, 0.8, 0.9)
    methods: Sequence[str] = ("lm", "fm", "random-class", "reverse-lm")
    seeds: int = 3
    random_seeds: int = 5
    steps_control: Sequence[str] = ("lm", "random-class")
    control_ratios: Sequence[float] | None = None
    shots: Sequence[int] = (1, 5, 10)
    draws: int = 5
    fm_clusters: int | None = None  # default: as many clusters as source classes
    threads: int = 2
    indexed_reader: bool = True  # read only kept bytes through the index (when the reader supports it)


@dataclass
class Row:
    """One pretraining run and its probe accuracies (percent)."""

    arm: str
    method: str
    ratio: float | None
    seed: int
    classes_kept: int | None
    images_kept: int
    steps: int
    seconds: float
    cpu_seconds: float
    acc: dict[str, float] = field(default_factory=dict)


Echo = Callable[[str], None]


def dp4tl(*args: object, echo: Echo) -> None:
    """Run one ``dp4tl`` command in this process, echoing it first."""
    from ..cli import main

    argv = [str(a) for a in args]
    echo("$ dp4tl " + " ".join(shlex.quote(a) for a in argv))
    main.main(argv, prog_name="dp4tl", standalone_mode=False)


def load_split(path: str) -> tuple[Any, np.ndarray]:
    """All images (as the surrogate's default preprocessing) and labels of one target tar."""
    import torch

    from ..features import batches, resolve, shard_samples
    from ..models import Preprocess

    xs, ys = [], []
    for sh in resolve(path).shards:
        for x, y in batches(shard_samples(sh), Preprocess(), batch_size=512, label_field="cls"):
            xs.append(x)
            ys.append(y.numpy())
    return torch.cat(xs), np.concatenate(ys)


def probe_draws(y: np.ndarray, shots: Sequence[int], draws: int) -> dict[int, list[np.ndarray]]:
    """For every shot count, `draws` seeded picks of that many training rows per class (shared by all arms)."""
    out: dict[int, list[np.ndarray]] = {}
    for k in shots:
        out[k] = []
        for d in range(draws):
            rng = np.random.default_rng(stable_seed("probe", k, d))
            out[k].append(np.concatenate([rng.choice(np.flatnonzero(y == c), k, replace=False) for c in np.unique(y)]))
    return out


def probe(
    train: np.ndarray, ytrain: np.ndarray, test: np.ndarray, ytest: np.ndarray, draws: dict[int, list[np.ndarray]]
) -> dict[str, float]:
    """Accuracy (%) of logistic-regression probes: mean over draws per shot count, and on all labels.
    Features are standardised with statistics of the whole (unlabelled) target train split."""
    require("sklearn", "demo")
    from sklearn.linear_model import LogisticRegression

    mu, sd = train.mean(0), train.std(0) + 1e-6
    a, b = (train - mu) / sd, (test - mu) / sd

    def fit(rows: np.ndarray) -> float:
        clf = LogisticRegression(C=1.0, max_iter=2000)
        clf.fit(a[rows], ytrain[rows])
        return float((clf.predict(b) == ytest).mean() * 100)

    out = {f"{k}-shot": float(np.mean([fit(r) for r in rows])) for k, rows in draws.items()}
    out["full"] = fit(np.arange(len(ytrain)))
    return out


class Experiment:
    """State shared by the runs of one proof: data, target embeddings inputs, probe draws."""

    def __init__(self, root: str, cfg: ProofConfig, echo: Echo) -> None:
        from ..features import resolve

        self.root, self.cfg, self.echo = root, cfg, echo
        with open(os.path.join(root, "data", "built.json")) as f:
            self.built = json.load(f)
        self.spec = resolve(self.built["index"])
        self.index = self.spec.index
        self.classes = self.index.classes
        self.xtrain, self.ytrain = load_split(self.built["target_train"])
        self.xtest, self.ytest = load_split(self.built["target_test"])
        self.draws = probe_draws(self.ytrain, cfg.shots, cfg.draws)
        self.total = self.index.num_samples

    def steps_per_epoch(self, images: int) -> int:
        return -(-images // self.cfg.batch_size)

    def run(
        self, arm: str, method: str, ratio: float | None, seed: int, keep_path: str | None, *, steps: int | None = None
    ) -> Row:
        """Pretrain on the kept stream (or none: the untrained floor) and probe the target."""
        import torch

        from ..keeplist import KeepList
        from ..models import Preprocess, Runner, build_model
        from .train import fit, stream_batches

        cfg = self.cfg
        keep = KeepList.load(keep_path) if keep_path else None
        if method == "full":  # keep everything, through the same reader as the pruned arms
            names = self.classes
            keep = KeepList.from_classes(
                range(len(names)), label_field="cls", names=names, source_fingerprint=self.index.fingerprint
            )
        images = sum(keep.kept_counts(self.index).values()) if keep is not None else self.total
        torch.manual_seed(stable_seed("init", seed) % (2**31))
        model = build_model("small_cnn", len(self.classes), width=cfg.width)
        res_steps, seconds, cpu = 0, 0.0, 0.0
        if method != "none":
            make = stream_batches(
                self.spec.shards,
                keep,
                Preprocess(),
                label_field="cls",
                num_classes=len(self.classes),
                batch_size=cfg.batch_size,
                seed=seed,
                index=self.index if cfg.indexed_reader else None,
            )
            if steps is None:
                res = fit(
                    model, make, epochs=cfg.epochs, steps_per_epoch=self.steps_per_epoch(images), lr=cfg.lr, seed=seed
                )
            else:
                res = fit(model, make, steps=steps, lr=cfg.lr, seed=seed)
            res_steps, seconds, cpu = res.steps, res.seconds, res.cpu_seconds
        runner = Runner(model, "cpu")
        emb_train = np.concatenate([runner(self.xtrain[i : i + 512])[1] for i in range(0, len(self.xtrain), 512)])  # type: ignore[misc]
        emb_test = np.concatenate([runner(self.xtest[i : i + 512])[1] for i in range(0, len(self.xtest), 512)])  # type: ignore[misc]
        acc = probe(emb_train, self.ytrain, emb_test, self.ytest, self.draws)
        kept_classes = len(keep.classes) if keep is not None and keep.classes is not None else None
        row = Row(arm, method, ratio, seed, kept_classes, images, res_steps, seconds, cpu, acc)
        self.echo(
            f"  {arm:<24} seed {seed}  images {images:>6}  steps {res_steps:>5}  {seconds:6.1f}s (CPU {cpu:6.1f}s)  "
            + "  ".join(f"{k} {v:5.1f}" for k, v in acc.items())
        )
        return row


def make_lists(root: str, cfg: ProofConfig, echo: Echo) -> dict[str, Any]:
    """Surrogate, features and keep-lists, all through ``dp4tl`` commands."""
    built = json.load(open(os.path.join(root, "data", "built.json")))
    idx, lists, feats = built["index"], os.path.join(root, "lists"), os.path.join(root, "feats")
    surrogate = os.path.join(root, "surrogate.pt")
    n_classes = len(built["classes"])
    timings: dict[str, float] = {}
    t = time.perf_counter()
    dp4tl("train-surrogate", idx, "--index", idx, "-o", surrogate, "--arch", cfg.surrogate_arch,
          "--width", cfg.surrogate_width, "--epochs", cfg.surrogate_epochs, "--seed", 0, echo=echo)  # fmt: skip
    timings["surrogate_s"] = time.perf_counter() - t
    t = time.perf_counter()
    dp4tl("features", built["target_train"], "--model", surrogate, "-o", f"{feats}/target", echo=echo)
    if "fm" in cfg.methods:
        dp4tl("features", idx, "--model", surrogate, "-o", f"{feats}/source", "--kind", "emb", echo=echo)
    timings["features_s"] = time.perf_counter() - t
    ratio_args = [a for r in cfg.ratios for a in ("--ratio", r)]
    t = time.perf_counter()
    for m in ("lm", "reverse-lm"):
        if m in cfg.methods:
            dp4tl("prune", m, "--source", idx, "--target", f"{feats}/target", *ratio_args, "-o", lists, echo=echo)
    timings["lm_votes_s"] = time.perf_counter() - t
    if "fm" in cfg.methods:
        t = time.perf_counter()
        dp4tl("prune", "fm", "--source", idx, "--target", f"{feats}/target", "--source-features", f"{feats}/source",
              "--clusters", cfg.fm_clusters or n_classes, *ratio_args, "-o", lists, echo=echo)  # fmt: skip
        timings["fm_s"] = time.perf_counter() - t
    if "random-class" in cfg.methods:
        for s in range(cfg.random_seeds):
            dp4tl("prune", "random-class", "--source", idx, "--seed", s, *ratio_args,
                  "-o", os.path.join(lists, f"random-class-s{s}-{{ratio}}.json"), echo=echo)  # fmt: skip
    return timings


def list_path(root: str, method: str, ratio: float, seed: int) -> str:
    name = f"random-class-s{seed}-{ratio:g}.json" if method == "random-class" else f"{method}-{ratio:g}.json"
    return os.path.join(root, "lists", name)


def run_proof(root: str, cfg: ProofConfig, echo: Echo = print, *, build: bool = True) -> dict[str, Any]:
    """The whole proof under `root`; returns (and writes to ``root/results.json``) every row."""
    import torch

    from . import realdata

    torch.set_num_threads(cfg.threads)
    t_all = time.perf_counter()
    timings: dict[str, float] = {}
    if build or not os.path.exists(os.path.join(root, "data", "built.json")):
        t = time.perf_counter()
        echo(f"building the real-data source and target under {root}/data ({cfg.per_class} images per class)")
        b = realdata.build(os.path.join(root, "data"), per_class=cfg.per_class, families=cfg.families)
        timings["build_s"] = time.perf_counter() - t
        echo(f"  {len(b.classes)} source classes ({', '.join(f'{k} {len(v)}' for k, v in b.families.items())}), "
             f"target train/test {b.target_counts['train']}/{b.target_counts['test']}" + (f"; {'; '.join(b.notes)}" if b.notes else ""))  # fmt: skip
    timings.update(make_lists(root, cfg, echo))
    exp = Experiment(root, cfg, echo)
    rows: list[Row] = []
    echo("pretraining on each pruned stream, probing the target:")
    full_steps = exp.steps_per_epoch(exp.total) * cfg.epochs
    for s in range(cfg.seeds):
        rows.append(exp.run("full", "full", None, s, None))
        rows.append(exp.run("untrained", "none", None, s, None))
    for r in cfg.ratios:
        for m in cfg.methods:
            for s in range(cfg.random_seeds if m == "random-class" else cfg.seeds):
                rows.append(exp.run(f"{m} @{r:g}", m, r, s, list_path(root, m, r, s)))
        if cfg.control_ratios is None or r in cfg.control_ratios:
            for m in cfg.steps_control:
                for s in range(cfg.seeds):
                    rows.append(
                        exp.run(
                            f"{m} @{r:g} same-steps",
                            f"{m} same-steps",
                            r,
                            s,
                            list_path(root, m, r, s),
                            steps=full_steps,
                        )
                    )
    timings["total_s"] = time.perf_counter() - t_all
    lm_scores = _lm_top(root, cfg)
    out = {"config": asdict(cfg), "timings": timings, "rows": [asdict(x) for x in rows], "classes": exp.classes,
           "families": exp.built["families"], "notes": exp.built.get("notes", []), "lm_top": lm_scores,
           "total_images": exp.total}  # fmt: skip
    with open(os.path.join(root, "results.json"), "w") as f:
        json.dump(out, f, indent=1)
    return out


def _lm_top(root: str, cfg: ProofConfig) -> dict[str, list[str]]:
    from ..keeplist import KeepList

    out = {}
    for r in cfg.ratios:
        p = list_path(root, "lm", r, 0)
        if os.path.exists(p):
            k = KeepList.load(p)
            out[f"{r:g}"] = [n for n in k.classes.names if n is not None] if k.classes is not None else []
    return out


# ----------------------------------------------------------------------------- report


def summarise(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Mean and sd per arm, in run order."""
    by: dict[str, list[dict[str, Any]]] = {}
    for row in results["rows"]:
        by.setdefault(row["arm"], []).append(row)
    out = []
    total = results.get("total_images") or max(r["images_kept"] for r in results["rows"])
    for arm, rs in by.items():
        accs = {k: [r["acc"][k] for r in rs] for k in rs[0]["acc"]}
        out.append(
            {
                "arm": arm,
                "method": rs[0]["method"],
                "ratio": rs[0]["ratio"],
                "seeds": len(rs),
                "classes_kept": rs[0]["classes_kept"],
                "images_kept": float(np.mean([r["images_kept"] for r in rs])),
                "image_fraction": float(np.mean([r["images_kept"] for r in rs])) / total,
                "steps": float(np.mean([r["steps"] for r in rs])),
                "seconds": float(np.median([r["seconds"] for r in rs])),
                # timing noise on a shared machine only ever adds: the fastest seed is the cost
                "cpu_seconds": float(np.min([r.get("cpu_seconds", r["seconds"]) for r in rs])),
                "acc": {
                    k: (float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else 0.0) for k, v in accs.items()
                },
            }
        )
    return out


def table_markdown(results: dict[str, Any]) -> str:
    """The results table: accuracy mean ± sd (%) per arm, images kept, steps, pretraining wall
    time (median over seeds) and CPU time (fastest seed; other load on a shared machine only
    ever adds to it); "CPU vs full" is the ratio of those CPU times."""
    summary = summarise(results)
    full = next((s for s in summary if s["method"] == "full"), None)
    keys = list(summary[0]["acc"]) if summary else []
    head = [
        "arm",
        "seeds",
        "classes",
        "images kept",
        "SGD steps",
        "wall s (median)",
        "CPU s (min)",
        "CPU vs full",
    ] + keys
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in summary:
        speed = (
            f"{s['cpu_seconds'] / full['cpu_seconds']:.2f}x"
            if full and full["cpu_seconds"] and s["cpu_seconds"]
            else "-"
        )
        cells = [
            s["arm"],
            str(s["seeds"]),
            str(s["classes_kept"])
            if s["classes_kept"] is not None
            else "all"
            if s["method"] in ("full", "none")
            else "-",
            f"{s['images_kept']:.0f} ({s['image_fraction']:.0%})" if s["method"] != "none" else "0",
            f"{s['steps']:.0f}",
            f"{s['seconds']:.1f}",
            f"{s['cpu_seconds']:.1f}",
            speed,
        ] + [f"{m:.1f} ± {sd:.1f}" for m, sd in (s["acc"][k] for k in keys)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


COLORS = {"lm": "#1f77b4", "fm": "#2ca02c", "random-class": "#7f7f7f", "reverse-lm": "#d62728",
          "moderate-class": "#9467bd"}  # fmt: skip


def plot_results(results: dict[str, Any], path: str, shots: Sequence[str] = ("1-shot", "10-shot")) -> None:
    """Accuracy against the pruning ratio (one panel per probe, mean ± sd, full and untrained as
    bands), and pretraining time against the fraction of images kept."""
    require("matplotlib", "pruners")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = summarise(results)
    fig, axes = plt.subplots(1, len(shots) + 1, figsize=(5.2 * (len(shots) + 1), 4.8))
    for ax, key in zip(axes, shots):
        for s in summary:
            if s["method"] in ("full", "none"):
                m, sd = s["acc"][key]
                style = dict(color="black", ls="--") if s["method"] == "full" else dict(color="#bbbbbb", ls=":")
                ax.axhline(m, label=f"{s['arm']} ({m:.1f})", **style)  # type: ignore[arg-type]
                ax.axhspan(m - sd, m + sd, color=style["color"], alpha=0.08)
        for method, color in COLORS.items():
            for suffix, ls in (("", "-"), (" same-steps", "--")):
                pts = sorted((s["ratio"], *s["acc"][key]) for s in summary if s["method"] == method + suffix)
                if pts:
                    r, m, sd = zip(*pts)
                    ax.errorbar(r, m, yerr=sd, color=color, ls=ls, marker="o", capsize=3, label=method + suffix)
        ax.set_xlabel("pruning ratio (classes removed)")
        ax.set_ylabel(f"target accuracy, {key} linear probe (%)")
        ax.set_title(f"{key} probe on sklearn digits")
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8, frameon=False)
    ax = axes[-1]
    for method, color in {**COLORS, "full": "black"}.items():
        pts = [(s["image_fraction"], s["cpu_seconds"]) for s in summary if s["method"] == method]
        if pts:
            x, y = zip(*pts)
            ax.scatter(x, y, color=color, label=method)
    ax.set_xlabel("fraction of source images kept")
    ax.set_ylabel("pretraining CPU time (s, this process)")
    ax.set_title("pretraining time vs images kept")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
