#!/usr/bin/env bash
# Installs what minillm needs to build and test, by package name, pinned. Idempotent and quick when
# everything is present. Everything the build reads is gathered under .deps/ (git-ignored) so that
# the tree can travel to a machine without network (the GPU machine) with `.deps` carried along:
#   .deps/include/{nlohmann,CLI}   header-only nlohmann-json and CLI11 (Debian packages)
#   .deps/googletest               GoogleTest sources (Debian package googletest), built by CMake
# Usage: scripts/setup.sh            (apt + pip + .deps)
#        MINILLM_SKIP_APT=1 ...      (skip apt, e.g. where there is no network)
set -euo pipefail
cd "$(dirname "$0")/.."

PY_PINS=(nanobind==3.1.0 pytest==9.2.0 numpy==2.4.6)
APT_PKGS=(g++ cmake ninja-build nlohmann-json3-dev libcli11-dev googletest libgtest-dev valgrind)

if [[ -z "${MINILLM_SKIP_APT:-}" ]] && command -v apt-get >/dev/null; then
  missing=()
  for p in "${APT_PKGS[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  if ((${#missing[@]})); then
    echo "setup: apt-get install ${missing[*]}"
    SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
fi

PY=${PYTHON:-python3}
if ! $PY - "${PY_PINS[@]}" <<'PYEOF' 2>/dev/null
import sys, importlib.metadata as md
for pin in sys.argv[1:]:
    name, ver = pin.split("==")
    if md.version(name) != ver: sys.exit(1)
PYEOF
then
  echo "setup: pip install ${PY_PINS[*]}"
  $PY -m pip install -q --disable-pip-version-check "${PY_PINS[@]}"
fi

mkdir -p .deps/include
[[ -d .deps/include/nlohmann ]] || cp -r /usr/include/nlohmann .deps/include/
[[ -d .deps/include/CLI ]] || cp -r /usr/include/CLI .deps/include/
[[ -d .deps/googletest ]] || cp -r /usr/src/googletest .deps/googletest
echo "setup: ok"
