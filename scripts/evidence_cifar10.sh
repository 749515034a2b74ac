#!/usr/bin/env bash
# The CIFAR-10 evidence runs behind README's "Measured" tables, as a queue of jobs that several
# lanes (processes) share: each lane takes the next job no other lane holds and whose run has no
# results.json yet, so restarting the lanes after a stop continues where they were (every run gets
# --resume auto) and finished runs are never touched.
#
#   OMP_NUM_THREADS=1 nohup bash scripts/evidence_cifar10.sh --data_root data > lane0.log 2>&1 &
#   OMP_NUM_THREADS=1 nohup bash scripts/evidence_cifar10.sh --data_root data > lane1.log 2>&1 &
#   python scripts/run_status.py runs/evidence          # where the runs stand, and their time left
#   python scripts/make_table.py results/cifar10_lt_r100 --paper --gains
#
# Jobs, in order (ResNet-32, 200 epochs, the fair-comparison protocol of fair_comparison_cifar.sh):
#   1. LCSL explained, seed 0: the reference recipe, weight decay 5e-4, and alpha 0 (mixup only).
#   2. Seeds 0, 1 and 2 of CE, LDAM-DRW, BCCL, rotation -> CE (CE + SSP) and LCSL (CIFAR-10-LT r100).
#   3. Semi-supervised, seed 0, CIFAR-10-LT r50: CE, pseudo-labels for the leftover pool, CE + D_U
#      (rho_U = 50).
# ROOT_LOG (default runs/evidence) holds the run folders; extra arguments go to every training run.
# ONLY (space-separated job names, e.g. ONLY="ce_s0 ldam_drw_s0") restricts a lane to those jobs,
# in the queue's order: on a machine that does not outlive a working session, start the jobs that
# finish within it (CE and LDAM-DRW: about 1 h 50 min of one thread each on CIFAR-10-LT r100).
set -euo pipefail
cd "$(dirname "$0")/.."

ROOT_LOG=${ROOT_LOG:-runs/evidence}
mkdir -p "$ROOT_LOG"
EXTRA=("$@")
FAIR=(--dataset cifar10 --imb_factor 0.01 --imb_type exp --lt_selection shuffle --lt_seed 0 --arch resnet32
      --epochs 200 --val_per_class 20 --select_on val --test_interval 10 --resume auto --progress False)
LCSL=(--batch_size 64 --alpha 1. --beta 1. --lr 0.01 --weight_decay 5e-3 --lambda_init 0.5)
# The semi-self reference's supervised recipe (train.py; train_semi.py with batch 256), rho = 50.
SEMI=(--dataset cifar10 --imb_factor 0.02 --imb_type exp --lt_seed 0 --arch resnet32 --loss_type CE
      --train_rule None --epochs 200 --lr 0.1 --momentum 0.9 --wd 2e-4 --warmup_epochs 5 --schedule 160 180
      --lr_gamma 0.01 --aug standard --resume auto --progress False)

run_main() { python main.py "$@" "${EXTRA[@]}"; }
run_lcsl() { python train_LCSL.py "$@" "${EXTRA[@]}"; }

# ---- the jobs: name -> commands; a job is done when its last run has results.json --------------
job_lcsl() {  # seed tag [lcsl flags that differ from the reference recipe]
  local seed=$1 tag=$2
  run_lcsl "${FAIR[@]}" "${LCSL[@]}" "${@:3}" --seed "$seed" --out_dir "$ROOT_LOG/${tag}_cifar10_seed$seed"
}
job_main() {  # method seed
  run_main --method "$1" "${FAIR[@]}" --seed "$2" --out_dir "$ROOT_LOG/$1_cifar10_seed$2"
}
job_bccl() {  # seed
  run_main --method bccl "${FAIR[@]}" --temp 0.1 --lr 0.15 --use-norm True --wd 5e-4 --cos True -b 128 \
    --feat_dim 128 --seed "$1" --out_dir "$ROOT_LOG/bccl_cifar10_seed$1"
}
# A job's stages run only after the stage before succeeded: the lane calls each job inside an `if`,
# where bash's `set -e` does not apply, so every stage but the last ends with `|| return`.
job_ce_ssp() {  # seed
  run_main --method rotation "${FAIR[@]}" --seed "$1" --out_dir "$ROOT_LOG/rotation_cifar10_seed$1" || return
  run_main --method ce "${FAIR[@]}" --pretrained_model "$ROOT_LOG/rotation_cifar10_seed$1" --seed "$1" \
    --out_dir "$ROOT_LOG/ce_ssp_cifar10_seed$1"
}
job_semi() {  # seed
  local base="$ROOT_LOG/semi_r50_ce_seed$1" pseudo="$ROOT_LOG/semi_r50_pseudo_seed$1.npz"
  run_main "${SEMI[@]}" -b 128 --seed "$1" --out_dir "$base" || return
  if [[ ! -f "$pseudo" ]]; then
    python scripts/gen_pseudolabels.py --path "$base" --which last --pool leftover --out "$pseudo" || return
  fi
  run_main "${SEMI[@]}" -b 256 --unlabeled "$pseudo" --imb_factor_unlabel 0.02 --unlabel_size_factor 5 \
    --seed "$1" --out_dir "$ROOT_LOG/semi_r50_ce_du_rhoU50_seed$1"
}

# name | folder of its last run | command
JOBS=(
  "lcsl_s0|lcsl_cifar10_seed0|job_lcsl 0 lcsl"
  "lcsl_wd5e-4_s0|lcsl_wd5e-4_cifar10_seed0|job_lcsl 0 lcsl_wd5e-4 --weight_decay 5e-4"
  "lcsl_alpha0_s0|lcsl_alpha0_cifar10_seed0|job_lcsl 0 lcsl_alpha0 --alpha 0"
)
for seed in 0 1 2; do
  JOBS+=("ce_s$seed|ce_cifar10_seed$seed|job_main ce $seed"
         "ldam_drw_s$seed|ldam_drw_cifar10_seed$seed|job_main ldam_drw $seed"
         "bccl_s$seed|bccl_cifar10_seed$seed|job_bccl $seed"
         "ce_ssp_s$seed|ce_ssp_cifar10_seed$seed|job_ce_ssp $seed")
  [[ $seed == 0 ]] || JOBS+=("lcsl_s$seed|lcsl_cifar10_seed$seed|job_lcsl $seed lcsl")
done
JOBS+=("semi_s0|semi_r50_ce_du_rhoU50_seed0|job_semi 0")

# ---- claiming: a flock on a file per job, held while the lane and the runs it starts live ---------
# The training processes inherit the open descriptor, so a claim outlives a killed lane for as long
# as its run goes on, and nothing but the kernel's lock says who holds it (a process number in a
# file could belong to another program by the time it is read). Lanes started from a version of
# this script that claimed jobs with folders (.claims/<job>/pid) do not see these claims: stop
# them before starting lanes from this one (a run folder is never trained by two processes at
# once either way; the second is refused and its lane goes on to the next job).
command -v flock > /dev/null || { echo "evidence_cifar10.sh: needs flock (util-linux) to share the queue between lanes" >&2; exit 2; }
mkdir -p "$ROOT_LOG/.claims"
claim() {
  local file="$ROOT_LOG/.claims/$1.lock"
  exec {CLAIM_FD}>> "$file" || { echo "evidence_cifar10.sh: cannot open $file to claim job $1" >&2; exit 2; }
  if ! flock -n "$CLAIM_FD"; then exec {CLAIM_FD}>&-; return 1; fi
  echo "lane $$ on ${HOSTNAME:-this host} since $(date '+%F %T')" > "$ROOT_LOG/.claims/$1.lock"  # for people; the lock decides
}
release() { exec {CLAIM_FD}>&-; }

for entry in "${JOBS[@]}"; do
  IFS='|' read -r name folder command <<< "$entry"
  [[ -f "$ROOT_LOG/$folder/results.json" ]] && continue
  [[ -z "${ONLY:-}" || " $ONLY " == *" $name "* ]] || continue
  claim "$name" || continue
  echo "$(date '+%F %T') lane $$: $name"
  if ! eval "$command"; then echo "$(date '+%F %T') lane $$: $name FAILED"; fi
  release "$name"
done
echo "$(date '+%F %T') lane $$: no job left"
