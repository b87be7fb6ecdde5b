"""`kdcore models`, `methods` and `datasets`: what kdcore can train, how, and on what."""
from __future__ import annotations

import json


def cmd_models(args) -> int:
    from kdcore.models import MODELS, describe_model, model_profile, timm_models

    wanted = (args.search or "").lower()
    print(f"{'name':<22} {'params (10 classes, 3x32x32)':>30}  description")
    for name in (n for n in MODELS.names() if wanted in n.lower()):
        try:
            params = f"{model_profile(name, 10, 3, 32).params:,}"
        except Exception:
            params = "?"
        print(f"{name:<22} {params:>30}  {describe_model(name)}")
    plugins = MODELS.plugins()
    for name, why in plugins.broken.items():
        if wanted in name.lower():
            print(f"{name:<22} {'broken':>30}  {plugins.sources[name]}: {why}")
    timm_names = [n for n in timm_models.picker_names() if wanted in n.lower()]
    if wanted:
        for name in timm_names:
            print(name)
    else:
        print(f"\nand {len(timm_names):,} timm models as timm/<name>: `kdcore models --search NAME` lists them")
    return 0


def cmd_methods(args) -> int:
    from kdcore.distill import describe_methods

    methods = describe_methods()
    if args.json:
        print(json.dumps(methods, indent=2))
        return 0
    for method in methods:
        print(f"{method['name']:<8} {method['title']}")
        for option in method["options"]:
            signs = {"minimum": "≥", "maximum": "≤", "exclusiveMinimum": ">", "exclusiveMaximum": "<"}
            bounds = [f"{sign} {option[k]:g}" for k, sign in signs.items() if k in option]
            choices = f" one of {', '.join(map(str, option['enum']))}" if "enum" in option else ""
            print(f"{'':<10}{option['name']} = {option['default']!r}{choices}{' (' + ', '.join(bounds) + ')' if bounds else ''}"
                  f"  {option['help']}")
    return 0


def cmd_datasets(args) -> int:
    from kdcore.data import DATASETS, dataset_info, dataset_status

    for name in DATASETS.names():
        info = dataset_info(name)
        status = dataset_status(name, args.root)
        print(f"{name:<14} {'ready' if status.ready else 'not ready':<10} {info.description}")
        print(f"{'':<14} {status.message}")
    return 0


def add_parsers(sub) -> None:
    models = sub.add_parser("models", help="list the model zoo, installed packages' models and timm's")
    models.add_argument("--search", metavar="TEXT", help="only names containing TEXT, timm's included")
    models.set_defaults(func=cmd_models)
    methods = sub.add_parser("methods", help="list the distillation methods and their options (distill.options)")
    methods.add_argument("--json", action="store_true", help="a list of objects with name, options and formula")
    methods.set_defaults(func=cmd_methods)
    ds = sub.add_parser("datasets", help="list datasets and whether they are ready")
    ds.add_argument("--root", default=None, help="data folder (default $KDCORE_DATA_ROOT or ./data)")
    ds.set_defaults(func=cmd_datasets)
