"""Fine-tuning task definitions: where the data is, what kind of head it needs, its official
metrics and its published recipe.

Kinds (see `task_kinds.py`): "classification" (one label or score per sentence / pair),
"tokens" (a tag per word, NER), "qa" (an answer span, SQuAD), "choice" (multiple choice).

Recipes: GLUE is fairseq's README.glue (LR 1e-5, 2e-5 for RTE and STS-B; batch 32 for
MNLI/QNLI/QQP/SST-2, else 16; 10 epochs, 6% warmup, weight decay 0.1). RACE is fairseq's
README.race (LR 1e-5, batch 16, 5 epochs, weight decay 0.01, 512 tokens). SQuAD follows Hugging
Face's run_qa example (LR 3e-5, batch 12, 2 epochs, 384 tokens, windows overlapping by 128), and
CoNLL-2003 its run_ner defaults (LR 5e-5, 3 epochs) with batch 32; fairseq publishes neither.

Local files have no published recipe, and the model may be anything from a width-64 model
pretrained for minutes to roberta-large, so theirs scales with the model: LR
2e-5 x (768 / hidden_size)^1.5, at most 1e-3 (2e-5 for roberta-base, 1.3e-5 for large, 8.3e-4 at
width 64, where GLUE's 1e-5 leaves a small model at chance), batch 16, 10 epochs, weight decay
0.01, one seed.
"""

from __future__ import annotations

import dataclasses

from roberta_jax.data import squad

KINDS = ("classification", "tokens", "qa", "choice")


@dataclasses.dataclass(frozen=True)
class Task:
    name: str
    kind: str                        # one of KINDS
    source: str                      # "tfds:glue/sst2" or a local file path
    text_field: str = "text"
    pair_field: str | None = None
    label_field: str = "label"
    labels: tuple[str, ...] | None = None   # None: read from the data; () for regression
    metrics: tuple[str, ...] = ("accuracy",)  # the first one picks the best epoch
    lr: float | None = 1e-5                 # None: scaled to the model (local files)
    batch_size: int = 16
    epochs: int = 10
    weight_decay: float = 0.1
    max_length: int = 512
    eval_splits: tuple[str, ...] = ("validation",)
    test_splits: tuple[tuple[str, str], ...] = (("test", ""),)   # (split, predictions file)
    files: tuple[tuple[str, str], ...] = ()   # local tasks: split -> file
    seeds: tuple[int, ...] = (1, 2, 3, 4, 5)  # the paper reports the median over 5 seeds

    def where(self, split: str) -> tuple[str, str]:
        """(source to read, split name within it) of a split."""
        files = dict(self.files)
        return (files[split], "train") if split in files else (self.source, split)

    @property
    def regression(self) -> bool:
        return self.labels == ()

    def learning_rate(self, hidden_size: int) -> float:
        """The recipe's peak learning rate for a model of this width."""
        return self.lr if self.lr is not None else scaled_learning_rate(hidden_size)


def scaled_learning_rate(hidden_size: int) -> float:
    """Local files' default: 2e-5 at roberta-base's width, 1.3e-5 at large's (GLUE's recipes
    use 1e-5 to 2e-5 there), and larger steps for narrower models, as in pretraining
    (configs/tiny.py takes 3e-3 where base takes 6e-4); at most 1e-3."""
    return min(1e-3, 2e-5 * (768 / hidden_size) ** 1.5)


# Local files' recipe (lr None: scaled_learning_rate), and the same in words for the help.
LOCAL_DEFAULTS = dict(lr=None, batch_size=16, epochs=10, weight_decay=0.01, seeds=(1,))
LOCAL_RECIPE = (f"LR 2e-5 x (768 / hidden_size)^1.5, at most 1e-3 (8.3e-4 at width 64, 2e-5 for "
                f"roberta-base), batch {LOCAL_DEFAULTS['batch_size']}, "
                f"{LOCAL_DEFAULTS['epochs']} epochs, weight decay "
                f"{LOCAL_DEFAULTS['weight_decay']}, {len(LOCAL_DEFAULTS['seeds'])} seed")


def _glue(name, text, pair, labels, metrics, submission, lr=1e-5, batch=16,
          eval_splits=("validation",), test_splits=None):
    return Task(name, "classification", f"tfds:glue/{name}", text, pair, "label", labels,
                metrics, lr, batch, eval_splits=eval_splits,
                test_splits=test_splits or (("test", submission),))


NLI3 = ("entailment", "neutral", "contradiction")
NLI2 = ("entailment", "not_entailment")
BINARY = ("0", "1")

GLUE = {t.name: t for t in (
    _glue("cola", "sentence", None, BINARY, ("mcc",), "CoLA.tsv"),
    _glue("sst2", "sentence", None, BINARY, ("accuracy",), "SST-2.tsv", batch=32),
    _glue("mrpc", "sentence1", "sentence2", BINARY, ("accuracy", "f1"), "MRPC.tsv"),
    _glue("qqp", "question1", "question2", BINARY, ("accuracy", "f1"), "QQP.tsv", batch=32),
    _glue("stsb", "sentence1", "sentence2", (), ("pearson", "spearman"), "STS-B.tsv", lr=2e-5),
    _glue("mnli", "premise", "hypothesis", NLI3, ("accuracy",), "", batch=32,
          eval_splits=("validation_matched", "validation_mismatched"),
          test_splits=(("test_matched", "MNLI-m.tsv"), ("test_mismatched", "MNLI-mm.tsv"))),
    _glue("qnli", "question", "sentence", NLI2, ("accuracy",), "QNLI.tsv", batch=32),
    _glue("rte", "sentence1", "sentence2", NLI2, ("accuracy",), "RTE.tsv", lr=2e-5),
    _glue("wnli", "sentence1", "sentence2", BINARY, ("accuracy",), "WNLI.tsv"),
)}

OTHERS = {t.name: t for t in (
    Task("squad1", "qa", "tfds:squad/v1.1", metrics=("f1", "exact_match"), lr=3e-5,
         batch_size=12, epochs=2, weight_decay=0.01, max_length=squad.MAX_LENGTH,
         test_splits=()),
    Task("squad2", "qa", "tfds:squad/v2.0", metrics=("f1", "exact_match"), lr=3e-5,
         batch_size=12, epochs=2, weight_decay=0.01, max_length=squad.MAX_LENGTH,
         test_splits=()),
    Task("conll2003", "tokens", "tfds:conll2003", text_field="tokens", label_field="ner",
         metrics=("f1", "precision", "recall"), lr=5e-5, batch_size=32, epochs=3,
         weight_decay=0.01, test_splits=(("test", "test_predictions.conll"),)),
    *(Task(name, "choice", source, metrics=("accuracy",), lr=1e-5, batch_size=16, epochs=5,
           weight_decay=0.01, eval_splits=("dev",),
           test_splits=(("test", "test_predictions.jsonl"),))
      # The paper reports RACE as middle and high school together.
      for name, source in (("race", "tfds:race/middle+race/high"),
                           ("race-middle", "tfds:race/middle"), ("race-high", "tfds:race/high"))),
)}

# Tasks known by name (--config.task); model heads are model.HEADS.
NAMED_TASKS = {**GLUE, **OTHERS}

DEFAULT_METRICS = {"classification": ("accuracy",), "tokens": ("f1", "precision", "recall"),
                   "qa": ("f1", "exact_match"), "choice": ("accuracy",)}
PREDICTION_FILES = {"classification": "predictions.tsv", "tokens": "predictions.conll",
                    "qa": "predictions.json", "choice": "predictions.jsonl"}


def local_task(kind: str, train_file: str, eval_file: str = "", test_file: str = "",
               text_field: str = "text", pair_field: str | None = None,
               label_field: str = "label", regression: bool = False) -> Task:
    """A task from local files: jsonl / tsv / csv (classification), CoNLL text or jsonl
    (tokens), SQuAD json or jsonl (qa), jsonl (choice)."""
    from roberta_jax.errors import UserError
    if kind not in KINDS:
        raise UserError(f"unknown kind {kind!r}; choose one of {', '.join(KINDS)}")
    files = {"train": train_file, "dev": eval_file, "test": test_file}
    metrics = DEFAULT_METRICS[kind]
    if kind == "classification" and regression:
        metrics = ("pearson", "spearman")
    return Task("local", kind, train_file, text_field, pair_field or None, label_field,
                () if regression else None, metrics, eval_splits=("dev",) if eval_file else (),
                test_splits=(("test", PREDICTION_FILES[kind]),) if test_file else (),
                files=tuple((k, v) for k, v in files.items() if v), **LOCAL_DEFAULTS)


def resolve(config) -> Task:
    from roberta_jax.errors import UserError
    if config.task in NAMED_TASKS:
        return NAMED_TASKS[config.task]
    if config.task == "local":
        if not config.train_file:
            raise UserError("task=local needs --config.train_file")
        return local_task(config.kind, config.train_file, config.eval_file, config.test_file,
                          config.text_field, config.pair_field, config.label_field,
                          config.regression)
    raise UserError(f"unknown task {config.task!r}; choose one of {', '.join(NAMED_TASKS)} or "
                    "local")
