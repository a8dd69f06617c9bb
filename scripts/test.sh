#!/usr/bin/env bash
# Set up .venv (if needed) and run the whole test suite. This is the README's test command; CI runs it too.
#   bash scripts/test.sh            # everything
#   bash scripts/test.sh -k inra    # extra arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export TOKENIZERS_PARALLELISM=false
set +e
python -m pytest -q --timeout 1200 "$@"
rc=$?
set -e
# pytest's 5 means "no tests collected": a run that tested nothing must not pass
exit $rc
