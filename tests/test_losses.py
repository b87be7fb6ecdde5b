import math

import pytest
import torch
import torch.nn.functional as F

from kdcore.distill import METHODS
from kdcore.losses import entropy, softened
from tests.helpers import method_losses


def distillation_loss(s, t, y, *, method="soft", temperature=4.0, alpha=0.9):
    parts = method_losses(method, s, t, y, temperature=temperature, alpha=alpha)
    return sum(parts.values()), parts


def _softmax(row, t):
    exps = [math.exp(v / t) for v in row]
    total = sum(exps)
    return [e / total for e in exps]


def test_soft_loss_matches_a_hand_computation():
    s = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
    t = torch.tensor([[2.0, 1.0, 0.0], [1.0, 1.0, 2.0]])
    y = torch.tensor([1, 2])
    T, alpha = 2.0, 0.7
    kl = 0.0
    for srow, trow in zip(s.tolist(), t.tolist()):
        p, q = _softmax(trow, T), _softmax(srow, T)
        kl += sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
    kl /= 2  # batch mean
    ce = 0.0
    for srow, label in zip(s.tolist(), y.tolist()):
        ce -= math.log(_softmax(srow, 1.0)[label])
    ce /= 2
    expected = (1 - alpha) * ce + alpha * T * T * kl
    total, parts = distillation_loss(s, t, y, method="soft", temperature=T, alpha=alpha)
    assert total.item() == pytest.approx(expected, rel=1e-5)
    assert parts["kd"].item() == pytest.approx(alpha * T * T * kl, rel=1e-5)  # terms are logged weighted
    assert parts["ce"].item() == pytest.approx((1 - alpha) * ce, rel=1e-5)


def test_soft_gradient_keeps_its_scale_at_high_temperature():
    # Hinton et al. 2015: with the T^2 factor, dL/dz -> (z - v) / (K * B) as T grows (zero-mean logits).
    torch.manual_seed(0)
    B, K, T = 4, 10, 200.0
    z = torch.randn(B, K)
    z = (z - z.mean(1, keepdim=True)).requires_grad_(True)
    v = torch.randn(B, K)
    v = v - v.mean(1, keepdim=True)
    loss, _ = distillation_loss(z, v, None, method="soft", temperature=T, alpha=1.0)
    loss.backward()
    expected = (z.detach() - v) / (K * B)
    assert torch.allclose(z.grad, expected, rtol=2e-2, atol=5e-4)


def test_soft_gradient_magnitude_does_not_shrink_with_temperature():
    torch.manual_seed(1)
    z = torch.randn(8, 10)
    v = torch.randn(8, 10) * 3
    norms = []
    for T in (2.0, 8.0, 32.0):
        zz = z.clone().requires_grad_(True)
        distillation_loss(zz, v, None, temperature=T, alpha=1.0)[0].backward()
        norms.append(zz.grad.norm().item())
    assert max(norms) / min(norms) < 3  # without T^2 they would fall by ~256x from T=2 to T=32


def test_alpha_zero_is_plain_cross_entropy():
    s = torch.randn(5, 4)
    y = torch.randint(0, 4, (5,))
    total, parts = distillation_loss(s, torch.randn(5, 4), y, temperature=3.0, alpha=0.0)
    assert total.item() == pytest.approx(F.cross_entropy(s, y).item(), rel=1e-6)
    assert "kd" not in parts


def test_alpha_one_uses_no_labels_and_equals_kl_at_t1():
    s, t = torch.randn(6, 5), torch.randn(6, 5)
    total, parts = distillation_loss(s, t, None, temperature=1.0, alpha=1.0)
    kl = F.kl_div(F.log_softmax(s, 1), F.softmax(t, 1), reduction="batchmean")
    assert total.item() == pytest.approx(kl.item(), rel=1e-5)
    assert "ce" not in parts


def test_hard_method_is_cross_entropy_on_teacher_argmax():
    s, t = torch.randn(6, 5), torch.randn(6, 5)
    y = torch.randint(0, 5, (6,))
    total, parts = distillation_loss(s, t, y, method="hard", temperature=7.0, alpha=0.25)
    expected = 0.75 * F.cross_entropy(s, y) + 0.25 * F.cross_entropy(s, t.argmax(1))
    assert total.item() == pytest.approx(expected.item(), rel=1e-6)


def test_identical_logits_give_zero_distillation_term():
    s = torch.randn(3, 7)
    _, parts = distillation_loss(s, s.clone(), None, temperature=4.0, alpha=1.0)
    assert parts["kd"].abs().item() < 1e-6


@pytest.mark.parametrize("distill, message", [
    ({"alpha": 1.5}, "distill.alpha"), ({"temperature": 0.0}, "distill.temperature"),
    ({"method": "dkd_typo"}, "distill.method"),
])
def test_bad_settings_are_named(distill, message):
    from kdcore.config import ConfigError
    from kdcore.configure import build_config

    with pytest.raises(ConfigError, match=message):
        build_config({"distill": distill})


def test_labels_are_required_when_alpha_is_below_one():
    s = torch.randn(2, 3)
    with pytest.raises(ValueError, match="labels"):
        distillation_loss(s, s, None, alpha=0.5)


def test_every_logit_method_is_differentiable():
    for name in (n for n in METHODS.names() if METHODS.get(n).cacheable):
        s = torch.randn(4, 3, requires_grad=True)
        total, _ = distillation_loss(s, torch.randn(4, 3), torch.tensor([0, 1, 2, 0]), method=name, temperature=2.0, alpha=0.5)
        total.backward()
        assert s.grad is not None and torch.isfinite(s.grad).all()


def test_softened_and_entropy():
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0]])
    p = softened(logits, 3.0)
    assert torch.allclose(p, torch.full((1, 4), 0.25))
    assert entropy(p).item() == pytest.approx(math.log(4))
    sharp = softened(torch.tensor([[10.0, 0.0]]), 1.0)
    assert entropy(sharp).item() < entropy(softened(torch.tensor([[10.0, 0.0]]), 10.0)).item()
