"""Vote counting: each target sample votes for the source class its surrogate output maps onto.

Hard votes count argmax predictions (the paper's default); soft votes sum softmax
probabilities. Rankings are deterministic: hard votes, then summed softmax, then class id
(ascending), so the many zero-vote classes a small target leaves are ordered by how close
the target came to them, never arbitrarily. One count serves every keep budget.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import PrunerError

MODES = ("hard", "soft")
TIE_BREAK = {
    "hard": "hard votes, then summed softmax, then class id",
    "soft": "summed softmax, then hard votes, then class id",
}


@dataclass(frozen=True)
class Votes:
    """Per-class votes of one target: hard counts, summed softmax, and the number of voters."""

    hard: np.ndarray
    soft: np.ndarray
    n: int

    @property
    def num_classes(self) -> int:
        return len(self.hard)

    def ranking(self, mode: str = "hard") -> np.ndarray:
        """Class ids, most voted first, ties broken deterministically (see `TIE_BREAK`)."""
        ids = np.arange(self.num_classes)
        if mode == "hard":
            return np.lexsort((ids, -self.soft, -self.hard))
        if mode == "soft":
            return np.lexsort((ids, -self.hard, -self.soft))
        raise PrunerError(f"vote mode must be one of {MODES}, found {mode!r}")

    def top(self, k: int, mode: str = "hard") -> np.ndarray:
        """The `k` most voted classes."""
        return self.ranking(mode)[:k]

    def bottom(self, k: int, mode: str = "hard") -> np.ndarray:
        """The `k` least voted classes: the exact reverse of the ranking (reverse LM)."""
        return self.ranking(mode)[::-1][:k]

    def scores(self, mode: str = "hard") -> np.ndarray:
        if mode not in MODES:
            raise PrunerError(f"vote mode must be one of {MODES}, found {mode!r}")
        return (self.hard if mode == "hard" else self.soft).astype(np.float64)

    def normalised(self) -> Votes:
        """Votes per voter (each vector sums to 1), so targets of different sizes weigh the same."""
        if self.n == 0:
            raise PrunerError("cannot normalise the votes of an empty target")
        return Votes(self.hard / self.n, self.soft / self.n, 1)

    def __add__(self, other: Votes) -> Votes:
        if other.num_classes != self.num_classes:
            raise PrunerError(f"cannot add votes over {self.num_classes} and {other.num_classes} classes")
        return Votes(self.hard + other.hard, self.soft + other.soft, self.n + other.n)

    def to_json(self, names: Iterable[str] | None = None, mode: str = "hard") -> dict[str, Any]:
        """Plain-JSON scores for a KeepList: votes, soft sums, voters, order, names."""
        out: dict[str, Any] = {
            "kind": f"votes-{mode}",
            "votes": [float(v) for v in self.scores(mode)],
            "hard": [float(v) for v in self.hard],
            "soft": [round(float(v), 6) for v in self.soft],
            "voters": int(self.n),
            "order": TIE_BREAK[mode],
        }
        if names is not None:
            out["names"] = list(names)
        return out


class VoteCounter:
    """Accumulates votes over batches of surrogate outputs (logits) or of predictions."""

    def __init__(self, num_classes: int, *, where: str = "target", soft: bool = True) -> None:
        if num_classes < 1:
            raise PrunerError(f"{where}: vote counting needs at least one class, found {num_classes}")
        self.num_classes = num_classes
        self.where = where
        self.soft_votes = soft  # False: hard votes only (ties then fall to class id), about 4x faster
        self.hard = np.zeros(num_classes, dtype=np.int64)
        self.soft = np.zeros(num_classes, dtype=np.float64)
        self.n = 0

    def add_logits(self, logits: Any, *, temperature: float = 1.0) -> None:
        """Count a batch of outputs (n x C, numpy or torch): argmax votes and softmax sums."""
        import torch

        x = logits if isinstance(logits, torch.Tensor) else torch.from_numpy(np.asarray(logits))
        x = x.detach()
        if x.ndim != 2:
            raise PrunerError(f"{self.where}: model outputs must be 2-D (n x classes), found shape {tuple(x.shape)}")
        if x.shape[1] != self.num_classes:
            raise PrunerError(
                f"{self.where}: the model outputs {x.shape[1]} classes but the source has {self.num_classes}"
            )
        if len(x) == 0:
            return
        x = x.float().cpu()
        if self.soft_votes:
            pred, prob_sums = _argmax_and_prob_sums(x, temperature)
            finite = bool(torch.isfinite(prob_sums).all())
        else:  # numpy's argmax is SIMD, several times torch's on the CPU
            pred, prob_sums = x.numpy().argmax(axis=1), None
            finite = bool(torch.isfinite(x.sum(dim=1)).all())
        # a NaN or +inf logit, or a row of only -inf, makes the row's softmax NaN
        if not finite:
            bad = torch.isnan(x).any(dim=1) | torch.isposinf(x).any(dim=1) | torch.isneginf(x).all(dim=1)
            if bool(bad.any()):
                raise PrunerError(
                    f"{self.where}: model outputs hold NaN or inf (first at row {self.n + int(bad.nonzero()[0, 0])})"
                )
        self.add_predictions(pred, prob_sums.numpy() if prob_sums is not None else None)

    def add_predictions(self, predictions: Any, prob_sums: np.ndarray | None = None) -> None:
        """Count hard predictions (class ids); `prob_sums` adds to the soft votes."""
        pred = np.asarray(predictions)
        if pred.ndim != 1 or (pred.size and pred.dtype.kind not in "iu"):
            raise PrunerError(f"{self.where}: predictions must be a 1-D array of class ids")
        if pred.size:
            lo, hi = int(pred.min()), int(pred.max())
            if lo < 0 or hi >= self.num_classes:
                raise PrunerError(f"{self.where}: prediction {hi if hi >= self.num_classes else lo} is not a class id")
            self.hard += np.bincount(pred, minlength=self.num_classes)
        if prob_sums is not None:
            p = np.asarray(prob_sums, dtype=np.float64)
            if p.shape != (self.num_classes,):
                raise PrunerError(f"{self.where}: soft votes of shape {p.shape}, expected ({self.num_classes},)")
            self.soft += p
        self.n += int(pred.size)

    def votes(self) -> Votes:
        """The votes so far; raises PrunerError when the target had no samples."""
        if self.n == 0:
            raise PrunerError(f"{self.where}: the target has no samples, nothing voted")
        return Votes(self.hard.copy(), self.soft.copy(), self.n)


ROWS = 4096  # rows per block: a block of 1000-class logits (16 MB) stays in the last-level cache


def _argmax_and_prob_sums(x: Any, temperature: float) -> tuple[np.ndarray, Any]:
    """Argmax per row and column sums of softmax(x / temperature) (float64), computed block by
    block in one reused buffer, so the exp works in cache and the caller's tensor is untouched."""
    import torch

    n, c = x.shape
    pred = np.empty(n, dtype=np.int64)
    sums = torch.zeros(c, dtype=torch.float64)
    buf = torch.empty((min(ROWS, n), c), dtype=torch.float32)
    for i in range(0, n, ROWS):
        b = buf[: min(ROWS, n - i)]
        b.copy_(x[i : i + ROWS])
        rows = b.numpy()
        p = rows.argmax(axis=1)
        pred[i : i + len(b)] = p
        top = torch.from_numpy(rows[np.arange(len(p)), p])[:, None]  # the row max, without another pass
        if temperature != 1.0:
            b.div_(temperature)
            top = top / temperature
        b.sub_(top).exp_()
        sums += torch.mv(b.T, b.sum(dim=1).reciprocal_()).double()
    return pred, sums


def count_votes(batches: Iterable[Any], num_classes: int, *, where: str = "target", soft: bool = True) -> Votes:
    """Votes of every batch of logits in `batches`."""
    counter = VoteCounter(num_classes, where=where, soft=soft)
    for b in batches:
        counter.add_logits(b)
    return counter.votes()
