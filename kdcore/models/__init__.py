"""Model zoo: every architecture is a registered factory, built by name with `create_model`.

    from kdcore.models import create_model, model_profile
    net = create_model("resnet8x4", num_classes=100, in_channels=3, image_size=32)
    teacher = create_model("mlp", num_classes=10, in_channels=1, image_size=28, hidden=[1200, 1200])

A factory has the signature factory(num_classes, in_channels, image_size, **options)
and returns an nn.Module whose forward(x) gives (B, num_classes) logits. Weights are
freshly initialised, except a timm model's given `pretrained` weights.
`timm/<name>` builds any model timm.list_models() knows (kdcore.models.timm_models).
"""
from kdcore.models.base import MODELS, build_problem, create_model, describe_model, register_model
from kdcore.models.profile import ModelProfile, model_profile, profile_model

# Imported for their registrations.
from kdcore.models import cifar_resnet, cnn, mlp, timm_models, tv, vgg, wrn  # noqa: E402,F401  isort: skip

__all__ = [
    "build_problem",
    "MODELS",
    "ModelProfile",
    "create_model",
    "describe_model",
    "model_profile",
    "profile_model",
    "register_model",
]
