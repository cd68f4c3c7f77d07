"""Training examples for recovery fine-tuning.

Two kinds of file:

- **Alpaca-style** instructions (``.json``: a list of records; ``.jsonl`` / ``.jsonl.gz``:
  one record a line) with ``instruction``, optional ``input`` and ``output``.  Each record
  becomes the Stanford-Alpaca prompt followed by the response and EOS, truncated and
  right-padded to ``data.seq_len``; the loss covers the response tokens only unless
  ``data.response_only`` is false.
- **Plain text** in any format ``pgprune run --calib-file`` reads (read and tokenized by
  :mod:`pgprune_core.data`, documents joined with EOS), cut into non-overlapping windows of
  ``data.seq_len`` tokens; every token is a target.

The order of the examples is a pure function of the seed and of the position in the
stream (:meth:`Examples.indices`), so a resumed fine-tune sees the very batches an
uninterrupted one would.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pgprune_core.config.sections import DataSection
from pgprune_core.errors import DataError
from pgprune_core.recovery.config import FinetuneDataSection
from pgprune_core.report.progress import Reporter

#: the label of a position that is not a target
IGNORE = -100

#: the Stanford Alpaca prompts (with and without an input)
PROMPT_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides "
    "further context. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n"
)
ALPACA_FIELDS = ("instruction", "output")


@dataclass
class Examples:
    """``input_ids``, ``labels`` (``IGNORE`` where no loss) and ``attention_mask``, each
    int64 [n, seq_len]."""

    input_ids: torch.Tensor
    labels: torch.Tensor
    attention_mask: torch.Tensor
    kind: str
    #: examples dropped because the prompt filled the whole window
    dropped: int = 0

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def target_tokens(self) -> int:
        return int((self.labels[:, 1:] != IGNORE).sum())

    def indices(self, start: int, count: int, seed: int) -> torch.Tensor:
        """The examples at stream positions ``start .. start+count-1``: each epoch is a
        fresh permutation drawn from ``seed`` and the epoch number."""
        n = len(self)
        out = []
        for epoch in range(start // n, (start + count - 1) // n + 1):
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
            lo = max(start, epoch * n) - epoch * n
            hi = min(start + count, (epoch + 1) * n) - epoch * n
            out.append(perm[lo:hi])
        return torch.cat(out)

    def batch(self, start: int, count: int, seed: int) -> dict[str, torch.Tensor]:
        index = self.indices(start, count, seed)
        return {"input_ids": self.input_ids[index], "labels": self.labels[index],
                "attention_mask": self.attention_mask[index]}


def _open_text(path: Path) -> str:
    if path.name.endswith(".gz"):
        with gzip.open(path, "rt", encoding="utf-8") as handle:
            return handle.read()
    return path.read_text(encoding="utf-8")


def _first_record(path: Path) -> Any:
    """The first record of a .json/.jsonl(.gz) file, or None when it is not one."""
    name = path.name.lower()
    try:
        if name.endswith((".jsonl", ".jsonl.gz")):
            opener = gzip.open if name.endswith(".gz") else open
            with opener(path, "rt", encoding="utf-8") as handle:  # type: ignore[operator]
                for line in handle:
                    if line.strip():
                        return json.loads(line)
            return None
        if name.endswith((".json", ".json.gz")):
            data = json.loads(_open_text(path))
            return data[0] if isinstance(data, list) and data else data
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from None
    return None


def detect_format(data: FinetuneDataSection) -> str:
    """``alpaca`` or ``text``; checks the file exists (cheap: reads one record)."""
    if not data.train_file:
        raise DataError("no training data: pass --train-file FILE")
    path = Path(data.train_file).expanduser()
    if not path.is_file():
        raise DataError(f"training file not found: {path}")
    if data.format != "auto":
        if data.format == "alpaca":
            record = _first_record(path)
            if not (isinstance(record, dict) and all(k in record for k in ALPACA_FIELDS)):
                raise DataError(f"{path} holds no Alpaca records (objects with "
                                f"{' and '.join(ALPACA_FIELDS)})")
        return data.format
    record = _first_record(path)
    is_alpaca = isinstance(record, dict) and all(k in record for k in ALPACA_FIELDS)
    return "alpaca" if is_alpaca else "text"


def read_alpaca(path: Path) -> list[dict[str, str]]:
    name = path.name.lower()
    try:
        text = _open_text(path)
        if name.endswith((".jsonl", ".jsonl.gz")):
            records = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            records = json.loads(text)
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from None
    if not isinstance(records, list):
        raise DataError(f"{path} must hold a list of Alpaca records")
    for i, record in enumerate(records):
        if not isinstance(record, dict) or any(not isinstance(record.get(k), str) for k in ALPACA_FIELDS):
            raise DataError(f"{path}: record {i} needs string fields "
                            f"{' and '.join(ALPACA_FIELDS)}")
    return records


def alpaca_prompt(record: dict[str, str]) -> str:
    extra = (record.get("input") or "").strip()
    template = PROMPT_INPUT if extra else PROMPT_NO_INPUT
    return template.format(instruction=record["instruction"].strip(), input=extra)


def _pad_id(tokenizer: Any) -> int:
    for value in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if value is not None:
            return int(value)
    return 0


def alpaca_examples(records: list[dict[str, str]], tokenizer: Any, seq_len: int,
                    response_only: bool) -> Examples:
    pad = _pad_id(tokenizer)
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    rows, labels, masks, dropped = [], [], [], 0
    for record in records:
        prompt = tokenizer(alpaca_prompt(record))["input_ids"]
        response = tokenizer(record["output"], add_special_tokens=False)["input_ids"] + eos
        ids = (prompt + response)[:seq_len]
        target = ([IGNORE] * len(prompt) if response_only else list(prompt)) + response
        target = target[:seq_len]
        if all(t == IGNORE for t in target[1:]):
            dropped += 1
            continue
        fill = seq_len - len(ids)
        rows.append(ids + [pad] * fill)
        labels.append(target + [IGNORE] * fill)
        masks.append([1] * len(ids) + [0] * fill)
    if not rows:
        raise DataError(f"no Alpaca example has a response within --data.seq_len {seq_len} tokens")
    as_tensor = lambda v: torch.tensor(v, dtype=torch.int64)  # noqa: E731
    return Examples(as_tensor(rows), as_tensor(labels), as_tensor(masks), "alpaca", dropped)


def text_examples(data: FinetuneDataSection, tokenizer: Any, reporter: Reporter | None) -> Examples:
    from pgprune_core.data import tokenize_source
    from pgprune_core.data.sources import file_source
    from pgprune_core.evaluation.perplexity import windows_of

    section = DataSection(text_field=data.text_field, cache_dir=data.cache_dir)
    source = file_source(str(data.train_file), "calibration", section, doc_slice=data.train_slice)
    tokens = tokenize_source(source, tokenizer, joining="eos", cache_dir=data.cache_dir,
                             reporter=reporter)
    windows = windows_of(tokens, data.seq_len, name=f"training text {source.describe()}")
    return Examples(windows, windows.clone(), torch.ones_like(windows), "text")


def load_examples(data: FinetuneDataSection, tokenizer: Any,
                  reporter: Reporter | None = None) -> Examples:
    """The training examples of ``data`` (see the module docstring)."""
    fmt = detect_format(data)
    if fmt == "alpaca":
        records = read_alpaca(Path(str(data.train_file)).expanduser())
        return alpaca_examples(records, tokenizer, data.seq_len, data.response_only)
    return text_examples(data, tokenizer, reporter)
