"""kdcore's dropout: nn.Dropout's statistics, its own generator, and repeatable fits that use it."""
import pytest
import torch
from torch import nn

from kdcore.configure import build_config
from kdcore.data import load_dataset
from kdcore.engine.events import no_callback
from kdcore.engine.trainer import fit
from kdcore.models import create_model
from kdcore.models.dropout import Dropout, draws_from_global_rng, dropout_mask, use_generator

CPU = torch.device("cpu")


@pytest.mark.parametrize("p", [0.1, 0.2, 0.5, 0.9])
def test_each_element_is_kept_with_probability_one_minus_p(p):
    x = torch.ones(400_000)
    mask = dropout_mask(x.shape, p, x, torch.Generator().manual_seed(1))
    kept = mask != 0
    # 400,000 Bernoulli draws: the kept share's standard deviation is below 0.0008
    assert abs(kept.float().mean().item() - (1 - p)) < 0.004
    assert torch.allclose(mask[kept], torch.full_like(mask[kept], 1 / (1 - p)))
    # neighbours come from the four slices of one random word: none of the four may be biased
    for lane in range(4):
        assert abs(kept[lane::4].float().mean().item() - (1 - p)) < 0.008


def test_the_mean_is_kept_and_the_gradient_is_the_mask():
    layer = Dropout(0.3).train()
    layer.generator = torch.Generator().manual_seed(0)
    x = torch.randn(200_000, requires_grad=True)
    y = layer(x)
    assert abs(y.mean().item() - x.mean().item()) < 0.01
    y.sum().backward()
    dropped = y == 0
    assert torch.all(x.grad[dropped] == 0)
    assert torch.allclose(x.grad[~dropped], torch.full_like(x.grad[~dropped], 1 / 0.7))


def test_eval_mode_and_p_zero_pass_the_input_through():
    x = torch.randn(8, 5)
    assert Dropout(0.5).eval()(x) is x
    assert Dropout(0.0).train()(x) is x
    with pytest.raises(ValueError, match="dropout must be in"):
        Dropout(1.0)


def test_masks_follow_the_layers_generator_not_torchs_global_one():
    layer = Dropout(0.5).train()
    x = torch.ones(64, 64)
    layer.generator = torch.Generator().manual_seed(7)
    first = layer(x)
    torch.rand(1000)  # another phase drawing from the global generator in between
    layer.generator = torch.Generator().manual_seed(7)
    assert torch.equal(layer(x), first)
    layer.generator = torch.Generator().manual_seed(8)
    assert not torch.equal(layer(x), first)


def test_zoo_models_find_their_dropout_and_draw_nothing_from_the_global_generator():
    mlp = create_model("mlp_1200x2", in_channels=1, image_size=8)
    wrn = create_model("wrn_16_2", dropout=0.3)
    for model in (mlp, wrn):
        assert use_generator(model, torch.Generator()) and not draws_from_global_rng(model)
    assert draws_from_global_rng(nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.1)))


def _digits_mlp_fit(callback=no_callback, state_path=None, epochs=2):
    config = build_config({
        "dataset": {"name": "digits", "val_fraction": 0.15},
        "teacher": {"arch": "mlp", "options": {"hidden": [64, 64], "dropout": 0.3}},
        "student": {"arch": "mlp_tiny"},
        "train": {"epochs": epochs, "batch_size": 64, "lr": 0.003, "seed": 0, "schedule": "none", "amp": False},
    })
    data = load_dataset(config.dataset)
    torch.manual_seed(0)
    model = create_model("mlp", num_classes=10, in_channels=1, image_size=data.image_size,
                         hidden=[64, 64], dropout=0.3)
    fit(model, data, phase="teacher", epochs=epochs, train_cfg=config.train, device=CPU, callback=callback,
        state_path=state_path)
    return model.state_dict()


def test_a_fit_with_dropout_is_repeatable_whatever_else_draws_from_the_global_generator():
    quiet = _digits_mlp_fit()

    def drawing(event):  # e.g. another phase's thread using torch.rand between this fit's steps
        torch.rand(97)

    noisy = _digits_mlp_fit(callback=drawing)
    assert all(torch.equal(quiet[k], noisy[k]) for k in quiet)


def test_a_resumed_fit_continues_the_dropout_draws(tmp_path):
    whole = _digits_mlp_fit(epochs=2)
    state = tmp_path / "teacher_state.pt"
    _digits_mlp_fit(state_path=state, epochs=1)  # stops after epoch 1, its state saved
    saved = torch.load(state, weights_only=True)
    assert saved["rng"]["dropout"].dtype == torch.uint8
    resumed = _digits_mlp_fit(state_path=state, epochs=2)
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
