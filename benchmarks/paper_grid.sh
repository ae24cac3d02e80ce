#!/usr/bin/env bash
# The paper's comparison (Table 2 layout) with the embedded models, at a size that fits a session on
# 2 cores: S3 against ZeroGen, seed-only, GoldGen and the gold data, 3 seeds, on imdb (the authors'
# released GPT-3.5 reviews stand in for IMDb, as in the demo) and QNLI (../shared/data/qnli).
# Learner: `fast` (frozen MiniLM-L6 + logistic regression), so that generation, not training, sets the
# pace. About an hour. Resumable: run it again after an interruption. Tables: runs/grid-*/bench.md and
# report.html. Run nothing else that uses llama.cpp or torch meanwhile: two processes with 2 threads
# each on 2 cores make both several times slower (spinning thread barriers).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${S3_DATA:-../shared/data}
S=.venv/bin/s3synth
common=(--llm embedded --learner fast --seed-size "${SEED_SIZE:-100}" --rounds 2 --seed 0
        --max-gold-eval 300 --max-test 1000)
imdb=(--task imdb --gold-eval "$DATA/s3_release/imdb_round1.jsonl" --test "$DATA/s3_release/imdb_round2.jsonl")
qnli=(--task qnli --gold-eval "$DATA/qnli/eval.jsonl" --test "$DATA/qnli/test.jsonl")
methods=(--methods s3,zerogen,seed-only,goldgen,gold --seeds 3)
"$S" bench "${imdb[@]}" "${common[@]}" "${methods[@]}" --out runs/grid-imdb
"$S" bench "${qnli[@]}" "${common[@]}" "${methods[@]}" --out runs/grid-qnli
