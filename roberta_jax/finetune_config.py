"""The fine-tuning config: every field, with its default and meaning, in one place.

`configs/finetune.py` (and `configs/glue.py`, the name earlier versions shipped) is
`default_config()`; `train_config.load_config` reads it and applies `--config.FIELD=value`
overrides. `check_finetune_config` refuses, in one line each, values that would otherwise fail
deep inside a run. A workdir records the settings it was started with (finetune.py); only the
FREE_TO_CHANGE fields may differ when it resumes.

Recipes: 0 for lr / batch_size / epochs / max_length, a negative weight_decay and () for seeds
take the task's own (roberta_jax/tasks.py): the published recipe for GLUE, SQuAD, CoNLL-2003
and RACE, and for local files one scaled to the model's width.
"""

from __future__ import annotations

import ml_collections

from roberta_jax.errors import UserError
from roberta_jax.train_config import FLOAT_DTYPES


def default_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()

    # ---------------------------------------------------------------- task and model
    # GLUE: cola sst2 mrpc qqp stsb mnli qnli rte wnli; squad1 squad2; conll2003;
    # race race-middle race-high; or "local" (your files, configured below).
    c.task = "sst2"
    # Weights to start from, any source weights.py reads: a Hugging Face directory, a fairseq
    # model.pt, an export, a pretraining workdir (its encoder, a new head) or a fine-tuning
    # workdir (its best model). "" trains model_preset from scratch.
    c.init = ""
    c.tokenizer = ""                    # "" = the one beside init (or in the pretraining workdir)
    c.model_preset = "roberta-base"     # architecture when init is "" (a config.PRESETS name)
    # init already has this task's head with other labels: train a fresh head on its encoder
    # instead of refusing. (With the same label count the head is kept and trained further.)
    c.reset_head = False
    # () = the task's: 5 for published tasks (the paper reports the median over 5 seeds of the
    # best dev score), 1 for local files. Each seed trains in its own seed<N>/ directory.
    c.seeds = ()

    # ---------------------------------------------------------------- optimizer (AdamW)
    c.lr = 0.0                          # peak learning rate; 0 = the task's recipe
    c.batch_size = 0                    # examples per step, over all devices; 0 = the task's
    c.epochs = 0                        # 0 = the task's
    c.warmup_ratio = 0.06               # linear warmup over this share of the steps, then
                                        # linear decay to 0
    c.weight_decay = -1.0               # negative = the task's (0.1 for GLUE, fairseq's)
    c.weight_decay_mask = "hf"          # "hf": not biases / LayerNorm; "all": fairseq's
    c.b2 = 0.98                         # Adam's beta2 (beta1 is 0.9)
    c.eps = 1e-6                        # Adam's epsilon
    c.clip_norm = 0.0                   # global gradient-norm clipping; 0 = none

    # ---------------------------------------------------------------- inputs and compute
    c.max_length = 0                    # tokens per input; 0 = the task's (512; 384 for SQuAD),
                                        # always capped by the model's positions
    c.dtype = "float32"                 # compute dtype ("bfloat16" on accelerators)
    # Several examples to a row (segment ids keep them apart): "auto" packs when that computes
    # at most 90% of the positions padded batches would; "on"; "off" (padded to length buckets).
    c.packing = "auto"
    # "eager", "jax" (jax.nn.dot_product_attention) or "cudnn" (its fused GPU kernel). The fused
    # kernels have no attention dropout: training with it (the recipes' 0.1) stays eager, and
    # evaluation and prediction use them.
    c.attention_implementation = "eager"
    c.tfds_data_dir = ""                # where tfds finds published datasets ("" = its default)
    c.progress = True                   # a progress bar over the steps of each seed

    # ---------------------------------------------------------------- extractive QA (SQuAD)
    c.stride = 128                      # tokens shared by consecutive windows of a long passage
    c.max_query_length = 64             # question tokens kept
    c.n_best = 20                       # candidate starts / ends considered per window
    c.max_answer_length = 30            # longest answer span, in tokens
    c.null_threshold = 0.0              # v2: answer "" when null score - best span score
                                        # exceeds this (may change between runs: decoding only)

    # ---------------------------------------------------------------- task=local: your files
    # Kinds: classification (jsonl / tsv / csv with a header), tokens (CoNLL text, or jsonl
    # {"tokens", "ner_tags"}), qa (SQuAD json or jsonl), choice (jsonl {"context", "question",
    # "choices", "label"}).
    c.kind = "classification"
    c.train_file = ""                   # required for task=local
    c.eval_file = ""                    # dev set: scored every epoch, picks the best epoch
    c.test_file = ""                    # predicted (and scored, if it has labels) by the best
    c.text_field = "text"               # the column / key holding the input text
    c.pair_field = ""                   # a second text (sentence pairs); "" = none
    c.label_field = "label"             # the column / key holding the label
    c.regression = False                # classification kind: float targets (MSE, Pearson)
    return c


# Settings that may change between runs in one workdir: another seed list only adds or skips
# seed directories; the others change what is shown, where tfds looks, or SQuAD v2's decoding of
# the test predictions. Any other change would mix two experiments in one set of checkpoints.
FREE_TO_CHANGE = ("seeds", "progress", "tfds_data_dir", "null_threshold")
# Settings naming files: a workdir records them absolute, so a resume from another directory
# compares the same files.
PATH_SETTINGS = ("init", "tokenizer", "train_file", "eval_file", "test_file")
# 0 means "the task's recipe" for these (and a negative weight_decay).
RECIPE_DEFAULTS = ("lr", "batch_size", "epochs", "max_length")


def check_finetune_config(config) -> None:
    """One line for each value a fine-tuning run cannot use, before anything starts."""
    if "task" not in config or "model" in config:
        raise UserError("not a fine-tuning config (it has no task field); use finetune (or "
                        "glue), or a file built on finetune_config.default_config()")
    if config.dtype not in FLOAT_DTYPES:
        raise UserError(f"dtype={config.dtype!r} is not one of {', '.join(FLOAT_DTYPES)}")
    if not all(isinstance(s, int) for s in config.seeds):
        raise UserError(f"seeds={config.seeds!r}: give whole numbers, e.g. --config.seeds='(1, 2)'")
    for key in RECIPE_DEFAULTS:
        if config[key] < 0:
            raise UserError(f"{key}={config[key]!r}: must not be negative (0 = the task's recipe)")
