"""The pretraining config: every field, with its default and meaning, in one place.

`configs/*.py` start from `default_config()` and change what their model or recipe needs;
`load_config` reads such a file (a path, or the name of one shipped with the package: `base`;
fine-tuning's too, built on finetune_config.py) and applies `--config.a.b=value` overrides from
the command line. `check_pretrain_config` refuses, in one line each, values that would otherwise
fail deep inside a run or be taken for something else.
"""

from __future__ import annotations

import ast
import importlib.util
import pathlib

import ml_collections

from roberta_jax.errors import UserError


def default_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()

    c.model = m = ml_collections.ConfigDict()
    m.vocab_size = -1                   # -1: the prepared data's tokenizer decides
    m.vocab_multiple = 128              # embedding rows padded to a multiple (unpadded on export)
    m.hidden_size = 768
    m.num_hidden_layers = 12
    m.num_attention_heads = 12
    m.intermediate_size = 3072
    m.max_position_embeddings = 514     # 512 tokens + RoBERTa's position offset
    m.hidden_act = "gelu"
    m.hidden_dropout_prob = 0.1
    m.attention_probs_dropout_prob = 0.1
    m.layer_norm_eps = 1e-5
    m.dtype = "bfloat16"                # compute dtype; parameters stay in param_dtype
    m.param_dtype = "float32"
    # One compiled layer under nn.scan: compiles in a fraction of the time, whatever the depth.
    # False unrolls the layers: on CPU about 12% faster per step (BENCHMARKS.md), slower to compile.
    m.scan_layers = True
    m.remat_policy = ""                 # "", "full", or a jax.checkpoint_policies name
    m.attention_implementation = "eager"  # or "jax" / "cudnn": jax.nn.dot_product_attention
    m.init_from = ""                    # start from these weights: HF dir, fairseq, export,
                                        # or another pretraining workdir (its newest step)
    # In a packed row each document attends only to itself, its positions counted from its
    # own start (segment ids from the </s> that ends each document). BENCHMARKS.md: 0.033 nats
    # lower held-out loss on the demo corpus, 0.024 higher on bench_quality's (small runs).
    # False attends across documents, as the paper did.
    m.document_attention = True

    c.data = d = ml_collections.ConfigDict()
    d.path = ""                         # a directory written by `roberta-jax prepare`
    d.eval_path = ""                    # held-out prepared directory ("" = no evaluation)
    d.packing = "full-sentences"        # "full-sentences" | "doc-sentences" | "none"
    d.mask_prob = 0.15
    d.masking = "token"                 # "token" | "word" (whole words) | "span"

    c.train = t = ml_collections.ConfigDict()
    t.steps = 500_000
    t.batch_size = 8192                 # global, in sequences, summed over all processes
    t.seq_len = 512
    t.seed = 0
    t.lr = 6e-4                         # peak learning rate
    t.end_lr = 0.0
    t.warmup_steps = 24_000
    t.schedule = "linear"               # "linear" | "cosine" | "constant" after warmup
    t.b1 = 0.9
    t.b2 = 0.98
    t.eps = 1e-6
    t.weight_decay = 0.01
    t.weight_decay_mask = "hf"          # "hf": not biases / LayerNorm; "all": fairseq's
    t.clip_norm = 0.0                   # 0: no clipping (the paper's recipe)
    t.grad_accum = 1                    # micro-batches per step (batch_size must divide)
    t.log_every = 50
    t.nonfinite = "skip"                # NaN/Inf loss or grads: "skip" the update | "stop"
    t.spike_threshold = 0.0             # >0: skip steps whose loss is this many std above its
                                        # running mean (after 100 steps); 0 = off

    c.eval = e = ml_collections.ConfigDict()
    e.every_steps = 1000
    e.batches = 20

    c.checkpoint = k = ml_collections.ConfigDict()
    k.every_steps = 1000
    k.keep = 3                          # newest checkpoints kept
    k.keep_period = 0                   # also keep every K-th step for good (0 = none)
    k.async_save = True

    c.mesh = s = ml_collections.ConfigDict()
    s.data = -1                         # -1: all devices not used by fsdp x tensor
    s.fsdp = 1
    s.tensor = 1
    s.dcn_data = 1                      # slices / nodes along data (multislice, GPU clusters)
    # Logical axis (the names model.py gives parameters and activations) -> mesh axes, in order
    # of precedence; a name listed nowhere is replicated. Every name must be one the model uses
    # (checked before a run starts: sharding.check_logical_rules).
    s.logical_rules = (
        ("batch", ("data", "fsdp")),    # examples: split over both batch axes
        ("embed", "fsdp"),              # hidden width of every weight: what FSDP shards
        ("mlp", "tensor"),              # FFN (and pooler) width: split for tensor parallelism
        ("joined_kv", "tensor"),        # attention's query / key / value outputs, all heads
        ("vocab", "tensor"),            # the embedding table and MLM logits, by vocabulary
        ("norm", None),                 # LayerNorm scales and biases: small, replicated
        ("layers", None),               # the stacked layer axis of scan_layers: replicated
        ("length", None),               # sequence positions of activations: never split
        ("positions", None),            # the position embedding table's rows
        ("token_types", None),          # the token-type embedding table's rows
        ("labels", None),               # classifier heads' outputs
    )

    c.distributed = r = ml_collections.ConfigDict()
    r.coordinator_address = ""          # "" = auto-detect (TPU pods, SLURM) or single process
    r.num_processes = 0
    r.process_id = -1
    r.preemption_check_every = 10       # several processes: every N steps they agree whether a
                                        # SIGTERM / Ctrl-C reached any of them (a tiny all-reduce)

    c.peak_flops = 0.0                  # per device, for MFU; 0 = known chip table or measured
    return c


# Fields that define a run: the checkpoint's shapes, the data stream (path, seed, packing,
# masking) and the attention; a workdir refuses a config that changes any (a resume would mix
# two experiments).
STATE_DEFINING = ("model.vocab_size", "model.vocab_multiple", "model.hidden_size",
                  "model.num_hidden_layers", "model.num_attention_heads",
                  "model.intermediate_size", "model.max_position_embeddings",
                  "model.param_dtype", "train.weight_decay_mask", "train.clip_norm",
                  "data.path", "train.batch_size", "train.seq_len", "train.seed",
                  "data.packing", "data.mask_prob", "data.masking",
                  "model.document_attention")


def config_dir() -> pathlib.Path:
    """The shipped configs: `roberta_jax/configs/` in an installed package (setup.py puts the
    clone's top-level `configs/` there), the clone's own `configs/` when run from a checkout."""
    package = pathlib.Path(__file__).resolve().parent
    installed = package / "configs"
    return installed if installed.is_dir() else package.parent / "configs"


def shipped_configs() -> list[str]:
    """Names `--config` takes besides paths: tiny, base, large, xlmr_base, finetune, glue."""
    return sorted(p.stem for p in config_dir().glob("*.py") if not p.stem.startswith("_"))


def resolve_config(name_or_path: str) -> pathlib.Path:
    """A config file: the path given, or else the shipped config of that name (`base`,
    `base.py`)."""
    file = pathlib.Path(name_or_path).expanduser()
    if file.is_file():
        return file
    name = name_or_path[:-3] if name_or_path.endswith(".py") else name_or_path
    if name in shipped_configs():
        return config_dir() / f"{name}.py"
    names = ", ".join(shipped_configs())
    hint = f" (the shipped config of that name is --config {file.stem})" \
        if file.stem in shipped_configs() else ""
    raise UserError(f"{name_or_path}: no such config file{hint}; give a path to a .py config "
                    f"or one of the shipped configs: {names}")


def load_config(path: str, overrides: list[str] = ()) -> ml_collections.ConfigDict:
    """Run the config file's get_config() (`path`, or a shipped config's name), then apply
    overrides like `--config.train.steps=100`."""
    file = resolve_config(path)
    spec = importlib.util.spec_from_file_location(f"roberta_jax_config_{file.stem}", file)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except SyntaxError as e:
        raise UserError(f"{path}:{e.lineno}: not valid Python ({e.msg})") from None
    if not hasattr(module, "get_config"):
        raise UserError(f"{path}: has no get_config()")
    config = module.get_config()
    for override in overrides:
        apply_override(config, override)
    return config


def apply_override(config, override: str) -> None:
    if not override.startswith("--config.") or "=" not in override:
        raise UserError(f"{override}: overrides look like --config.train.steps=100")
    key, raw = override[len("--config."):].split("=", 1)
    *parents, leaf = key.split(".")
    node = config
    for i, name in enumerate(parents):
        if name not in node or not isinstance(node[name], ml_collections.ConfigDict):
            raise UserError(f"unknown config key {'.'.join(parents[:i + 1])} in {override}")
        node = node[name]
    if leaf not in node:
        raise UserError(f"unknown config key {key}; {'.'.join(parents) or 'the config'} has "
                        f"{', '.join(sorted(node.keys()))}")
    current = node[leaf]
    try:
        value = _parse_like(raw, current)
        node[leaf] = value
    except (ValueError, SyntaxError, TypeError):
        example = " like (1, 2)" if isinstance(current, tuple) else ""
        raise UserError(f"{override}: {raw!r} is not a valid {type(current).__name__}"
                        f"{example}") from None


def _parse_like(raw: str, current):
    if isinstance(current, bool):
        if raw.lower() in ("true", "1", "yes"):
            return True
        if raw.lower() in ("false", "0", "no"):
            return False
        raise ValueError(raw)
    if isinstance(current, int):
        return int(float(raw)) if "e" in raw.lower() else int(raw)
    if isinstance(current, float):
        return float(raw)
    if isinstance(current, str):
        return raw
    value = ast.literal_eval(raw)
    if isinstance(current, tuple) and isinstance(value, (int, float, str)):
        return (value,)   # --config.seeds=3 means (3,)
    if isinstance(current, tuple) and isinstance(value, list):
        return tuple(value)
    return value


# ----------------------------------------------------------------------------------- checks

FLOAT_DTYPES = ("float32", "bfloat16", "float16")
NONFINITE_ACTIONS = ("skip", "stop")


def check_pretrain_config(config) -> None:
    """One line for each value a pretraining run cannot use, before anything starts."""
    from roberta_jax.model import REMAT_POLICIES
    if not all(section in config for section in ("model", "data", "train", "eval", "checkpoint")):
        raise UserError("not a pretraining config (it has no model / data / train sections); "
                        "use tiny, base, large or xlmr_base, or a file built on default_config()")
    m, t = config.model, config.train
    _check_choice("model.dtype", m.dtype, FLOAT_DTYPES)
    _check_choice("model.param_dtype", m.param_dtype, FLOAT_DTYPES)
    _check_choice("model.remat_policy", m.remat_policy, ("",) + REMAT_POLICIES,
                  "\"\" (none), " + ", ".join(REMAT_POLICIES))
    _check_choice("train.nonfinite", t.nonfinite, NONFINITE_ACTIONS)
    if "mesh" in config and "logical_rules" in config.mesh:
        from roberta_jax.sharding import check_logical_rules
        check_logical_rules(config.mesh.logical_rules)
    for key, hint in (("train.log_every", ""), ("train.grad_accum", ""),
                      ("eval.every_steps", " (leave data.eval_path empty to skip evaluation)"),
                      ("eval.batches", " (leave data.eval_path empty to skip evaluation)"),
                      ("checkpoint.every_steps", " (the last step is always saved too)")):
        section, field = key.split(".")
        value = config[section][field]
        if not isinstance(value, int) or value < 1:
            raise UserError(f"{key}={value!r}: must be a whole number of at least 1{hint}")


def _check_choice(key: str, value, choices, described: str | None = None) -> None:
    if value not in choices:
        raise UserError(f"{key}={value!r} is not one of {described or ', '.join(choices)}")

