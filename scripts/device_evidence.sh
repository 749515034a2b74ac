#!/usr/bin/env bash
# The evidence queue (scripts/evidence_cifar10.sh) on a GPU machine for a fixed time: several lanes
# share the GPU, every run from the pinned commit the CPU runs use, and every run folder comes
# back (finished runs as records, unfinished ones with their checkpoints, to continue anywhere
# with --resume auto).
#
#   python scripts/device_bundle.py prepare --source /path/to/cifar10-jpeg   # here, once (data, wheels)
#   python scripts/evidence_runs.py pin --commit 337892f                     # here: that commit's files
#   bash scripts/device_evidence.sh OUT_DIR                                  # there, < 10 min
#   python scripts/evidence_runs.py restore OUT_DIR/*.tar --into runs/evidence   # here, afterwards
#   python scripts/evidence_runs.py collect runs/evidence results/cifar10_lt_r100
#   bash scripts/device_evidence.sh --smoke OUT_DIR                          # any machine, CPU, seconds
#
# Each lane hands evidence_cifar10.sh one job at a time from JOBS; runs whose records are
# already in results/cifar10_lt_r100 are skipped (their results.json is put in the lanes' folder
# first), and the semi-supervised job is left out (the bundle holds the ratio-100 images only).
# At BUDGET_S every lane gets SIGTERM: a run stops at its last finished epoch (last.pth).
# OUT_DIR (new or empty) receives summary.txt, lanes.log, runs_records.tar and up to five
# runs_checkpoints_N.tar (60 MB in all). Exit status 0 when the runs were packed and no job failed.
# Knobs: LANES (default 6), BUDGET_S (whole script, default 540), JOBS (the queue's job names to
# take, in this order; default: every r100 job, cheapest first), EXTRA (extra flags for every run;
# default none, so --amp auto trains in bf16 on the GPU as on the CPU with native bf16 the
# committed seeds ran on), DONE (folder of finished records to skip, default
# results/cifar10_lt_r100; none in smoke mode), PINNED (default .device/pinned.tar.gz), CACHE
# (working folder, default .device_cache; a second call on the same machine continues the
# unfinished runs of the first), PYTHON (default python3, else python).
set -uo pipefail
cd "$(dirname "$0")/.."

source scripts/lib/device_args.sh "$@"  # SMOKE, OUT, PY
if [[ -e "$OUT/runs_records.tar" || -e "$OUT/lanes.log" ]]; then
  echo "device_evidence.sh: $OUT holds an earlier call's output; give a new or empty OUT_DIR" >&2
  exit 2
fi
CACHE=${CACHE:-$PWD/.device_cache}
mkdir -p "$CACHE" || exit 2
CACHE=$(cd "$CACHE" && pwd)
PINNED=${PINNED:-.device/pinned.tar.gz}
TREE=$CACHE/pinned
LANES_DIR=$CACHE/evidence_runs
START=$(date +%s)
left() { echo $(( BUDGET_S - ($(date +%s) - START) )); }
# Whether any lane's process group (the lane and its training run) still has a process.
any_alive() { local pid; for pid in "$@"; do kill -0 -- "-$pid" 2>/dev/null && return 0; done; return 1; }

# The queue's CIFAR-10-LT r100 jobs (evidence_cifar10.sh's JOBS, without the semi-supervised one),
# cheapest first rather than in the queue's order, so that a short call finishes as many runs as
# it can: an unfinished run brings back only a checkpoint, worth something only to a later call.
# Per run, in CE runs' work: CE and LDAM-DRW 1; BCCL about 2 (two views, k-means refreshes);
# rotation -> CE about 5 (four rotated copies of every image for 200 epochs, then CE); LCSL about
# 3 on the CPU (41 against 112 images/s per thread) and more on a GPU, where its batch of 64
# means twice the steps of CE's 128.
ALL_JOBS=""
for method in ce ldam_drw bccl ce_ssp; do
  for seed in 0 1 2; do ALL_JOBS+=" ${method}_s$seed"; done
done
ALL_JOBS+=" lcsl_s0 lcsl_wd5e-4_s0 lcsl_alpha0_s0 lcsl_s1 lcsl_s2"

if [[ $SMOKE == 1 ]]; then
  export CUDA_VISIBLE_DEVICES=""  # the CPU, even on a GPU machine
  export OMP_NUM_THREADS=1
  BUDGET_S=${BUDGET_S:-300}
  LANES=${LANES:-2}
  JOBS=${JOBS:-"ce_s0 ldam_drw_s0"}
  DONE=${DONE-}
  # One training step per epoch on the bundled sample; the last flags win over the queue's.
  EXTRA=${EXTRA-"--amp none"}
  RUN_FLAGS=(--dataset cifar10_sample --epochs 2 --limit_batches 1 -b 16 --val_per_class 2 --workers 0)
else
  BUDGET_S=${BUDGET_S:-540}
  LANES=${LANES:-6}
  JOBS=${JOBS:-$ALL_JOBS}
  DONE=${DONE-results/cifar10_lt_r100}
  EXTRA=${EXTRA-}
  RUN_FLAGS=(--data_root "$CACHE/data" --download False --workers 2)
fi
read -r -a EXTRA_FLAGS <<< "$EXTRA"
export PYTHONPATH="$CACHE/site${PYTHONPATH:+:$PYTHONPATH}"
# The pinned tree has no git metadata; without a ceiling, git would find this repository's and the
# runs would record its commit. With it they record 'unknown', which pack turns into the pin's.
export GIT_CEILING_DIRECTORIES=$CACHE
unset GIT_DIR GIT_WORK_TREE  # they would override the ceiling
# The queue calls `python`; a machine may have only python3, or another python first on PATH.
mkdir -p "$CACHE/bin" && ln -sf "$(command -v "$PY")" "$CACHE/bin/python" || exit 2
export PATH="$CACHE/bin:$PATH"

{
  echo "device evidence ($([[ $SMOKE == 1 ]] && echo smoke || echo full)): $LANES lanes, budget $BUDGET_S s"
  "$PY" scripts/evidence_runs.py tree --archive "$PINNED" --into "$TREE" || exit 2
  if [[ $SMOKE != 1 ]]; then
    "$PY" scripts/device_bundle.py install --bundle .device --target "$CACHE/site" || exit 2
    "$PY" scripts/device_bundle.py unpack --bundle .device --data_root "$CACHE/data" || exit 2
  fi
  # Finished runs are not run again: the lanes skip a job whose folder holds a results.json.
  mkdir -p "$LANES_DIR"
  for record in ${DONE:+"$DONE"/*/results.json}; do
    [[ -f "$record" ]] || continue
    run=$(basename "$(dirname "$record")")
    mkdir -p "$LANES_DIR/$run" && cp -n "$record" "$(dirname "$record")/config.json" "$LANES_DIR/$run/" 2>/dev/null
    touch "$LANES_DIR/$run/.committed"
  done

  pids=()
  trap 'kill -TERM ${pids[@]+"${pids[@]/#/-}"} 2>/dev/null' INT TERM
  for lane in $(seq 1 "$LANES"); do
    # setsid: a lane and its training run are one process group, stopped together at the deadline.
    # The pinned queue runs its ONLY jobs in its own order, so a lane hands it one job at a time,
    # in JOBS' order; a job another lane holds, or one already finished, is passed over.
    ROOT_LOG="$LANES_DIR" setsid bash -c 'tree=$1 jobs=$2; shift 2; for job in $jobs; do
        ONLY=$job bash "$tree/scripts/evidence_cifar10.sh" "$@"; done' lane "$TREE" "$JOBS" "${RUN_FLAGS[@]}" \
      ${EXTRA_FLAGS[@]+"${EXTRA_FLAGS[@]}"} > "$OUT/lane$lane.log" 2>&1 &
    pids+=($!)
    sleep 2  # lanes claim jobs one after another
  done
  while (( $(left) > 40 )) && any_alive "${pids[@]}"; do sleep 5; done
  for pid in "${pids[@]}"; do kill -TERM -- "-$pid" 2>/dev/null; done
  for _ in $(seq 1 20); do any_alive "${pids[@]}" || break; sleep 1; done
  for pid in "${pids[@]}"; do kill -KILL -- "-$pid" 2>/dev/null; done
  wait

  # Back: the runs this call made (not the committed records put there above).
  mkdir -p "$CACHE/evidence_out"
  rm -rf "$CACHE/evidence_out"/*
  for folder in "$LANES_DIR"/*/; do
    [[ -f "$folder/.committed" ]] || cp -r "$folder" "$CACHE/evidence_out/"
  done
  "$PY" scripts/evidence_runs.py pack "$CACHE/evidence_out" "$OUT" --commit "$(cat "$TREE/.pinned_commit")" \
    --max_files 6 --max_mb 15 --max_total_mb 60
  status=$?
  cat "$OUT"/lane[0-9]*.log > "$OUT/lanes.log" && rm -f "$OUT"/lane[0-9]*.log
  # A lane prints '<job> FAILED' when a run exits with an error; runs stopped at the deadline
  # end with their lane, which prints nothing more.
  failed=$(grep -c " FAILED$" "$OUT/lanes.log")
  (( failed == 0 )) || { echo "$failed jobs failed (see lanes.log)"; status=1; }
  echo "$(( $(date +%s) - START )) s"
  exit $status
} 2>&1 | tee "$OUT/summary.txt"
exit "${PIPESTATUS[0]}"
