"""Every distillation method: its loss against the paper's formula, on every zoo pair, through the CLI, resumed.

Golden references are written here from the papers' formulas in float64, with no kdcore
code, and compared with the methods in value and in gradient.
"""
from __future__ import annotations

import functools
import json
import math

import pytest
import torch
from torch import nn

from kdcore.config import ConfigError, DistillConfig
from kdcore.configure import build_config
from kdcore.distill import METHODS, build_distiller
from kdcore.distill.base import Distiller, Step
from tests.helpers import method_losses

F64 = torch.float64

# (B=3, K=4) logits and labels, fixed
STUDENT = torch.tensor([[1.0, 2.0, 0.5, -1.0], [0.0, -1.0, 3.0, 0.2], [2.5, 0.1, -0.3, 1.1]], dtype=F64)
TEACHER = torch.tensor([[0.5, 3.0, -0.5, 0.0], [1.0, 0.5, 2.0, -2.0], [3.0, -1.0, 0.0, 2.0]], dtype=F64)
LABELS = torch.tensor([1, 2, 3])


def fixed(*shape: int, phase: float = 0.3) -> torch.Tensor:
    """Deterministic float64 values in [-1, 1] of any shape, signed and without symmetry."""
    return torch.sin(torch.arange(math.prod(shape), dtype=F64) * 0.7 + phase).reshape(shape)


def terms_of(method: str, student_logits, teacher_logits=TEACHER, labels=LABELS, **kw) -> dict:
    """The method's unweighted terms: alpha = 1 weights them by 1 and adds no CE."""
    return method_losses(method, student_logits, teacher_logits, labels, alpha=1.0, **kw)


def value_and_grad(loss_of, inputs: torch.Tensor) -> tuple[float, torch.Tensor]:
    leaf = inputs.detach().clone().requires_grad_(True)
    loss = loss_of(leaf)
    (grad,) = torch.autograd.grad(loss, leaf)
    return loss.item(), grad


def assert_same_loss(method_loss, reference_loss, inputs, *, rel=1e-10):
    """Equal values and equal gradients with respect to `inputs` (autograd through each)."""
    ours, our_grad = value_and_grad(method_loss, inputs)
    theirs, their_grad = value_and_grad(reference_loss, inputs)
    assert ours == pytest.approx(theirs, rel=rel, abs=1e-12)
    scale = their_grad.abs().max().item()  # float32 rounding is relative to the largest entry
    assert torch.allclose(our_grad, their_grad, rtol=rel, atol=rel * scale + 1e-15), (our_grad - their_grad).abs().max()


# ---- references from the papers ----------------------------------------------------------------------------
def ref_softmax(row: torch.Tensor, t: float) -> torch.Tensor:
    e = torch.exp(row / t)
    return e / e.sum()


def ref_kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    return sum(p[k] * (torch.log(p[k]) - torch.log(q[k])) for k in range(len(p)))


def ref_soft(s, t, T):
    """Hinton et al. 2015: T^2 KL(softmax(t/T) || softmax(s/T)), batch mean."""
    return T * T * sum(ref_kl(ref_softmax(t[i], T), ref_softmax(s[i], T)) for i in range(len(s))) / len(s)


def ref_hard(s, t):
    return sum(-torch.log(ref_softmax(s[i], 1.0)[int(t[i].argmax())]) for i in range(len(s))) / len(s)


def ref_dkd(s, t, y, T):
    """Zhao et al. 2022, Eq. (1)-(2): b = [p_y, 1 - p_y]; p_hat = p_k / (1 - p_y) over k != y."""
    tckd = nckd = 0.0
    for i in range(len(s)):
        ps, pt, g = ref_softmax(s[i], T), ref_softmax(t[i], T), int(y[i])
        others = [k for k in range(len(ps)) if k != g]
        bs, bt = torch.stack([ps[g], 1 - ps[g]]), torch.stack([pt[g], 1 - pt[g]])
        tckd = tckd + ref_kl(bt, bs)
        nckd = nckd + ref_kl(pt[others] / (1 - pt[g]), ps[others] / (1 - ps[g]))
    return T * T * tckd / len(s), T * T * nckd / len(s)


def ref_pearson(u, v, eps):
    du, dv = u - u.sum() / len(u), v - v.sum() / len(v)
    return (du * dv).sum() / (torch.sqrt((du * du).sum()) * torch.sqrt((dv * dv).sum()) + eps)


def ref_dist(s, t, T, eps=1e-8):
    """Huang et al. 2022: 1 - Pearson correlation per row (inter) and per column (intra) of the probabilities.

    eps: added to the denominator, 1e-8 in the authors' code; 0 is the formula as printed.
    """
    ps = torch.stack([ref_softmax(r, T) for r in s])
    pt = torch.stack([ref_softmax(r, T) for r in t])
    B, K = ps.shape
    inter = sum(1 - ref_pearson(ps[i], pt[i], eps) for i in range(B)) / B
    intra = sum(1 - ref_pearson(ps[:, k], pt[:, k], eps) for k in range(K)) / K
    return T * T * inter, T * T * intra


def ref_block_mean(f, size):
    """Average pooling to `size` when it divides the map (what adaptive average pooling then does)."""
    B, C, H, W = f.shape
    h, w = size
    return f.reshape(B, C, h, H // h, w, W // w).mean(dim=(3, 5))


def ref_at(pairs, p, weight):
    """Zagoruyko & Komodakis 2017 (mdistiller's reduction): Q = vec(mean_c |A_c|^p) / ||.||_2,
    mean over images and positions of the squared difference, summed over stage pairs."""
    total = 0.0
    for fs, ft in pairs:
        size = (min(fs.shape[2], ft.shape[2]), min(fs.shape[3], ft.shape[3]))
        fs, ft = ref_block_mean(fs, size), ref_block_mean(ft, size)
        qs = (fs.abs() ** p).sum(dim=1).flatten(1) / fs.shape[1]
        qt = (ft.abs() ** p).sum(dim=1).flatten(1) / ft.shape[1]
        qs = qs / torch.sqrt((qs * qs).sum(dim=1, keepdim=True))
        qt = qt / torch.sqrt((qt * qt).sum(dim=1, keepdim=True))
        total = total + ((qs - qt) ** 2).sum() / qs.numel()
    return weight * total


# ---- tiny models with known stages ---------------------------------------------------------------------------
class ConvNet(nn.Module):
    """conv-ReLU-pool per width: on 16x16 inputs its stages are features.2 (8x8), .5 (4x4), .8 (2x2)."""

    def __init__(self, widths=(2, 3, 4), num_classes: int = 4):
        super().__init__()
        layers, c = [], 3
        for w in widths:
            layers += [nn.Conv2d(c, w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
            c = w
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c, num_classes)

    def forward(self, x):
        return self.head(self.features(x).mean(dim=(2, 3)))


def mlp_net() -> nn.Sequential:
    """Stages '2' (B, 6) and '4' (B, 5)."""
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 6), nn.ReLU(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 4))


SAMPLE = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))


def feature_step(student_features: dict, teacher_features: dict, **kw) -> Step:
    b = len(next(iter(student_features.values())))
    return Step(x=torch.zeros(b), y=None, idx=torch.arange(b), epoch=kw.get("epoch", 1), epochs=kw.get("epochs", 1),
                student_logits=torch.zeros(b, 4, dtype=F64), teacher_logits=torch.zeros(b, 4, dtype=F64),
                student_features=student_features, teacher_features=teacher_features)


def distiller_for(method: str, student, teacher, **options):
    return build_distiller(DistillConfig(method=method, options=options), student, [teacher], SAMPLE)


# ---- golden tests: logit methods -----------------------------------------------------------------------------
@pytest.mark.parametrize("T", [1.0, 4.0])
def test_soft_matches_the_kl_of_softened_distributions(T):
    assert_same_loss(lambda s: terms_of("soft", s, temperature=T)["kd"], lambda s: ref_soft(s, TEACHER, T), STUDENT)


def test_hard_matches_cross_entropy_on_the_teachers_top_class():
    assert_same_loss(lambda s: terms_of("hard", s)["kd"], lambda s: ref_hard(s, TEACHER), STUDENT)


@pytest.mark.parametrize("T, tckd_weight, nckd_weight", [(4.0, 1.0, 8.0), (2.0, 0.5, 3.0)])
def test_dkd_terms_match_the_papers_target_and_non_target_kl(T, tckd_weight, nckd_weight):
    options = {"tckd_weight": tckd_weight, "nckd_weight": nckd_weight, "warmup": 0.0}
    for index, (term, weight) in enumerate([("tckd", tckd_weight), ("nckd", nckd_weight)]):
        assert_same_loss(lambda s: terms_of("dkd", s, temperature=T, options=options)[term],
                         lambda s: weight * ref_dkd(s, TEACHER, LABELS, T)[index], STUDENT)


def test_dkd_decomposes_kd_as_the_paper_says():
    # Zhao et al. 2022, Eq. (4): KD = TCKD + (1 - p_y^T) NCKD, per image (p_y^T: the teacher's target probability)
    T, options = 3.0, {"tckd_weight": 1.0, "nckd_weight": 1.0, "warmup": 0.0}
    for i in range(len(STUDENT)):
        s, t, y = STUDENT[i:i + 1], TEACHER[i:i + 1], LABELS[i:i + 1]
        kd = terms_of("soft", s, t, y, temperature=T)["kd"]
        dkd = terms_of("dkd", s, t, y, temperature=T, options=options)
        p_target = torch.softmax(t / T, dim=1)[0, y[0]]
        assert kd.item() == pytest.approx((dkd["tckd"] + (1 - p_target) * dkd["nckd"]).item(), rel=1e-12)
        assert (dkd["tckd"] + dkd["nckd"]).item() != pytest.approx(kd.item())  # the plain sum is not KD


@pytest.mark.parametrize("epoch, factor", [(1, 1 / 20), (10, 0.5), (19, 19 / 20), (20, 1.0), (200, 1.0)])
def test_dkd_terms_ramp_up_linearly_over_the_warmup_share_of_the_run(epoch, factor):
    ramped = terms_of("dkd", STUDENT, epoch=epoch, epochs=240)  # the default: 20 of 240 epochs
    full = terms_of("dkd", STUDENT, options={"warmup": 0.0}, epoch=epoch, epochs=240)
    for term in ("tckd", "nckd"):
        assert ramped[term].item() == pytest.approx(factor * full[term].item(), rel=1e-12)


def test_dkd_without_warmup_is_at_full_weight_from_the_first_epoch():
    first = terms_of("dkd", STUDENT, options={"warmup": 0.0}, epoch=1, epochs=240)
    last = terms_of("dkd", STUDENT, options={"warmup": 0.0}, epoch=240, epochs=240)
    assert first["tckd"].item() == last["tckd"].item() and first["nckd"].item() == last["nckd"].item()


def test_dkd_needs_labels():
    with pytest.raises(ValueError, match="dkd needs the true labels"):
        terms_of("dkd", STUDENT, labels=None)


@pytest.mark.parametrize("T", [1.0, 4.0])
def test_dist_terms_match_one_minus_pearson_per_image_and_per_class(T):
    options = {"inter_weight": 2.0, "intra_weight": 0.5}
    for index, (term, weight) in enumerate([("inter", 2.0), ("intra", 0.5)]):
        assert_same_loss(lambda s: terms_of("dist", s, temperature=T, options=options)[term],
                         lambda s: weight * ref_dist(s, TEACHER, T)[index], STUDENT)
        # the authors' eps moves the printed formula's value by a few parts in a million at most here
        printed = weight * ref_dist(STUDENT, TEACHER, T, eps=0.0)[index].item()
        assert terms_of("dist", STUDENT, temperature=T, options=options)[term].item() == pytest.approx(printed, rel=1e-5)


def test_dist_is_zero_for_a_teacher_whose_probabilities_are_a_positive_affine_map_of_the_students():
    # q = a p + (1 - a) / K is a distribution correlated 1 with p, row by row and column by column:
    # DIST asks for no more, where KL still pulls the student towards q.
    T, a = 1.0, 0.3
    p = torch.softmax(STUDENT / T, dim=1)
    teacher = T * torch.log(a * p + (1 - a) / p.shape[1])
    dist = terms_of("dist", STUDENT, teacher, temperature=T)
    assert abs(dist["inter"].item()) < 1e-6 and abs(dist["intra"].item()) < 1e-6  # 0 but for the 1e-8 eps
    assert terms_of("soft", STUDENT, teacher, temperature=T)["kd"].item() > 0.01


def test_dist_ignores_a_constant_added_to_each_row_of_logits():
    shift = torch.tensor([[5.0], [-3.0], [0.5]], dtype=F64)
    before = terms_of("dist", STUDENT)
    after = terms_of("dist", STUDENT + shift, TEACHER - 2 * shift)
    for term in ("inter", "intra"):
        assert after[term].item() == pytest.approx(before[term].item(), rel=1e-9)


# ---- golden tests: feature methods ---------------------------------------------------------------------------
FEATURE_REL = 1e-5  # feature methods compute in float32 (features arrive in bf16 under autocast)

def _fix_regressor(regressor: nn.Module) -> None:
    with torch.no_grad():
        for i, param in enumerate(regressor.parameters()):
            param.copy_(1.0 + 0.5 * fixed(*param.shape, phase=1.1 * i))  # BatchNorm's scale stays positive


def ref_fitnets_hint(student_features, teacher_hint, params, hint_weight):
    """Romero et al. 2015 with mdistiller's reduction: weight * mean squared error of r(student) and the hint."""
    if student_features.dim() == 2:  # Linear regressor; a teacher map is averaged over positions
        weight, bias = params
        target = teacher_hint.sum(dim=(2, 3)) / (teacher_hint.shape[2] * teacher_hint.shape[3])
        out = student_features @ weight.T + bias
    else:  # 1x1 conv without bias, then BatchNorm on batch statistics (training mode)
        conv, gamma, beta = params
        target = teacher_hint
        x = ref_block_mean(student_features, teacher_hint.shape[2:])
        y = torch.einsum("oc,bchw->bohw", conv[:, :, 0, 0], x)
        n = y.shape[0] * y.shape[2] * y.shape[3]
        mean = y.sum(dim=(0, 2, 3), keepdim=True) / n
        var = ((y - mean) ** 2).sum(dim=(0, 2, 3), keepdim=True) / n
        out = (y - mean) / torch.sqrt(var + 1e-5) * gamma.view(1, -1, 1, 1) + beta.view(1, -1, 1, 1)
    return hint_weight * ((out - target) ** 2).sum() / out.numel()


@pytest.mark.parametrize("student, student_layer, student_shape", [
    (ConvNet, "features.2", (4, 2, 8, 8)),  # the student's map is larger: pooled to the teacher's 4x4
    (ConvNet, "features.5", (4, 3, 4, 4)),  # same size: 1x1 conv + BatchNorm only
    (mlp_net, "2", (4, 6)),  # flat features: a Linear onto the teacher's channel means
], ids=["larger_map", "same_size", "flat"])
def test_fitnets_hint_matches_the_regression_of_the_teachers_hint(student, student_layer, student_shape):
    torch.manual_seed(0)
    d = distiller_for("fitnets", student(), ConvNet((5, 6, 7)), student_layer=student_layer,
                      teacher_layer="features.5", hint_weight=3.0)
    _fix_regressor(d.regressor)
    params = [p.detach().double() for p in d.regressor.parameters()]
    hint = fixed(4, 6, 4, 4, phase=2.0)

    def ours(features):
        return d.terms(feature_step({d.student_path: features}, {d.teacher_path: hint}))["hint"]

    assert_same_loss(ours, lambda f: ref_fitnets_hint(f, hint, params, 3.0), fixed(*student_shape), rel=FEATURE_REL)
    assert set(d.terms(feature_step({d.student_path: fixed(*student_shape)}, {d.teacher_path: hint}))) == {"hint"}


def test_fitnets_adds_soft_targets_when_kd_weight_is_set():
    d = distiller_for("fitnets", ConvNet(), ConvNet((5, 6, 7)), kd_weight=0.5)
    step = feature_step({d.student_path: torch.randn(2, 3, 4, 4)}, {d.teacher_path: torch.randn(2, 6, 4, 4)})
    step.student_logits, step.teacher_logits = STUDENT[:2], TEACHER[:2]
    assert d.terms(step)["kd"].item() == pytest.approx(0.5 * ref_soft(STUDENT[:2], TEACHER[:2], 4.0).item(), rel=1e-9)


def test_fitnets_two_stage_trains_the_hint_alone_then_ce_and_kd():
    torch.manual_seed(0)
    student, teacher = ConvNet(), ConvNet((5, 6, 7)).eval()
    d = build_distiller(DistillConfig(method="fitnets", alpha=0.8, options={"stages": "two_stage", "hint_epochs": 2}),
                        student, [teacher], SAMPLE)
    x, y = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 3])
    logits, stage1 = d.forward_train(x, y, torch.arange(4), epoch=2, epochs=5)
    assert set(stage1) == {"hint"}
    stage1["hint"].backward()
    assert student.head.weight.grad is None  # the classifier waits for stage 2
    assert student.features[0].weight.grad.abs().sum() > 0
    logits, stage2 = d.forward_train(x, y, torch.arange(4), epoch=3, epochs=5)
    assert set(stage2) == {"ce", "kd"}
    expected_kd = 0.8 * ref_soft(logits.detach().double(), d.teachers[0](x).detach().double(), 4.0)
    assert stage2["kd"].item() == pytest.approx(expected_kd.item(), abs=1e-6)  # float32 logits
    with pytest.raises(ValueError, match="hint_epochs \\(2\\) must be fewer than the run's epochs \\(2\\)"):
        d.forward_train(x, y, torch.arange(4), epoch=1, epochs=2)


@pytest.mark.parametrize("p", [2.0, 3.0])
def test_at_matches_the_normalized_attention_maps_of_each_stage_pair(p):
    d = distiller_for("at", ConvNet(), ConvNet((5, 6, 7)), p=p, weight=7.0)
    assert d.student_layers() == ["features.2", "features.5", "features.8"] == d.teacher_layers()
    teacher = {"features.2": fixed(2, 5, 2, 2, phase=1.0), "features.5": fixed(2, 6, 4, 4, phase=2.0),
               "features.8": fixed(2, 7, 2, 2, phase=3.0)}
    # student larger than the teacher, smaller, then equal; signed values (|f|^p, not f^p)
    shapes = {"features.2": (2, 2, 4, 4), "features.5": (2, 3, 2, 2), "features.8": (2, 4, 2, 2)}
    flat = torch.cat([fixed(*shape, phase=0.5 * i).flatten() for i, shape in enumerate(shapes.values())])

    def split(values):
        out, start = {}, 0
        for path, shape in shapes.items():
            out[path] = values[start:start + math.prod(shape)].reshape(shape)
            start += math.prod(shape)
        return out

    def ours(values):
        return d.terms(feature_step(split(values), teacher))["at"]

    def reference(values):
        student = split(values)
        return ref_at([(student[k], teacher[k]) for k in shapes], p, 7.0)

    assert_same_loss(ours, reference, flat, rel=FEATURE_REL)


def test_at_pairs_the_last_stages_by_position_and_fewer_when_a_model_has_fewer():
    d = distiller_for("at", ConvNet((2, 3)), ConvNet((5, 6, 7)))
    assert d.student_layers() == ["features.2", "features.5"]
    assert d.teacher_layers() == ["features.5", "features.8"]
    d = distiller_for("at", ConvNet(), ConvNet((5, 6, 7)), stages=1)
    assert d.student_layers() == ["features.8"] == d.teacher_layers()


@pytest.mark.parametrize("student, teacher, role", [(mlp_net, ConvNet, "student"), (ConvNet, mlp_net, "teacher")])
def test_at_refuses_a_model_with_flat_features(student, teacher, role):
    with pytest.raises(ValueError, match=f"the {role} .* flat features .*needs convolutional feature maps"):
        distiller_for("at", student(), teacher())


# ---- every zoo pair ------------------------------------------------------------------------------------------
ZOO = ["resnet8x4", "wrn_16_2", "vgg8", "small_cnn", "mobilenet_v2"]
# each as teacher of the next two and as student of the two before: 10 pairs where the hint and attention
# maps are larger, smaller and equal in size and width
ZOO_PAIRS = [(t, ZOO[(i + k) % len(ZOO)]) for i, t in enumerate(ZOO) for k in (1, 2)]
FEATURE_TERMS = {"fitnets": "hint", "at": "at"}


@functools.lru_cache(maxsize=None)
def zoo_model(arch: str, role: str) -> nn.Module:
    """One model per architecture and role for the whole file: building them is the slow part."""
    from kdcore.models import create_model

    torch.manual_seed(0)
    return create_model(arch, num_classes=10, in_channels=3, image_size=32)


@pytest.mark.parametrize("arch", ZOO)
def test_default_feature_layers_are_one_per_resolution_shallow_to_deep(arch):
    # a pool ends a stage; the next conv starts another (it once merged a VGG's whole trunk into one stage)
    from kdcore.models.stages import feature_stages

    model, sample = zoo_model(arch, "teacher"), torch.zeros(2, 3, 32, 32)
    stages = feature_stages(model, sample)
    sizes = [f.shape[-1] for f in Distiller.probe(model, stages, sample).values()]
    assert len(stages) >= 2 and sizes == sorted(sizes, reverse=True) and sizes[0] > sizes[-1]


@pytest.mark.parametrize("method", sorted(FEATURE_TERMS))
@pytest.mark.parametrize("teacher_arch, student_arch", [pytest.param(t, s, id=f"{t}-{s}") for t, s in ZOO_PAIRS])
def test_feature_methods_train_zoo_pairs_with_their_default_layers(method, teacher_arch, student_arch):
    teacher, student = zoo_model(teacher_arch, "teacher").eval(), zoo_model(student_arch, "student").train()
    student.zero_grad(set_to_none=True)
    torch.manual_seed(0)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    d = build_distiller(DistillConfig(method=method), student, [teacher], x[:2])
    logits, parts = d.forward_train(x, y, torch.arange(4), epoch=1, epochs=2)
    assert logits.shape == (4, 10)
    assert set(parts) == {"ce", FEATURE_TERMS[method]}
    loss = sum(parts.values())
    assert torch.isfinite(loss)
    stem = next(student.parameters())
    (reached,) = torch.autograd.grad(parts[FEATURE_TERMS[method]], [stem], retain_graph=True)
    assert torch.isfinite(reached).all() and reached.abs().sum() > 0  # the feature term alone reaches the stem
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in student.parameters())
    assert all(p.grad is None for p in teacher.parameters())
    if method == "fitnets":
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in d.regressor.parameters())
    for model in (student, teacher):
        assert not [name for name, m in model.named_modules() if m._forward_hooks], "hooks were left behind"


# ---- every method through the CLI ----------------------------------------------------------------------------
TINY_RUN = {"name": "one method", "dataset": {"name": "digits", "val_fraction": 0.15},
            "teacher": {"arch": "small_cnn", "epochs": 1}, "student": {"arch": "tiny_cnn"},
            "train": {"epochs": 1, "batch_size": 128, "lr": 0.003, "seed": 0}, "baseline": False}


def declared_terms(method: str) -> set[str]:
    """The loss terms a method reports with its default options: asked of the method, so a new one needs no edit."""
    from kdcore.models import create_model

    torch.manual_seed(0)
    teacher = create_model("small_cnn", num_classes=10, in_channels=1, image_size=8).eval()
    student = create_model("tiny_cnn", num_classes=10, in_channels=1, image_size=8)
    x = torch.randn(4, 1, 8, 8)
    d = build_distiller(build_config({**TINY_RUN, "distill": {"method": method}}).distill, student, [teacher], x[:2])
    return set(d.forward_train(x, torch.tensor([0, 1, 2, 3]), torch.arange(4), epoch=1, epochs=1)[1])


@pytest.mark.parametrize("method", METHODS.names())
def test_each_method_trains_on_digits_through_the_cli_and_stores_its_terms(method, tmp_path):
    from kdcore.cli import main
    from kdcore.store import Store

    config = tmp_path / "run.yaml"
    config.write_text(json.dumps(TINY_RUN))  # JSON is YAML
    db = f"sqlite:///{tmp_path}/kd.db"
    # in-process: the real parser and command, without a new interpreter importing torch per method
    assert main(["--db", db, "train", str(config), "--set", f"distill.method={method}"]) == 0
    store = Store(db)
    (run,) = store.list_runs()
    assert run.status == "completed" and run.config["distill"]["method"] == method
    stored = set(store.metrics_frame([run.id], kind="epoch").query("phase == 'student'")["name"])
    terms = declared_terms(method)
    assert terms and {f"train_{t}" for t in terms} <= stored


# ---- resume with a learnable part ----------------------------------------------------------------------------
def test_fitnets_resumed_after_its_first_epoch_ends_with_the_uninterrupted_weights(tmp_path):
    from kdcore.config import TrainConfig
    from kdcore.data import load_dataset
    from kdcore.engine.events import no_callback
    from kdcore.engine.trainer import fit
    from kdcore.models import create_model

    cpu = torch.device("cpu")
    data = load_dataset(build_config(TINY_RUN).dataset)
    train_cfg = TrainConfig(epochs=2, batch_size=128, lr=0.01, seed=3, device="cpu")
    settings = DistillConfig(method="fitnets", options={"hint_weight": 10.0})
    torch.manual_seed(0)
    teacher = create_model("small_cnn", num_classes=10, in_channels=1, image_size=8)

    def student(seed: int):
        torch.manual_seed(seed)
        return create_model("tiny_cnn", num_classes=10, in_channels=1, image_size=8)

    def run(model, **kw):
        return fit(model, data, phase="student", epochs=2, train_cfg=train_cfg, device=cpu, teachers=[teacher],
                   distill_cfg=settings, **kw)

    uninterrupted = student(1)
    run(uninterrupted, callback=no_callback)

    state = tmp_path / "student_state.pt"
    first_epoch_done = []
    stopped = run(student(1), state_path=state, should_stop=lambda: bool(first_epoch_done),
                  callback=lambda e: first_epoch_done.append(e.epoch) if e.kind == "epoch" else None)
    assert stopped.cancelled and torch.load(state, weights_only=False)["epoch"] == 1
    assert torch.load(state, weights_only=False)["distiller"]  # the regressor is in the state

    resumed = student(2)  # other initial weights: everything must come from the state
    result = run(resumed, state_path=state, callback=no_callback)
    assert result.epochs_run == 2 and not result.cancelled
    theirs = uninterrupted.state_dict()
    assert all(torch.equal(v, theirs[k]) for k, v in resumed.state_dict().items())


# ---- options are checked and named -------------------------------------------------------------------------
@pytest.mark.parametrize("method, options, key", [
    ("dkd", {"nckd_weight": -1.0}, "distill.options.nckd_weight"),
    ("dkd", {"warmup": 1.0}, "distill.options.warmup"),
    ("dkd", {"beta": 8.0}, "distill.options.beta"),
    ("at", {"p": 0.5}, "distill.options.p"),
    ("fitnets", {"stages": "three"}, "distill.options.stages"),
    ("dist", {"inter_weight": "much"}, "distill.options.inter_weight"),
])
def test_a_bad_or_unknown_option_is_named(method, options, key):
    with pytest.raises(ConfigError, match=key.replace(".", "\\.")):
        build_config({"distill": {"method": method, "options": options}})


def test_unknown_option_says_so():
    with pytest.raises(ConfigError, match="distill\\.options\\.beta: unknown key"):
        build_config({"distill": {"method": "dkd", "options": {"beta": 8.0}}})


def test_options_are_stored_with_their_defaults():
    assert build_config({"distill": {"method": "dkd", "options": {"nckd_weight": 2.0}}}).distill.options == {
        "tckd_weight": 1.0, "nckd_weight": 2.0, "warmup": pytest.approx(20 / 240)}


@pytest.mark.parametrize("method", METHODS.names())
def test_every_method_declares_its_title_formula_and_option_meanings(method):
    cls = METHODS.get(method)
    assert cls.title and cls.formula
    for name, field in cls.Options.model_fields.items():
        assert field.description, f"{method}.{name} has no description"
        assert not field.is_required(), f"{method}.{name} has no default"


def test_two_stage_fitnets_that_would_never_train_the_classifier_is_refused_before_any_work():
    from kdcore.checks import check_runnable
    from kdcore.configure import build_config

    config = build_config({"distill": {"method": "fitnets", "options": {"stages": "two_stage", "hint_epochs": 3}},
                           "train": {"epochs": 3}})
    problems = dict(check_runnable(config, here=False))
    assert "distill.options.hint_epochs" in problems and "fewer" in problems["distill.options.hint_epochs"]
    config.train.epochs = 4
    assert "distill.options.hint_epochs" not in dict(check_runnable(config, here=False))
