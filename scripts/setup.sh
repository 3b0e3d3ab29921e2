#!/usr/bin/env bash
# Create .venv with the pinned stack and d2v-plugin installed in editable mode. Idempotent: a second
# run only re-checks (the stamp file records what was installed).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv
STAMP="$VENV/.d2v-setup-$(cat requirements.txt requirements-hf.txt setup.py | sha1sum | cut -c1-12)"

if [ -f "$STAMP" ] && "$VENV/bin/python" -c "import fairseq, d2v_plugin" >/dev/null 2>&1; then
  exit 0
fi
echo "== setting up $VENV (first time: about 5 minutes, fairseq compiles for ~2)"
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP="$VENV/bin/python -m pip --disable-pip-version-check -q"
$PIP install --upgrade pip
$PIP install torch==2.13.0
$PIP install -r requirements.txt
# the optional Hugging Face extra (d2v-export-hf / d2v-import-hf), with its needs listed explicitly
$PIP install --no-deps -r requirements-hf.txt
if ! "$VENV/bin/python" -c "import fairseq" >/dev/null 2>&1; then
  $PIP install --no-deps --no-build-isolation fairseq-fixed==0.12.3.1
fi
$PIP install --no-deps --no-build-isolation -e .
"$VENV/bin/python" -c "import torch, fairseq, d2v_plugin; print('== ready: torch', torch.__version__, '| fairseq', fairseq.__version__)" 2>&1 | grep '^=='
touch "$STAMP"
