"""``patronus attack`` and ``patronus evaluate`` on a tiny model: outputs, refusals, exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from patronus_ext import attacks
from patronus_ext.cli import main

from tiny_models import make_tiny_model, tiny_corpus


@pytest.fixture()
def corpus_file(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(tiny_corpus(32)) + "\n")
    return path


@pytest.fixture()
def task_files(tmp_path):
    texts = tiny_corpus(40)
    rows = ["sentence\tlabel"] + [f"{t}\t{i % 2}" for i, t in enumerate(texts)]
    train = tmp_path / "train.tsv"
    train.write_text("\n".join(rows[:31]) + "\n")
    dev = tmp_path / "dev.tsv"
    dev.write_text("\n".join([rows[0]] + rows[31:]) + "\n")
    return train, dev


def _attack_args(model, corpus, out, method="por", *extra):
    return ["attack", "--method", method, "--model", str(model), "--triggers", "cf,mn", "--corpus", str(corpus),
            "--out", str(out), "--steps", "3", "--lr", "3e-3", "--batch-size", "4", "--max-length", "32",
            "--no-progress", *extra]


def test_attack_then_evaluate(tmp_path, corpus_file, task_files, capsys):
    model = make_tiny_model(tmp_path, "bert")
    out = tmp_path / "planted"
    assert main(_attack_args(model, corpus_file, out, "por", "--json", str(tmp_path / "attack.json"))) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["attack"] == "por" and summary["triggers"] == ["cf", "mn"]
    assert json.loads((tmp_path / "attack.json").read_text())["out_dir"] == str(out)
    info = attacks.load_backdoor_info(out)
    assert info.triggers == ["cf", "mn"] and info.raw["config"]["steps"] == 3

    train, dev = task_files
    report = tmp_path / "eval.json"
    args = ["evaluate", "--model", str(out), "--task", str(train), "--dev", str(dev), "--epochs", "1",
            "--lr", "1e-3", "--batch-size", "8", "--max-length", "32", "--representation-texts", "6",
            "--report", str(report), "--no-progress"]
    assert main(args) == 0
    printed = json.loads(capsys.readouterr().out)
    assert set(printed["downstream"]["asr"]) == {"cf", "mn"}
    full = json.loads(report.read_text())
    assert full["downstream"]["dev_examples"] == 10 and full["representation"]["texts"] == 6
    # the report is never overwritten without --force
    assert main(args) == 2
    assert "exists" in capsys.readouterr().err
    assert main(args + ["--force", "--no-finetune"]) == 0


def test_attack_refuses_to_overwrite(tmp_path, corpus_file, capsys):
    model = make_tiny_model(tmp_path, "bert")
    out = tmp_path / "planted"
    assert main(_attack_args(model, corpus_file, out)) == 0
    capsys.readouterr()
    assert main(_attack_args(model, corpus_file, out)) == 2
    assert "never overwrites" in capsys.readouterr().err


def test_attack_errors_exit_2(tmp_path, corpus_file, capsys):
    model = make_tiny_model(tmp_path, "bert")
    assert main(_attack_args(tmp_path / "missing", corpus_file, tmp_path / "o1")) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(_attack_args(model, tmp_path / "nope.txt", tmp_path / "o2")) == 2
    assert main(_attack_args(model, corpus_file, tmp_path / "o3", "por", "--poison-rate", "2")) == 2
    assert "poison_rate" in capsys.readouterr().err
    assert main(_attack_args(model, corpus_file, tmp_path / "o4", "por", "--adaptive-lambda", "1")) == 2
    pickled = make_tiny_model(tmp_path, "bert", pickle_only=True)
    assert main(_attack_args(pickled, corpus_file, tmp_path / "o5")) == 2
    assert "pickle" in capsys.readouterr().err
    assert main(_attack_args(pickled, corpus_file, tmp_path / "o6", "por", "--allow-pickle")) == 0
    with pytest.raises(SystemExit) as exc:
        main(_attack_args(model, corpus_file, tmp_path / "o7", "badnets"))
    assert exc.value.code == 2


def test_evaluate_needs_triggers_for_a_model_without_backdoor_json(tmp_path, capsys):
    model = make_tiny_model(tmp_path, "bert")
    assert main(["evaluate", "--model", str(model), "--no-finetune", "--no-progress"]) == 2
    assert "--triggers" in capsys.readouterr().err
    assert main(["evaluate", "--model", str(model), "--no-finetune", "--no-progress", "--triggers", "cf",
                 "--representation-texts", "4"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert list(out["representation"]["per_trigger"]) == ["cf"]


@pytest.mark.parametrize("method", ["neuba", "adaptive3", "uor"])
def test_attack_methods_through_the_cli(tmp_path, corpus_file, method, capsys):
    model = make_tiny_model(tmp_path, "bert")
    extra = ["--adaptive-lambda", "0.5"] if method == "adaptive3" else []
    assert main(_attack_args(model, corpus_file, tmp_path / "planted", method, *extra)) == 0
    info = attacks.load_backdoor_info(tmp_path / "planted")
    assert info.attack == method
    if method == "adaptive3":
        assert info.raw["config"]["adaptive_lambda"] == 0.5


def test_cli_entry_point_subprocess(tmp_path, corpus_file):
    model = make_tiny_model(tmp_path, "gpt2")
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "-m", "patronus_ext.cli", *_attack_args(model, corpus_file,
                                                                                  tmp_path / "planted")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["position"] == "last"
    assert (tmp_path / "planted" / "backdoor.json").is_file()
