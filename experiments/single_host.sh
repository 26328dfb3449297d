#!/usr/bin/env bash
# Pretrain on one machine (all its GPUs, or the CPU), from raw text to a Hugging Face export.
#   bash experiments/single_host.sh CORPUS_GLOB WORKDIR [CONFIG]
# e.g. bash experiments/single_host.sh 'data/*.txt' runs/base configs/base.py
set -euo pipefail
corpus=${1:?corpus files or glob}; workdir=${2:?workdir}; config=${3:-configs/base.py}
mkdir -p "$workdir"
[ -d "$workdir/tokenizer" ] || roberta-jax train-tokenizer --input $corpus --vocab-size 50265 \
    --type bpe --output "$workdir/tokenizer"
roberta-jax prepare --input $corpus --tokenizer "$workdir/tokenizer" --output "$workdir/prepared"
roberta-jax pretrain --config "$config" --workdir "$workdir/run" \
    --config.data.path="$workdir/prepared" "${@:4}"
roberta-jax export --workdir "$workdir/run" --output "$workdir/hf"
