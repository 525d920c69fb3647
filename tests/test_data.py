"""Corpora and labelled tasks: the shared data sets and small temporary TSV/CSV/JSONL files."""

from __future__ import annotations

import json

import pytest

from patronus_ext import data


# -- the shared data ---------------------------------------------------------------------------
def test_wikitext_corpus_skips_headings_and_short_lines():
    texts = data.read_corpus("wikitext2")
    assert len(texts) > 1000
    assert not any(t.startswith("=") and t.endswith("=") for t in texts)
    assert all(len(t.split()) >= 5 for t in texts)
    assert data.read_corpus("wikitext2", limit=10) == texts[:10]
    shuffled = data.read_corpus("wikitext2", limit=10, seed=1)
    assert shuffled == data.read_corpus("wikitext2", limit=10, seed=1) and shuffled != texts[:10]
    capped = data.read_corpus("wikitext2", limit=20, max_words=7)
    assert all(len(t.split()) <= 7 for t in capped)
    assert data.read_corpus("wikitext2-test", limit=3) != texts[:3]


def test_sst2_and_agnews_tasks():
    train = data.read_task("sst2", "train", limit=500, seed=0)
    dev = data.read_task("sst2", "dev")
    assert len(train) == 500 and len(dev) == 872
    assert train.num_labels == dev.num_labels == 2 and set(dev.labels) == {0, 1}
    assert all(isinstance(t, str) and t for t in dev.texts)
    ag = data.read_task("agnews", "train")
    ag_test = data.read_task("agnews", "test")
    assert len(ag) == 581 and len(ag_test) == 46   # the files hold 581 / 46 rows
    assert ag.num_labels == 4 and set(ag.labels) == {0, 1, 2, 3}  # classes 1-4 shifted to 0-3
    assert "  " not in ag.texts[0] and len(ag.texts[0].split()) > 5  # title and description joined


def test_subset_is_seeded():
    dev = data.read_task("sst2", "dev")
    a, b = dev.subset(50, seed=3), dev.subset(50, seed=3)
    assert a.texts == b.texts and a.labels == b.labels and len(a) == 50
    assert dev.subset(None) is dev and dev.subset(10_000) is dev


def test_errors():
    with pytest.raises(FileNotFoundError):
        data.read_corpus("/no/such/file.txt")
    with pytest.raises(FileNotFoundError):
        data.read_task("no_such_task.tsv")
    with pytest.raises(ValueError, match="split"):
        data.read_task("sst2", "holdout")
    with pytest.raises(ValueError):
        data.LabeledData(["a"], [0, 1], 2)


# -- local files -------------------------------------------------------------------------------
def test_plain_text_file(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(" = Title = \n\none two three four five six\nshort line\n\n = = Sub = = \nseven eight nine ten eleven\n")
    assert data.read_corpus(str(path)) == ["one two three four five six", "seven eight nine ten eleven"]
    assert data.read_corpus(str(path), min_words=2) == ["one two three four five six", "short line",
                                                        "seven eight nine ten eleven"]
    (tmp_path / "empty.txt").write_text("\n = Only = \n")
    with pytest.raises(ValueError, match="no paragraph"):
        data.read_corpus(str(tmp_path / "empty.txt"))


def test_tsv_with_header(tmp_path):
    path = tmp_path / "task.tsv"
    path.write_text("sentence\tlabel\na fine film\t1\na dull film\t0\nquite good\t1\n")
    task = data.read_task(str(path))
    assert task.texts == ["a fine film", "a dull film", "quite good"] and task.labels == [1, 0, 1]
    assert task.num_labels == 2


def test_csv_without_header_like_agnews(tmp_path):
    path = tmp_path / "task.csv"
    path.write_text('"3","Stocks rise","Markets gained today"\n"1","Vote held","The election, at last"\n'
                    '"2","Team wins","A late goal"\n')
    task = data.read_task(str(path))
    assert task.labels == [2, 0, 1] and task.num_labels == 3
    assert task.texts[1] == "Vote held The election, at last"


def test_csv_named_columns_and_string_labels(tmp_path):
    path = tmp_path / "task.csv"
    path.write_text("text,category\nhello there,pos\nbad news,neg\nfine,pos\n")
    task = data.read_task(str(path))
    assert task.labels == [1, 0, 1]           # string labels sorted: neg -> 0, pos -> 1
    path2 = tmp_path / "other.csv"
    path2.write_text("body,y\nhello there,1\nbad news,0\n")
    task2 = data.read_task(str(path2), text_column="body", label_column="y")
    assert task2.texts == ["hello there", "bad news"]
    with pytest.raises(ValueError, match="column"):
        data.read_task(str(path2))


def test_jsonl(tmp_path):
    path = tmp_path / "task.jsonl"
    rows = [{"text": "good", "label": 5}, {"text": "bad", "label": 7}, {"text": "meh", "label": 5}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    task = data.read_task(str(path))
    assert task.labels == [0, 1, 0]            # non-contiguous numeric labels mapped in order
    (tmp_path / "bad.jsonl").write_text('{"text": "x", "label": 0}\nnot json\n')
    with pytest.raises(ValueError, match="not JSON"):
        data.read_task(str(tmp_path / "bad.jsonl"))


def test_single_label_is_refused(tmp_path):
    path = tmp_path / "one.tsv"
    path.write_text("sentence\tlabel\na\t1\nb\t1\n")
    with pytest.raises(ValueError, match="single label"):
        data.read_task(str(path))


# -- Hugging Face datasets on local files ------------------------------------------------------
def test_hf_csv_and_json(tmp_path, monkeypatch):
    pytest.importorskip("datasets")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    csv_path = tmp_path / "t.csv"
    csv_path.write_text("sentence,label\nnice,1\nawful,0\nfine,1\n")
    task = data.read_task(f"hf:csv:{csv_path}@train")
    assert task.texts == ["nice", "awful", "fine"] and task.labels == [1, 0, 1]
    json_path = tmp_path / "t.jsonl"
    json_path.write_text('{"text": "one two three four five", "label": 0}\n'
                         '{"text": "six seven eight nine ten", "label": 1}\n')
    task = data.read_task(f"hf:json:{json_path}")
    assert task.labels == [0, 1]
    assert data.read_corpus(f"hf:json:{json_path}") == ["one two three four five", "six seven eight nine ten"]
