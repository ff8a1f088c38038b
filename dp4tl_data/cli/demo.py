"""`dp4tl demo`: the main job, fast, on real data built from installed packages.

A many-class real source (font glyphs, Animal-MNIST, Fashion-MNIST when installed, MNIST-5k
handwriting) is pruned for a different handwritten-digit target (scikit-learn digits) with
label mapping, against random classes and reverse LM; a small CNN is pretrained on each pruned
stream and probed on the target. The full proof is examples/real_data/run.py.
"""

from __future__ import annotations

import os
import tempfile

import click


@click.command()
@click.option("--out", default=None, type=click.Path(file_okay=False), help="Work folder (default: a temporary one).")
@click.option("--per-class", default=80, show_default=True, help="Source images per class.")
@click.option("--ratio", "ratios", type=float, multiple=True, help="Pruning ratios (default 0.5 and 0.8).")
@click.option("--seeds", default=2, show_default=True, help="Pretraining seeds per arm (paired across arms).")
@click.option("--epochs", default=10, show_default=True, help="Pretraining epochs.")
def demo(out: str | None, per_class: int, ratios: tuple[float, ...], seeds: int, epochs: int) -> None:
    """Prune a real many-class source for a digit target (LM vs random vs reverse LM),
    pretrain on each pruned stream, and print kept classes, speed-up and target accuracy."""
    from ..pruners.proof import ProofConfig, run_proof, summarise, table_markdown

    cfg = ProofConfig(
        per_class=per_class,
        surrogate_arch="small_resnet18",
        surrogate_width=16,
        surrogate_epochs=2,
        epochs=epochs,
        ratios=ratios or (0.5, 0.8),
        methods=("lm", "random-class", "reverse-lm"),
        seeds=seeds,
        random_seeds=seeds,
        steps_control=(),
        draws=5,
    )
    with tempfile.TemporaryDirectory() as tmp:
        root = out or tmp
        os.makedirs(root, exist_ok=True)
        results = run_proof(root, cfg, echo=click.echo)
        click.echo("")
        for r, names in results["lm_top"].items():
            click.echo(f"LM keeps at ratio {r} ({len(names)} of {len(results['classes'])} classes): {', '.join(names)}")
        click.echo("")
        click.echo(table_markdown(results))
        summary = {s["arm"]: s for s in summarise(results)}
        full = summary["full"]
        for r in cfg.ratios:
            lm, rnd, rev = (summary.get(f"{m} @{r:g}") for m in ("lm", "random-class", "reverse-lm"))
            if lm is None or rnd is None or rev is None:
                continue
            acc = {k: s["acc"]["10-shot"][0] for k, s in (("lm", lm), ("random", rnd), ("reverse", rev))}
            speed = full["cpu_seconds"] / lm["cpu_seconds"] if lm["cpu_seconds"] else float("nan")
            click.echo(
                f"ratio {r:g}: pretraining {speed:.1f}x less CPU time than full on {lm['image_fraction']:.0%} of the images; "
                f"10-shot accuracy LM {acc['lm']:.1f} vs random {acc['random']:.1f} vs reverse {acc['reverse']:.1f} "
                f"(full {full['acc']['10-shot'][0]:.1f})"
            )
        click.echo(f"total {results['timings']['total_s']:.0f}s")
