"""Fine-tuning: GLUE (tfds `glue/*`), SQuAD v1.1 / v2.0, CoNLL-2003 NER, RACE, or local files.
Each task's published recipe is its default (roberta_jax/tasks.py): for GLUE fairseq's
README.glue (LR 1e-5, RTE and STS-B 2e-5; batch 32 for MNLI, QNLI, QQP, SST-2, else 16;
10 epochs, 6% warmup then linear decay, weight decay 0.1, Adam (0.9, 0.98, 1e-6)), and the
median over 5 seeds of the best dev score is reported, as the paper does. Local files have no
published recipe: theirs scales with the model (LR 2e-5 x (768 / hidden_size)^1.5, at most
1e-3; batch 16, 10 epochs, weight decay 0.01, one seed).

    roberta-jax finetune --config glue --config.task=rte \
        --config.init=roberta.large/ --workdir runs/rte --config.tfds_data_dir=~/tensorflow_datasets
    roberta-jax finetune --config glue --config.task=squad2 --config.init=roberta.base/ \
        --workdir runs/squad2 --config.seeds='(1,)'
    # local files: jsonl / tsv / csv with a header
    roberta-jax finetune --config glue --config.task=local \
        --config.train_file=train.jsonl --config.eval_file=dev.jsonl --config.init=model/ \
        --workdir runs/mine
    roberta-jax finetune --config glue --config.task=local --config.kind=tokens \
        --config.train_file=train.conll --config.eval_file=dev.conll --config.init=model/ \
        --workdir runs/ner

A workdir keeps the settings it was started with (finetune_config.json): re-running resumes
each seed from its last finished epoch, and other settings are refused (only seeds, progress,
tfds_data_dir and null_threshold may change).
"""

import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.task = "sst2"              # GLUE: cola sst2 mrpc qqp stsb mnli qnli rte wnli; squad1 squad2;
    #                              conll2003; race race-middle race-high; or local (files, below)
    c.init = ""                  # Hugging Face dir / fairseq model.pt / export / pretraining workdir
    c.tokenizer = ""             # "" = the one beside init
    c.model_preset = "roberta-base"   # architecture when init is "" (training from scratch)
    c.reset_head = False         # init has this head with other labels: train a new one instead
    c.seeds = ()                 # () = the task's: 5 for published tasks (the paper reports the
    #                              median over 5 seeds), 1 for local files
    # 0 (or a negative weight decay) = the task's recipe (see roberta_jax/tasks.py): the
    # published one, or for local files one scaled to the model's width
    c.lr = 0.0
    c.batch_size = 0
    c.epochs = 0
    c.warmup_ratio = 0.06
    c.weight_decay = -1.0
    c.weight_decay_mask = "hf"   # "hf": not biases / LayerNorm; "all": fairseq's
    c.b2 = 0.98
    c.eps = 1e-6
    c.clip_norm = 0.0
    c.max_length = 0             # 0 = the task's (512; 384 for SQuAD), capped by the model
    c.dtype = "float32"          # compute dtype ("bfloat16" on accelerators)
    # Several examples to a row (segment ids keep them apart; DESIGN B6): "auto" packs when
    # that computes at most 90% of the positions padded batches would; "on"; "off".
    c.packing = "auto"
    # "eager", "jax" (jax.nn.dot_product_attention) or "cudnn" (its fused GPU kernel). The fused
    # kernels have no attention dropout: training with it (the recipes' 0.1) stays eager, and
    # evaluation and prediction use them.
    c.attention_implementation = "eager"
    c.tfds_data_dir = ""
    c.progress = True            # a progress bar over the steps of each seed
    # extractive QA (SQuAD)
    c.stride = 128               # tokens shared by consecutive windows of a long passage
    c.max_query_length = 64
    c.n_best = 20                # candidate starts / ends considered per window
    c.max_answer_length = 30     # tokens
    c.null_threshold = 0.0       # v2: answer "" when null score - best span score exceeds this
    # task=local: the files, their kind and columns. Kinds: classification (jsonl / tsv / csv),
    # tokens (CoNLL text or jsonl {"tokens", "ner_tags"}), qa (SQuAD json or jsonl),
    # choice (jsonl {"context", "question", "choices", "label"})
    c.kind = "classification"
    c.train_file = ""
    c.eval_file = ""
    c.test_file = ""
    c.text_field = "text"
    c.pair_field = ""
    c.label_field = "label"
    c.regression = False
    return c
