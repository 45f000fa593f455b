#!/usr/bin/env bash
# The paper's analyses on real CIFAR-10 (docs/analysis_cifar10.md): confidence quadrants and flows from the teacher
# to the fused teacher (with the alpha*z_T control beside it), calibration, inter-class consistency, a robustness
# table of trained students, model cost, and the HTML report. The vision-language teacher is the packaged SURROGATE
# (EfficientNet-Lite0 + MiniLM, ConSE-style), not CLIP. Rerunning skips finished steps.
# Usage: bash benchmarks/cifar10_analysis.sh PATH/cifar10-jpeg.tar.gz
set -euo pipefail
ROOT=${1:?usage: cifar10_analysis.sh PATH/cifar10-jpeg.tar.gz}
THREADS=${THREADS:-1}
TEST_LIMIT=${TEST_LIMIT:-2000}   # stratified test subset for everything that needs the surrogate (~24 img/s/thread)
EPOCHS=${EPOCHS:-6}              # student epochs
TC=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4
[ -f "$TC" ] && export LD_PRELOAD=$TC
R=${RICHKD:-.venv/bin/richkd}
OUT=${OUT:-runs/cifar10_analysis}
T=$OUT/teacher_resnet20
TRAIN_CACHE=caches/cifar10_train10k_surrogate
TEST_CACHE=caches/cifar10_test${TEST_LIMIT}_surrogate
P=$OUT/predictions
mkdir -p "$P"
D=(--dataset imagefolder --root "$ROOT" --split test --limit "$TEST_LIMIT" --threads "$THREADS")

train() {  # train OUT_DIR [args...]: skip when finished, resume when started
  local dir=$1; shift
  [ -f "$dir/summary.json" ] && return 0
  local resume=()
  [ -f "$dir/checkpoint.pt" ] && resume=(--resume)
  "$R" train "$@" data.root="$ROOT" train.threads="$THREADS" train.progress=false out_dir="$dir" "${resume[@]}"
}
predict() {  # predict NAME [args...]
  local name=$1; shift
  [ -f "$P/$name.preds.safetensors" ] || "$R" predict "${D[@]}" --name "$name" --out "$P/$name.preds.safetensors" "$@"
}

# 1. teacher (resnet20, 8 epochs: what a loaded 2-core CPU affords) and students (vanilla and KD; with WITH_RICHKD=1 also the control and RichKD-L+F; resnet8, one seed)
train "$T" --dataset cifar10-reduced --method teacher --pair resnet20 train.epochs=8 train.eval_every=4
[ -f "$TEST_CACHE/meta.json" ] || "$R" vlm cache "${D[@]}" --teacher surrogate --out "$TEST_CACHE"
# the logit scale that calibrates the surrogate's cosines, fitted on 1,000 TRAINING images (never on test labels)
FIT_CACHE=caches/cifar10_train1000_surrogate
[ -f "$FIT_CACHE/meta.json" ] || "$R" vlm cache --dataset imagefolder --root "$ROOT" --split train --limit 1000 \
    --teacher surrogate --threads "$THREADS" --out "$FIT_CACHE"
S=$("$R" vlm fit-scale --dataset imagefolder --root "$ROOT" --split train --limit 1000 --cache "$FIT_CACHE" \
    --threads "$THREADS" --out "$OUT/fit_scale.json" | sed -E 's/^fitted logit scale ([0-9.]+).*/\1/')
STUDENT=(model.student=resnet8 train.epochs="$EPOCHS")
KD=(model.teacher=resnet20 model.teacher_checkpoint="$T/model_last.pt")
train "$OUT/vanilla_resnet8" --dataset cifar10-reduced --method vanilla --pair resnet8 "${STUDENT[@]}"
train "$OUT/kd_resnet8" --dataset cifar10-reduced --method kd "${STUDENT[@]}" "${KD[@]}"
if [ -n "${WITH_RICHKD:-}" ]; then  # RichKD students need a surrogate cache of the 10k training images (~7 min/thread)
  [ -f "$TRAIN_CACHE/meta.json" ] || "$R" vlm cache --dataset imagefolder --root "$ROOT" --split train \
      --limit 10000 --teacher surrogate --threads "$THREADS" --out "$TRAIN_CACHE"
  train "$OUT/control_resnet8" --dataset cifar10-reduced --method control "${STUDENT[@]}" "${KD[@]}" \
      distill.nce_k=4096
  train "$OUT/richkd_resnet8" --dataset cifar10-reduced --method richkd-lf "${STUDENT[@]}" "${KD[@]}" \
      distill.nce_k=4096 vlm.cache="$TRAIN_CACHE"
  STUDENTS="vanilla kd control richkd"
else
  STUDENTS="vanilla kd"
fi

# 2. predictions on the stratified test subset
predict teacher --checkpoint "$T/model_last.pt" --kind teacher
predict control --checkpoint "$T/model_last.pt" --alpha 0.7 --no-vlm
predict fused --checkpoint "$T/model_last.pt" --cache "$TEST_CACHE" --alpha 0.7 --vlm-scale 1
predict fused_fitted --checkpoint "$T/model_last.pt" --cache "$TEST_CACHE" --alpha 0.7 --vlm-scale "$S"
predict surrogate --cache "$TEST_CACHE" --vlm-scale "$S"
for s in $STUDENTS; do predict "${s}_student" --checkpoint "$OUT/${s}_resnet8/model_last.pt"; done

# 3. analyses, robustness, cost, report
NAMES="teacher control fused fused_fitted surrogate"
for s in $STUDENTS; do NAMES="$NAMES ${s}_student"; done
FILES=(); for n in $NAMES; do FILES+=("$P/$n.preds.safetensors"); done
EXTRA=(); [ -n "${WITH_RICHKD:-}" ] && EXTRA=(--flow kd_student:richkd_student --agreement teacher:richkd_student)
[ -f "$OUT/analysis/analysis.json" ] || "$R" analyze "${FILES[@]}" --names "$(echo $NAMES | tr ' ' ,)" \
    --flow teacher:fused --flow teacher:fused_fitted --flow teacher:control --flow vanilla_student:kd_student \
    --agreement teacher:kd_student --agreement teacher:vanilla_student "${EXTRA[@]}" \
    --semantic cache:"$TEST_CACHE" --out "$OUT/analysis"
[ -f "$OUT/robustness/robustness.json" ] || "$R" robustness --dataset imagefolder --root "$ROOT" --split test \
    --limit 1000 --threads "$THREADS" --checkpoint teacher="$T/model_last.pt" \
    --checkpoint vanilla="$OUT/vanilla_resnet8/model_last.pt" --checkpoint kd="$OUT/kd_resnet8/model_last.pt" \
    --out "$OUT/robustness"
[ -f "$OUT/cost/cost.json" ] || "$R" cost --threads "$THREADS" --checkpoint teacher="$T/model_last.pt" \
    --checkpoint student="$OUT/kd_resnet8/model_last.pt" --out "$OUT/cost"
RUNS=("$T"); for s in $STUDENTS; do RUNS+=("$OUT/${s}_resnet8"); done
"$R" report "${RUNS[@]}" --analysis "$OUT/analysis/analysis.json" \
    --robustness "$OUT/robustness/robustness.json" --cost "$OUT/cost/cost.json" \
    --title "RichKD analyses on CIFAR-10 (surrogate vision-language teacher, not CLIP)" --out "$OUT/report"
