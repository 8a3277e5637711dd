#!/usr/bin/env bash
# The GPU check in one command (written for a one-call GPU session; not yet run on a GPU):
#   OUT=/some/dir bash scripts/gpu_check.sh
# 1. environment: nvidia-smi, torch/CUDA versions, bf16 support;
# 2. bench.py --preset gpu --device cuda --compare_precision (bf16 autocast, TF32, torch.compile):
#    fp32 and bf16 matmul ceilings, training MFU against the ceiling of the precision used (and the
#    best one), sampling s/clip, scaling, and fp32 eager vs the default path timed in alternating
#    rounds (compare.*) -> $OUT/bench_gpu.json; then the same with compile off (the compile
#    speed-up, and the compile time in train.first_step_s);
# 3. a short CUDA training run of the gpu preset (300 steps, checkpoint + samples at the end)
#    -> $OUT/runs/gpu_smoke (metrics.jsonl holds samples/s and the loss).
# Each step has its own time limit and failures do not stop the later steps; the exit code is the
# number of failed steps. Set STEPS / BENCH_LIMIT_S / TRAIN_LIMIT_S to fit the session's budget.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu_check_out}"
STEPS="${STEPS:-300}"
BENCH_LIMIT_S="${BENCH_LIMIT_S:-300}"
TRAIN_LIMIT_S="${TRAIN_LIMIT_S:-180}"
mkdir -p "$OUT"
failed=0

run() {  # run NAME LIMIT_S CMD...: log to $OUT/NAME.log, note the exit status
  local name="$1" limit="$2"; shift 2
  echo "== $name (limit ${limit}s): $*"
  local t0=$SECONDS
  timeout --signal=TERM --kill-after=15 "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  tail -n 15 "$OUT/$name.log"
  echo "== $name: exit $rc after $((SECONDS - t0)) s"
  [ "$rc" -eq 0 ] || failed=$((failed + 1))
}

run env 60 bash -c 'nvidia-smi; python -c "
import torch
print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda, \"available\", torch.cuda.is_available())
assert torch.cuda.is_available(), \"no CUDA device visible\"
print(torch.cuda.get_device_name(0), \"bf16\", torch.cuda.is_bf16_supported())
"'
run bench_gpu "$BENCH_LIMIT_S" python bench.py --preset gpu --device cuda --compare_precision \
    --json "$OUT/bench_gpu.json"
run bench_gpu_eager "$BENCH_LIMIT_S" python bench.py --preset gpu --device cuda --compile off \
    --skip scaling --json "$OUT/bench_gpu_eager.json"
run train_gpu "$TRAIN_LIMIT_S" python main.py --preset gpu --experiment_name gpu_smoke \
    --output_dir "$OUT/runs" --max_steps "$STEPS" --num_train_samples 4000 --num_workers 4 \
    --log_every_steps 25 --sample_every_steps 0 --checkpoint_every_steps "$STEPS" \
    --warmup_steps 50 --eval_at_end false --tensorboard false
[ -f "$OUT/runs/gpu_smoke/metrics.jsonl" ] && tail -n 3 "$OUT/runs/gpu_smoke/metrics.jsonl"
echo "gpu_check: $failed step(s) failed; results in $OUT"
exit "$failed"
