#!/usr/bin/env bash
# The GPU checks in one prepared pass, for a CUDA machine lent for a few minutes:
#   1. the CUDA tests (pytest -m cuda: GPU training with bf16 autocast and channels-last, exact
#      resume on the GPU, torchrun over NCCL with SyncBatchNorm, GPU metrics = CPU metrics, every
#      loss and miner on CUDA);
#   2. benchmarks/bench_train.py: pipeline efficiency of ResNet-50 and ViT-S/16 training;
#   3. the evaluation's metric pass on the GPU at SOP and iNaturalist scale (time per stage).
# Each stage has its own time limit and the script goes on after a failure, so one run gives every
# table it can. Outputs go to $OUT (default ./gpu_out). The Python used is $PYTHON (default python3);
# extra pure-Python packages can be put on PYTHONPATH beforehand.
#   OUT=/tmp/gpu PYTHON=python3 bash benchmarks/gpu_checks.sh
set -u
OUT=${OUT:-gpu_out}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
cd "$(dirname "$0")/.."

stage() {  # stage NAME SECONDS COMMAND...: run with a limit, log to $OUT/NAME.txt, report the status
  local name=$1 limit=$2
  shift 2
  local t0=$SECONDS
  timeout "$limit" "$@" >"$OUT/$name.txt" 2>&1
  local rc=$?
  echo "== $name: exit $rc in $((SECONDS - t0)) s" | tee -a "$OUT/summary.txt"
  tail -n "${TAIL:-25}" "$OUT/$name.txt"
}

{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  echo "cpus: $(nproc)"
  $PY -c "import sys, torch, torchvision, timm, numba; print(sys.version.split()[0], 'torch', torch.__version__, 'torchvision', torchvision.__version__, 'timm', timm.__version__, 'numba', numba.__version__, 'cuda', torch.version.cuda)"
} 2>&1 | tee "$OUT/machine.txt"

stage cuda_tests "${CUDA_TESTS_S:-240}" $PY -m pytest -m cuda -q -p no:cacheprovider -rfE
stage bench_train "${BENCH_TRAIN_S:-240}" $PY benchmarks/bench_train.py ${BENCH_TRAIN_ARGS:---device cuda --amp --channels_last --arch resnet50_frozen_normalize,timm:vit_small_patch16_224_normalize --bs 112 --steps 52 --warmup 10 --kernels 8,15 --loaders plain,cache,decode_jpeg --data_root /tmp/bench_train} --json "$OUT/bench_train.json"
stage eval_gpu "${EVAL_GPU_S:-120}" $PY - <<'PY'
import json, os, sys, time
sys.path.insert(0, "benchmarks")
import torch
import bench_eval, metrics
from evaluation.options import DEFAULT_METRICS
rows = []
for scale in [s for s in ("sop", "inat") if s in bench_eval.SCALES]:
    x, y = bench_eval.make_data(scale)[:2]
    x, y = torch.as_tensor(x), torch.as_tensor(y)
    names = [*DEFAULT_METRICS, "e_recall@10", "e_recall@100", "e_recall@1000"]
    metrics.compute(names, x[:2000], y[:2000], device="cuda")  # warm-up: kernels, cuBLAS handles
    for _ in range(2):
        timings = {}
        torch.cuda.synchronize(); t0 = time.perf_counter()
        res = metrics.compute(names, x, y, device="cuda", timings=timings)
        torch.cuda.synchronize(); total = time.perf_counter() - t0
    rows.append({"scale": scale, "n": len(y), "total_s": round(total, 3), **{k: round(v, 3) for k, v in timings.items()},
                 "e_recall@1": res["e_recall@1"], "mAP@R": res["mAP@R"], "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20})
    print(json.dumps(rows[-1]))
json.dump(rows, open(os.path.join(os.environ.get("OUT", "gpu_out"), "eval_gpu.json"), "w"), indent=1)
PY
cat "$OUT/summary.txt"
