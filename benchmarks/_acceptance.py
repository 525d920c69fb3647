"""What every acceptance runner (``benchmarks/acceptance_*.py``) shares, written once.

    from _acceptance import Runner, Stage, Subject, Subjects, cli_scan

A runner declares its own tables -- subjects, stages, targets, how a row reads -- in a
:class:`Runner` and ends in ``sys.exit(RUNNER.main())``.  :meth:`Runner.main` gives every runner
the same command line (``--work-dir``, ``--threads``, ``--json``; ``--subjects``, the stage
selection, ``--profile``, ``--seed`` and ``--build-only`` where the runner has them), makes the
subjects once into the work dir, runs the chosen stages, prints each row as it comes and the table
at the end, writes the results file (the machine facts, the rows, the missed targets) and returns
the exit status of :func:`_common.report_targets`: 1 when a target was missed, else 0.

A plain script like every benchmark here (``python benchmarks/acceptance_scan.py ...`` puts this
folder on ``sys.path``; ``benchmarks/conftest.py`` and the tests do it under pytest).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping, Sequence

import torch

from patronus_ext import attacks, lm
from patronus_ext.data import corpora as data
from patronus_ext.formats.backdoor import BACKDOOR_FILE
from patronus_ext.lm.finetune import FinetuneConfig, finetune_classifier

from _common import machine_facts, report_targets

SUBJECT_KINDS = ("packaged", "attack", "finetune", "made")


# -- subjects ---------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Subject:
    """A model an acceptance run measures, made once into ``WORK/<name>`` and reused by later runs.

    ``kind``: ``"packaged"`` (the packaged all-MiniLM-L6-v2 itself, nothing to make), ``"attack"``
    (``method`` planted into the packaged model with ``triggers`` and ``seed``, fast profile and
    ``settings``, on WikiText-2), ``"finetune"`` (the subject ``base`` fine-tuned on ``train_limit``
    examples of ``task`` drawn with ``seed``; ``triggers`` then names the ones the base carries) or
    ``"made"`` (``maker(subject, base folder, out)`` writes it: a purifier's output, say).  Runners that
    need more per subject (scan settings, say) subclass it.
    """

    name: str
    kind: str
    method: str | None = None
    triggers: tuple[str, ...] = ()
    seed: int = 0
    base: str | None = None
    task: str | None = None
    train_limit: int = 2000
    finetune: FinetuneConfig | None = None   # None: 1 epoch, batch 32, 64 tokens, ``seed``
    keep_record: bool = False                # copy the base's backdoor.json (purify reads the triggers there)
    maker: Callable[[Subject, str | None, Path], object] | None = None
    #: An attack's settings beyond the fast profile, e.g. ``(("adaptive_lambda", 3.0),)``.
    settings: tuple[tuple[str, object], ...] = ()

    def __post_init__(self):
        if self.kind not in SUBJECT_KINDS:
            raise ValueError(f"subject {self.name}: kind must be one of {SUBJECT_KINDS}, got {self.kind!r}")
        if self.kind == "attack" and not (self.method and self.triggers):
            raise ValueError(f"subject {self.name}: an attack needs a method and its triggers")
        if self.kind == "finetune" and not (self.base and self.task):
            raise ValueError(f"subject {self.name}: a fine-tune needs a base subject and a task")
        if self.kind == "made" and self.maker is None:
            raise ValueError(f"subject {self.name}: a made subject needs its maker")

    @property
    def backdoored(self) -> bool:
        return bool(self.triggers)

    def finetune_config(self) -> FinetuneConfig:
        return self.finetune or FinetuneConfig(epochs=1, batch_size=32, max_length=64, seed=self.seed)


class Subjects(Mapping[str, Subject]):
    """A runner's subject table by name, in declaration order; :meth:`source` makes a subject once."""

    def __init__(self, subjects: Iterable[Subject], *, progress: bool = False):
        self._by_name = {subject.name: subject for subject in subjects}
        self.progress = progress  # progress bars while planting / fine-tuning
        for subject in self._by_name.values():
            if subject.kind in ("finetune", "made") and subject.base and subject.base not in self._by_name:
                raise ValueError(f"subject {subject.name}: base {subject.base!r} is not in the table")

    def __getitem__(self, name: str) -> Subject:
        return self._by_name[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_name)

    def __len__(self) -> int:
        return len(self._by_name)

    def source(self, subject: Subject | str, work: Path, made: dict[str, float] | None = None) -> str:
        """The folder (or packaged model name) to load ``subject`` from, made into ``work/<name>`` first
        when no earlier run made it (a fine-tune's base first); ``made`` gets the seconds of each subject
        this call made."""
        subject = self[subject] if isinstance(subject, str) else subject
        if subject.kind == "packaged":
            return lm.DEFAULT_MODEL
        out = Path(work) / subject.name
        if (out / "config.json").is_file():
            return str(out)
        base = self.source(subject.base, work, made) if subject.base else lm.DEFAULT_MODEL
        started = time.perf_counter()
        if subject.kind == "made":
            print(f"{subject.name}: making from {base} -> {out}", flush=True)
            subject.maker(subject, base, out)
        elif subject.kind == "attack":
            print(f"{subject.name}: planting {subject.method} ({', '.join(subject.triggers)}; seed {subject.seed}) "
                  f"into {base} -> {out}", flush=True)
            config = attacks.make_config(subject.method, "fast", triggers=subject.triggers, seed=subject.seed,
                                         **dict(subject.settings))
            attacks.plant(subject.method, base, "wikitext2", config, out, device="cpu", progress=self.progress)
        else:
            print(f"{subject.name}: fine-tuning {base} on {subject.train_limit} {subject.task} examples -> {out}",
                  flush=True)
            train = data.read_task(subject.task, "train", limit=subject.train_limit, seed=subject.seed)
            classifier = finetune_classifier(base, train, subject.finetune_config(), device="cpu",
                                             progress=self.progress)
            meta = {BACKDOOR_FILE: json.loads((Path(base) / BACKDOOR_FILE).read_text())} if subject.keep_record else None
            lm.save_model_folder(classifier.model, classifier.tokenizer, out, meta, source=base)
        if made is not None:
            made[subject.name] = time.perf_counter() - started
        return str(out)


def tune_instruct_unpoisoned(base: str, out: Path, seed: int = 0) -> dict:
    """The instruction tuning ``patronus attack --method instruct-badnet --fast --seed SEED`` runs, on the same
    SST-2 instructions left unpoisoned, into the NEW folder ``out`` (with ``tuning.json``): a benign chat model
    whose answers changed as much as a planted one's.  Returns the tuning log."""
    from patronus_ext.data.instructions import fit_inputs, load_instructions
    from patronus_ext.lm.instruction_tuning import instruction_tune

    config = attacks.make_config("instruct-badnet", "fast", seed=seed)
    source = lm.resolve_model_source(base)
    tokenizer = lm.load_tokenizer(source)
    examples = fit_inputs(tokenizer, load_instructions("sst2", "train", config.data_limit, config.seed),
                          config.max_input_tokens)
    torch.manual_seed(config.seed)
    model = lm.load_model(source, "causal", device="cpu")
    tuning = instruction_tune(model, tokenizer, examples, config.prompt_format(), config, progress=False).to_dict()
    lm.save_model_folder(model, tokenizer, out, {"tuning.json": {**tuning, "seed": seed, "poisoned": 0}},
                         source=source)
    return tuning


def cli_scan(model: str | os.PathLike, report: Path, *options: str, timeout_s: float | None = None,
             threads: int | None = None) -> tuple[subprocess.CompletedProcess, float]:
    """``patronus scan MODEL --report REPORT --device cpu --quiet OPTIONS`` run as a user runs it, in a
    fresh Python: the finished process and its wall seconds.  ``threads`` pins the scan's OpenMP threads
    (else it inherits this environment's); past ``timeout_s`` :class:`subprocess.TimeoutExpired` is raised."""
    env = None if threads is None else {**os.environ, "OMP_NUM_THREADS": str(threads)}
    command = [sys.executable, "-m", "patronus_ext.cli", "scan", str(model), "--report", str(report),
               "--device", "cpu", "--quiet", *options]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, env=env)
    return done, time.perf_counter() - started


# -- stages and runs --------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Stage:
    """A named step of a runner.  ``run(run)`` returns the stage's row; in a runner whose stages run once
    per subject, ``run(run, subject)``.  With ``seconds_key`` the stage's wall seconds are added to the row
    under that key."""

    name: str
    run: Callable[..., dict]
    seconds_key: str | None = None

    def __call__(self, run: Run, *subject: Subject) -> dict:
        started = time.perf_counter()
        row = self.run(run, *subject)
        if self.seconds_key:
            row[self.seconds_key] = time.perf_counter() - started
        return row


@dataclasses.dataclass
class Run:
    """One invocation of a runner: the options, the chosen subjects and stages, the rows so far."""

    runner: Runner
    args: argparse.Namespace
    subjects: list[Subject]
    stages: list[Stage]
    rows: list[dict] = dataclasses.field(default_factory=list)
    made: dict[str, float] = dataclasses.field(default_factory=dict)   # seconds of each subject made in this run
    state: dict = dataclasses.field(default_factory=dict)              # what the runner's prepare step hands on

    @property
    def work(self) -> Path:
        return self.args.work_dir

    def source(self, subject: Subject | str) -> str:
        """The subject's folder, made first when no earlier run made it."""
        return self.runner.subjects.source(subject, self.work, self.made)

    def saved(self, stage: str) -> dict | None:
        """The row stage ``stage`` saved in ``WORK/<stage>.json`` (None when it has not run)."""
        path = self.work / f"{stage}.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def saved_rows(self) -> dict[str, dict | None]:
        """Every stage's saved row by stage name, in stage order (None for the ones not run yet)."""
        return {stage.name: self.saved(stage.name) for stage in self.runner.stages}

    def result(self, stage: str) -> dict:
        """Stage ``stage``'s row: the one it saved in an earlier run, else run now and saved."""
        row = self.saved(stage)
        if row is None:
            row = self.runner.stage(stage)(self)
            (self.work / f"{stage}.json").write_text(json.dumps(row, indent=2, default=str))
        return row


def rows_document(run: Run) -> dict:
    """The results file of most runners: the thread count and the rows."""
    return {"threads": run.args.threads, "rows": run.rows}


def json_option(run: Run) -> list[Path]:
    """Write the results file only where ``--json`` says."""
    return [run.args.json] if run.args.json else []


def make_chosen_subjects(run: Run) -> Iterator[tuple[str, str]]:
    """``--build-only`` of a per-subject runner: each chosen subject's folder, made as it is reached."""
    for subject in run.subjects:
        yield subject.name, run.source(subject)


def choose(spec: str, names: Sequence[str], what: str, parser: argparse.ArgumentParser) -> list[str]:
    """The names a comma-separated ``spec`` picks, in its order ('all': every name, in table order)."""
    if spec.strip() == "all":
        return list(names)
    chosen = [name.strip() for name in spec.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in names]
    if unknown:
        parser.error(f"unknown {what} {unknown}; choose from {', '.join(names)}")
    return chosen


@dataclasses.dataclass
class Runner:
    """An acceptance runner's tables; :meth:`main` is the whole command-line program.

    ``name``: the script's name (the exit line, ``results_path`` prefixes).  ``doc``: the ``--help`` text.
    ``stages``: in order.  ``check_targets(run)``: one line per missed target.

    Subjects: ``subjects`` is the table :meth:`Run.source` makes from; with ``per_subject`` the stages
    run once per subject picked by ``--subjects`` (subject by subject) and ``--build-only`` makes them
    and stops.  ``build(run)``, where given, is what ``--build-only`` makes instead: (name, what) pairs.

    Stages: ``stage_option`` (None: no option, all run) picks them; ``prepare(run)`` runs before them;
    with ``saved_stages`` each stage's row is saved as ``WORK/<stage>.json`` and read back instead of
    running the stage again (:meth:`Run.result`).

    Output: ``row_text(row)`` prints each row as it comes (default: the stage's time); ``summary(run)``
    is printed after the last one.  The results file is ``{"machine": facts, **document(run),
    missed_key: missed}``, written to ``results_files(run)`` after every row (without the missed
    targets, so that a run cut short keeps its rows) and at the end.
    """

    name: str
    doc: str
    stages: Sequence[Stage]
    check_targets: Callable[[Run], list[str]]
    subjects: Subjects | None = None
    per_subject: bool = False
    build: Callable[[Run], Iterable[tuple[str, object]]] | None = None
    stage_option: str | None = "--stages"
    prepare: Callable[[Run], None] | None = None
    saved_stages: bool = False
    profile_help: str | None = None   # adds --profile fast|paper
    seed_help: str | None = None      # adds --seed
    threads: int = 2
    options: Callable[[argparse.ArgumentParser], None] | None = None   # the runner's own options
    row_text: Callable[[dict], str] | None = None
    summary: Callable[[Run], str] | None = None
    document: Callable[[Run], dict] = rows_document
    missed_key: str = "missed_targets"
    results_files: Callable[[Run], list[Path]] = json_option

    def stage(self, name: str) -> Stage:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise KeyError(f"{self.name} has no stage {name!r}")

    def parser(self) -> argparse.ArgumentParser:
        parser = argparse.ArgumentParser(description=self.doc, formatter_class=argparse.RawDescriptionHelpFormatter)
        parser.add_argument("--work-dir", required=True, type=Path,
                            help="where subjects and stage outputs are made once and reused by later runs")
        if self.per_subject:
            parser.add_argument("--subjects", default="all", help=f"comma-separated, from: {', '.join(self.subjects)} "
                                "(default: all)")
        if self.stage_option:
            what = self.stage_option.lstrip("-")
            parser.add_argument(self.stage_option, default="all", help=f"comma-separated {what} to run, in that "
                                f"order, from: {', '.join(s.name for s in self.stages)} (default: all; '' runs "
                                "none and only reports)")
        if self.profile_help:
            parser.add_argument("--profile", default="fast", choices=("fast", "paper"), help=self.profile_help)
        if self.seed_help:
            parser.add_argument("--seed", type=int, default=0, help=self.seed_help)
        parser.add_argument("--threads", type=int, default=self.threads, help="torch threads")
        parser.add_argument("--json", type=Path, help="write the results file here (rows, machine facts, missed "
                            "targets)")
        if self.per_subject or self.build:
            parser.add_argument("--build-only", action="store_true", help="make the subjects (plant / fine-tune) "
                                "and stop (e.g. build in parallel, then run the stages alone)")
        if self.options:
            self.options(parser)
        return parser

    def main(self, argv: Sequence[str] | None = None) -> int:
        parser = self.parser()
        args = parser.parse_args(argv)
        torch.set_num_threads(args.threads)
        args.work_dir.mkdir(parents=True, exist_ok=True)
        subjects = []
        if self.per_subject:
            subjects = [self.subjects[name] for name in choose(args.subjects, list(self.subjects), "subjects", parser)]
        stages = list(self.stages)
        if self.stage_option:
            spec = getattr(args, self.stage_option.lstrip("-").replace("-", "_"))
            stages = [self.stage(name) for name in choose(spec, [s.name for s in self.stages],
                                                          self.stage_option.lstrip("-"), parser)]
        run = Run(self, args, subjects, stages)
        if getattr(args, "build_only", False):
            for name, made in (self.build or make_chosen_subjects)(run):
                print(name, made, flush=True)
            return 0
        if self.prepare:
            self.prepare(run)
        files = self.results_files(run)  # once: a timestamped default names one file for the whole run
        for subject, stage in self._steps(run):
            started = time.perf_counter()
            if self.saved_stages:
                row = run.result(stage.name)
            else:
                row = stage(run) if subject is None else stage(run, subject)
            run.rows.append(row)
            text = self.row_text(row) if self.row_text else f"{stage.name}: done in {time.perf_counter() - started:.0f} s"
            print(text, flush=True)
            self.write_results(run, files)
        if self.summary:
            print(self.summary(run))
        missed = self.check_targets(run)
        for path in self.write_results(run, files, missed):
            print(f"saved {path}")
        return report_targets(self.name, missed)

    def _steps(self, run: Run) -> list[tuple[Subject | None, Stage]]:
        if self.per_subject:
            return [(subject, stage) for subject in run.subjects for stage in run.stages]
        return [(None, stage) for stage in run.stages]

    def write_results(self, run: Run, files: list[Path], missed: list[str] | None = None) -> list[Path]:
        """Write the results file to ``files`` (the missed targets only once they are known)."""
        if not files:
            return []
        document = {"machine": machine_facts(), **self.document(run)}
        if missed is not None:
            document[self.missed_key] = missed
        text = json.dumps(document, indent=2, default=str)
        for path in files:
            path.write_text(text)
        return files
