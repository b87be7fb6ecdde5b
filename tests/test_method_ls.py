"""Logit standardization (`ls`) against the paper's formula, written out independently."""
import math

import pytest
import torch

from tests.helpers import method_losses


def reference_ls(student, teacher, temperature, eps=1e-7):
    """T^2 * KL(softmax(Z(t)/T) || softmax(Z(s)/T)), batch mean, Z the row z-score with the unbiased std."""
    total = 0.0
    for s_row, t_row in zip(student, teacher):
        def z(row):
            n = len(row)
            mean = sum(row) / n
            std = math.sqrt(sum((v - mean) ** 2 for v in row) / (n - 1))
            return [(v - mean) / (std + eps) for v in row]

        def softmax(row):
            exps = [math.exp(v / temperature) for v in row]
            return [e / sum(exps) for e in exps]

        p, q = softmax(z(t_row)), softmax(z(s_row))
        total += sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
    return temperature**2 * total / len(student)


def test_value_and_gradient_match_the_formula():
    torch.manual_seed(3)
    s = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    t = torch.randn(5, 7, dtype=torch.float64) * 4
    parts = method_losses("ls", s, t, torch.zeros(5, dtype=torch.long), temperature=2.0, alpha=1.0)
    assert set(parts) == {"kd"}
    assert parts["kd"].item() == pytest.approx(reference_ls(s.tolist(), t.tolist(), 2.0), rel=1e-9)
    parts["kd"].backward()
    # the gradient by central differences of the independent reference
    h, numeric = 1e-6, torch.zeros_like(s)
    for i in range(s.shape[0]):
        for j in range(s.shape[1]):
            up, down = s.detach().clone(), s.detach().clone()
            up[i, j] += h
            down[i, j] -= h
            numeric[i, j] = (reference_ls(up.tolist(), t.tolist(), 2.0) - reference_ls(down.tolist(), t.tolist(), 2.0)) / (2 * h)
    assert torch.allclose(s.grad, numeric, atol=1e-7)


def test_the_term_ignores_each_side_s_logit_scale_and_shift():
    torch.manual_seed(4)
    s, t = torch.randn(6, 10, dtype=torch.float64), torch.randn(6, 10, dtype=torch.float64)
    base = method_losses("ls", s, t, None, temperature=3.0, alpha=1.0)["kd"]
    moved = method_losses("ls", 5 * s - 2, 0.3 * t + 7, None, temperature=3.0, alpha=1.0)["kd"]
    assert moved.item() == pytest.approx(base.item(), rel=1e-6)
    plain = method_losses("soft", 5 * s - 2, 0.3 * t + 7, None, temperature=3.0, alpha=1.0)["kd"]
    assert abs(plain.item() - base.item()) > 1e-3  # plain soft targets do see the scale


def test_alpha_weights_the_labels_and_the_term():
    s, t, y = torch.randn(4, 5), torch.randn(4, 5), torch.tensor([0, 1, 2, 3])
    parts = method_losses("ls", s, t, y, temperature=2.0, alpha=0.25)
    full = method_losses("ls", s, t, y, temperature=2.0, alpha=1.0)
    assert parts["kd"].item() == pytest.approx(0.25 * full["kd"].item(), rel=1e-6)
    assert parts["ce"].item() == pytest.approx(0.75 * torch.nn.functional.cross_entropy(s, y).item(), rel=1e-6)
