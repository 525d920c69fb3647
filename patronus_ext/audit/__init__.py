"""Audit a model registry: scan many checkpoints, resumably, in this process or on a Ray cluster.

    from patronus_ext.audit import AuditSettings, run_audit

    run = run_audit(["models/a", "models/b", "all-MiniLM-L6-v2"], "audit-out",
                    AuditSettings(methods=("patronus",)), runner="auto")   # "local", "auto" or a Ray address
    run.final          # the latest record of every (model, method)

Each (model, method) is one task; the model is loaded inside the task.  Results
stream into ``OUT/results.jsonl`` as each task ends (one fsync'd line per model
and method), each scan's report into ``OUT/reports/<content hash>.<method>.json``
(the format of ``patronus scan --report``), and ``OUT/summary.md`` /
``OUT/summary.csv`` are regenerated from the results.  Re-running into the same
folder skips every model whose content hash is recorded (errors included,
unless ``retry_failed``).  Ray is optional (``pip install 'patronus_ext[ray]'``).
"""

from .driver import METHOD_CHOICES, AuditRun, AuditSettings, load_results, methods_of, run_audit, summary_table
from .results import read_records
from .runners import ClusterTooSmallError, LocalRunner, RayRunner, open_runner
from .sources import content_hash, model_files, read_model_list
from .task import METHODS, JobOutcome, ScanJob, TaskInputs, run_job

__all__ = ["METHODS", "METHOD_CHOICES", "AuditRun", "AuditSettings", "ClusterTooSmallError", "JobOutcome",
           "LocalRunner", "RayRunner", "ScanJob", "TaskInputs", "content_hash", "load_results", "methods_of",
           "model_files", "open_runner", "read_model_list", "read_records", "run_audit", "run_job", "summary_table"]
