#!/usr/bin/env bash
# Reduced-scale CIFAR-10 result (docs/results_cifar10.md): resnet56 teacher, resnet20 student, vanilla vs KD,
# over SEEDS seeds. Rerunning skips finished runs and resumes interrupted ones.
# Usage: bash benchmarks/cifar10_reduced.sh PATH/cifar10-jpeg.tar.gz
set -euo pipefail
ROOT=${1:?usage: cifar10_reduced.sh PATH/cifar10-jpeg.tar.gz}
SEEDS=${SEEDS:-"0 1 2"}
THREADS=${THREADS:-1}
TC=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4
[ -f "$TC" ] && export LD_PRELOAD=$TC
RICHKD=${RICHKD:-.venv/bin/richkd}
OUT=${OUT:-runs/cifar10}

run() {  # run METHOD OUT_DIR [overrides...]
  local method=$1 dir=$2; shift 2
  [ -f "$dir/summary.json" ] && return 0
  local resume=()
  [ -f "$dir/checkpoint.pt" ] && resume=(--resume)
  "$RICHKD" train --dataset cifar10-reduced --pair resnet56-resnet20 --method "$method" data.root="$ROOT" \
      train.threads="$THREADS" out_dir="$dir" "$@" "${resume[@]}"
}

run teacher "$OUT/teacher_resnet56"
for seed in $SEEDS; do
  run vanilla "$OUT/vanilla_resnet20_s$seed" seed="$seed"
  run kd "$OUT/kd_resnet56_resnet20_s$seed" seed="$seed" model.teacher_checkpoint="$OUT/teacher_resnet56/model_last.pt"
done
