"""Multiple-instance pooling of per-glimpse class probabilities (Hang et al., GlimpseNet §5.2).

GlimpseNet follows the MIL framework of Kraus et al. 2016: every class ``i`` is its own
binary task, each instance (glimpse) ``j`` gets a probability ``p_ij = P(t_i = 1 | x_j)``,
and a pooling function ``f`` turns the bag into the image's ``P_i = f({p_ij})``. The paper
compares three functions; each is a pure function of a ``(N, J, C)`` tensor (N bags of J
instances, C classes) returning ``(N, C)``:

* :func:`lse_pool` — log-sum-exponential, equation (1):
  ``P_i = (1/r) log((1/|j|) sum_j exp(r p_ij))``. A smooth maximum: it tends to
  ``max_j p_ij`` as ``r -> inf`` and to the mean ``(1/|j|) sum_j p_ij`` as ``r -> 0``.
  Computed as ``(logsumexp(r p) - log |j|) / r`` so that large ``r`` cannot overflow.
  The paper's model uses ``r = 5``.
* :func:`noisy_and_pool` — Noisy-AND, equation (2):
  ``P_i = (sigm(a (mean_j p_ij - b)) - sigm(-a b)) / (sigm(a (1 - b)) - sigm(-a b))``.
  The paper calls ``a`` and ``b`` hyper-parameters (``a = 10``, ``b = 0.2``) and gives one
  value each, so here both are fixed numbers shared by all classes (Kraus et al. learn a
  ``b_i`` per class; the GlimpseNet paper does not). ``P_i`` is 0 when every instance is
  0 and 1 when every instance is 1.
* :func:`topk_pool` — "we average the probability distribution for k number of instances
  that are most highly activated in the MALIGNANT class": the ``k`` instances are chosen
  once per bag by their probability of the ranking class (MALIGNANT) and *all* classes are
  averaged over those same instances (not a separate top-k per class). Equal ranking
  probabilities are broken by the lower instance index. The paper uses ``k = 3``.

The hyper-parameters are validated here (``ValueError`` with the allowed range); the
model's configuration checks them again at construction (``ModelError``).
"""

from __future__ import annotations

import math
from enum import StrEnum

import torch
from torch import Tensor


class MILPooling(StrEnum):
    """The three pooling functions of the paper (Table 1 rows of GlimpseNet)."""

    LSE = "lse"
    NOISY_AND = "noisy-and"
    TOPK = "top-k"


def _check_bag(probabilities: Tensor) -> None:
    if probabilities.dim() != 3 or probabilities.shape[1] < 1:
        raise ValueError("instance probabilities must be (N, J, C) with at least one instance, "
                         f"got shape {tuple(probabilities.shape)}")


def check_lse(r: float) -> None:
    if not (r > 0 and math.isfinite(r)):
        raise ValueError(f"LSE sharpness r must be a positive finite number, got {r}")


def check_noisy_and(a: float, b: float) -> None:
    if not (a > 0 and math.isfinite(a)):
        raise ValueError(f"Noisy-AND slope a must be a positive finite number, got {a}")
    if not 0 <= b <= 1:
        raise ValueError(f"Noisy-AND threshold b must be in [0, 1], got {b}")


def check_topk(k: int, instances: int | None = None) -> None:
    if k < 1:
        raise ValueError(f"top-k pooling needs k >= 1, got {k}")
    if instances is not None and k > instances:
        raise ValueError(f"top-k pooling with k={k} needs at least {k} instances, got {instances}")


def lse_pool(probabilities: Tensor, r: float) -> Tensor:
    """Equation (1): ``(1/r) log(mean_j exp(r p_ij))`` over instances, ``(N, J, C) -> (N, C)``."""
    _check_bag(probabilities)
    check_lse(r)
    count = probabilities.shape[1]
    return (torch.logsumexp(probabilities * r, dim=1) - math.log(count)) / r


def noisy_and_pool(probabilities: Tensor, a: float, b: float) -> Tensor:
    """Equation (2): Noisy-AND of the instances' mean probability, ``(N, J, C) -> (N, C)``."""
    _check_bag(probabilities)
    check_noisy_and(a, b)
    mean = probabilities.mean(dim=1)
    low = 1.0 / (1.0 + math.exp(a * b))  # sigm(-a b)
    high = 1.0 / (1.0 + math.exp(-a * (1.0 - b)))  # sigm(a (1 - b))
    return (torch.sigmoid(a * (mean - b)) - low) / (high - low)


def topk_pool(probabilities: Tensor, k: int, rank_class: int) -> Tensor:
    """Mean over the ``k`` instances with the highest ``rank_class`` probability, of every
    class: ``(N, J, C) -> (N, C)``; ties go to the lower instance index."""
    _check_bag(probabilities)
    check_topk(k, probabilities.shape[1])
    if not 0 <= rank_class < probabilities.shape[2]:
        raise ValueError(f"rank class {rank_class} is not one of the "
                         f"{probabilities.shape[2]} classes")
    ranking = probabilities[:, :, rank_class]
    order = torch.sort(ranking, dim=1, descending=True, stable=True).indices[:, :k]  # (N, k)
    chosen = torch.gather(probabilities, 1,
                          order[:, :, None].expand(-1, -1, probabilities.shape[2]))
    return chosen.mean(dim=1)
