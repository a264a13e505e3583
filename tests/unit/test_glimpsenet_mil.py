"""GlimpseNet's three MIL pooling functions (Hang et al. eq. 1, eq. 2, top-k) against values
worked out by hand, their limits, and their refusal of meaningless hyper-parameters."""

from __future__ import annotations

import math

import pytest
import torch

from triage.models.mil import lse_pool, noisy_and_pool, topk_pool


def _bag(*values: float) -> torch.Tensor:
    """One bag of instances, one class: shape (1, J, 1), float64."""
    return torch.tensor(values, dtype=torch.float64)[None, :, None]


def test_lse_with_r_5_is_the_log_mean_exp_of_equation_1() -> None:
    # (1/5) ln((e^1 + e^3 + e^4.5) / 3) = (1/5) ln(112.82095005 / 3) = 3.62718976 / 5
    assert lse_pool(_bag(0.2, 0.6, 0.9), r=5).item() == pytest.approx(0.7254379521, abs=1e-9)
    # r = 1: ln((e^0.2 + e^0.6 + e^0.9) / 3)
    assert lse_pool(_bag(0.2, 0.6, 0.9), r=1).item() == pytest.approx(0.6067037641, abs=1e-9)


def test_lse_tends_to_the_maximum_as_r_grows_and_to_the_mean_as_r_shrinks() -> None:
    bag = _bag(0.1, 0.35, 0.8, 0.3)
    values = [lse_pool(bag, r).item() for r in (0.5, 5, 50, 500)]
    assert values == sorted(values)  # sharper with r
    assert lse_pool(bag, r=1e4).item() == pytest.approx(0.8, abs=math.log(4) / 1e4 + 1e-12)
    assert lse_pool(bag, r=1e-6).item() == pytest.approx(0.3875, abs=1e-6)
    # never outside [mean, max], even where exp(r p) would overflow
    assert lse_pool(bag, r=1e6).item() <= 0.8


def test_noisy_and_with_a_10_b_0_2_matches_equation_2() -> None:
    # mean 0.5666667; (sigm(3.6666667) - sigm(-2)) / (sigm(8) - sigm(-2))
    # = (0.9750756 - 0.1192029) / (0.9996646 - 0.1192029) = 0.9720725
    value = noisy_and_pool(_bag(0.2, 0.6, 0.9), a=10, b=0.2).item()
    assert value == pytest.approx(0.9720725209, abs=1e-9)


def test_noisy_and_is_0_for_an_all_negative_bag_and_1_for_an_all_positive_one() -> None:
    assert noisy_and_pool(_bag(0.0, 0.0, 0.0), a=10, b=0.2).item() == pytest.approx(0.0, abs=1e-12)
    assert noisy_and_pool(_bag(1.0, 1.0), a=10, b=0.2).item() == pytest.approx(1.0, abs=1e-12)
    # it depends on the instances only through their mean
    assert noisy_and_pool(_bag(0.1, 0.5), 10, 0.2).item() == pytest.approx(
        noisy_and_pool(_bag(0.3, 0.3), 10, 0.2).item(), abs=1e-12)


def test_topk_averages_every_class_over_the_k_most_malignant_instances() -> None:
    # classes: (benign without callback, benign, malignant); 4 instances
    bag = torch.tensor([[[0.9, 0.1, 0.20],
                         [0.2, 0.7, 0.90],
                         [0.4, 0.3, 0.10],
                         [0.6, 0.5, 0.60]]], dtype=torch.float64)
    pooled = topk_pool(bag, k=2, rank_class=2)
    # instances 1 and 3 are the most malignant: ((0.2+0.6)/2, (0.7+0.5)/2, (0.9+0.6)/2)
    assert pooled[0].tolist() == pytest.approx([0.4, 0.6, 0.75], abs=1e-12)
    # not a per-class top-k: instance 0's 0.9 of the first class is not used
    assert pooled[0, 0].item() != pytest.approx(bag[0, :, 0].topk(2).values.mean().item())


def test_topk_breaks_ties_by_the_lower_instance_index() -> None:
    bag = torch.tensor([[[0.1, 0.5], [0.2, 0.5], [0.3, 0.5]]], dtype=torch.float64)
    assert topk_pool(bag, k=1, rank_class=1)[0].tolist() == pytest.approx([0.1, 0.5])


def test_pooling_is_per_bag_and_per_class() -> None:
    bags = torch.rand(3, 5, 3, dtype=torch.float64)
    for pool in (lambda b: lse_pool(b, 5), lambda b: noisy_and_pool(b, 10, 0.2)):
        together = pool(bags)
        assert together.shape == (3, 3)
        for n in range(3):
            for c in range(3):
                single = pool(bags[n:n + 1, :, c:c + 1])
                assert together[n, c].item() == pytest.approx(single.item(), abs=1e-12)


@pytest.mark.parametrize("call,message", [
    (lambda b: lse_pool(b, r=0), "r must be a positive"),
    (lambda b: lse_pool(b, r=float("inf")), "r must be a positive"),
    (lambda b: noisy_and_pool(b, a=0, b=0.2), "slope a"),
    (lambda b: noisy_and_pool(b, a=10, b=1.5), "threshold b"),
    (lambda b: topk_pool(b, k=4, rank_class=0), "at least 4 instances"),
    (lambda b: topk_pool(b, k=0, rank_class=0), "k >= 1"),
    (lambda b: topk_pool(b, k=1, rank_class=3), "rank class 3"),
    (lambda b: lse_pool(b[:, :0], r=5), "at least one instance"),
])
def test_meaningless_hyper_parameters_are_refused(call: object, message: str) -> None:
    bag = torch.rand(1, 3, 3)
    with pytest.raises(ValueError, match=message):
        call(bag)  # type: ignore[operator]
