#!/usr/bin/env bash
# The README's first command: set up .venv (first run only), then on spoken digit strings synthesised by
# eSpeak NG voices (manifests.spoken_corpus, known transcripts) pre-train data2vec, fine-tune it with CTC and
# decode utterances of held-out speakers with fairseq-generate, printing its WER. Runs on CPU in minutes.
# Each run writes a new folder under demo_output/ (override with DEMO_DIR=...).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
PY=.venv/bin/python
BIN=.venv/bin
OUT=${DEMO_DIR:-demo_output/$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
USER_DIR=$PWD/d2v_plugin
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}

echo "== 1/5 synthesising spoken digit strings in $OUT/audio (train speakers; test: held-out speakers)"
$PY -m manifests.spoken_corpus "$OUT/audio/train" --num-utts 600 --seed 1 --speakers train --text digits
$PY -m manifests.spoken_corpus "$OUT/audio/test" --num-utts 60 --seed 2 --speakers heldout --text digits

echo "== 2/5 manifests (train/valid/test) and letter labels in $OUT/data"
$PY -m manifests.audio_manifest "$OUT/audio/train" --dest "$OUT/data" --ext wav --valid-percent 0.1 --seed 1
$PY -m manifests.audio_manifest "$OUT/audio/test" --dest "$OUT/data" --ext wav --valid-percent 0 --train-name test
$PY -m manifests.labels "$OUT/data" --transcripts "$OUT/audio/train/transcripts.tsv" "$OUT/audio/test/transcripts.tsv"

echo "== 3/5 data2vec pre-training (examples/audio/pretraining/tiny_cpu.yaml)"
$BIN/fairseq-hydra-train --config-dir examples/audio/pretraining --config-name tiny_cpu \
  common.user_dir="$USER_DIR" task.data="$OUT/data" \
  checkpoint.save_dir="$OUT/pretrain" hydra.run.dir="$OUT/pretrain/logs"

echo "== 4/5 CTC fine-tuning (examples/audio/finetuning/tiny_cpu.yaml)"
$BIN/fairseq-hydra-train --config-dir examples/audio/finetuning --config-name tiny_cpu \
  common.user_dir="$USER_DIR" task.data="$OUT/data" model.w2v_path="$OUT/pretrain/checkpoint_last.pt" \
  checkpoint.save_dir="$OUT/finetune" hydra.run.dir="$OUT/finetune/logs"

echo "== 5/5 decoding the held-out speakers' test split with fairseq-generate"
$BIN/fairseq-generate "$OUT/data" --user-dir "$USER_DIR" --task audio_ctc \
  --path "$OUT/finetune/checkpoint_best.pt" --gen-subset test --labels ltr \
  --post-process letter --scoring wer_ler --max-tokens 400000 --results-path "$OUT/decode"
grep -E '^[TD]-' "$OUT/decode/generate-test.txt" | head -n 6
tail -n 1 "$OUT/decode/generate-test.txt"
echo "== done: every hypothesis is in $OUT/decode/generate-test.txt"
