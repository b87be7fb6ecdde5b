"""Model zoo: every registered model builds and runs at the supported sizes; profiles are right."""
import pytest
import torch
from torch import nn

from kdcore.models import (
    MODELS,
    ModelProfile,
    create_model,
    describe_model,
    model_profile,
    profile_model,
    register_model,
)
from kdcore.models.dropout import Dropout

# (in_channels, image_size): MNIST-like, CIFAR-like, and the 8x8 digits data set.
SHAPES = [(1, 28), (3, 32), (1, 8)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}px")
@pytest.mark.parametrize("name", MODELS.names())
def test_forward_shape_and_finite(name, shape):
    in_channels, size = shape
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, in_channels=in_channels, image_size=size).eval()
    with torch.no_grad():
        out = model(torch.randn(2, in_channels, size, size))
    assert isinstance(out, torch.Tensor)
    assert out.shape == (2, 10)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", MODELS.names())
def test_every_model_has_a_description(name):
    text = describe_model(name)
    assert text and "\n" not in text


def test_describe_examples():
    assert describe_model("resnet20") == "CIFAR-style ResNet, 20 layers"
    with pytest.raises(KeyError):
        describe_model("no_such_model")


def test_profile_counts_params_and_size():
    model = create_model("resnet8", num_classes=10, in_channels=3, image_size=32)
    prof = profile_model(model, 3, 32)
    assert isinstance(prof, ModelProfile)
    assert prof.params == sum(p.numel() for p in model.parameters())
    nbytes = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    assert prof.size_mb == pytest.approx(nbytes / 2**20)
    assert prof.flops > 0


def test_profile_restores_training_mode():
    model = create_model("tiny_cnn", in_channels=1, image_size=8).train()
    profile_model(model, 1, 8)
    assert model.training


def test_bigger_model_has_more_params_and_flops():
    small = model_profile("resnet8x4", 10, 3, 32)
    big = model_profile("resnet32x4", 10, 3, 32)
    assert big.params > small.params
    assert big.flops > small.flops > 0


def test_mlp_flops_are_two_per_multiply_add():
    in_features, hidden, classes = 1 * 28 * 28, [100, 50], 10
    widths = [in_features, *hidden, classes]
    expected = 2 * sum(a * b for a, b in zip(widths, widths[1:]))
    assert model_profile("mlp", classes, 1, 28, hidden=hidden).flops == expected


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}px")
@pytest.mark.parametrize("name", MODELS.names())
def test_every_zoo_models_flops_are_those_flop_counter_mode_counts(name, shape):
    from kdcore.models.profile import _dispatched_flops, _layer_flops, counted_by_layer_hooks

    in_channels, size = shape
    model = create_model(name, num_classes=10, in_channels=in_channels, image_size=size).eval()
    x = torch.zeros(1, in_channels, size, size)
    with torch.no_grad():
        counted = _dispatched_flops(model, x)
        assert profile_model(model, in_channels, size).flops == counted
        if counted_by_layer_hooks(model):
            assert _layer_flops(model, x) == counted > 0


class _Attention(nn.Module):
    """Self-attention over a 4x4 image's 16 pixels of 8 channels: q @ k^T and its product with v are
    multiply-adds outside any layer a hook sees."""

    def __init__(self):
        super().__init__()
        self.qkv = nn.Linear(8, 24)

    def forward(self, x):
        q, k, v = self.qkv(x.flatten(2).transpose(1, 2)).chunk(3, dim=-1)
        return ((q @ k.transpose(1, 2)).softmax(-1) @ v).mean(1)


class _Squared(nn.Linear):
    """A Linear subclass whose forward multiplies again: known layers are matched by exact type."""

    def forward(self, x):
        return super().forward(x) @ self.weight @ self.weight.T


@pytest.mark.parametrize("model, in_channels, flops", [
    (_Attention(), 8, 2 * 16 * 8 * 24 + 2 * (2 * 16 * 16 * 8)),
    (nn.Sequential(nn.Flatten(), _Squared(16, 16)), 1, 3 * (2 * 16 * 16)),
], ids=["attention", "linear subclass"])
def test_a_model_that_multiplies_outside_known_layers_has_every_multiply_add_counted(model, in_channels, flops):
    assert profile_model(model, in_channels, 4).flops == flops


def test_model_profile_is_cached_and_accepts_list_options():
    first = model_profile("mlp", 10, 1, 8, hidden=[32, 16])
    assert model_profile("mlp", 10, 1, 8, hidden=[32, 16]) is first
    assert model_profile("mlp", 10, 1, 8, hidden=[32]) != first


def test_mlp_hidden_option():
    model = create_model("mlp", num_classes=7, in_channels=1, image_size=28, hidden=[1200, 1200])
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(784, 1200), (1200, 1200), (1200, 7)]

    default = [m for m in create_model("mlp").modules() if isinstance(m, nn.Linear)]
    assert [m.out_features for m in default] == [512, 256, 10]


def test_mlp_convenience_names():
    def widths(name):
        return [m.out_features for m in create_model(name, in_channels=1, image_size=8).modules()
                if isinstance(m, nn.Linear)]

    assert widths("mlp_1200x2") == [1200, 1200, 10]
    assert widths("mlp_800x2") == [800, 800, 10]
    assert widths("mlp_tiny") == [64, 10]
    assert any(isinstance(m, Dropout) and m.p == 0.2 for m in create_model("mlp_1200x2").modules())


def test_unknown_name_raises_keyerror_listing_names():
    with pytest.raises(KeyError) as err:
        create_model("resnet9000")
    assert "resnet9000" in str(err.value)
    assert "resnet20" in str(err.value) and "mlp" in str(err.value)


@pytest.mark.parametrize("name", ["mlp", "resnet8", "resnet18", "googlenet"])
def test_unknown_option_raises_typeerror_naming_it(name):
    with pytest.raises(TypeError, match="bogus_option"):
        create_model(name, bogus_option=3)


def test_pretrained_weights_cannot_be_requested():
    with pytest.raises(TypeError, match="weights"):
        create_model("resnet18", weights="DEFAULT")


def test_small_input_stem_keeps_resolution():
    model = create_model("resnet18", in_channels=1, image_size=32)
    assert model.conv1.in_channels == 1 and model.conv1.stride == (1, 1) and model.conv1.kernel_size == (3, 3)
    assert isinstance(model.maxpool, nn.Identity)
    big = create_model("resnet18", in_channels=3, image_size=224)
    assert big.conv1.stride == (2, 2) and isinstance(big.maxpool, nn.MaxPool2d)
    assert create_model("googlenet", in_channels=1).transform_input is False


def test_registered_factory_is_buildable_by_name():
    @register_model("_test_linear")
    def _test_linear(num_classes=10, in_channels=3, image_size=32):
        """A test-only linear model"""
        return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size**2, num_classes))

    try:
        assert "_test_linear" in MODELS
        assert create_model("_test_linear", 4, 1, 8)(torch.zeros(3, 1, 8, 8)).shape == (3, 4)
        assert describe_model("_test_linear") == "A test-only linear model"
    finally:
        MODELS._entries.pop("_test_linear", None)


@pytest.mark.parametrize("name", ["mlp", "small_cnn", "resnet8"])
def test_train_step_gives_gradients(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, in_channels=1, image_size=28).train()
    x, y = torch.randn(4, 1, 28, 28), torch.randint(0, 10, (4,))
    nn.functional.cross_entropy(model(x), y).backward()
    params = [p for p in model.parameters() if p.requires_grad]
    assert params and all(p.grad is not None and torch.isfinite(p.grad).all() for p in params)
