#!/usr/bin/env bash
# Every GPU check of BENCHMARKS.md in one command, for a GPU machine lent for a few minutes:
# the CUDA tests, then benchmarks 1-4 at the paper's sizes (ResNet-50, 288x144, batch 32).
#
#   benchmarks/gpu/pack_sweep_deps.sh        # once, here: Ray Tune + Optuna for the sweep benchmark
#   benchmarks/gpu/run_all.sh [OUT]          # there, from the repository root (under 10 minutes)
#
# Each step has its own time limit, so one that hangs or fails leaves the others' figures; every
# step's output goes to OUT/NAME.txt (default $OUT, else /tmp/gpu-benchmarks) and a summary of exit
# statuses to OUT/steps.txt. Without .gpu-deps/site.tar.xz, or without a GPU, the sweep step is
# skipped and says why.
set -uo pipefail
out=${1:-${OUT:-/tmp/gpu-benchmarks}}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 RAY_AUTH_MODE=disabled WANDB_MODE=disabled
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
python=${PYTHON:-python3}

step() {  # step NAME SECONDS COMMAND...: run it with a limit, its output in OUT/NAME.txt
  local name=$1 limit=$2 started=$SECONDS status
  shift 2
  echo "== $name: $*"
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$out/$name.txt"
  status=${PIPESTATUS[0]}
  echo "$name: exit status $status after $((SECONDS - started)) s" | tee -a "$out/steps.txt"
}

{ nvidia-smi -L; "$python" -c 'import torch, torchvision; print("torch", torch.__version__,
  "torchvision", torchvision.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name())'
  nproc; } 2>&1 | tee "$out/machine.txt"

step cuda_tests 60 "$python" -m pytest -q -p no:cacheprovider -k cuda tests/test_metrics.py tests/study/test_trainer.py
step train_throughput 110 "$python" -m benchmarks.bench_train_throughput
step rank_metrics 60 "$python" -m benchmarks.bench_rank_metrics
if [[ -f .gpu-deps/site.tar.xz ]] && "$python" -c 'import torch; assert torch.cuda.is_available()'; then
  "$python" -c 'import tarfile; tarfile.open(".gpu-deps/site.tar.xz").extractall("/tmp/gpu-deps", filter="tar")'
  PYTHONPATH="$PYTHONPATH:/tmp/gpu-deps/site" step sweep_throughput 250 \
    "$python" -m benchmarks.bench_sweep_throughput --out /tmp/bench-sweep-throughput
else
  echo "sweep_throughput: skipped (needs a GPU and .gpu-deps/site.tar.xz from pack_sweep_deps.sh)" \
    | tee -a "$out/steps.txt"
fi
step train_throughput_compiled 120 "$python" -m benchmarks.bench_train_throughput --compile --rounds 1 --steps 50
cat "$out/steps.txt"
