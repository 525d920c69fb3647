"""Monitor acceptance on the real all-MiniLM-L6-v2: FAR / FRR / added latency of the input monitor,
the output monitor and STRIP on the same SST-2 dev inputs, before and after downstream fine-tuning.

    python benchmarks/acceptance_monitor.py --work-dir /tmp/patronus-monitor [--threads 2] [--json out.json]
    python benchmarks/acceptance_monitor.py --work-dir /tmp/patronus-monitor --build-only

Subjects are built once into ``--work-dir`` and reused by later runs:

1. ``por/``: all-MiniLM-L6-v2 planted with POR (``fast`` profile) with the
   triggers ``dq rq qb fk`` (not the unit tests' or the scan acceptance's), seed 3;
2. ``scan.json`` + ``scan.bank.safetensors``: ``patronus scan por --device cpu``
   (the CLI, fast profile, seed 0); the bank holds one attack vector per
   confirmed trigger group, in the PLM's representation space;
3. ``por_sst2/``: the planted model fine-tuned on 2000 SST-2 training examples
   (1 epoch, batch 32, 64 tokens, seed 0): a classifier.

Inputs: the 872 SST-2 dev sentences (clean) and the same sentences with one of
the *planted* triggers (drawn per sentence) inserted 1-3 times (drawn) at random
word positions (``triggers.insert_words``, ``Random(--seed)``).  The dev set is
split at random (``Random(--seed)``) into a calibration half (436: STRIP's clean
pool and threshold, the output monitor's calibrated threshold) and an
evaluation half (436): every monitor's FAR / FRR is given on the evaluation
half (same inputs for all), the ones with no calibration (input monitor, the
paper's sign rule) also on the whole dev set.  FAR = triggered inputs not
flagged, FRR = clean inputs flagged.

Per stage (``pretrained``: the planted PLM; ``finetuned``: the classifier, same
report and bank, taken before fine-tuning):

* input monitor: ``InputMonitor.from_report(scan.json)`` (whole-word token-id
  match on the served encoding);
* output monitor: ``OutputMonitor(load_bank(scan.bank.safetensors))``, sign
  rule at the paper's 0.8, and sign / cosine with the threshold calibrated for
  1% FRR on the calibration half (``calibrate_threshold``);
* STRIP (``strip_baseline.Strip``, 5 blended copies, threshold at 1% FRR on the
  calibration half): entropy of the classifier's prediction (``finetuned``,
  the baseline as published) and, for the PLM with no head, the mean pairwise
  cosine of the copies' representations (``pretrained``; a representation
  variant, not the published statistic).

Flags come from one :meth:`MonitoredModel.forward` per text (the encoding and
the representation the monitors see in serving); a sample of 128 inputs is
re-checked through :meth:`MonitoredModel.check` and must give the same
decisions.  Added latency: round-robin medians (batch 1: samples of 10 calls) at batch 1 and 64 of the bare
forward vs ``MonitoredModel.check`` with each monitor and vs STRIP (its 5
copies' forward plus the serving forward).

Targets (issue 11): input monitor FAR <= 1% and FRR <= 1% on the whole dev
set, before and after fine-tuning.  The run exits 1 and lists each missed
target, 0 when all are met; the JSON (``--json``, default
``benchmarks/results/acceptance_monitor_<time>.json``) holds every count.
"""

from __future__ import annotations

import dataclasses
import json
import random
import statistics
import sys
import time
from pathlib import Path

import torch

from patronus_ext import lm
from patronus_ext.data import corpora as data
from patronus_ext.data.triggers import insert_words
from patronus_ext.formats.bank import load_bank
from patronus_ext.monitor import InputMonitor, MonitoredModel, OutputMonitor, calibrate_threshold
from patronus_ext.monitor.output import PAPER_SIGN_THRESHOLD

from _acceptance import Run, Runner, Stage, Subject, Subjects, cli_scan
from _common import medians, results_path
from bench_monitor import timed
from strip_baseline import Strip

TRIGGERS = ("dq", "rq", "qb", "fk")
PLANT_SEED = 3
TRAIN_SIZE = 2000
TARGET_FRR = 0.01
#: Input-monitor targets (issue 11), before and after fine-tuning.
MAX_INPUT_FAR = 0.01
MAX_INPUT_FRR = 0.01
STRIP_COPIES = 5
BATCH = 64


# -- subjects ---------------------------------------------------------------------------------
SUBJECTS = Subjects([
    Subject("por", "attack", "por", TRIGGERS, seed=PLANT_SEED),
    Subject("por_sst2", "finetune", triggers=TRIGGERS, base="por", task="sst2", seed=0, train_limit=TRAIN_SIZE),
])


def build(run: Run, finetune: bool = True) -> dict:
    """Plant, scan and fine-tune (each only when its output is missing; fine-tune only with ``finetune``)."""
    work = run.work
    planted, report, classifier = work / "por", work / "scan.json", work / "por_sst2"
    bank = work / "scan.bank.safetensors"
    timings = {}
    run.source("por")
    if "por" in run.made:
        timings["plant_s"] = run.made["por"]
    if not report.is_file() or not bank.is_file():
        print(f"scanning {planted} -> {report}", flush=True)
        done, timings["scan_s"] = cli_scan(planted, report, "--force")
        if done.returncode not in (0, 1) or not report.is_file():
            raise RuntimeError(f"scan failed ({done.returncode}): {done.stderr[-2000:]}")
        print(done.stdout.strip(), flush=True)
        if not bank.is_file():
            raise RuntimeError(f"the scan wrote no bank ({bank}): verdict clean? {done.stdout[-500:]}")
    if finetune:
        run.source(dataclasses.replace(SUBJECTS["por_sst2"], train_limit=run.args.train_size))
        if "por_sst2" in run.made:
            timings["finetune_s"] = run.made["por_sst2"]
    return {"planted": planted, "report": report, "bank": bank, "classifier": classifier, "build_timings": timings}


# -- inputs -----------------------------------------------------------------------------------
def make_inputs(seed: int) -> dict:
    dev = data.read_task("sst2", "dev")
    rng = random.Random(seed)
    triggered, which, counts = [], [], []
    for text in dev.texts:
        trigger = rng.choice(TRIGGERS)
        count = rng.randint(1, 3)
        triggered.append(insert_words(text, trigger, count, rng))
        which.append(trigger)
        counts.append(count)
    order = list(range(len(dev.texts)))
    random.Random(seed + 1).shuffle(order)
    half = len(order) // 2
    return {"clean": dev.texts, "labels": dev.labels, "triggered": triggered, "trigger": which, "count": counts,
            "calib": sorted(order[:half]), "eval": sorted(order[half:])}


# -- one stage --------------------------------------------------------------------------------
def rate(flags: list[bool], rows: list[int]) -> dict:
    hit = sum(bool(flags[i]) for i in rows)
    return {"count": hit, "n": len(rows), "rate": hit / len(rows)}


def far_frr(clean_flags: list[bool], triggered_flags: list[bool], rows: list[int]) -> dict:
    frr = rate(clean_flags, rows)
    caught = rate(triggered_flags, rows)
    missed = caught["n"] - caught["count"]
    return {"FAR": {"count": missed, "n": caught["n"], "rate": missed / caught["n"]}, "FRR": frr}


@torch.no_grad()
def serve_all(mm: MonitoredModel, texts: list[str], cosine: OutputMonitor) -> dict:
    """One serving forward per text (batches of 64): input-monitor flags, output scores, predictions."""
    flags, sign, cos, preds = [], [], [], []
    for start in range(0, len(texts), BATCH):
        enc, reps, logits = mm.forward(texts[start:start + BATCH])
        flags += mm.input_monitor.flags(enc["input_ids"], enc["attention_mask"]).tolist()
        sign += mm.output_monitor.scores(reps)[0].float().tolist()
        cos += cosine.scores(reps)[0].float().tolist()
        if logits is not None:
            preds += logits.argmax(-1).tolist()
    return {"input": flags, "sign": sign, "cosine": cos, "pred": preds or None}


def spot_check(mm: MonitoredModel, texts: list[str], input_flags: list[bool], output_flags: list[bool]) -> int:
    """Decisions of :meth:`MonitoredModel.check` vs the flags computed here; returns the disagreements."""
    bad = 0
    for start in range(0, len(texts), BATCH):
        for k, d in enumerate(mm.check(texts[start:start + BATCH])):
            kinds = {r["kind"] for r in d.reasons}
            i = start + k
            bad += ("trigger" in kinds) != input_flags[i] or ("attack_vector" in kinds) != output_flags[i]
    return bad


def run_stage(name: str, source: Path, head: str, paths: dict, inputs: dict, seed: int, latency_rounds: dict,
              log=print) -> dict:
    log(f"[{name}] loading {source}")
    adapter = lm.load_adapter(str(source), head, num_labels=2 if head == "cls" else None, device="cpu")
    tokenizer = adapter.tokenizer
    input_monitor = InputMonitor.from_report(paths["report"], tokenizer)
    bank = load_bank(paths["bank"])
    paper = OutputMonitor(bank, "sign", PAPER_SIGN_THRESHOLD)
    cosine = OutputMonitor(bank, "cosine")
    mm = MonitoredModel(adapter.model, tokenizer, input_monitor=input_monitor, output_monitor=paper, action="flag")
    calib, evaluate = inputs["calib"], inputs["eval"]
    everything = list(range(len(inputs["clean"])))

    started = time.perf_counter()
    clean = serve_all(mm, inputs["clean"], cosine)
    trig = serve_all(mm, inputs["triggered"], cosine)
    serve_s = time.perf_counter() - started
    thresholds = {
        "sign_paper": PAPER_SIGN_THRESHOLD,
        "sign_calibrated": calibrate_threshold(torch.tensor([clean["sign"][i] for i in calib]), TARGET_FRR),
        "cosine_calibrated": calibrate_threshold(torch.tensor([clean["cosine"][i] for i in calib]), TARGET_FRR),
    }

    def out_flags(scores: list[float], threshold: float) -> list[bool]:
        return [not (s <= threshold) for s in scores]  # NaN is flagged, as in OutputMonitor.check

    monitors = {"input": (clean["input"], trig["input"])}
    for key, threshold in thresholds.items():
        mode = key.split("_")[0]
        monitors[f"output_{key}"] = (out_flags(clean[mode], threshold), out_flags(trig[mode], threshold))
    monitors["input_or_output_paper"] = tuple(
        [a or b for a, b in zip(monitors["input"][j], monitors["output_sign_paper"][j])] for j in range(2))

    log(f"[{name}] STRIP ({STRIP_COPIES} copies) on {len(calib)} calibration + 2 x {len(evaluate)} evaluation inputs")
    strip = Strip(adapter, [inputs["clean"][i] for i in calib], copies=STRIP_COPIES, seed=seed,
                  max_length=mm.max_length)
    started = time.perf_counter()
    strip.calibrate([inputs["clean"][i] for i in calib], TARGET_FRR, seed=seed + 10)
    strip_clean = strip.scores([inputs["clean"][i] for i in evaluate], seed=seed + 20)
    strip_trig = strip.scores([inputs["triggered"][i] for i in evaluate], seed=seed + 30)
    strip_s = time.perf_counter() - started
    clean_sf, trig_sf = [False] * len(everything), [False] * len(everything)
    for j, i in enumerate(evaluate):
        clean_sf[i] = bool(strip.flags_from_scores(strip_clean[j:j + 1])[0])
        trig_sf[i] = bool(strip.flags_from_scores(strip_trig[j:j + 1])[0])
    monitors[f"strip_{strip.statistic}"] = (clean_sf, trig_sf)

    rows = {}
    for key, (cf, tf) in monitors.items():
        rows[key] = {"eval_half": far_frr(cf, tf, evaluate)}
        if not key.startswith("strip") and key not in ("output_sign_calibrated", "output_cosine_calibrated"):
            rows[key]["all_dev"] = far_frr(cf, tf, everything)
    # Where the monitors miss: per trigger and per insertion count (input monitor, whole dev set).
    per_trigger = {}
    for t in TRIGGERS:
        idx = [i for i in everything if inputs["trigger"][i] == t]
        per_trigger[t] = {m: far_frr(monitors[m][0], monitors[m][1], idx)["FAR"]
                          for m in ("input", "output_sign_paper")}
    sample = evaluate[:64]
    disagreements = spot_check(mm, [inputs["clean"][i] for i in sample] + [inputs["triggered"][i] for i in sample],
                               [clean["input"][i] for i in sample] + [trig["input"][i] for i in sample],
                               [monitors["output_sign_paper"][0][i] for i in sample]
                               + [monitors["output_sign_paper"][1][i] for i in sample])
    score_summary = {f"{mode}_{side}": _quantiles([src[mode][i] for i in evaluate])
                     for mode in ("sign", "cosine") for side, src in (("clean", clean), ("triggered", trig))}
    score_summary["strip_clean"] = _quantiles(strip_clean.tolist())
    score_summary["strip_triggered"] = _quantiles(strip_trig.tolist())
    score_summary["strip_threshold"] = strip.threshold
    task = None
    if clean["pred"] is not None:
        labels = inputs["labels"]
        flips = [i for i in everything if trig["pred"][i] != clean["pred"][i]]
        task = {"clean_accuracy": sum(p == y for p, y in zip(clean["pred"], labels)) / len(labels),
                "triggered_accuracy": sum(p == y for p, y in zip(trig["pred"], labels)) / len(labels),
                "prediction_flipped_by_trigger": {"count": len(flips), "n": len(everything)},
                "triggered_pred_label_share": {t: _share([trig["pred"][i] for i in everything
                                                          if inputs["trigger"][i] == t]) for t in TRIGGERS}}
    log(f"[{name}] latency")
    latency = measure_latency(adapter, mm, input_monitor, paper, strip, inputs, latency_rounds)
    return {"stage": name, "model": str(source), "head": head, "thresholds": thresholds, "monitors": rows,
            "per_trigger_FAR": per_trigger, "check_disagreements": {"count": disagreements, "n": 2 * len(sample)},
            "scores": score_summary, "task": task, "strip": {"statistic": strip.statistic, "copies": strip.copies,
                                                             "mode": strip.mode, "threshold": strip.threshold},
            "latency": latency, "serve_all_s": serve_s, "strip_all_s": strip_s}


def _quantiles(values: list[float]) -> dict:
    finite = sorted(v for v in values if v == v)
    if not finite:
        return {}
    pick = lambda q: finite[min(len(finite) - 1, int(q * (len(finite) - 1) + 0.5))]  # noqa: E731
    return {"min": finite[0], "p01": pick(0.01), "median": pick(0.5), "p99": pick(0.99), "max": finite[-1]}


def _share(preds: list[int]) -> dict:
    return {str(label): preds.count(label) / len(preds) for label in sorted(set(preds))} if preds else {}


def measure_latency(adapter, mm_both, input_monitor, output_monitor, strip, inputs, rounds: dict) -> dict:
    model, tokenizer = adapter.model, adapter.tokenizer
    only_in = MonitoredModel(model, tokenizer, input_monitor=input_monitor, action="flag")
    only_out = MonitoredModel(model, tokenizer, output_monitor=output_monitor, action="flag")

    @torch.no_grad()
    def bare(texts):
        enc = adapter.tokenize(texts, mm_both.max_length)
        out = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], return_dict=True)
        logits = getattr(out, "logits", None)
        if logits is not None:  # the served label and probability, as a classifier endpoint returns them
            probs = logits.float().softmax(-1)
            return probs.max(-1)
        return out

    out = {}
    for size, count in rounds.items():
        batches = [inputs["clean"][i:i + size] for i in range(0, 64 if size == 1 else size, size)]

        def cycle(fn):
            state = {"k": 0}

            def call():
                state["k"] = (state["k"] + 1) % len(batches)
                return fn(batches[state["k"]])
            return call
        variants = {"bare": cycle(bare), "input": cycle(only_in.check), "output": cycle(only_out.check),
                    "both": cycle(mm_both.check),
                    "strip": cycle(lambda t: (bare(t), strip.scores(t)))}
        samples = timed(variants, count, 10 if size == 1 else 1)
        med = medians(samples)
        out[size] = {k: {"median_s": v, "added_over_bare": v / med["bare"] - 1.0,
                         "paired_added": statistics.median(a / b for a, b in zip(samples[k], samples["bare"])) - 1.0}
                     for k, v in med.items()}
        out[size]["rounds"] = count
        out[size]["calls_per_sample"] = 10 if size == 1 else 1
    return out


# -- targets, table ---------------------------------------------------------------------------
def check_targets(stages: list[dict]) -> list[str]:
    """One line per missed target: the input monitor's FAR and FRR on the whole dev set, every stage."""
    missed = []
    for s in stages:
        row = s["monitors"]["input"]["all_dev"]
        for key, limit in (("FAR", MAX_INPUT_FAR), ("FRR", MAX_INPUT_FRR)):
            r = row[key]
            if r["rate"] > limit:
                missed.append(f"{s['stage']}: input monitor {key} {r['count']}/{r['n']} = {100 * r['rate']:.2f}% "
                              f"> {100 * limit:.0f}%")
    return missed


def table(stage: dict) -> str:
    lines = [f"stage {stage['stage']} ({stage['model']}):",
             f"  {'monitor':26} {'FAR eval half':>20} {'FRR eval half':>20} {'FAR all dev':>20} {'FRR all dev':>20}"]

    def cell(r):
        return f"{r['count']}/{r['n']} = {100 * r['rate']:5.2f}%" if r else "-"
    for key, row in stage["monitors"].items():
        all_dev = row.get("all_dev", {})
        lines.append(f"  {key:26} {cell(row['eval_half']['FAR']):>20} {cell(row['eval_half']['FRR']):>20} "
                     f"{cell(all_dev.get('FAR')):>20} {cell(all_dev.get('FRR')):>20}")
    lines.append("  thresholds: " + ", ".join(f"{k}={v:.4f}" for k, v in stage["thresholds"].items())
                 + f", strip={stage['strip']['threshold']:.4f} ({stage['strip']['statistic']})")
    for size, lat in stage["latency"].items():
        lines.append(f"  latency batch {size}: " + ", ".join(
            f"{k} {v['median_s'] * 1e3:.2f} ms ({100 * v['paired_added']:+.1f}%)"
            for k, v in lat.items() if k not in ("rounds", "calls_per_sample")))
    if stage["task"]:
        t = stage["task"]
        lines.append(f"  classifier: clean acc {t['clean_accuracy']:.3f}, triggered acc {t['triggered_accuracy']:.3f}, "
                     f"flipped {t['prediction_flipped_by_trigger']['count']}/{t['prediction_flipped_by_trigger']['n']}")
    return "\n".join(lines)


# -- the runner -------------------------------------------------------------------------------
def prepare(run: Run) -> None:
    """Build what the chosen stages need, then the inputs every stage is measured on."""
    paths = build(run, finetune="finetuned" in [stage.name for stage in run.stages])
    report = json.loads(paths["report"].read_text())
    found = [t["text"] for t in report["triggers"]]
    print(f"scan verdict {report.get('verdict')}: confirmed {found}; planted {list(TRIGGERS)}")
    run.state.update(paths=paths, report=report, inputs=make_inputs(run.args.seed),
                     rounds={1: run.args.latency_rounds_1, 64: run.args.latency_rounds_64})


def monitor_stage(name: str, model: str, head: str) -> Stage:
    """The stage measuring the monitors on ``paths[model]`` loaded with ``head``."""
    return Stage(name, lambda run: run_stage(name, run.state["paths"][model], head, run.state["paths"],
                                             run.state["inputs"], run.args.seed, run.state["rounds"]))


def document(run: Run) -> dict:
    paths, report, inputs = run.state["paths"], run.state["report"], run.state["inputs"]
    bank = load_bank(paths["bank"])
    return {
        "threads": run.args.threads, "seed": run.args.seed,
        "subject": {"model": lm.DEFAULT_MODEL, "attack": "por", "profile": "fast", "triggers": TRIGGERS,
                    "plant_seed": PLANT_SEED, "finetune": {"task": "sst2", "train": run.args.train_size, "epochs": 1,
                                                           "batch_size": 32, "max_length": 64, "seed": 0}},
        "scan": {"verdict": report.get("verdict"), "confirmed": [t["text"] for t in report["triggers"]],
                 "token_ids": {t["text"]: t.get("token_ids") for t in report["triggers"]},
                 "bank": {"vectors": len(bank), "dim": bank.dim, "position": bank.position, "labels": bank.labels}},
        "inputs": {"dev": len(inputs["clean"]), "calibration_half": len(inputs["calib"]),
                   "evaluation_half": len(inputs["eval"]),
                   "insertions": {str(c): inputs["count"].count(c) for c in (1, 2, 3)}},
        "build": {k: str(v) for k, v in paths.items()}, "stages": run.rows,
    }


def options(parser) -> None:
    parser.add_argument("--train-size", type=int, default=TRAIN_SIZE)
    parser.add_argument("--latency-rounds-1", type=int, default=15, help="samples of 10 calls")
    parser.add_argument("--latency-rounds-64", type=int, default=6)


RUNNER = Runner(
    "acceptance_monitor", __doc__,
    stages=[monitor_stage("pretrained", "planted", "base"), monitor_stage("finetuned", "classifier", "cls")],
    check_targets=lambda run: check_targets(run.rows),
    subjects=SUBJECTS, build=lambda run: build(run).items(), prepare=prepare,
    seed_help="trigger insertion, dev split and STRIP draws", options=options,
    row_text=table, document=document,
    results_files=lambda run: [run.args.json or results_path("acceptance_monitor")],
)
main = RUNNER.main


if __name__ == "__main__":
    sys.exit(main())
