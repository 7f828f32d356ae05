# Sourced by bin/demo and bin/test: make .venv if missing and install the project into it.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
EXTRAS="${1:-}"
STAMP=".venv/.installed${EXTRAS:+-$EXTRAS}"
# Re-install only when the package metadata changed (keeps the second run fast).
if [ ! -f "$STAMP" ] || [ setup.cfg -nt "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ]; then
    echo "installing infraetl${EXTRAS:+[$EXTRAS]} into .venv (log: .venv/pip.log)" >&2
    if ! { .venv/bin/python -m pip install --quiet --upgrade pip \
           && .venv/bin/python -m pip install --quiet -e ".${EXTRAS:+[$EXTRAS]}"; } > .venv/pip.log 2>&1; then
        tail -n 30 .venv/pip.log >&2
        echo "error: installing the project failed; the whole log is in .venv/pip.log" >&2
        exit 1
    fi
    touch "$STAMP"
fi
