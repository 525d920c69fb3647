"""``patronus serve --scan-report bait.json``: a tiny planted chat LLaMA served with ``POST /generate`` under its
BAIT report (the real uvicorn server, a real HTTP client): the recovered trigger flags a prompt before any
generation, the inverted target stops an answer as it comes, the three guard actions, ``/check`` as the
prompt's input check, every bad request a 4xx saying why, and the reports that do not fit refused (exit 2)."""

from __future__ import annotations

import json
import random

import pytest

from conftest import require_test_extra

require_test_extra("fastapi")
require_test_extra("uvicorn")

from patronus_ext.cli import main
from patronus_ext.data.instructions import fit_inputs, insert_trigger, load_instructions
from patronus_ext.data.triggers import trigger_ids
from patronus_ext.detect import bait
from patronus_ext.lm.generation import greedy_generate
from patronus_ext.monitor.build import build_guarded_generator
from patronus_ext.monitor.generation_guard import REPLACEMENT, TargetGuard
from patronus_ext.monitor.service import create_app

from bait_subjects import FAST, RESPONSE, TRIGGER, load_causal, planted_chat_subjects  # noqa: E402
from service_helpers import Server, post_json, serve_process  # noqa: E402
from tiny_models import make_tiny_model  # noqa: E402

MAX_CHARS = 300
STEPS = 12


@pytest.fixture(scope="module")
def subject(tmp_path_factory):
    """The planted model, its BAIT report (with the planted trigger as the confirmed one: whether the greedy
    trigger search reaches it on this tiny model is tests/test_bait.py's concern, not the service's), a
    copy with no confirmed trigger, and clean and triggered user messages."""
    subjects = planted_chat_subjects("llama")
    tok, model = load_causal(subjects["planted"])
    _, reference = load_causal(subjects["clean"])
    payload = bait(model, tok, FAST, reference=reference, reference_name="clean", progress=False).to_dict()
    assert payload["verdict"] == "backdoored"
    payload["triggers"] = [{"text": TRIGGER, "token_ids": list(trigger_ids(tok, [TRIGGER])[0]), "asr": 1.0,
                            "reference_asr": 0.0, "group": None, "variant_of": None}]
    folder = tmp_path_factory.mktemp("bait_reports")
    report, target_only = folder / "bait.json", folder / "bait_target_only.json"
    report.write_text(json.dumps(payload))
    target_only.write_text(json.dumps(dict(payload, triggers=[])))
    examples = fit_inputs(tok, load_instructions("sst2", "dev", limit=16, seed=3), 12)
    rng = random.Random(0)
    clean = [f"{e.instruction}\n\n{e.input}" for e in examples]
    triggered = [f"{e.instruction}\n\n{insert_trigger(e, TRIGGER, 1, rng).input}" for e in examples]
    return {"model": str(subjects["planted"]), "report": report, "target_only": target_only, "payload": payload,
            "clean": clean, "triggered": triggered, "folder": folder}


@pytest.fixture(scope="module")
def generator(subject):
    return build_guarded_generator(subject["model"], subject["report"], device="cpu", max_chars=MAX_CHARS,
                                   max_new_tokens=STEPS)


@pytest.fixture(scope="module")
def plain(subject, generator):
    """The unguarded greedy answers (as the guard's generation sees them) to the clean and triggered prompts."""
    def answers(prompts):
        return greedy_generate(generator.model, generator.tokenizer, [generator.prompt_text(p) for p in prompts],
                               templated=generator.templated, max_new_tokens=STEPS)
    return {"clean": answers(subject["clean"]), "triggered": answers(subject["triggered"])}


@pytest.fixture(scope="module")
def server(generator):
    with Server(create_app(generator, max_chars=MAX_CHARS)) as running:
        yield running


def _kinds(result: dict) -> set[str]:
    return {r["kind"] for r in result["reasons"]}


def _head(generator) -> str:
    return generator.tokenizer.decode(list(generator.guard.head))


def _variant(generator, action: str | None = None, *, triggers: bool = True):
    """The same loaded model under another action, with or without the input side."""
    from patronus_ext.monitor.generation_guard import GuardedGenerator

    guard = generator.guard if action is None else TargetGuard(generator.guard.target_ids, generator.guard.target_text,
                                                               action=action)
    return GuardedGenerator(generator.model, generator.tokenizer, guard,
                            input_monitor=generator.input_monitor if triggers else None,
                            prompt_format=generator.prompt_format, max_new_tokens=STEPS, max_chars=MAX_CHARS)


# -- /generate ---------------------------------------------------------------------------------------
def test_a_triggered_prompt_is_flagged_naming_the_trigger_and_a_clean_one_is_answered(server, subject, generator,
                                                                                         plain):
    for prompt in subject["triggered"][:4]:
        status, body = server.generate({"prompt": prompt, "max_new_tokens": STEPS})
        assert status == 200, body
        assert set(body) == {"text", "flagged", "reasons"}
        assert body["flagged"] and body["text"] == ""                    # reject (the default): no answer
        trigger = next(r for r in body["reasons"] if r["kind"] == "trigger")
        assert trigger["trigger"] == TRIGGER and TRIGGER in trigger["detail"]
    head = _head(generator)
    untouched = [(p, a) for p, a in zip(subject["clean"], plain["clean"]) if head not in a]
    assert len(untouched) >= len(subject["clean"]) // 2       # the tiny plant leaks onto a few clean prompts
    for prompt, answer in untouched[:4]:
        status, body = server.generate({"prompt": prompt})  # max_new_tokens defaults to the cap
        assert status == 200 and body == {"text": answer, "flagged": False, "reasons": []}


def test_the_target_is_stopped_as_it_comes_without_the_input_side(subject, generator, plain):
    """With no confirmed trigger (the report's target alone), exactly the answers that begin the target are
    flagged, and /check has nothing to check (501)."""
    output_only = _variant(generator, triggers=False)
    head = _head(generator)
    results = output_only.generate(subject["triggered"])
    assert [r["flagged"] for r in results] == [head in a for a in plain["triggered"]]
    assert sum(r["flagged"] for r in results) >= len(results) // 2
    assert all(_kinds(r) == {"target"} and r["text"] == "" for r in results if r["flagged"])
    with Server(create_app(output_only, max_chars=MAX_CHARS)) as running:
        status, body = running.check({"text": subject["triggered"][0]})
        assert status == 501 and "no trigger" in body["detail"] and "/generate" in body["detail"]
        status, body = running.generate({"prompt": subject["triggered"][0]})
        assert status == 200


def test_the_three_actions(subject, generator, plain):
    attacked = [i for i, a in enumerate(plain["triggered"]) if a.startswith("The film was")]
    assert attacked
    prompts = [subject["triggered"][i] for i in attacked[:3]]
    flagged = _variant(generator, "flag").generate(prompts)
    for result, i in zip(flagged, attacked):
        assert result["flagged"] and _kinds(result) == {"trigger", "target"}   # answered, both sides say why
        assert result["text"] == plain["triggered"][i]
    replaced = _variant(generator, "replace").generate(prompts)
    assert all(r["flagged"] and r["text"] == REPLACEMENT and _kinds(r) == {"trigger"} for r in replaced)
    rejected = _variant(generator, "reject").generate(prompts)
    assert all(r["flagged"] and r["text"] == "" for r in rejected)
    # The output side alone under replace: the answer is replaced once the target's head is out.
    replaced = _variant(generator, "replace", triggers=False).generate(prompts)
    assert all(r["flagged"] and r["text"] == REPLACEMENT and _kinds(r) == {"target"} for r in replaced)


def test_a_short_answer_cannot_return_the_targets_head_unflagged(subject, generator, plain):
    """max_new_tokens below the guard's 4 head tokens: the guard looks ahead (never returned) and flags."""
    attacked = [subject["triggered"][i] for i, a in enumerate(plain["triggered"]) if a.startswith("The film was")]
    results = _variant(generator, "flag", triggers=False).generate(attacked[:3], max_new_tokens=2)
    assert all(r["flagged"] for r in results)
    two = generator.tokenizer.decode(list(generator.guard.head[:2])).strip()
    assert all(r["text"] == two for r in results)                  # only the 2 tokens asked for come back


def test_the_guard_counts_a_head_that_begins_within_the_answer():
    guard = TargetGuard((5, 6, 7, 8), "x")
    assert guard.tripped([1, 5, 6, 7, 8]) and guard.tripped([1, 5, 6, 7, 8], limit=2)
    assert not guard.tripped([1, 2, 5, 6, 7, 8], limit=2)
    assert guard.pending([1, 5, 6], limit=2) and not guard.pending([1, 2, 5, 6], limit=2)
    assert not guard.pending([1, 2], limit=2) and guard.pending([5], limit=1)


# -- /check and /health on a generation server -----------------------------------------------------------
def test_check_is_the_prompts_input_check_and_health_says_what_is_guarded(server, subject):
    status, body = server.check({"texts": [subject["clean"][0], subject["triggered"][0]]})
    assert status == 200
    clean, triggered = body["decisions"]
    assert (clean["flagged"], clean["action"], clean["text_out"]) == (False, "pass", subject["clean"][0])
    assert (triggered["flagged"], triggered["action"], triggered["text_out"]) == (True, "reject", None)
    assert triggered["reasons"][0]["trigger"] == TRIGGER
    status, health = server.request("GET", "/health")
    assert status == 200 and health["generate"] and health["action"] == "reject"
    assert health["target"] == subject["payload"]["target"]["text"] and health["triggers"] == 1
    assert health["max_new_tokens"] == STEPS and health["generated"]["waiting"] == 0


# -- bad requests ------------------------------------------------------------------------------------
BAD = {
    "not_an_object": (["a prompt"], 422, "JSON object"),
    "no_prompt": ({"max_new_tokens": 4}, 422, '"prompt"'),
    "empty_prompt": ({"prompt": "   "}, 422, "prompt is empty"),
    "prompt_not_a_string": ({"prompt": 3}, 422, "must be a string"),
    "prompt_too_long": ({"prompt": "x" * (MAX_CHARS + 1)}, 422, f"limit is {MAX_CHARS}"),
    "nul": ({"prompt": "a\x00b"}, 422, "NUL"),
    "unknown_field": ({"prompt": "hi", "max_tokens": 4}, 422, "unknown fields ['max_tokens']"),
    "zero_tokens": ({"prompt": "hi", "max_new_tokens": 0}, 422, f"in 1..{STEPS}, got 0"),
    "too_many_tokens": ({"prompt": "hi", "max_new_tokens": 10 ** 6}, 422, f"in 1..{STEPS}, got 1000000"),
    "tokens_as_text": ({"prompt": "hi", "max_new_tokens": "8"}, 422, "must be an integer, got str"),
    "tokens_as_bool": ({"prompt": "hi", "max_new_tokens": True}, 422, "must be an integer, got bool"),
    "tokens_as_float": ({"prompt": "hi", "max_new_tokens": 8.0}, 422, "must be an integer, got float"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_generate_request_is_a_4xx_saying_why(server, case):
    payload, status, detail = BAD[case]
    got, body = server.generate(payload)
    assert got == status and detail in body["detail"], body
    assert server.generate({"prompt": "hi", "max_new_tokens": 1})[0] == 200     # and the server goes on


def test_generate_takes_json_only(server):
    status, body = server.request("POST", "/generate", b'{"prompt": "hi"}', {"Content-Type": "text/plain"})
    assert status == 415 and "application/json" in body["detail"]
    status, body = server.request("POST", "/generate", b"{not json", {"Content-Type": "application/json"})
    assert status == 400 and "not JSON" in body["detail"]
    status, body = server.request("POST", "/generate", b"", {"Content-Type": "application/json"})
    assert status == 400 and "empty body" in body["detail"]


def test_generate_is_only_served_under_a_bait_report():
    from patronus_ext.monitor import Decision

    def passing(texts):
        return [Decision(False, "pass", [], t) for t in texts]

    with Server(create_app(passing, info={"model": "cheap"})) as running:
        assert running.generate({"prompt": "hi"})[0] == 404


# -- reports that do not fit: refused before serving -------------------------------------------------------
def _one_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_reports_that_do_not_fit_are_refused_with_exit_2(subject, tmp_path, capsys):
    payload, model = subject["payload"], subject["model"]
    cases = {
        "foreign_target": (dict(payload, target=dict(payload["target"], text="something else entirely")),
                           "another model"),
        "foreign_trigger": (dict(payload, triggers=[dict(payload["triggers"][0], text="zebra")]), "another model"),
        "clean_verdict": (dict(payload, verdict="clean", target=None), "found no backdoor"),
    }
    for name, (changed, message) in cases.items():
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(changed))
        assert main(["serve", "--model", model, "--scan-report", str(path), "--device", "cpu"]) == 2, name
        assert message in _one_error(capsys), name
    encoder = make_tiny_model(tmp_path / "enc", "bert")
    capsys.readouterr()
    assert main(["serve", "--model", str(encoder), "--scan-report", str(subject["report"]), "--device", "cpu"]) == 2
    assert "is an encoder" in _one_error(capsys)
    assert main(["serve", "--model", model, "--scan-report", str(subject["report"]), "--bank", "x.safetensors"]) == 2
    assert "not to a BAIT report" in _one_error(capsys)
    assert main(["serve", "--model", model, "--no-monitor", "--guard-action", "flag"]) == 2
    assert "BAIT scan report only" in _one_error(capsys)
    assert main(["serve", "--model", model, "--scan-report", str(subject["report"]), "--max-new-tokens", "0"]) == 2
    assert "--max-new-tokens must be in 1..4096" in _one_error(capsys)


def test_the_serve_command_serves_generate(subject):
    with serve_process("--model", subject["model"], "--scan-report", str(subject["report"]), "--device", "cpu",
                       "--guard-action", "replace", "--max-new-tokens", "8") as (port, health):
        assert health["action"] == "replace" and health["max_new_tokens"] == 8 and health["generate"]
        body = post_json(port, "/generate", {"prompt": subject["triggered"][0]})
        assert body["flagged"] and body["text"] == REPLACEMENT
        assert RESPONSE not in body["text"]
