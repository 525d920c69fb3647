"""The audit driver: hash the models, skip what the folder already holds, run the rest, record each as it ends."""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import logging
import time
from pathlib import Path
from typing import Any, Sequence

from ..core.validation import check_choice
from . import results as store
from .runners import LocalRunner, RayRunner, open_runner
from .sources import ModelSource, describe_source, unique
from .task import METHODS, JobOutcome, ScanJob, TaskInputs, run_job

log = logging.getLogger(__name__)

METHOD_CHOICES = (*METHODS, "both")


def methods_of(choice: str) -> tuple[str, ...]:
    """``patronus``, ``lmsanitator`` or ``both`` as the methods run."""
    check_choice("method", choice, METHOD_CHOICES)
    return METHODS if choice == "both" else (choice,)


@dataclasses.dataclass(frozen=True)
class AuditSettings:
    """What every model is scanned with.  An audit folder keeps one set (``audit.json``); resuming with another
    is refused, so every verdict in a folder means the same thing.  ``corpus``: a corpus name or file (read once
    by the driver), or the texts themselves."""

    methods: tuple[str, ...] = ("patronus",)
    scan_config: Any = None        # ScanConfig (default: the fast profile)
    lms_config: Any = None         # LMSanitatorConfig (default: the fast profile)
    corpus: str | tuple[str, ...] = "wikitext2"
    allow_pickle: bool = False

    def __post_init__(self):
        from ..detect import LMSanitatorConfig, ScanConfig

        if not self.methods or len(set(self.methods)) != len(self.methods):
            raise ValueError(f"methods must be distinct names of {', '.join(METHODS)}, got {self.methods!r}")
        for method in self.methods:
            check_choice("method", method, METHODS)
        if self.scan_config is None:
            object.__setattr__(self, "scan_config", ScanConfig.profile("fast"))
        if self.lms_config is None:
            object.__setattr__(self, "lms_config", LMSanitatorConfig.profile("fast"))
        if not isinstance(self.corpus, str):
            object.__setattr__(self, "corpus", tuple(str(t) for t in self.corpus))

    def fingerprint(self) -> dict:
        """The settings a resumed audit must share (methods excepted: each record names its method)."""
        corpus = self.corpus if isinstance(self.corpus, str) else \
            "texts:" + hashlib.sha256("\n".join(self.corpus).encode("utf-8")).hexdigest()
        return {"patronus": dataclasses.asdict(self.scan_config), "lmsanitator": dataclasses.asdict(self.lms_config),
                "corpus": corpus}

    def config(self, method: str):
        return self.scan_config if method == "patronus" else self.lms_config

    def read_corpus(self, method: str) -> tuple[str, ...]:
        from ..detect import read_scan_corpus

        config = self.config(method)
        source = self.corpus if isinstance(self.corpus, str) else list(self.corpus)
        return tuple(read_scan_corpus(source, config, config.seed))


@dataclasses.dataclass
class AuditRun:
    """What one call of :func:`run_audit` did.  ``final``: the latest record of every (model, method) asked for."""

    out_dir: Path
    runner: str
    written: list[dict]            # the lines this run appended to results.jsonl
    scanned: int = 0               # tasks run to an outcome (a verdict or a model error)
    skipped: int = 0               # (model, method) already recorded: nothing run, nothing written
    reused: int = 0                # recorded from a scan of the same content (earlier, or another path now)
    retried: int = 0               # tasks submitted again after their worker died
    hash_seconds: float = 0.0
    wall_seconds: float = 0.0
    final: list[dict] = dataclasses.field(default_factory=list)
    remaining: int = 0             # (model, method) with no record (an interrupted audit)

    def count(self, verdict: str | None) -> int:
        return sum(1 for r in self.final if r.get("verdict") == verdict)

    @property
    def failed(self) -> int:
        return self.count(None)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def record_of(outcome: JobOutcome, runner: str, report: str | None) -> dict:
    """The results.jsonl line of one task's outcome (``verdict`` null and ``error`` set when it failed)."""
    job = outcome.job
    record = {"model": job.model, "content_hash": job.content_hash, "method": job.method,
              "verdict": outcome.verdict, "triggers": list(outcome.triggers), "attack_vectors": outcome.attack_vectors,
              "report": report, "attempts": job.attempt, "runner": runner, "node": outcome.node, "pid": outcome.pid,
              "device": outcome.device, "timings": outcome.timings, "finished_at": _now()}
    if outcome.error is not None:
        record["error"] = outcome.error
    return record


def source_error_record(source: ModelSource, method: str) -> dict:
    """A model with no folder or hash (missing path, hub fetch failed): recorded without a task."""
    return {"model": source.model, "content_hash": None, "method": method, "verdict": None, "triggers": [],
            "attack_vectors": 0, "report": None, "attempts": 0, "runner": None, "node": None, "pid": None,
            "device": None, "timings": {}, "finished_at": _now(), "error": source.error}


def run_audit(models: Sequence[str], out_dir: str | Path, settings: AuditSettings | None = None, *,
              runner: str | LocalRunner | RayRunner = "auto", cpus_per_scan: int | None = None,
              gpus_per_scan: float = 0, device: str | None = None, ray_cpus: int | None = None,
              max_retries: int = 2, retry_failed: bool = False, progress: bool = True,
              task=run_job) -> AuditRun:
    """Audit ``models`` into ``out_dir`` (created, or resumed when it holds an audit of the same settings).

    ``runner``: ``"local"``, ``"auto"``, a Ray address (see :func:`~.runners.open_runner`) or a runner object
    (entered here).  A (content hash, method) already recorded is not scanned again; a recorded failure is
    final too unless ``retry_failed``.  ``task``: the function each task runs (default :func:`~.task.run_job`).
    """
    settings = settings or AuditSettings()
    names = unique(str(m) for m in models)
    if not names:
        raise ValueError("no model to audit: give model folders or names, or --list FILE")
    started = time.perf_counter()
    out = store.prepare_folder(out_dir, settings.fingerprint())
    results_path = out / store.RESULTS_FILE
    with store.locked(out):
        records = store.read_records(results_path)
        by_content = store.latest_by(records, "content_hash", "method")
        by_name = store.latest_by(records, "model", "content_hash", "method")

        def final(record: dict | None) -> bool:
            return record is not None and (record.get("verdict") is not None or not retry_failed)

        from tqdm.auto import tqdm

        phase = time.perf_counter()  # the driver reads every model once: a resume key needs the content
        sources = [describe_source(name) for name in tqdm(names, desc="hashing", unit="model", leave=False,
                                                             disable=not progress or len(names) < 2)]
        hash_seconds = time.perf_counter() - phase
        run = AuditRun(out, "none", [], hash_seconds=hash_seconds)
        jobs: dict[tuple[str, str], ScanJob] = {}
        copies: dict[tuple[str, str], list[str]] = {}   # more names with the content of a job's model
        pending_lines: list[dict] = []
        for source in sources:
            for method in settings.methods:
                if source.content_hash is None:
                    if final(by_name.get((source.model, None, method))):
                        run.skipped += 1
                    else:
                        pending_lines.append(source_error_record(source, method))
                    continue
                key = (source.content_hash, method)
                prior = by_content.get(key)
                if final(prior):
                    mine = by_name.get((source.model, *key))
                    if final(mine) and mine.get("verdict") == prior.get("verdict"):
                        run.skipped += 1
                    else:
                        original = prior.get("same_content_as") or prior["model"]
                        pending_lines.append({**prior, "model": source.model, "same_content_as": original,
                                              "finished_at": _now()})
                        run.reused += 1
                elif key in jobs:
                    copies[key].append(source.model)
                else:
                    jobs[key] = ScanJob(source.model, source.folder, source.content_hash, method)
                    copies[key] = []
        if run.skipped or run.reused:
            log.info("%s: %d done before, %d reused from a scan of the same content", out, run.skipped, run.reused)

        with store.ResultsLog(results_path) as results:
            for line in pending_lines:
                results.append(line)
                run.written.append(line)
            try:
                if jobs:
                    _run_jobs(list(jobs.values()), copies, settings, runner, results, run, out,
                              dict(cpus_per_scan=cpus_per_scan, gpus_per_scan=gpus_per_scan, device=device,
                                   ray_cpus=ray_cpus, max_retries=max_retries, verbose=log.isEnabledFor(logging.INFO)),
                              progress, task)
            finally:
                everything = store.read_records(results_path)
                latest = store.latest_by(everything, "model", "content_hash", "method")
                run.final = [r for s in sources for m in settings.methods
                             if (r := latest.get((s.model, s.content_hash, m))) is not None]
                run.remaining = len(sources) * len(settings.methods) - len(run.final)
                store.write_summary(out, everything, run.remaining)
                run.wall_seconds = time.perf_counter() - started
    return run


def _run_jobs(jobs: list[ScanJob], copies: dict, settings: AuditSettings, runner, results: store.ResultsLog,
              run: AuditRun, out: Path, runner_options: dict, progress: bool, task) -> None:
    from tqdm.auto import tqdm

    from ..formats.scan_report import write_scan_outputs

    context = open_runner(runner, **runner_options) if isinstance(runner, str) else runner
    with context as active:
        run.runner = active.name
        methods = sorted({job.method for job in jobs})
        shared = {m: active.share(TaskInputs(settings.config(m), settings.read_corpus(m), active.device,
                                             active.threads, settings.allow_pickle))
                  for m in methods}
        counts = {"done": 0, "failed": 0}
        bar = tqdm(total=len(jobs), desc=f"audit ({active.name})", unit="scan", disable=not progress)

        def deliver(outcome: JobOutcome) -> None:
            job = outcome.job
            report = None
            if outcome.report is not None:
                report = f"{store.REPORTS_DIR}/{store.report_name(job.content_hash, job.method)}"
                # Before its line: a line always has its report.
                write_scan_outputs(outcome.report, job.model, outcome.bank, report_path=out / report,
                                   bank_path=out / store.REPORTS_DIR / store.bank_name(job.content_hash, job.method),
                                   overwrite=True)
            record = record_of(outcome, active.name, report)
            results.append(record)
            run.written.append(record)
            for name in copies[(job.content_hash, job.method)]:
                copy = {**record, "model": name, "same_content_as": job.model}
                results.append(copy)
                run.written.append(copy)
            run.scanned += 1
            run.retried += job.attempt - 1
            counts["failed" if outcome.verdict is None else "done"] += 1
            bar.set_postfix(done=counts["done"], failed=counts["failed"],
                            remaining=len(jobs) - counts["done"] - counts["failed"], refresh=False)
            bar.update(1)
            if not progress:
                log.info("%s (%s): %s", job.model, job.method, outcome.verdict or f"error: {outcome.error}")

        try:
            active.run(jobs, task, lambda job: shared[job.method], deliver)
        finally:
            bar.close()


def load_results(out_dir: str | Path) -> list[dict]:
    """The records of an audit folder (every line, in order)."""
    return store.read_records(Path(out_dir) / store.RESULTS_FILE)


def summary_table(records: list[dict]) -> str:
    """The latest row per (model, method) as aligned text, for the terminal."""
    rows = store.summary_rows(records)
    if not rows:
        return "(no results)"
    columns = ("model", "method", "verdict", "triggers", "seconds", "attempts", "error")
    widths = {c: min(60, max(len(c), *(len(str(r[c])) for r in rows))) for c in columns}
    lines = ["  ".join(c.ljust(widths[c]) for c in columns)]
    lines += ["  ".join(str(r[c])[:widths[c]].ljust(widths[c]) for c in columns) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


