"""Label mapping (LM): keep the source classes the target's images map onto through the surrogate.

Every target image votes for the source class the surrogate predicts; the K most voted
classes are kept (hard votes by default, soft votes as an option). Several targets combine
as a sum of normalised votes. Reverse LM keeps the K least voted classes: a sanity ablation
that should do worst.
"""

from __future__ import annotations

from ..errors import PrunerError
from ..keeplist import KeepList
from .base import Made, PruneRequest, budgets, class_keeplist
from .combine import combine_votes
from .votes import MODES, Votes, count_votes


def target_votes(request: PruneRequest, what: str = "lm") -> Votes:
    """The votes of the request's targets through the surrogate (summed normalised votes for several).
    The budgets are checked first, so a bad ratio fails before any forward pass."""
    budgets(request.source.num_classes, request.ratios, request.keeps)
    per_target = []
    for t in request.need_targets(what):
        if t.logits is None:
            raise PrunerError(f"{what}: target {t.id!r} has no surrogate outputs (--model)")
        per_target.append(count_votes(t.logits(), request.source.num_classes, where=f"target {t.id}"))
    return combine_votes(per_target)


def lm_from_votes(
    request: PruneRequest, votes: Votes, *, mode: str = "hard", reverse: bool = False
) -> dict[float, KeepList]:
    """Keep-lists for every budget of `request` from one vote count."""
    if mode not in MODES:
        raise PrunerError(f"vote mode must be one of {MODES}, found {mode!r}")
    src = request.source
    if votes.num_classes != src.num_classes:
        raise PrunerError(f"votes over {votes.num_classes} classes, the source has {src.num_classes}")
    method = "reverse-lm" if reverse else "lm"
    scores = votes.to_json(src.names, mode)
    sizes = src.class_sizes()
    out: dict[float, KeepList] = {}
    for ratio, k in budgets(src.num_classes, request.ratios, request.keeps):
        kept = votes.bottom(k, mode) if reverse else votes.top(k, mode)
        params = {"votes": mode, "keep": k, "targets": len(request.targets)}
        made = Made(method, ratio, params, request.model_id, request.target_id())
        out[ratio] = class_keeplist(src, kept.tolist(), made, scores, sizes)
    return out


def label_mapping(request: PruneRequest, *, mode: str = "hard") -> dict[float, KeepList]:
    """LM keep-lists (the `lm` pruner)."""
    return lm_from_votes(request, target_votes(request, "lm"), mode=mode)


def reverse_label_mapping(request: PruneRequest, *, mode: str = "hard") -> dict[float, KeepList]:
    """Reverse-LM keep-lists: the least voted classes (the `reverse-lm` pruner)."""
    return lm_from_votes(request, target_votes(request, "reverse-lm"), mode=mode, reverse=True)
