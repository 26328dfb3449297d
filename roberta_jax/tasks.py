"""Fine-tuning task definitions: GLUE (from tfds `glue/*`) and local files.

Each GLUE task names its text fields, label set, official metrics, the fairseq recipe
(README.glue: LR 1e-5, 2e-5 for RTE and STS-B; batch 32 for MNLI/QNLI/QQP/SST-2, else 16;
10 epochs, 6% warmup, weight decay 0.1) and its GLUE submission file.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Task:
    name: str
    source: str                      # "tfds:glue/sst2" or a local file path
    text_field: str
    pair_field: str | None
    label_field: str
    labels: tuple[str, ...] | None   # None: read from the data; () for regression
    metrics: tuple[str, ...]
    lr: float = 1e-5
    batch_size: int = 16
    eval_splits: tuple[str, ...] = ("validation",)
    test_splits: tuple[tuple[str, str], ...] = (("test", ""),)   # (split, submission file)
    files: tuple[tuple[str, str], ...] = ()   # local tasks: split -> file

    def where(self, split: str) -> tuple[str, str]:
        """(source to read, split name within it) of a split."""
        files = dict(self.files)
        return (files[split], "train") if split in files else (self.source, split)

    @property
    def regression(self) -> bool:
        return self.labels == ()

    @property
    def num_labels(self) -> int | None:
        return 1 if self.regression else (len(self.labels) if self.labels else None)


def _glue(name, text, pair, labels, metrics, submission, lr=1e-5, batch=16,
          eval_splits=("validation",), test_splits=None):
    return Task(name, f"tfds:glue/{name}", text, pair, "label", labels, metrics, lr, batch,
                eval_splits, test_splits or (("test", submission),))


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


def local_task(train_file: str, text_field: str, pair_field: str | None, label_field: str,
               regression: bool = False, eval_file: str = "", test_file: str = "") -> Task:
    """A classification (or regression) task from local jsonl / tsv / csv files."""
    files = {"train": train_file, "dev": eval_file, "test": test_file}
    return Task("local", train_file, text_field, pair_field or None, label_field,
                () if regression else None, ("pearson", "spearman") if regression
                else ("accuracy",), eval_splits=("dev",) if eval_file else (),
                test_splits=(("test", "predictions.tsv"),) if test_file else (),
                files=tuple((k, v) for k, v in files.items() if v))


def resolve(config) -> Task:
    from roberta_jax.errors import UserError
    if config.task in GLUE:
        return GLUE[config.task]
    if config.task == "local":
        if not config.train_file:
            raise UserError("task=local needs --config.train_file (jsonl, tsv or csv)")
        return local_task(config.train_file, config.text_field, config.pair_field,
                          config.label_field, config.regression, config.eval_file,
                          config.test_file)
    raise UserError(f"unknown task {config.task!r}; choose one of {', '.join(GLUE)} or local")
