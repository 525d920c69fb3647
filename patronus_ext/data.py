"""Corpora and labelled tasks from local files or Hugging Face ``datasets``.

* Plain text: one paragraph per line (WikiText style); blank lines and
  ``= Heading =`` lines are skipped.
* Labelled tasks: TSV/CSV (with or without a header) and JSONL with text and
  label columns; SST-2 and AG News layouts are recognised.
* ``hf:NAME[:CONFIG][@SPLIT]`` loads through ``datasets`` (network or cache).
* Built-in names (``sst2``, ``agnews``, ``wikitext2``) resolve to the project's
  data folder: ``$PATRONUS_DATA_DIR`` or ``shared/data`` beside the checkout.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import random
import re
from pathlib import Path
from typing import Sequence

_HEADING = re.compile(r"^\s*=+ .* =+\s*$")

#: name -> (sub-path for train, sub-path for dev/test) inside the data folder.
BUILTIN_TASKS = {
    "sst2": ("sst2/train.tsv", "sst2/dev.tsv"),
    "agnews": ("agnews_subset/train.csv", "agnews_subset/test.csv"),
}
BUILTIN_CORPORA = {"wikitext2": "wikitext2/valid.txt", "wikitext2-test": "wikitext2/test.txt"}
TEXT_COLUMNS = ("sentence", "text", "content", "review", "document", "question")
LABEL_COLUMNS = ("label", "labels", "class", "category", "target")


@dataclasses.dataclass
class LabeledData:
    """Texts with integer labels ``0..num_labels-1``."""

    texts: list[str]
    labels: list[int]
    num_labels: int
    source: str = ""

    def __post_init__(self):
        if len(self.texts) != len(self.labels):
            raise ValueError(f"{len(self.texts)} texts but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, limit: int | None, seed: int = 0) -> "LabeledData":
        """A random subset of at most ``limit`` examples (all when ``limit`` is None)."""
        if limit is None or limit >= len(self):
            return self
        order = random.Random(seed).sample(range(len(self)), limit)
        return LabeledData([self.texts[i] for i in order], [self.labels[i] for i in order],
                           self.num_labels, self.source)


def data_dir() -> Path:
    """The folder of the built-in data sets."""
    env = os.environ.get("PATRONUS_DATA_DIR")
    if env:
        return Path(env)
    here = Path(__file__).resolve().parent.parent
    for candidate in (here.parent / "shared" / "data", Path.cwd().parent / "shared" / "data",
                      Path.cwd() / "shared" / "data"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError("no built-in data folder found: set PATRONUS_DATA_DIR to the folder holding "
                            "sst2/, agnews_subset/ and wikitext2/, or pass a file path")


def read_corpus(source: str, limit: int | None = None, min_words: int = 5, max_words: int | None = None,
                seed: int | None = None) -> list[str]:
    """Plain-text paragraphs from a file, a built-in name or ``hf:...`` (its text column).

    ``min_words`` drops fragments; ``max_words`` truncates long paragraphs;
    ``seed`` shuffles before ``limit`` is applied (otherwise file order).
    """
    if source in BUILTIN_CORPORA:
        source = str(data_dir() / BUILTIN_CORPORA[source])
    if source.startswith("hf:"):
        lines = [str(t) for t in _load_hf(source, want_labels=False)[0]]
    else:
        path = _existing_file(source, "corpus")
        with open(path, encoding="utf-8", errors="replace") as handle:
            lines = handle.read().splitlines()
    texts = []
    for line in lines:
        line = line.strip()
        if not line or _HEADING.match(line):
            continue
        words = line.split()
        if len(words) < min_words:
            continue
        if max_words is not None and len(words) > max_words:
            line = " ".join(words[:max_words])
        texts.append(line)
    if not texts:
        raise ValueError(f"corpus {source!r} holds no paragraph with at least {min_words} words")
    if seed is not None:
        random.Random(seed).shuffle(texts)
    return texts[:limit] if limit is not None else texts


def read_task(source: str, split: str = "train", limit: int | None = None, seed: int = 0,
              text_column: str | None = None, label_column: str | None = None) -> LabeledData:
    """A labelled classification set from a built-in name, a file (TSV/CSV/JSONL) or ``hf:...``.

    ``split`` picks train or dev/test for built-in names.
    """
    if split not in ("train", "dev", "test", "validation"):
        raise ValueError(f"split must be train, dev, test or validation, got {split!r}")
    if source in BUILTIN_TASKS:
        train, dev = BUILTIN_TASKS[source]
        source_path = str(data_dir() / (train if split == "train" else dev))
    else:
        source_path = source
    if source_path.startswith("hf:"):
        texts, labels = _load_hf(source_path, want_labels=True, text_column=text_column,
                                 label_column=label_column)
    else:
        path = _existing_file(source_path, "task")
        if path.suffix in (".jsonl", ".json"):
            texts, labels = _read_jsonl(path, text_column, label_column)
        else:
            texts, labels = _read_table(path, text_column, label_column)
    data = _normalise_labels(texts, labels, source_path)
    return data.subset(limit, seed)


def _existing_file(source: str, what: str) -> Path:
    path = Path(source).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{what} {source!r} is not a file (nor a built-in name or hf:NAME)")
    return path


def _pick(columns: Sequence[str], wanted: str | None, options: Sequence[str], what: str) -> int:
    lowered = [c.strip().lower() for c in columns]
    if wanted is not None:
        if wanted.lower() not in lowered:
            raise ValueError(f"{what} column {wanted!r} not among {list(columns)}")
        return lowered.index(wanted.lower())
    for name in options:
        if name in lowered:
            return lowered.index(name)
    raise ValueError(f"no {what} column among {list(columns)}; name it with --{what}-column")


def _read_table(path: Path, text_column: str | None, label_column: str | None):
    delimiter = "\t" if path.suffix == ".tsv" else ","
    with open(path, encoding="utf-8", errors="replace", newline="") as handle:
        rows = list(csv.reader(handle, delimiter=delimiter, quoting=csv.QUOTE_NONE if delimiter == "\t"
                               else csv.QUOTE_MINIMAL))
    rows = [r for r in rows if r and any(cell.strip() for cell in r)]
    if not rows:
        raise ValueError(f"{path} is empty")
    header = rows[0]
    has_header = not _looks_like_label(header[0]) or any(c.strip().lower() in LABEL_COLUMNS for c in header)
    if has_header:
        ti = _pick(header, text_column, TEXT_COLUMNS, "text")
        li = _pick(header, label_column, LABEL_COLUMNS, "label")
        body = rows[1:]
        texts = [r[ti] for r in body]
    else:
        # Headerless (AG News): label first, then one or more text fields joined.
        li = 0
        body = rows
        texts = [" ".join(cell.strip() for cell in r[1:] if cell.strip()) for r in body]
    labels = [r[li] for r in body]
    return texts, labels


def _looks_like_label(cell: str) -> bool:
    return cell.strip().lstrip("-").isdigit()


def _read_jsonl(path: Path, text_column: str | None, label_column: str | None):
    texts, labels = [], []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{number}: not JSON ({exc})") from exc
            keys = list(record)
            texts.append(str(record[keys[_pick(keys, text_column, TEXT_COLUMNS, 'text')]]))
            labels.append(record[keys[_pick(keys, label_column, LABEL_COLUMNS, 'label')]])
    return texts, labels


def _normalise_labels(texts: list[str], labels: list, source: str) -> LabeledData:
    """Integer labels 0..C-1: numeric labels shifted to start at 0 (AG News 1-4), strings sorted."""
    if not texts:
        raise ValueError(f"task {source!r} holds no examples")
    raw = [str(v).strip() for v in labels]
    if all(_looks_like_label(v) for v in raw):
        values = sorted({int(v) for v in raw})
        if values == list(range(values[0], values[0] + len(values))):
            ints = [int(v) - values[0] for v in raw]
        else:
            mapping = {v: i for i, v in enumerate(values)}
            ints = [mapping[int(v)] for v in raw]
    else:
        mapping = {v: i for i, v in enumerate(sorted(set(raw)))}
        ints = [mapping[v] for v in raw]
    num = max(ints) + 1
    if num < 2:
        raise ValueError(f"task {source!r} has a single label; classification needs at least two")
    return LabeledData([t.strip() for t in texts], ints, num, source)


def _load_hf(spec: str, want_labels: bool, text_column: str | None = None, label_column: str | None = None):
    """``hf:NAME[:CONFIG][@SPLIT]`` through ``datasets``; ``NAME`` may be csv/json with a local data file."""
    try:
        import datasets
    except ImportError as exc:
        raise RuntimeError("hf: sources need `pip install datasets` (patronus_ext[datasets])") from exc
    body = spec[3:]
    split = "train"
    if "@" in body:
        body, split = body.rsplit("@", 1)
    name, _, config = body.partition(":")
    if name in ("csv", "json", "text", "parquet"):
        ds = datasets.load_dataset(name, data_files=config, split=split)
    else:
        ds = datasets.load_dataset(name, config or None, split=split)
    columns = list(ds.column_names)
    texts = [str(t) for t in ds[columns[_pick(columns, text_column, TEXT_COLUMNS, "text")]]]
    if not want_labels:
        return texts, None
    labels = list(ds[columns[_pick(columns, label_column, LABEL_COLUMNS, "label")]])
    return texts, labels
