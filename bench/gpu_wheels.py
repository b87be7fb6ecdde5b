"""Gathers what bench/gpu_check.sh needs on a GPU machine that cannot reach the network.

    python bench/gpu_wheels.py                      # wheels into .gpu-check/wheels, MNIST into .gpu-check/data
    python bench/gpu_wheels.py --list               # only print what would be fetched, and why

The lent GPU machines run Python 3.12 with torch, torchvision and many common packages
already installed (/work/.library/device/KINDS.md lists them). This walks the project's
dependencies (pyproject.toml, without torch, torchvision and the nvidia-*/triton packages)
through the metadata of the packages installed here, keeps those the GPU image lacks, and
downloads each as a cp312 manylinux x86_64 (or pure-Python) wheel at the version installed
here, with --no-deps: the image's own packages fill in the rest. Left out as well: the
dashboard's packages (streamlit, plotly and what only they need), which neither kdcore's
engine nor the GPU tests and benches import. Everything lands in ignored folders that
travel with the checkout as carried paths (64 MiB in all, the checkout included).
"""
from __future__ import annotations

import argparse
import importlib.metadata as md
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data"
MNIST_GZ = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
            "t10k-labels-idx1-ubyte.gz"]
NEVER = {"torch", "torchvision", "triton"}  # the image's own CUDA build, never replaced
# not imported by kdcore's engine, CLI, store, the GPU tests or the benches (checked with sys.modules)
NOT_NEEDED = {"streamlit", "plotly"}
# carried although the image has it: pure Python, tiny, and pydantic-core wants a recent one
CARRY_ANYWAY = {"typing-extensions"}
# The GPU image's packages ("cuda" image, as KINDS.md read them on 2026-11-17)
ON_DEVICE = set("""
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi
charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core cuda-pathfinder
cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock flatbuffers flax fonttools
formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna
imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver
lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe
matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals
networkx ninja numba numba-cuda numpy numpyro nvidia-ml-py onnx onnx-ir onnxruntime onnxscript opencv-python-headless
optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy peft pillow pip pluggy
portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing pyproject-hooks
pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist python-dateutil
pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core scikit-image scikit-learn scipy
seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six sortedcontainers statsmodels sympy
tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm tokenizers toolz torch
torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope triton typer
typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp
""".split())
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux_2_5_x86_64", "manylinux1_x86_64"]
BUDGET_MIB = 64  # what travels to the device: the checkout and every carried path together


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def target_env(python: str) -> dict:
    env = default_environment()
    env.update(python_version=python, python_full_version=f"{python}.0", sys_platform="linux",
               platform_system="Linux", platform_machine="x86_64", implementation_name="cpython")
    return env


def project_requirements() -> list[Requirement]:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    return [Requirement(d) for d in deps]


def closure(roots: list[Requirement], env: dict) -> tuple[dict[str, str], dict[str, str]]:
    """{name: version installed here} of what the roots need, walked through the local metadata; {name: why left out}."""
    wanted: dict[str, str] = {}
    left_out: dict[str, str] = {}
    todo = list(roots)
    while todo:
        req = todo.pop()
        name = norm(req.name)
        if req.marker is not None and not req.marker.evaluate({**env, "extra": ""}):
            continue
        if name in wanted or name in left_out:
            continue
        if name in NEVER or name.startswith("nvidia-"):
            left_out[name] = "the GPU image's own build"
            continue
        if name in NOT_NEEDED:
            left_out[name] = "not imported by the GPU tests, benches or kdcore's engine"
            continue
        try:
            dist = md.distribution(req.name)
        except md.PackageNotFoundError:
            left_out[name] = "not installed here"
            continue
        wanted[name] = dist.version
        todo.extend(Requirement(r) for r in (dist.requires or []))
    return wanted, left_out


def download(pins: dict[str, str], dest: Path, python: str) -> list[str]:
    """pip-downloads each pinned wheel (no deps) into dest; returns the ones no wheel was found for."""
    dest.mkdir(parents=True, exist_ok=True)
    abi = "cp" + python.replace(".", "")
    base = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version",
            python, "--implementation", "cp", "--abi", abi, "--abi", "abi3", "--abi", "none", "-d", str(dest)]
    for p in PLATFORMS:
        base += ["--platform", p]
    missing = []
    for name, version in sorted(pins.items()):
        done = subprocess.run(base + [f"{name}=={version}"], capture_output=True, text=True)
        if done.returncode != 0:  # the version installed here has no such wheel: the newest that has one
            done = subprocess.run(base + [name], capture_output=True, text=True)
        if done.returncode != 0:
            missing.append(name)
            print(f"  no wheel for {name}: {done.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
    return missing


def copy_mnist(source: Path, dest: Path) -> int:
    raw = dest / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    total = 0
    for name in MNIST_GZ:
        src = source / "MNIST" / "raw" / name
        if not src.is_file():
            raise SystemExit(f"{src} is missing: the GPU check needs MNIST's .gz files")
        shutil.copyfile(src, raw / name)
        total += src.stat().st_size
    return total


def size_mib(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 2**20


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(REPO / ".gpu-check"), help="folder to fill (default .gpu-check)")
    p.add_argument("--python", default="3.12", help="the GPU machine's Python (default 3.12)")
    p.add_argument("--data-root", default=str(DEFAULT_DATA), help="where MNIST/raw/*.gz lie here")
    p.add_argument("--list", action="store_true", help="print what would be fetched and stop")
    args = p.parse_args(argv)
    out = Path(args.out)
    wanted, left_out = closure(project_requirements(), target_env(args.python))
    fetch = {n: v for n, v in wanted.items() if n not in ON_DEVICE or n in CARRY_ANYWAY}
    absent = sorted(n for n, why in left_out.items() if why == "not installed here")
    if absent:
        print(f"not installed in {sys.executable}: {', '.join(absent)}; run this with the project's environment "
              "(PYTHON=.venv/bin/python bash bench/gpu_check.sh --prepare)", file=sys.stderr)
        return 1
    print(f"project dependencies without torch: {len(wanted)} packages; on the GPU image already: "
          f"{len(wanted) - len(fetch)}; to carry: {len(fetch)}")
    print("carried: " + ", ".join(f"{n}=={v}" for n, v in sorted(fetch.items())))
    for name, why in sorted(left_out.items()):
        print(f"left out: {name} ({why})")
    if args.list:
        return 0
    wheels = out / "wheels"
    if wheels.exists():
        shutil.rmtree(wheels)  # one version of each: two would stop the install there
    missing = download(fetch, wheels, args.python)
    data_bytes = copy_mnist(Path(args.data_root), out / "data")
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, text=True).stdout.split("\0")
    checkout = sum((REPO / f).stat().st_size for f in listed if f and (REPO / f).is_file()) / 2**20
    total = size_mib(wheels) + data_bytes / 2**20 + checkout
    print(f"wheels: {len(list(wheels.glob('*.whl')))} files, {size_mib(wheels):.1f} MiB in {wheels}")
    print(f"MNIST .gz: {data_bytes / 2**20:.1f} MiB in {out / 'data'}; the checkout: {checkout:.1f} MiB; "
          f"together {total:.1f} MiB of the {BUDGET_MIB} MiB that may travel")
    if missing:
        print(f"no wheel found for: {', '.join(missing)}", file=sys.stderr)
        return 1
    return 0 if total <= BUDGET_MIB else 1


if __name__ == "__main__":
    sys.exit(main())
