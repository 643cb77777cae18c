#!/usr/bin/env bash
# Downloads the server's Python packages as wheels into .whl/ (git-ignored) for a machine without
# network whose Python lacks them (the GPU machine: CPython 3.12, x86-64, no FastAPI/uvicorn/pydantic).
# Carry .whl there; scripts/gpu_check.sh installs them, or by hand, before `python3 -m minillm serve`
# or bench/bench_serve.py:
#   python3 -m pip install -q --no-index --no-deps --no-compile .whl/*.whl
# Usage: scripts/wheels.sh   (PYTHON_VERSION=3.12 by default)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
PYVER=${PYTHON_VERSION:-3.12}
# Pinned as scripts/setup.sh pins them, plus what they need that the GPU machine's image lacks.
WHEELS=(fastapi==0.165.0 starlette==1.10.0 pydantic==2.13.4 pydantic-core==2.46.4 annotated-types==0.7.0
        typing-inspection==0.4.2 typing-extensions==4.16.0 annotated-doc==0.0.7 opentelemetry-api==1.45.3
        uvicorn==0.55.0 httptools==0.9.0 jinja2==3.1.6)   # httptools: uvicorn's C HTTP parser
mkdir -p .whl
for w in "${WHEELS[@]}"; do
  name=${w%%==*}
  if ls .whl/ 2>/dev/null | grep -qi "^${name//-/_}-${w##*==}-"; then continue; fi
  $PY -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: --python-version "$PYVER" \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "$w"
done
ls .whl
