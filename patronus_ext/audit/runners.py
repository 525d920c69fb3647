"""Where audit tasks run: in this process (:class:`LocalRunner`) or on Ray (:class:`RayRunner`).

Both take the same task function and hand every outcome to the driver as it
finishes.  Ray schedules one task per (model, method) with the resources a
scan declares (``num_cpus``, ``num_gpus``), so a cluster packs them; a task
whose worker process or node dies is submitted again by the driver, at most
``max_retries`` times, and after that becomes an error outcome.  The driver
resubmits (instead of Ray's own ``max_retries``) because only then does it know
how many attempts a model took, which every record states.

The local runner scans one model at a time in this process: nothing to
install or start, no import per model.  A model that kills the process itself
(a segfault, the kernel's OOM killer) ends a local audit; every finished
result is already on disk and re-running resumes.  Ray isolates each scan in
a worker process and survives that.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from typing import Any, Callable, Iterable, Iterator

from ..core.validation import check_int, check_range
from .task import JobOutcome, ScanJob, TaskInputs, error_message

log = logging.getLogger(__name__)

Task = Callable[[ScanJob, TaskInputs], JobOutcome]
Deliver = Callable[[JobOutcome], None]
RAY_HINT = "Ray is not installed: pip install 'patronus_ext[ray]' (or run with --ray local)"


class ClusterTooSmallError(ValueError):
    """No node of the Ray cluster can hold one scan with the resources asked for."""


class LocalRunner:
    """Runs each task in this process, one after the other, with ``threads`` torch threads per scan."""

    name = "local"

    def __init__(self, *, cpus_per_scan: int | None = None, gpus_per_scan: float = 0, device: str | None = None):
        check_int("cpus_per_scan", cpus_per_scan, optional=True)
        check_range("gpus_per_scan", gpus_per_scan, 0, 64)
        self.threads = cpus_per_scan
        self.device = device or ("cuda" if gpus_per_scan else None)
        if self.device:
            from ..lm.loading import resolve_device

            resolve_device(self.device)  # CUDA asked for where there is none: one error now, not one per model

    def __enter__(self) -> "LocalRunner":
        return self

    def __exit__(self, *exc) -> None:
        return None

    def share(self, value: Any) -> Any:
        return value

    def run(self, jobs: Iterable[ScanJob], task: Task, inputs: Callable[[ScanJob], Any], deliver: Deliver) -> None:
        for job in jobs:
            submitted = time.time()
            outcome = task(job, inputs(job))
            outcome.timings.update(submitted_at=submitted, received_at=time.time())
            deliver(outcome)


def import_ray():
    try:
        import ray
    except ImportError as exc:
        raise RuntimeError(RAY_HINT) from exc
    return ray


def worker_died_errors(ray) -> tuple[type[BaseException], ...]:
    """Ray's errors that mean the task's process or node went away (worth another attempt), not the model."""
    names = ("WorkerCrashedError", "NodeDiedError", "OutOfMemoryError", "ObjectLostError", "RaySystemError")
    return tuple(getattr(ray.exceptions, n) for n in names if hasattr(ray.exceptions, n))


class RayRunner:
    """Runs each task as a Ray task: an existing cluster (``address``, or ``$RAY_ADDRESS``) or a local instance.

    ``num_cpus``: CPUs of a local instance started here (default: all).  A Ray
    session already initialised in this process is used as it is and left running.
    """

    name = "ray"

    def __init__(self, address: str | None = None, *, num_cpus: int | None = None, cpus_per_scan: int | None = 1,
                 gpus_per_scan: float = 0, device: str | None = None, max_retries: int = 2,
                 log_to_driver: bool = False):
        check_int("num_cpus", num_cpus, optional=True)
        check_int("cpus_per_scan", cpus_per_scan, optional=True)
        check_range("gpus_per_scan", gpus_per_scan, 0, 64)
        check_int("max_retries", max_retries, 0)
        self.address = address
        self.num_cpus = num_cpus
        self.cpus_per_scan = cpus_per_scan or 1
        self.threads = self.cpus_per_scan  # torch threads inside a task = the CPUs it was given
        self.gpus_per_scan = gpus_per_scan
        if device and device.startswith("cuda") != bool(gpus_per_scan):
            raise ValueError("with Ray the device follows --gpus-per-scan (0: cpu, > 0: cuda); "
                             f"--device {device} does not match --gpus-per-scan {gpus_per_scan}")
        # A task without a GPU share must not touch a GPU another task was given.
        self.device = "cuda" if gpus_per_scan else "cpu"
        self.max_retries = max_retries
        self.log_to_driver = log_to_driver
        self.owned = False
        self.ray = None

    def __enter__(self) -> "RayRunner":
        ray = self.ray = import_ray()
        if not ray.is_initialized():
            options: dict[str, Any] = dict(include_dashboard=False, log_to_driver=self.log_to_driver,
                                           logging_level=logging.WARNING)
            if self.address is None and not os.environ.get("RAY_ADDRESS"):
                options["num_cpus"] = self.num_cpus
            ray.init(address=self.address, **options)
            self.owned = True
        try:
            self.check_resources()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        if self.owned and self.ray is not None:
            self.ray.shutdown()
            self.owned = False

    def check_resources(self) -> None:
        """Fail now, not hang: Ray keeps a task no node can hold pending forever."""
        have = self.ray.cluster_resources()
        cpus, gpus = have.get("CPU", 0), have.get("GPU", 0)
        if cpus < self.cpus_per_scan or gpus < self.gpus_per_scan:
            raise ClusterTooSmallError(f"the Ray cluster has {cpus:g} CPU(s) and {gpus:g} GPU(s); a scan asks for "
                             f"{self.cpus_per_scan} CPU(s) and {self.gpus_per_scan:g} GPU(s)")

    def share(self, value: Any) -> Any:
        return self.ray.put(value)  # once per method; every task reads the same object

    def run(self, jobs: Iterable[ScanJob], task: Task, inputs: Callable[[ScanJob], Any], deliver: Deliver) -> None:
        ray = self.ray
        died = worker_died_errors(ray)
        # max_retries=0: the driver resubmits itself, counting attempts (module doc).
        remote = ray.remote(task)
        resources = dict(num_cpus=self.cpus_per_scan, num_gpus=self.gpus_per_scan, max_retries=0,
                         retry_exceptions=False)
        pending: dict[Any, tuple[ScanJob, float]] = {}

        def submit(job: ScanJob) -> None:
            name = f"audit:{job.method}:{os.path.basename(job.model.rstrip('/'))}"
            ref = remote.options(name=name, **resources).remote(job, inputs(job))
            pending[ref] = (job, time.time())

        for job in jobs:
            submit(job)
        try:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    job, submitted = pending.pop(ref)
                    try:
                        outcome = ray.get(ref)
                    except died as exc:
                        cause = " ".join(str(exc).split()).split(". ")[0][:300]
                        if job.attempt <= self.max_retries:
                            log.warning("%s (%s): the worker died (%s); attempt %d of %d", job.model, job.method,
                                        type(exc).__name__, job.attempt + 1, self.max_retries + 1)
                            submit(job.retry())
                            continue
                        outcome = JobOutcome.failure(job, f"the worker died on all {job.attempt} attempt(s); "
                                                          f"last: {type(exc).__name__}: {cause}")
                    except ray.exceptions.RayTaskError as exc:  # raised outside the task's own catch
                        outcome = JobOutcome.failure(job, error_message(exc.cause or exc))
                    except ray.exceptions.RayError as exc:  # e.g. cancelled: the model still gets its record
                        outcome = JobOutcome.failure(job, f"{type(exc).__name__}: {error_message(exc)[:300]}")
                    outcome.timings.update(submitted_at=submitted, received_at=time.time())
                    deliver(outcome)
        except BaseException:
            for ref in pending:  # interrupted: stop what is still queued or running
                with contextlib.suppress(Exception):
                    ray.cancel(ref, force=True)
            raise


@contextlib.contextmanager
def open_runner(spec: str, *, cpus_per_scan: int | None = None, gpus_per_scan: float = 0,
                device: str | None = None, ray_cpus: int | None = None, max_retries: int = 2,
                verbose: bool = False) -> Iterator[LocalRunner | RayRunner]:
    """``spec``: ``local`` (no Ray), ``auto`` (Ray when importable and it starts or ``$RAY_ADDRESS`` answers,
    else local) or a Ray cluster address (``ray://host:10001``, ``host:6379``)."""
    local = dict(cpus_per_scan=cpus_per_scan, gpus_per_scan=gpus_per_scan, device=device)
    ray_options = dict(num_cpus=ray_cpus, cpus_per_scan=cpus_per_scan, gpus_per_scan=gpus_per_scan, device=device,
                       max_retries=max_retries, log_to_driver=verbose)
    if spec == "local":
        runner: LocalRunner | RayRunner = LocalRunner(**local)
    elif spec == "auto":
        try:
            import_ray()
        except RuntimeError:
            log.info("Ray is not installed: the audit runs here, one model at a time")
            runner = LocalRunner(**local)
        else:
            runner = RayRunner(None, **ray_options)
            try:
                runner.__enter__()
            except ClusterTooSmallError:
                raise
            except Exception as exc:  # noqa: BLE001 - Ray would not start: the local runner still works
                if os.environ.get("RAY_ADDRESS"):
                    raise RuntimeError(f"cannot connect to the Ray cluster at $RAY_ADDRESS "
                                       f"({os.environ['RAY_ADDRESS']}): {error_message(exc)}") from exc
                log.warning("Ray did not start (%s); the audit runs here, one model at a time", error_message(exc))
                runner = LocalRunner(**local)
            else:
                try:
                    yield runner
                finally:
                    runner.__exit__()
                return
    else:
        runner = RayRunner(spec, **ray_options)
    with runner:
        yield runner
