#!/usr/bin/env bash
# Every CUDA path and the GPU's pace in one command, on a machine without a package registry.
#
#   python scripts/device_bundle.py prepare --source /path/to/cifar10-jpeg   # once, where data and pip are
#   bash scripts/device_check.sh OUT_DIR                                     # on the GPU machine, < 8 min
#   bash scripts/device_check.sh --smoke OUT_DIR                             # any machine, CPU, seconds
#
# Uses the machine's own torch / torchvision / numpy / pillow; installs whatever else is missing
# from the wheels in .device/ (into .device_cache/site, on PYTHONPATH) and unpacks the CIFAR-10-LT
# r100 images stored there into .device_cache/data. Then, each step with its own time limit:
#   1. the CUDA tests (pytest -m cuda tests/test_cuda.py);
#   2. bench_throughput.py --device cuda for ce, bccl and lcsl (each in its steady state);
#   3. a full 200-epoch CE run on CIFAR-10-LT r100, ResNet-32, with the fair-comparison recipe.
# OUT_DIR receives summary.txt / summary.json (also printed), every step's log, bench.json and
# the CE run folder (ce_run/, with results.json). --smoke (or SMOKE=1) runs the same steps on the
# CPU with a tiny budget and the bundled sample data, without .device/. Exit status 0 when every
# step finished and no test failed.
# Knobs: BUDGET_S (whole check, default 470), TESTS_TIMEOUT_S (180), BENCH_SECONDS (per pipeline
# and phase, 6), PYTHON (default: python3, else python), COMPILE_MODE (e.g. reduce-overhead: also
# times CE's fast path compiled in that mode, bench_compiled.json, and trains CE 30 epochs eager
# and compiled in that mode from the same seed, parity_eager/ and parity_compiled/; costs the
# compilation time).
set -uo pipefail
cd "$(dirname "$0")/.."

source scripts/lib/device_args.sh "$@"  # SMOKE, OUT, PY
BUNDLE=.device
CACHE=.device_cache
BUDGET_S=${BUDGET_S:-470}
TESTS_TIMEOUT_S=${TESTS_TIMEOUT_S:-180}
BENCH_SECONDS=${BENCH_SECONDS:-6}
START=$(date +%s)
: > "$OUT/steps.tsv"

# Runs one step with a time limit, its output in OUT/<name>.log; records status and seconds.
step() {
  local name=$1 limit=$2
  shift 2
  local began=$SECONDS rc
  echo "[$(( $(date +%s) - START )) s] $name (limit ${limit} s)"
  timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1
  rc=$?
  printf '%s\t%s\t%s\n' "$name" "$rc" "$(( SECONDS - began ))" >> "$OUT/steps.tsv"
  [[ $rc -eq 0 ]] || echo "    $name exited with status $rc (see $OUT/$name.log)"
  return $rc
}
left() { echo $(( BUDGET_S - ($(date +%s) - START) )); }

if [[ $SMOKE == 1 ]]; then
  export CUDA_VISIBLE_DEVICES=""  # the CPU, even on a GPU machine
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # tiny batches: more threads only wait on each other
  DEVICE=cpu
  DATA=(--dataset cifar10_sample)
  # One timed step per pipeline and phase; one training step and the 1,000 sample test images.
  # fp32: the first bf16 steps on a CPU spend seconds creating kernels.
  BENCH=(--seconds 0.01 --rounds 1 --batch_size 4 --workers 0 --warmup_steps 0 --queue_fill_steps 1 --synthetic
         --amp none)
  CE_LIMIT=(--epochs 1 --limit_batches 1 -b 16 --val_per_class 1 --amp none)
else
  DEVICE=cuda
  DATA=(--dataset cifar10 --data_root "$CACHE/data" --download False)
  BENCH=(--seconds "$BENCH_SECONDS" --rounds 2)
  CE_LIMIT=()
fi
# The fair-comparison recipe's CE row, seed 0 (scripts/fair_comparison_cifar.sh); the runs below
# add their epochs and (smoke) limits.
CE_RECIPE=(--method ce "${DATA[@]}" --imb_factor 0.01 --imb_type exp --lt_selection shuffle --lt_seed 0
           --arch resnet32 --val_per_class 20 --select_on val --seed 0 --progress False)
export PYTHONPATH="$PWD/$CACHE/site${PYTHONPATH:+:$PYTHONPATH}"

step install 120 "$PY" scripts/device_bundle.py install --bundle "$BUNDLE" --target "$CACHE/site" || ready=0
if [[ $SMOKE != 1 ]]; then
  step unpack 120 "$PY" scripts/device_bundle.py unpack --bundle "$BUNDLE" --data_root "$CACHE/data" || ready=0
fi
if [[ ${ready:-1} == 0 ]]; then
  cat "$OUT"/install.log "$OUT"/unpack.log 2>/dev/null
  echo "device check: the environment or the data is not ready; nothing else was run" >&2
  exit 2
fi

status=0
# -n 0: the CUDA tests share one GPU, so they run in one process, not pytest.ini's one per core.
step cuda_tests "$TESTS_TIMEOUT_S" "$PY" -m pytest tests/test_cuda.py -m cuda -n 0 -rA -p no:cacheprovider \
  --junitxml "$OUT/cuda_tests.xml" || status=1

step bench 200 "$PY" scripts/bench_throughput.py --device "$DEVICE" --method ce bccl lcsl "${BENCH[@]}" \
  --json "$OUT/bench.json" || status=1

if [[ -n "${COMPILE_MODE:-}" ]]; then
  step bench_compiled 240 "$PY" scripts/bench_throughput.py --device "$DEVICE" --method ce "${BENCH[@]}" \
    --compile_mode "$COMPILE_MODE" --json "$OUT/bench_compiled.json" || status=1
fi

# With COMPILE_MODE: the compiled training path (e.g. CUDA graphs) against the eager one, same
# seed, 30 epochs of the CE recipe: its accuracy must match before it becomes the default.
if [[ -n "${COMPILE_MODE:-}" ]]; then
  PARITY_EPOCHS=$([[ $SMOKE == 1 ]] && echo 1 || echo 30)
  for variant in eager compiled; do
    mode=()
    [[ $variant == compiled ]] && mode=(--compile_mode "$COMPILE_MODE")
    [[ -e "$OUT/parity_$variant" ]] && mode+=(--overwrite)
    step "parity_$variant" 240 "$PY" main.py "${CE_RECIPE[@]}" --epochs "$PARITY_EPOCHS" "${CE_LIMIT[@]}" \
      ${mode[@]+"${mode[@]}"} --out_dir "$OUT/parity_$variant" || status=1
  done
fi

# The full 200-epoch CE run: the GPU's pace on the real recipe.
overwrite=()
[[ -e "$OUT/ce_run" ]] && overwrite=(--overwrite)
step ce_run "$(( $(left) > 30 ? $(left) : 30 ))" "$PY" main.py "${CE_RECIPE[@]}" --epochs 200 --test_interval 10 \
  "${CE_LIMIT[@]}" --out_dir "$OUT/ce_run" "${overwrite[@]}" || status=1

echo
"$PY" scripts/device_bundle.py summary "$OUT" --mode "$([[ $SMOKE == 1 ]] && echo smoke || echo full)" \
  --elapsed_s "$(( $(date +%s) - START ))" || status=1
exit $status
