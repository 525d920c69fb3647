"""One profile mechanism (core/profiles.py): one list of names, one override rule for every settings class,
and, per verb family, ``--fast --epochs N`` trains N epochs (not the profile's step count)."""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
import pkgutil

import pytest

import patronus_ext
from patronus_ext import attacks, purify
from patronus_ext.cli import main
from patronus_ext.core.profiles import PROFILE_NAMES, Settings, apply_overrides, epoch_step_pairs
from patronus_ext.data.instructions import load_instructions, write_alpaca
from patronus_ext.formats.backdoor import load_backdoor_info
from patronus_ext.lm.training import epoch_batches, total_steps

from tiny_models import make_tiny_llama, make_tiny_model, tiny_corpus


@dataclasses.dataclass
class _Toy(Settings):
    PROFILES = {"fast": dict(steps=7, lr=0.5, recovery_steps=3)}

    epochs: float = 1.0
    steps: int | None = None
    lr: float = 0.1
    recovery_epochs: float = 2.0
    recovery_steps: int | None = None


def _settings_classes() -> list[type]:
    for module in pkgutil.walk_packages(patronus_ext.__path__, "patronus_ext."):
        if not module.name.endswith(("__main__", "_C", ".service")):
            importlib.import_module(module.name)
    found, todo = [], list(Settings.__subclasses__())
    while todo:
        cls = todo.pop()
        todo += cls.__subclasses__()
        if cls.__module__.startswith("patronus_ext."):
            found.append(cls)
    return sorted(set(found), key=lambda c: c.__qualname__)


# -- the rule --------------------------------------------------------------------------------------
def test_none_overrides_never_replace_a_value_and_unknown_settings_are_named():
    assert _Toy.profile("fast", lr=None, steps=None) == _Toy(steps=7, lr=0.5, recovery_steps=3)
    assert _Toy.profile("paper") == _Toy()
    with pytest.raises(ValueError, match="_Toy has no setting batch_size, colour"):
        _Toy.profile("fast", colour="red", batch_size=3)
    with pytest.raises(ValueError, match="profile must be one of paper, fast; got 'slow'"):
        _Toy.profile("slow")


def test_explicit_epochs_drop_the_profiles_step_count_pair_by_pair():
    assert epoch_step_pairs({"epochs", "steps", "recovery_epochs", "recovery_steps", "lr"}) == [
        ("epochs", "steps"), ("recovery_epochs", "recovery_steps")]
    toy = _Toy.profile("fast", epochs=4.0)
    assert toy.epochs == 4.0 and toy.steps is None and toy.recovery_steps == 3   # the other pair is untouched
    toy = _Toy.profile("fast", recovery_epochs=1.0)
    assert toy.steps == 7 and toy.recovery_steps is None
    assert _Toy.profile("fast", steps=2).steps == 2                              # steps replace steps
    with pytest.raises(ValueError, match="give steps or epochs, not both"):
        _Toy.profile("fast", epochs=1.0, steps=2)
    assert apply_overrides(_Toy, {"steps": 5}, {"epochs": 2.0}) == {"epochs": 2.0}


def test_a_class_can_only_name_the_package_profiles():
    with pytest.raises(TypeError, match="profiles are paper, fast"):
        type("Odd", (Settings,), {"PROFILES": {"demo": {}}})


@pytest.mark.parametrize("cls", _settings_classes(), ids=lambda c: c.__name__)
def test_every_settings_class_builds_both_profiles(cls):
    for name in PROFILE_NAMES:
        config = cls.profile(name)
        assert isinstance(config, cls) and isinstance(config.to_dict(), dict)
    fields = {f.name for f in dataclasses.fields(cls)}
    for epochs, steps in epoch_step_pairs(fields):
        config = cls.profile("fast", **{epochs: 2.0})
        assert getattr(config, epochs) == 2.0 and getattr(config, steps) is None


def test_every_family_of_configs_is_on_the_one_mechanism():
    names = {cls.__name__ for cls in _settings_classes()}
    assert {"ScanConfig", "LMSanitatorConfig", "AttackConfig", "PORConfig", "BadNetConfig", "InstructBadNetConfig",
            "AdvPretrainConfig", "AdvFinetuneConfig", "FineMixConfig", "EPurConfig", "MeasureConfig", "MBConfig",
            "FineMixLMConfig", "GenerationEvalConfig", "FinetuneConfig", "InstructionTuningConfig", "BaitConfig",
            "TriggerSearchConfig"} <= names


def test_method_dispatch_applies_the_same_rule():
    mb = purify.make_config("mb", "fast", epochs=5)
    assert mb.steps is None and mb.epochs == 5 and mb.total_steps(80) == 5 * math.ceil(80 / mb.batch_size)
    assert mb.recovery_steps == 48                                               # recovery keeps its own pair
    por = attacks.make_config("por", "fast", epochs=1)
    assert por.steps is None and por.epochs == 1 and por.max_length == 32       # the rest of the profile stays
    assert attacks.make_config("instruct-badnet", "fast", epochs=2).steps is None
    with pytest.raises(ValueError, match="give steps or epochs, not both"):
        attacks.make_config("por", "fast", epochs=1, steps=3)


# -- one step count, one batch stream ------------------------------------------------------------------
def test_total_steps_and_the_epoch_batch_stream():
    assert total_steps(2.0, None, 10, 4) == 6 and total_steps(0.5, None, 10, 4) == 2
    assert total_steps(3.0, 7, 10, 4) == 7 and total_steps(0.01, None, 10, 4) == 1
    import random

    stream = epoch_batches(10, 4, random.Random(0))
    drawn = [next(stream) for _ in range(5)]                                     # two epochs of 10 indices
    assert all(len(rows) == 4 for rows in drawn)
    flat = [i for rows in drawn for i in rows]
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:20]) == list(range(10))
    with pytest.raises(ValueError):
        next(epoch_batches(0, 4, random.Random(0)))


# -- per verb family: --fast --epochs N ------------------------------------------------------------------
def test_attack_fast_epochs_train_the_epochs_asked_for(tmp_path, capsys):
    model = make_tiny_model(tmp_path, "bert")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(tiny_corpus(40)) + "\n")
    for epochs in (1, 2):
        out = tmp_path / f"por-{epochs}"
        assert main(["attack", "--method", "por", "--fast", "--epochs", str(epochs), "--model", str(model),
                     "--triggers", "cf,mn", "--corpus", str(corpus), "--lr", "3e-3", "--out", str(out),
                     "--quiet"]) == 0
        capsys.readouterr()
        training = load_backdoor_info(out).training
        assert training["epochs_done"] == pytest.approx(epochs)
        assert training["steps"] == epochs * math.ceil(40 / 16) < 250            # the fast profile's 250 steps dropped


@pytest.fixture(scope="module")
def tiny_llama_and_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("llama")
    data = root / "data.jsonl"
    write_alpaca(data, load_instructions("sst2", "train", limit=20, seed=3))
    return make_tiny_llama(root), data


def test_instruct_attack_fast_epochs_train_the_epochs_asked_for(tmp_path, capsys, tiny_llama_and_data):
    model, data = tiny_llama_and_data
    assert main(["attack", "--method", "instruct-badnet", "--fast", "--epochs", "2", "--model", str(model),
                 "--data", str(data), "--out", str(tmp_path / "ib"), "--quiet", "--device", "cpu"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["config"]["steps"] is None and summary["config"]["epochs"] == 2
    assert summary["training"]["steps"] == 2 * math.ceil(20 / 8)                # batch 8 of the fast profile


def test_purify_mb_fast_epochs_train_the_epochs_asked_for(tmp_path, capsys, tiny_llama_and_data):
    model, data = tiny_llama_and_data
    assert main(["purify", "--method", "mb", "--profile", "fast", "--epochs", "3", "--model", str(model),
                 "--data", str(data), "--recovery-steps", "1", "--lambda", "0.5", "--clean-limit", "8",
                 "--no-measure", "--out", str(tmp_path / "mb"), "--quiet", "--device", "cpu"]) == 0
    capsys.readouterr()
    record = json.loads((tmp_path / "mb" / "purify.json").read_text())
    assert record["settings"]["steps"] is None and record["settings"]["epochs"] == 3
    assert record["details"]["poisoning"]["training"]["steps"] == 3 * math.ceil(20 / 8)


def test_purify_adv_pt_fast_epochs_train_the_epochs_asked_for(tmp_path, capsys):
    from test_purify import scan_report
    from tiny_models import shared_planted

    planted = shared_planted("por")
    report = tmp_path / "scan.json"
    report.write_text(json.dumps(scan_report(planted.out_dir)))
    assert main(["purify", "--method", "adv-pt", "--fast", "--epochs", "0.05", "--model", str(planted.out_dir),
                 "--scan-report", str(report), "--no-measure", "--out", str(tmp_path / "pt"), "--quiet",
                 "--device", "cpu"]) == 0
    capsys.readouterr()
    record = json.loads((tmp_path / "pt" / "purify.json").read_text())
    details = record["details"]
    assert record["settings"]["steps"] is None
    assert details["steps"] == math.ceil(0.05 * math.ceil(details["train_texts"] / 16)) != 150


def test_every_verb_that_runs_a_method_takes_the_one_profile_option():
    from patronus_ext.cli.main import build_parser

    parser = build_parser()
    verbs = next(a for a in parser._actions if isinstance(a, type(parser._subparsers._group_actions[0]))).choices
    for name in ("scan", "calibrate", "demo", "attack", "purify", "audit"):
        options = {o: a for a in verbs[name]._actions for o in a.option_strings}
        assert tuple(options["--profile"].choices) == PROFILE_NAMES, name
        assert options["--fast"].const == "fast" and options["--fast"].dest == "profile", name
    assert "--profile" not in {o for a in verbs["evaluate"]._actions for o in a.option_strings}
