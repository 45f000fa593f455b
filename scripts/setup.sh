#!/usr/bin/env bash
# One-step setup: a virtual environment in .venv with richkd (editable), its test tools, the offline
# surrogate teacher, ONNX export/runtime, simplejpeg and the experiment trackers (TensorBoard, MLflow, W&B);
# plus, when run as root on Debian/Ubuntu, tcmalloc (faster CPU training) and Fashion-MNIST.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
# Pin the CPU build explicitly: a bare `torch` requirement may pull a multi-GB CUDA build.
# Override with TORCH_SPEC (e.g. TORCH_SPEC="torch==2.14.1") on a GPU machine.
.venv/bin/python -m pip install -q "${TORCH_SPEC:-torch==2.13.0}"
# export: onnx + onnxruntime, ~10 s; imagenet: simplejpeg (faster JPEG decode, same pixels as Pillow);
# cluster: submitit (the study's slurm executor); tensorboard, mlflow, wandb: train.loggers' trackers, so CI
# tests them (docs/tracking.md; together ~30 s more with a warm pip cache)
.venv/bin/python -m pip install -q -e ".[dev,surrogate,export,imagenet,cluster,tensorboard,mlflow,wandb]"
# Optional system packages: tcmalloc (faster CPU training) and Fashion-MNIST (the demo's default data).
APT_PKGS="libtcmalloc-minimal4 dataset-fashion-mnist"
if command -v apt-get >/dev/null 2>&1 && ! dpkg -s $APT_PKGS >/dev/null 2>&1; then
  SUDO=""
  if [ "$(id -u)" != "0" ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo -n"; else SUDO="none"; fi
  fi
  if [ "$SUDO" = "none" ]; then
    echo "setup: not root, so $APT_PKGS were not installed; run: sudo apt-get install $APT_PKGS" \
         "(or give the demo other data: richkd demo --dataset cifar10 --root PATH)" >&2
  else
    log=$(mktemp)
    if ! ($SUDO apt-get update -qq && $SUDO apt-get install -y -qq $APT_PKGS) >"$log" 2>&1; then
      echo "setup: could not install $APT_PKGS ($(tail -n 1 "$log")); continuing without them" >&2
    fi
    rm -f "$log"
  fi
fi
.venv/bin/python -c "import richkd, torch; print(f'richkd {richkd.__version__} ready (torch {torch.__version__})')"
