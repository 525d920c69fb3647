"""Corpora and labelled tasks: the built-in data sets (shared or packaged), where built-in names
resolve, and small temporary TSV/CSV/JSONL files."""

from __future__ import annotations

import fnmatch
import importlib.util
import json
import logging
import re
from pathlib import Path

import pytest

from patronus_ext.data import corpora as data
from conftest import require_test_extra

ROOT = Path(__file__).resolve().parent.parent


# -- the built-in data (the shared full sets, or the package's copies where they are absent) ---
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


# -- where built-in names resolve ----------------------------------------------------------------
@pytest.fixture
def packaged_only(monkeypatch):
    """Built-in names resolve as on a fresh install: no $PATRONUS_DATA_DIR, no shared/data."""
    monkeypatch.delenv("PATRONUS_DATA_DIR", raising=False)
    monkeypatch.setattr(data, "shared_candidates", lambda: [])


def _fake_sst2_dev(folder: Path, rows: str = "1\tgood fun\n0\ta bore\n") -> Path:
    (folder / "sst2").mkdir(parents=True)
    (folder / "sst2" / "dev.tsv").write_text("label\tcontent\n" + rows)
    return folder


def test_resolution_order_env_then_shared_then_packaged(tmp_path, monkeypatch, caplog):
    shared = _fake_sst2_dev(tmp_path / "shared" / "data")
    monkeypatch.setattr(data, "shared_candidates", lambda: [tmp_path / "absent" / "data", shared])
    monkeypatch.delenv("PATRONUS_DATA_DIR", raising=False)
    assert data.data_sources() == [(shared, "shared"), (data.PACKAGED_DIR, "packaged")]
    assert data.builtin_source("sst2", "dev") == (shared / "sst2" / "dev.tsv", "shared")
    assert data.read_task("sst2", "dev").texts == ["good fun", "a bore"]
    # A file the shared folder lacks comes from the package, and the user is told so.
    with caplog.at_level(logging.INFO, logger="patronus_ext.data"):
        assert data.builtin_source("sst2", "train") == (data.PACKAGED_DIR / "sst2" / "train.tsv", "packaged")
    assert "subset (3,000 of the 67,349 rows" in caplog.text
    caplog.clear()

    env = _fake_sst2_dev(tmp_path / "env", "0\tdull\n1\tbright\n0\tflat\n")
    monkeypatch.setenv("PATRONUS_DATA_DIR", str(env))
    assert data.data_sources() == [(env, "env")] and data.data_dir() == env
    assert data.builtin_source("sst2", "dev") == (env / "sst2" / "dev.tsv", "env")
    assert data.read_task("sst2", "dev").labels == [0, 1, 0]

    monkeypatch.setenv("PATRONUS_DATA_DIR", "")            # set but empty: as if unset
    assert data.data_dir() == shared
    monkeypatch.setattr(data, "shared_candidates", lambda: [tmp_path / "absent" / "data"])
    with caplog.at_level(logging.INFO, logger="patronus_ext.data"):
        path, kind = data.builtin_source("sst2", "dev")
    assert (path, kind) == (data.PACKAGED_DIR / "sst2" / "dev.tsv", "packaged") and data.data_dir() == data.PACKAGED_DIR
    assert "copy (the whole set)" in caplog.text and str(path) in caplog.text


def test_data_dir_without_the_file_is_an_error_not_a_fallback(tmp_path, monkeypatch):
    env = _fake_sst2_dev(tmp_path / "env")
    monkeypatch.setenv("PATRONUS_DATA_DIR", str(env))
    missing = str(env / "wikitext2" / "valid.txt")
    with pytest.raises(FileNotFoundError, match=re.escape(missing)):
        data.read_corpus("wikitext2")
    with pytest.raises(FileNotFoundError, match="PATRONUS_DATA_DIR"):
        data.read_task("sst2", "train")
    monkeypatch.setenv("PATRONUS_DATA_DIR", str(tmp_path / "no_such_folder"))
    with pytest.raises(FileNotFoundError, match="no_such_folder"):
        data.read_task("agnews", "test")
    with pytest.raises(ValueError, match="not a built-in"):
        data.builtin_source("imdb")


def test_file_paths_bypass_the_builtin_lookup(tmp_path, monkeypatch):
    monkeypatch.setenv("PATRONUS_DATA_DIR", str(tmp_path / "no_such_folder"))
    path = tmp_path / "wikitext2"                          # a file named like a built-in is a file
    path.write_text("one two three four five six\n")
    monkeypatch.chdir(tmp_path)
    assert data.read_corpus("./wikitext2") == ["one two three four five six"]
    assert data.read_corpus(str(path)) == ["one two three four five six"]


def test_packaged_data_parses_with_sensible_sizes(packaged_only):
    valid = data.read_corpus("wikitext2")
    assert len(valid) == 1794                              # the whole validation split
    assert not any(data._HEADING.match(t) for t in valid)
    assert len(data.read_corpus("wikitext2", limit=800, max_words=64, seed=0)) == 800  # the fast scan profile
    test = data.read_corpus("wikitext2-test")
    assert len(test) == 300 and not set(test) & set(valid)
    assert len(data.read_corpus("wikitext2-test", limit=200, seed=0)) == 200  # evaluate's representation texts
    train = data.read_task("sst2", "train")
    assert len(train) == 3000 and train.num_labels == 2
    assert 0.35 < sum(train.labels) / len(train) < 0.65    # both labels well represented (55.8% positive in full)
    assert len(data.read_task("sst2", "train", limit=2000)) == 2000  # evaluate's default train_limit
    dev = data.read_task("sst2", "dev")
    assert len(dev) == 872 and set(dev.labels) == {0, 1} and all(dev.texts)
    ag, ag_test = data.read_task("agnews", "train"), data.read_task("agnews", "test")
    assert (len(ag), len(ag_test)) == (581, 46) and ag.num_labels == ag_test.num_labels == 4
    for name, split in (("wikitext2", "train"), ("wikitext2-test", "train"), ("sst2", "train"), ("sst2", "dev"),
                        ("agnews", "train"), ("agnews", "test")):
        assert data.builtin_source(name, split)[1] == "packaged"


def test_packaged_readme_states_sources_licences_and_sizes():
    readme = (data.PACKAGED_DIR / "README.md").read_text()
    for needed in ("Merity", "CC BY-SA 3.0", "Socher", "GLUE", "Zhang", "make_package_data.py"):
        assert needed in readme
    rows = re.findall(r"^\| `([^`]+)` \| `[^`]+` \| [^|]+ \| ([\d,]+) \| ([\d,]+) \|$", readme, re.M)
    assert len(rows) == 6
    for sub, kept, full in rows:
        assert (data.PACKAGED_DIR / sub).is_file()
        # The files data.py calls subsets (in its INFO log) are exactly those the README calls subsets.
        assert (kept != full) == (sub in data.PACKAGED_SUBSETS)
        if sub in data.PACKAGED_SUBSETS:
            assert data.PACKAGED_SUBSETS[sub].startswith(f"{kept} of the {full} ")


def test_package_data_is_declared_for_the_wheel():
    tomllib = pytest.importorskip("tomllib")
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["patronus_ext.data"]
    files = [p.relative_to(data.PACKAGED_DIR.parent).as_posix() for p in data.PACKAGED_DIR.rglob("*") if p.is_file()]
    assert len(files) == 9
    for name in files:
        assert any(fnmatch.fnmatch(name, pattern) for pattern in patterns), f"{name} would be left out of the wheel"


def _shared_full_sets() -> Path | None:
    return next((c for c in data.shared_candidates() if (c / "sst2" / "train.tsv").is_file()), None)


def test_package_data_rebuilds_identically_from_the_full_sets():
    source = _shared_full_sets()
    if source is None:
        pytest.skip("the full data sets (shared/data beside the checkout) are absent: "
                    "nothing to rebuild the package data from")
    spec = importlib.util.spec_from_file_location("make_package_data", ROOT / "scripts" / "make_package_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--check", "--source", str(source), "--out", str(data.PACKAGED_DIR)]) == 0
    # The planting and scanning corpus is the whole validation split, byte for byte.
    assert (data.PACKAGED_DIR / "wikitext2" / "valid.txt").read_bytes() == \
        (source / "wikitext2" / "valid.txt").read_bytes()


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
    require_test_extra("datasets")
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
