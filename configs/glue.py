"""Fine-tuning on GLUE (tfds `glue/*`) or on local files, with fairseq's recipe (README.glue)
as each task's default: LR 1e-5 (RTE, STS-B 2e-5), batch 32 (MNLI, QNLI, QQP, SST-2) or 16,
10 epochs, 6% warmup then linear decay, weight decay 0.1, Adam (0.9, 0.98, 1e-6); the median
over seeds of the best dev score, as the paper reports.

    roberta-jax finetune --config configs/glue.py --config.task=rte \
        --config.init=roberta.large/ --workdir runs/rte --config.tfds_data_dir=~/tensorflow_datasets
    # local files: jsonl / tsv / csv with a header
    roberta-jax finetune --config configs/glue.py --config.task=local \
        --config.train_file=train.jsonl --config.eval_file=dev.jsonl --config.init=model/ \
        --workdir runs/mine
"""

import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.task = "sst2"              # a GLUE task (cola sst2 mrpc qqp stsb mnli qnli rte wnli) or local
    c.init = ""                  # Hugging Face dir / fairseq model.pt / export / pretraining workdir
    c.tokenizer = ""             # "" = the one beside init
    c.model_preset = "roberta-base"   # architecture when init is "" (training from scratch)
    c.seeds = (1, 2, 3, 4, 5)    # the paper reports the median over 5 seeds
    c.lr = 0.0                   # 0 = the task's fairseq default
    c.batch_size = 0             # 0 = the task's fairseq default
    c.epochs = 10
    c.warmup_ratio = 0.06
    c.weight_decay = 0.1
    c.weight_decay_mask = "hf"   # "hf": not biases / LayerNorm; "all": fairseq's
    c.b2 = 0.98
    c.eps = 1e-6
    c.clip_norm = 0.0
    c.max_length = 512
    c.dtype = "float32"          # compute dtype ("bfloat16" on accelerators)
    c.tfds_data_dir = ""
    # task=local: the files and their columns
    c.train_file = ""
    c.eval_file = ""
    c.test_file = ""
    c.text_field = "text"
    c.pair_field = ""
    c.label_field = "label"
    c.regression = False
    return c
