#!/usr/bin/env bash
# Issue 23's GPU check in one script: the GPU tests, the throughput benches against the tutorial and
# the strong loops (small_cnn -> tiny_cnn on MNIST; resnet32x4 -> resnet8x4 on CIFAR-shaped images at
# batch 64 and 128), examples/mnist_hinton.yaml through `kdcore train`, and where_time_goes on CUDA,
# in under 8 minutes, with nothing from the network. The figures go into docs/benchmarks.md.
#
#   bench/gpu_check.sh --prepare     here, with the network: wheels the GPU image lacks and MNIST's .gz
#                                    files into the ignored .gpu-check/ (bench/gpu_wheels.py)
#   bench/gpu_check.sh               on the GPU machine, with .gpu-check carried: every step, each under
#                                    its own timeout; logs and figures into $OUT (here .gpu-check/out)
#   bench/gpu_check.sh --dry-run     here, on the CPU: the same steps at tiny sizes (also
#                                    KD_GPU_CHECK_DEVICE=cpu); docs/benchmarks.md is left alone
#   bench/gpu_check.sh --apply DIR   here: put DIR/gpu_check.md (what came back) into docs/benchmarks.md
#
# With the device tool: run(command="bash bench/gpu_check.sh",
#   carry=[".gpu-check/wheels", ".gpu-check/data"], timeout_s=560).
# Environment: PYTHON (default: .venv/bin/python here, python3 on the GPU machine),
# KD_GPU_CHECK_BUDGET (seconds for all steps, default 450), KD_GPU_CHECK_TESTS (test files, default
# tests/test_gpu*.py), KD_GPU_CHECK_WORK (scratch folder, default /tmp/kd-gpu-check).
set -u
cd "$(dirname "$0")/.."
REPO=$PWD
# here: the project's environment (its metadata names the wheels); on the GPU machine: the image's python3
LOCAL_PY=python3; [ -x .venv/bin/python ] && LOCAL_PY=.venv/bin/python
PY=${PYTHON:-$LOCAL_PY}
MODE=gpu
case "${1:-}" in
  --prepare) exec "$PY" bench/gpu_wheels.py "${@:2}" ;;
  --apply)
    [ -f "${2:-}/gpu_check.md" ] || { echo "usage: $0 --apply DIR (DIR holding gpu_check.md)" >&2; exit 2; }
    exec "$PY" bench/gpu_report.py --apply "$2/gpu_check.md" --docs docs/benchmarks.md ;;
  --dry-run) MODE=dry ;;
  "") ;;
  -h|--help) sed -n '2,/^set -u/p' "$0" | grep '^#'; exit 0 ;;
  *) echo "unknown option $1; see $0 --help" >&2; exit 2 ;;
esac
[ "${KD_GPU_CHECK_DEVICE:-cuda}" = cpu ] && MODE=dry
[ $MODE = gpu ] && PY=${PYTHON:-python3}
DEVICE=cuda; [ $MODE = dry ] && DEVICE=cpu

OUT=${OUT:-$REPO/.gpu-check/out}
WORK=${KD_GPU_CHECK_WORK:-${TMPDIR:-/tmp}/kd-gpu-check}  # outside what travels
LOGS=$WORK/logs
SITE=$WORK/site
rm -rf "$WORK" && mkdir -p "$LOGS" "$OUT"
rm -f "$OUT/steps.tsv" "$OUT/throughput.jsonl"
exec > >(tee "$OUT/gpu_check.log") 2>&1
BUDGET=${KD_GPU_CHECK_BUDGET:-450}
RESERVE=25  # kept for the report at the end
T0=$EPOCHREALTIME
export PYTHONUNBUFFERED=1 KDCORE_CPU_WATCH=0

elapsed() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }

# step NAME CAP COMMAND...: runs COMMAND under a timeout of CAP seconds or what the budget has left,
# logs into $LOGS/NAME.log and records "NAME rc seconds limit" in steps.tsv (rc 124: timed out)
step() {
  local name=$1 cap=$2; shift 2
  local used; used=$(elapsed "$T0"); used=${used%.*}
  local left=$(( BUDGET - RESERVE - used ))
  local limit=$(( cap < left ? cap : left ))
  if (( limit < 10 )); then
    echo "=== $name: skipped, the budget is spent"
    printf '%s\tskipped\t0\t0\n' "$name" >> "$OUT/steps.tsv"
    return 0
  fi
  echo "=== $name (limit ${limit} s) $(date -u +%H:%M:%S): $*"
  local t=$EPOCHREALTIME
  # through bash -c, so that a step can be one of the functions below (exported with export -f)
  timeout -k 10 "$limit" bash -c '"$@"' _ "$@" 2>&1 | tee "$LOGS/$name.log"
  local rc=${PIPESTATUS[0]}
  local secs; secs=$(elapsed "$t")
  printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$secs" "$limit" >> "$OUT/steps.tsv"
  echo "=== $name: exit $rc after $secs s"
  return 0
}

setup_python() {
  # the image's torch stays; the packages it lacks go into a folder of their own on PYTHONPATH
  local wheels=(.gpu-check/wheels/*.whl)
  [ -f "${wheels[0]}" ] || { echo "no wheels in .gpu-check/wheels: run bench/gpu_check.sh --prepare here first"; return 1; }
  if [ $MODE = dry ]; then  # this machine's Python is not the GPU image's: check the wheels resolve for it
    "$PY" -m pip install -q --dry-run --no-index --no-deps --only-binary=:all: --python-version 3.12 \
      --implementation cp --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
      --platform manylinux_2_28_x86_64 --target "$SITE" "${wheels[@]}" || return 1
    echo "the ${#wheels[@]} wheels install for CPython 3.12 on manylinux x86_64; here the local environment runs"
    return 0
  fi
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" "${wheels[@]}" || return 1
  "$PY" -m pip install -q --no-index --no-deps --no-build-isolation --no-cache-dir --target "$SITE" "$REPO" \
    || echo "kdcore did not install; its CLI runs as python -m kdcore from the checkout"
  "$PY" -c "import kdcore.cli, kdcore.store, sqlmodel, alembic, optuna, pydantic; print('imports: ok')"
}

setup_data() {
  # tests and benches read MNIST from ../shared/data, as in a developer's checkout
  local raw=../shared/data/MNIST/raw
  if [ ! -f "$raw/train-images-idx3-ubyte" ]; then
    [ -f .gpu-check/data/MNIST/raw/train-images-idx3-ubyte.gz ] || { echo "no MNIST in .gpu-check/data: --prepare"; return 1; }
    for f in .gpu-check/data/MNIST/raw/*.gz; do [ -f "${f%.gz}" ] || gunzip -k "$f"; done
    mkdir -p ../shared/data && ln -sfn "$REPO/.gpu-check/data/MNIST" ../shared/data/MNIST
  fi
  ls -l ../shared/data/MNIST/raw/ | head -10
}

machine() {
  command -v nvidia-smi >/dev/null && nvidia-smi
  "$PY" - "$WORK/env.json" <<'EOF'
import json, os, sys, torch
cuda = torch.cuda.is_available()
env = {"torch": torch.__version__, "cuda": torch.version.cuda, "python": sys.version.split()[0],
       "gpu": torch.cuda.get_device_name(0) if cuda else None,
       "gpu_memory_gib": round(torch.cuda.get_device_properties(0).total_memory / 2**30) if cuda else None,
       "cpu_cores": os.cpu_count()}
print(json.dumps(env))
open(sys.argv[1], "w").write(json.dumps(env))
EOF
}

kdcore_cmd() {
  if [ -x "$SITE/bin/kdcore" ]; then "$SITE/bin/kdcore" "$@"; else "$PY" -m kdcore "$@"; fi
}

export PYTHONPATH=$REPO:$SITE${PYTHONPATH:+:$PYTHONPATH}
export MODE PY REPO SITE WORK
export -f setup_python setup_data machine kdcore_cmd
[ $MODE = dry ] && echo "DRY RUN on the CPU: the GPU check's steps at tiny sizes; the figures are not the GPU's"

if [ $MODE = dry ]; then
  MNIST_ARGS=(--limit 512 --repeats 1 --warmup-batches 1)
  CIFAR_ARGS=(--limit 64 --repeats 1 --warmup-batches 1)
  HINTON_SET=(--set teacher.epochs=1 --set train.epochs=1 --set train.device=cpu)
  TESTS=${KD_GPU_CHECK_TESTS:-tests/test_gpu.py}
else
  MNIST_ARGS=(--repeats 3)
  CIFAR_ARGS=(--limit 10000 --repeats 3)
  HINTON_SET=()
  TESTS=${KD_GPU_CHECK_TESTS:-$(ls tests/test_gpu*.py | tr '\n' ' ')}
fi

step setup 90 setup_python
step data 30 setup_data
step machine 30 machine
# shellcheck disable=SC2086
step tests 150 "$PY" -m pytest -q -p no:cacheprovider -o addopts="-ra" --timeout 120 --junitxml "$LOGS/tests.xml" $TESTS
step throughput_mnist 110 "$PY" bench/throughput.py --device $DEVICE "${MNIST_ARGS[@]}" --markdown \
  --json "$OUT/throughput.jsonl"
# the same with the student's step compiled and replayed as CUDA graphs (train.cuda_graphs; eager above)
step throughput_mnist_graphs 80 "$PY" bench/throughput.py --device $DEVICE "${MNIST_ARGS[@]}" --markdown \
  --peers strong,strong-cached --set train.cuda_graphs=true --json "$OUT/throughput.jsonl"
step hinton 150 kdcore_cmd --db "sqlite:///$WORK/runs.db" train examples/mnist_hinton.yaml "${HINTON_SET[@]}"
step throughput_cifar_b64 110 "$PY" bench/throughput.py --device $DEVICE --dataset cifar100 --batch-size 64 \
  "${CIFAR_ARGS[@]}" --markdown --json "$OUT/throughput.jsonl"
step throughput_cifar_b128 100 "$PY" bench/throughput.py --device $DEVICE --dataset cifar100 --batch-size 128 \
  "${CIFAR_ARGS[@]}" --markdown --json "$OUT/throughput.jsonl"
if "$PY" bench/where_time_goes.py --help 2>/dev/null | grep -q -- "--device"; then
  step where_time_goes 90 "$PY" bench/where_time_goes.py --device $DEVICE
else
  echo "=== where_time_goes: skipped, bench/where_time_goes.py has no --device option yet"
  printf 'where_time_goes\tno --device option\t0\t0\n' >> "$OUT/steps.tsv"
fi

DOCS=docs/benchmarks.md DRY=()
if [ $MODE = dry ]; then cp docs/benchmarks.md "$OUT/benchmarks.md"; DOCS=$OUT/benchmarks.md DRY=(--dry-run); fi
"$PY" bench/gpu_report.py --out "$OUT" --logs "$LOGS" --env "$WORK/env.json" --docs "$DOCS" \
  --total "$(elapsed "$T0")" "${DRY[@]}"
[ $MODE = gpu ] && cp docs/benchmarks.md "$OUT/benchmarks.md"
cp "$WORK/env.json" "$OUT/env.json" 2>/dev/null
tar czf "$OUT/logs.tar.gz" -C "$WORK" logs
echo "=== done in $(elapsed "$T0") s; in $OUT: $(ls "$OUT" | tr '\n' ' ')"
