#!/usr/bin/env bash
# One-step setup: a virtual environment in .venv with richkd (editable), its test tools and the offline
# surrogate teacher; plus, when run as root on Debian/Ubuntu, tcmalloc (faster CPU training) and Fashion-MNIST.
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
.venv/bin/python -m pip install -q -e ".[dev,surrogate]"
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  if ! dpkg -s libtcmalloc-minimal4 dataset-fashion-mnist >/dev/null 2>&1; then
    (apt-get update -qq && apt-get install -y -qq libtcmalloc-minimal4 dataset-fashion-mnist) >/dev/null 2>&1 \
      || echo "setup: optional apt packages (tcmalloc, Fashion-MNIST) not installed; continuing" >&2
  fi
fi
.venv/bin/python -c "import richkd, torch; print(f'richkd {richkd.__version__} ready (torch {torch.__version__})')"
