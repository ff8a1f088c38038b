"""Pruner benchmarks, ours and a peer side by side in one process; prints rates and RATIOS.

1. LM vote counting after the forward pass: target predictions per second (hard votes from
   class ids; hard + soft votes from logits), against numpy's ``np.add.at`` loop-free peer.
   Goal: at least 1M predictions/s.
2. FM clustering: k-means + assignment of N x D float32 features to K clusters (default
   1M x 512 to 1000) with dp4tl_data.cluster (faiss, k-means++ seeds), against scikit-learn's
   MiniBatchKMeans (fit + predict) on the same data. Inertia (sum of squared distances of
   every row to its centroid) is computed the same exact way for both. Goal: >= 3x faster at
   equal or better inertia.

    python benchmarks/bench_pruners.py                      # full sizes (several minutes on 2 cores)
    python benchmarks/bench_pruners.py --n 100000 --dim 128 --k 200 --votes 200000   # quick
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def bench_votes(n: int, classes: int) -> None:
    import torch

    from dp4tl_data.pruners.votes import VoteCounter

    rng = np.random.default_rng(0)
    preds = rng.integers(0, classes, size=n)
    t = time.perf_counter()
    c = VoteCounter(classes)
    c.add_predictions(preds)
    ours_ids = n / (time.perf_counter() - t)
    t = time.perf_counter()
    peer = np.zeros(classes, dtype=np.int64)
    np.add.at(peer, preds, 1)
    peer_ids = n / (time.perf_counter() - t)
    assert np.array_equal(peer, c.hard)
    batch = 32768
    logits = torch.randn(batch, classes)
    reps = max(1, n // batch)
    t = time.perf_counter()
    c2 = VoteCounter(classes)
    for _ in range(reps):
        c2.add_logits(logits)
    ours_logits = reps * batch / (time.perf_counter() - t)
    t = time.perf_counter()
    c3 = VoteCounter(classes, soft=False)
    for _ in range(reps):
        c3.add_logits(logits)
    ours_hard = reps * batch / (time.perf_counter() - t)
    t = time.perf_counter()
    peer2 = np.zeros(classes, dtype=np.int64)
    x = logits.numpy()
    for _ in range(reps):
        np.add.at(peer2, x.argmax(1), 1)
    peer_logits = reps * batch / (time.perf_counter() - t)
    t = time.perf_counter()
    peer_soft = np.zeros(classes, dtype=np.float64)
    peer3 = np.zeros(classes, dtype=np.int64)
    for _ in range(reps):  # the plain way: softmax of the whole batch, then column sums
        np.add.at(peer3, x.argmax(1), 1)
        peer_soft += torch.softmax(logits, dim=1).sum(dim=0).double().numpy()
    peer_soft_rate = reps * batch / (time.perf_counter() - t)
    np.testing.assert_allclose(c2.soft, peer_soft, rtol=1e-4)
    assert np.array_equal(c2.hard, peer3)
    print(f"LM votes, {n:,} predictions over {classes} classes")
    print(
        f"  from class ids: ours {ours_ids / 1e6:8.1f} M/s   np.add.at {peer_ids / 1e6:6.1f} M/s   ratio {ours_ids / peer_ids:5.1f}x"
    )
    print(
        f"  from logits   : ours {ours_logits / 1e6:8.2f} M/s (hard + soft)   argmax + np.add.at {peer_logits / 1e6:6.2f} M/s "
        f"(hard only)   ratio {ours_logits / peer_logits:5.2f}x"
    )
    print(
        f"  from logits   : ours {ours_hard / 1e6:8.2f} M/s (hard only, soft=False)   ratio {ours_hard / peer_logits:5.2f}x"
    )
    print(
        f"  from logits   : ours {ours_logits / 1e6:8.2f} M/s (hard + soft)   argmax + torch.softmax(...).sum(0) "
        f"{peer_soft_rate / 1e6:6.2f} M/s   ratio {ours_logits / peer_soft_rate:5.2f}x"
    )
    assert np.array_equal(c3.hard, peer2)
    for what, rate in (("class ids", ours_ids), ("logits, hard", ours_hard), ("logits, hard + soft", ours_logits)):
        print(f"  goal >= 1M predictions/s from {what}: {'met' if rate >= 1e6 else 'MISSED'} ({rate / 1e6:.2f} M/s)")


def mixture(n: int, dim: int, groups: int, seed: int = 0) -> np.ndarray:
    """Features with cluster structure: `groups` Gaussian blobs of unequal size and spread."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((groups, dim)).astype(np.float32)
    weights = rng.dirichlet(np.full(groups, 2.0))
    labels = rng.choice(groups, size=n, p=weights)
    spread = rng.uniform(0.3, 0.9, size=groups).astype(np.float32)
    x = np.empty((n, dim), dtype=np.float32)
    step = 100_000
    for s in range(0, n, step):
        lab = labels[s : s + step]
        x[s : s + step] = centres[lab] + spread[lab, None] * rng.standard_normal((len(lab), dim), dtype=np.float32)
    return x


def bench_fm(n: int, dim: int, k: int, *, points_per_centroid: int, niter: int, peer_batch: int) -> None:
    from sklearn.cluster import MiniBatchKMeans

    from dp4tl_data.cluster import assign, kmeans

    x = mixture(n, dim, 2 * k)
    print(f"FM clustering: {n:,} x {dim} float32 features -> {k} clusters")
    t = time.perf_counter()
    km = kmeans(x, k, niter=niter, seed=0, max_points_per_centroid=points_per_centroid)
    t_fit = time.perf_counter() - t
    ids, dist = assign(x, km.centroids)
    ours = time.perf_counter() - t
    ours_inertia = float(dist.astype(np.float64).sum())
    t = time.perf_counter()
    mbk = MiniBatchKMeans(n_clusters=k, batch_size=peer_batch, random_state=0, n_init=1)
    mbk.fit(x)
    p_fit = time.perf_counter() - t
    peer_ids = mbk.predict(x)
    peer = time.perf_counter() - t
    _, peer_dist = assign(x, mbk.cluster_centers_.astype(np.float32))  # the same exact inertia for both
    peer_inertia = float(peer_dist.astype(np.float64).sum())
    agree = float((np.bincount(ids, minlength=k) > 0).mean())
    print(
        f"  ours (faiss, greedy k-means++ seeds, Lloyd on {min(n, points_per_centroid * k):,} rows, {niter} iters): "
        f"fit {t_fit:6.1f}s + assign {ours - t_fit:5.1f}s = {ours:6.1f}s  inertia {ours_inertia:.4e}  non-empty clusters {agree:.1%}"
    )
    print(
        f"  sklearn MiniBatchKMeans (batch {peer_batch}, {mbk.n_steps_} steps): fit {p_fit:6.1f}s + predict {peer - p_fit:5.1f}s = "
        f"{peer:6.1f}s  inertia {peer_inertia:.4e}"
    )
    print(
        f"  time ratio (sklearn / ours) {peer / ours:5.2f}x   inertia ratio (ours / sklearn) {ours_inertia / peer_inertia:.4f}"
    )
    print(
        f"  goal >= 3x faster at equal or better inertia: {'met' if peer / ours >= 3 and ours_inertia <= peer_inertia else 'MISSED'}"
    )
    _ = peer_ids


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--votes", type=int, default=1_000_000, help="target predictions to count")
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--n", type=int, default=1_000_000, help="source feature rows for FM")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--k", type=int, default=1000, help="clusters")
    ap.add_argument("--points-per-centroid", type=int, default=32, help="ours: training rows per cluster")
    ap.add_argument("--niter", type=int, default=10, help="ours: Lloyd iterations")
    ap.add_argument("--peer-batch", type=int, default=1024, help="MiniBatchKMeans batch size (its default)")
    ap.add_argument("--skip-fm", action="store_true")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(2)
    bench_votes(args.votes, args.classes)
    if not args.skip_fm:
        bench_fm(
            args.n,
            args.dim,
            args.k,
            points_per_centroid=args.points_per_centroid,
            niter=args.niter,
            peer_batch=args.peer_batch,
        )


if __name__ == "__main__":
    main()
