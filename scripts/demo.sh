#!/usr/bin/env bash
# Sets up (idempotent) and runs S3 on the imdb task with the embedded models: no network, no GPU,
# no API key. About 5 minutes on 2 cores after set-up. Re-running resumes / reprints the results.
# --final-train synthetic: the paper's method, so that the printed accuracies measure the synthetic data
# alone (the default, auto, adds the 210 real mining reviews to the final model).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
DATA=${S3_DATA:-../shared/data/s3_release}
exec .venv/bin/s3synth run --task imdb \
  --gold-eval "$DATA/imdb_round1.jsonl" --max-gold-eval 300 \
  --test "$DATA/imdb_round2.jsonl" --max-test 500 \
  --llm embedded --learner minilm --seed-size 100 --rounds 2 --seed 0 \
  --final-train synthetic \
  --out "${1:-runs/demo}"
