"""One audit task: load one model where the task runs, scan it with one method, return what the driver records.

The same function runs in a Ray worker and in the local runner, so both give the
same verdicts.  The model travels as a path (never through the object store);
what comes back is the scan report's JSON payload (the format of ``patronus scan
--report``), the attack-vector bank of a backdoored model, and timings.  Any
failure of the model itself (corrupt file, unknown family, out of memory) is
caught here and comes back as an error outcome, never as an exception.
"""

from __future__ import annotations

import dataclasses
import gc
import os
import socket
import time
from typing import Any, Sequence

import torch

METHODS = ("patronus", "lmsanitator")


@dataclasses.dataclass(frozen=True)
class ScanJob:
    """A model (by path and content hash) and the method to scan it with; ``attempt`` counts from 1."""

    model: str            # as given by the user (the first name seen with this content)
    folder: str           # the folder the task loads
    content_hash: str
    method: str
    attempt: int = 1

    def retry(self) -> "ScanJob":
        return dataclasses.replace(self, attempt=self.attempt + 1)


@dataclasses.dataclass(frozen=True)
class TaskInputs:
    """What every task of one method shares (sent once per method, not once per model)."""

    config: Any                 # ScanConfig (patronus) or LMSanitatorConfig (lmsanitator)
    corpus: tuple[str, ...]     # clean texts, read once by the driver
    device: str | None          # None: CUDA when visible, else the CPU
    threads: int | None         # torch intra-op threads inside the task (None: leave torch's setting)
    allow_pickle: bool = False


@dataclasses.dataclass
class JobOutcome:
    """What a task returns: a verdict with its report and bank, or an error."""

    job: ScanJob
    verdict: str | None
    report: dict | None = None          # the scan report payload (``patronus scan --report``)
    bank: Any = None                    # AttackBank of a backdoored model
    triggers: list[str] = dataclasses.field(default_factory=list)
    attack_vectors: int = 0
    error: str | None = None
    timings: dict = dataclasses.field(default_factory=dict)
    node: str | None = None
    pid: int | None = None
    device: str | None = None

    @classmethod
    def failure(cls, job: ScanJob, error: str, **fields) -> "JobOutcome":
        return cls(job, None, error=error, **fields)


def error_message(exc: BaseException) -> str:
    """One line, as the command line words errors (type named unless it is a plain usage/IO error)."""
    message = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        message = f"out of memory: {message}"
    elif not isinstance(exc, (ValueError, FileNotFoundError, RuntimeError, TypeError, OSError)):
        message = f"{type(exc).__name__}: {message}"
    return message[:1000]


def run_job(job: ScanJob, inputs: TaskInputs) -> JobOutcome:
    """Scan ``job.model`` with ``job.method``; never raises for a failure of the model (see the module doc)."""
    started_at, started = time.time(), time.perf_counter()
    here = dict(node=socket.gethostname(), pid=os.getpid())
    previous_threads = torch.get_num_threads()
    if inputs.threads:
        torch.set_num_threads(inputs.threads)
    try:
        outcome = _scan(job, inputs, here)
    except Exception as exc:  # noqa: BLE001 - the model's failure is a record, the audit goes on
        outcome = JobOutcome.failure(job, error_message(exc), device=inputs.device, **here)
    finally:
        torch.set_num_threads(previous_threads)
        gc.collect()  # free one model before the next task of this worker loads another
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    outcome.timings.update(task=time.perf_counter() - started, started_at=started_at, finished_at=time.time())
    return outcome


def _scan(job: ScanJob, inputs: TaskInputs, here: dict) -> JobOutcome:
    from .. import lm

    if job.method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {job.method!r}")
    phase = time.perf_counter()
    adapter = lm.load_adapter(job.folder, allow_pickle=inputs.allow_pickle, device=inputs.device)
    load_seconds = time.perf_counter() - phase
    corpus: Sequence[str] = list(inputs.corpus)
    if job.method == "patronus":
        from ..detect import scan

        report = scan(adapter.model, adapter.tokenizer, corpus, inputs.config, progress=False)
        triggers = [t.text for t in report.triggers]
        vectors = len(report.groups)
    else:
        from ..detect import lmsanitator

        report = lmsanitator(adapter.model, adapter.tokenizer, corpus, inputs.config, progress=False)
        triggers = []
        vectors = len(report.accepted)
    payload = report.to_dict()
    bank = report.attack_bank(job.model) if report.backdoored else None  # its vectors are on the CPU
    return JobOutcome(job, report.verdict, payload, bank, triggers, vectors,
                      timings={"load": load_seconds, "scan": float(report.timings.get("total", 0.0))},
                      device=str(adapter.device), **here)
