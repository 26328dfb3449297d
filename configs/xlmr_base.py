"""xlm-roberta-base: roberta-base's shape with a 250k sentencepiece vocabulary (XLM-R layout:
fairseq ids, <mask> last). Prepare the corpus with an XLM-R sentencepiece.bpe.model (or one from
`roberta-jax train-tokenizer --type sentencepiece --vocab-size 250002`).

    roberta-jax pretrain --config xlmr_base --workdir W --config.data.path=prepared/
"""

from roberta_jax.train_config import default_config


def get_config():
    c = default_config()
    c.model.vocab_size = 250_002        # padded internally to a multiple of 128
    c.train.lr = 6e-4
    c.train.warmup_steps = 24_000
    c.mesh.fsdp = -1                    # 192M embedding parameters: shard them
    c.mesh.data = 1
    return c
