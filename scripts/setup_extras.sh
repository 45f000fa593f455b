#!/usr/bin/env bash
# A second virtual environment, .venv-extras, for the tests of the timm / torchvision model adapters
# (tests/test_external_models.py): torchvision must match torch's own build, and timm needs torchvision, so they
# cannot join the CPU torch of .venv. Override the pins with TORCH_SPEC / TORCHVISION_SPEC.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv-extras/bin/python ]; then
  "$PY" -m venv .venv-extras
fi
.venv-extras/bin/python -m pip install -q --upgrade pip >/dev/null
.venv-extras/bin/python -m pip install -q "${TORCH_SPEC:-torch==2.14.1}" "${TORCHVISION_SPEC:-torchvision==0.29.1}" timm
.venv-extras/bin/python -m pip install -q -e ".[dev,surrogate]"
.venv-extras/bin/python -c "import timm, torchvision, richkd; print(f'extras ready: timm {timm.__version__}, torchvision {torchvision.__version__}')"
echo "run: .venv-extras/bin/python -m pytest -q tests/test_external_models.py"
