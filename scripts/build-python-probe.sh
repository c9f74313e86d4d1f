#!/usr/bin/env bash
# Builds the Python probe template (probes-wasm/hello-python) into
# probes-wasm/target/python/hello-python.wasm with componentize-py, which
# is installed (pinned) into a virtual environment under target/pyenv.
set -euo pipefail
cd "$(dirname "$0")/.."
COMPONENTIZE_PY_VERSION=0.25.1
venv=target/pyenv
if ! [ -x "$venv/bin/componentize-py" ] ||
   ! "$venv/bin/componentize-py" --version | grep -q " $COMPONENTIZE_PY_VERSION\$"; then
  python3 -m venv "$venv" 2>/dev/null ||
    { apt-get update && apt-get install -y python3-venv && python3 -m venv "$venv"; }
  "$venv/bin/pip" install --quiet "componentize-py==$COMPONENTIZE_PY_VERSION"
fi
mkdir -p probes-wasm/target/python
"$venv/bin/componentize-py" -d wit -w probe componentize \
  -p probes-wasm/hello-python app -o probes-wasm/target/python/hello-python.wasm
