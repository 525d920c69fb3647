"""``patronus audit``: many models, one folder, resumable, on the local runner and on a local Ray instance.

The subjects are tiny: a clean BERT, a POR-planted one, a copy of the clean one
under another path (the same content hash), a corrupt checkpoint and a missing
path.  The Ray tests share one module-scoped local Ray instance (2 CPUs).
"""

from __future__ import annotations

import json
import os
import shutil
import signal

import pytest

from patronus_ext import audit
from patronus_ext.audit import results as store
from patronus_ext.cli import main
from patronus_ext.detect import LMSanitatorConfig, ScanConfig
from conftest import require_test_extra

import tiny_models

TINY_SCAN = ScanConfig.profile("fast").replace(num_triggers=4, batch_size=4, poison_copies=2, update_rounds=3, fuzz_loops=2,
                         num_candidates=4, beam_size=2, max_length=32, verify_texts=16, corpus_limit=300)
TINY_LMS = LMSanitatorConfig.profile("fast", corpus_limit=128, max_length=32, lr=1e-3, epochs=6, give_up_epoch=2,
                       seeds=4).replace(entropy_relative=None)
#: Keys of a ``patronus scan --report`` JSON (commands/scan.py write_outputs).
SCAN_REPORT_KEYS = {"format", "method", "verdict", "groups", "triggers", "candidates", "loops", "config", "model", "timings",
                    "environment", "bank"}


def tiny_settings(methods=("patronus",)) -> audit.AuditSettings:
    return audit.AuditSettings(methods, TINY_SCAN, TINY_LMS, corpus=tuple(tiny_models.tiny_corpus(300)))


@pytest.fixture(scope="module")
def subjects(tmp_path_factory) -> dict[str, str]:
    """name -> path: clean, planted, copy (of clean), corrupt, missing."""
    root = tmp_path_factory.mktemp("registry")
    clean = tiny_models.shared_tiny_model("bert")
    planted = tiny_models.shared_planted("por").out_dir
    copy = root / "copy-of-clean"
    shutil.copytree(clean, copy)
    corrupt = root / "corrupt"
    shutil.copytree(clean, corrupt)
    (corrupt / "model.safetensors").write_bytes(b"\xff" * 8 + b"{not a header")
    return {"clean": str(clean), "planted": str(planted), "copy": str(copy), "corrupt": str(corrupt),
            "missing": str(root / "no-such-model")}


def by_model(records) -> dict[str, dict]:
    return {r["model"]: r for r in records}


def check_first_audit(run: audit.AuditRun, subjects: dict, out) -> dict[str, dict]:
    final = by_model(run.final)
    assert set(final) == set(subjects.values())  # every model accounted for
    for record in final.values():
        assert {"model", "content_hash", "method", "verdict", "triggers", "timings", "node", "attempts"} <= set(record)
        assert ("error" in record) == (record["verdict"] is None)
    assert final[subjects["clean"]]["verdict"] == "clean"
    assert final[subjects["planted"]]["verdict"] == "backdoored"
    assert set(final[subjects["planted"]]["triggers"]) <= set(tiny_models.TINY_TRIGGERS)
    assert final[subjects["planted"]]["triggers"]
    for name in ("corrupt", "missing"):
        record = final[subjects[name]]
        assert record["verdict"] is None and subjects[name] in record["error"]
    assert "cannot load the model" in final[subjects["corrupt"]]["error"]
    assert final[subjects["missing"]]["content_hash"] is None
    # The copy was not scanned: its record is the clean model's, said to be so.
    copy = final[subjects["copy"]]
    assert copy["content_hash"] == final[subjects["clean"]]["content_hash"]
    assert copy["same_content_as"] == subjects["clean"] and copy["verdict"] == "clean"
    assert run.scanned == 3 and run.skipped == 0  # clean, planted, corrupt: one task each
    # Reports: the scan command's format; the backdoored one has its bank beside it.
    planted = final[subjects["planted"]]
    report = json.loads((out / planted["report"]).read_text())
    assert set(report) == SCAN_REPORT_KEYS and report["verdict"] == "backdoored"
    assert report["model"]["source"] == subjects["planted"]
    assert os.path.isfile(report["bank"])
    assert json.loads((out / final[subjects["clean"]]["report"]).read_text())["bank"] is None
    summary = (out / store.SUMMARY_MD).read_text()
    assert all(path in summary for path in subjects.values())
    assert "2 clean, 1 backdoored, 2 failed" in summary
    assert (out / store.SUMMARY_CSV).read_text().count("\n") == 1 + len(subjects)
    return final


# -- content hash ----------------------------------------------------------------------------------
def test_content_hash_follows_the_files_not_the_path(tmp_path, subjects):
    clean = subjects["clean"]
    moved = tmp_path / "moved"
    shutil.copytree(clean, moved)
    (moved / "README.md").write_text("documentation changes no weight")
    (moved / "backdoor.json").write_text("{}")
    assert audit.content_hash(moved) == audit.content_hash(clean)
    assert "README.md" not in [p.name for p in audit.model_files(moved)]
    (moved / "tokenizer.json").write_text((moved / "tokenizer.json").read_text() + "\n")  # one byte more
    assert audit.content_hash(moved) != audit.content_hash(clean)
    assert audit.content_hash(subjects["planted"]) != audit.content_hash(clean)
    renamed = tmp_path / "renamed"
    shutil.copytree(clean, renamed)
    (renamed / "config.json").rename(renamed / "config2.json")  # same bytes, another name: another model
    assert audit.content_hash(renamed) != audit.content_hash(clean)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no model files"):
        audit.content_hash(empty)


def test_model_list_skips_comments_and_repeats(tmp_path):
    listing = tmp_path / "models.txt"
    listing.write_text("a\n\n# a comment\n  b  \na\n")
    assert audit.sources.unique(audit.read_model_list(listing)) == ["a", "b"]


# -- local runner ----------------------------------------------------------------------------------
def test_local_audit_records_every_model_and_resumes_without_redoing(tmp_path, subjects):
    out = tmp_path / "audit"
    models = list(subjects.values())
    run = audit.run_audit(models, out, tiny_settings(), runner="local", cpus_per_scan=1, progress=False)
    assert run.runner == "local"
    check_first_audit(run, subjects, out)
    results = out / store.RESULTS_FILE
    before = results.read_bytes()
    assert before.count(b"\n") == len(subjects)

    again = audit.run_audit(models, out, tiny_settings(), runner="local", cpus_per_scan=1, progress=False)
    assert again.scanned == 0 and again.written == [] and again.skipped == len(subjects)
    assert results.read_bytes() == before  # nothing redone, nothing appended
    assert by_model(again.final) == by_model(run.final)

    # The same content under a new path: one line, no scan.
    third = tmp_path / "third-copy"
    shutil.copytree(subjects["planted"], third)
    more = audit.run_audit([*models, str(third)], out, tiny_settings(), runner="local", progress=False)
    assert more.scanned == 0 and more.reused == 1 and len(more.written) == 1
    assert more.written[0]["verdict"] == "backdoored" and more.written[0]["same_content_as"] == subjects["planted"]

    # Failures are final unless asked: --retry-failed scans the corrupt one (and re-checks the missing path) again.
    retried = audit.run_audit(models, out, tiny_settings(), runner="local", retry_failed=True, progress=False)
    assert retried.scanned == 1 and {r["model"] for r in retried.written} == {subjects["corrupt"], subjects["missing"]}


def test_both_methods_give_one_line_per_model_and_method(tmp_path, subjects):
    out = tmp_path / "both"
    models = [subjects["clean"], subjects["corrupt"]]
    first = audit.run_audit(models, out, tiny_settings(), runner="local", progress=False)
    assert first.scanned == 2
    # Adding a method to the same folder runs only the new (model, method) pairs.
    run = audit.run_audit(models, out, tiny_settings(audit.methods_of("both")), runner="local", progress=False)
    assert run.scanned == 2 and run.skipped == 2
    assert sorted((r["model"], r["method"]) for r in run.final) == sorted(
        (m, method) for m in models for method in ("patronus", "lmsanitator"))
    lms = next(r for r in run.final if r["model"] == subjects["clean"] and r["method"] == "lmsanitator")
    report = json.loads((out / lms["report"]).read_text())
    assert report["method"] == "lmsanitator" and report["verdict"] == lms["verdict"] == "clean"
    # Other scan settings would mix verdicts that mean different things: refused.
    with pytest.raises(ValueError, match="other settings"):
        audit.run_audit(models, out, audit.AuditSettings(("patronus",), TINY_SCAN.replace(fuzz_loops=3), TINY_LMS,
                                                         corpus=tuple(tiny_models.tiny_corpus(300))),
                        runner="local", progress=False)


def test_interrupted_audit_keeps_finished_results(tmp_path, subjects):
    out = tmp_path / "interrupted"
    models = [subjects["clean"], subjects["planted"], subjects["corrupt"]]
    calls = []

    def interrupted_on_the_second(job, inputs):
        calls.append(job.model)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return audit.run_job(job, inputs)

    with pytest.raises(KeyboardInterrupt):
        audit.run_audit(models, out, tiny_settings(), runner="local", progress=False, task=interrupted_on_the_second)
    kept = store.read_records(out / store.RESULTS_FILE)
    assert [r["model"] for r in kept] == [subjects["clean"]]
    assert "2 not done yet" in (out / store.SUMMARY_MD).read_text()
    resumed = audit.run_audit(models, out, tiny_settings(), runner="local", progress=False)
    assert resumed.scanned == 2 and resumed.skipped == 1 and resumed.remaining == 0


def test_torn_line_is_skipped_and_never_glued_to_the_next(tmp_path):
    path = tmp_path / store.RESULTS_FILE
    path.write_text('{"model": "a", "method": "patronus", "verdict": "clean"}\n{"model": "b", "meth')
    assert [r["model"] for r in store.read_records(path)] == ["a"]
    with store.ResultsLog(path) as log:
        log.append({"model": "c", "method": "patronus", "verdict": None, "error": "x"})
    assert [r["model"] for r in store.read_records(path)] == ["a", "c"]


def test_out_folder_is_refused_when_not_an_audit_or_locked(tmp_path, subjects):
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not an audit folder"):
        audit.run_audit([subjects["clean"]], other, tiny_settings(), runner="local", progress=False)
    out = tmp_path / "locked"
    store.prepare_folder(out, tiny_settings().fingerprint())
    with store.locked(out):
        with pytest.raises(RuntimeError, match="another audit"):
            audit.run_audit([subjects["clean"]], out, tiny_settings(), runner="local", progress=False)


def test_auto_without_ray_runs_locally(monkeypatch):
    from patronus_ext.audit import runners

    def no_ray():
        raise RuntimeError(runners.RAY_HINT)

    monkeypatch.setattr(runners, "import_ray", no_ray)
    with runners.open_runner("auto") as runner:
        assert isinstance(runner, audit.LocalRunner)
    with pytest.raises(RuntimeError, match=r"patronus_ext\[ray\]"):
        with runners.open_runner("ray://head:10001"):
            pass


# -- command line ----------------------------------------------------------------------------------
def test_audit_command_exit_status_and_resume(tmp_path, subjects, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(tiny_models.tiny_corpus(300)) + "\n")
    listing = tmp_path / "models.txt"
    listing.write_text(f"# registry\n{subjects['planted']}\n")
    out = tmp_path / "cli"
    options = ["--ray", "local", "--corpus", str(corpus), "--num-triggers", "4", "--loops", "2", "--rounds", "3",
               "--max-length", "32", "--verify-texts", "16", "--cpus-per-scan", "1", "--quiet"]
    argv = ["audit", subjects["clean"], "--list", str(listing), "--out", str(out), *options]
    assert main(argv) == 1  # a backdoor found, nothing failed
    printed = capsys.readouterr()
    assert "backdoored" in printed.out and "results:" in printed.err
    lines = (out / store.RESULTS_FILE).read_text().splitlines()
    assert len(lines) == 2
    assert main(argv) == 1  # resumed: the same answer, nothing redone
    assert (out / store.RESULTS_FILE).read_text().splitlines() == lines
    assert "0 scanned now" in capsys.readouterr().err
    assert main([*argv, "--max-length", "48"]) == 2  # other settings than the folder's
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "other settings" in err[0]
    assert main(["audit", subjects["clean"], "--out", str(tmp_path / "clean-only"), *options]) == 0
    assert main(["audit", subjects["planted"], subjects["corrupt"], "--out", str(tmp_path / "failing"),
                 *options]) == 2  # a failed model is never read as "backdoored" (1) nor as clean (0)
    assert "1 model scan(s) failed" in capsys.readouterr().err
    assert main(["audit", "--out", str(tmp_path / "none"), "--ray", "local"]) == 2  # no model given
    assert "no model to audit" in capsys.readouterr().err


# -- Ray -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ray_session():
    ray = require_test_extra("ray")
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, object_store_memory=80 * 1024 * 1024, log_to_driver=False,
                 logging_level="warning")
    yield ray
    ray.shutdown()


def test_ray_audit_matches_the_local_runner(tmp_path, subjects, ray_session):
    models = list(subjects.values())
    local = audit.run_audit(models, tmp_path / "local", tiny_settings(), runner="local", cpus_per_scan=1,
                            progress=False)
    out = tmp_path / "ray"
    run = audit.run_audit(models, out, tiny_settings(), runner=audit.RayRunner(cpus_per_scan=1), progress=False)
    assert run.runner == "ray"
    final = check_first_audit(run, subjects, out)
    here = by_model(local.final)
    for model, record in final.items():
        assert (record["verdict"], record["triggers"]) == (here[model]["verdict"], here[model]["triggers"]), model
    assert {r["pid"] for r in final.values() if r["pid"]} != {os.getpid()}  # scanned in Ray workers
    before = (out / store.RESULTS_FILE).read_bytes()
    again = audit.run_audit(models, out, tiny_settings(), runner=audit.RayRunner(cpus_per_scan=1), progress=False)
    assert again.scanned == 0 and (out / store.RESULTS_FILE).read_bytes() == before


def test_killed_ray_worker_is_retried_and_every_model_accounted_for(tmp_path, subjects, ray_session):
    victim = subjects["planted"]

    def killed_on_first_attempt(job, inputs):  # a local function: Ray ships it by value
        if job.model == victim and job.attempt == 1:
            os.kill(os.getpid(), signal.SIGKILL)  # the worker process dies mid-task
        from patronus_ext.audit import run_job
        return run_job(job, inputs)

    models = [subjects["clean"], victim, subjects["corrupt"]]
    run = audit.run_audit(models, tmp_path / "killed", tiny_settings(), runner=audit.RayRunner(cpus_per_scan=1),
                          progress=False, task=killed_on_first_attempt)
    final = by_model(run.final)
    assert set(final) == set(models) and run.remaining == 0
    assert final[victim]["verdict"] == "backdoored" and final[victim]["attempts"] == 2 and run.retried == 1
    assert final[subjects["clean"]]["attempts"] == 1 and final[subjects["corrupt"]]["verdict"] is None


def test_ray_worker_dying_every_attempt_becomes_an_error_record(tmp_path, subjects, ray_session):
    victim = subjects["planted"]

    def always_killed(job, inputs):
        if job.model == victim:
            os.kill(os.getpid(), signal.SIGKILL)
        from patronus_ext.audit import run_job
        return run_job(job, inputs)

    run = audit.run_audit([subjects["clean"], victim], tmp_path / "dead", tiny_settings(),
                          runner=audit.RayRunner(cpus_per_scan=1, max_retries=1), progress=False, task=always_killed)
    final = by_model(run.final)
    assert final[subjects["clean"]]["verdict"] == "clean"
    assert final[victim]["verdict"] is None and final[victim]["attempts"] == 2
    assert "worker died on all 2 attempt(s)" in final[victim]["error"]


def test_audit_command_on_ray(tmp_path, subjects, ray_session, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(tiny_models.tiny_corpus(300)) + "\n")
    out = tmp_path / "cli-ray"
    status = main(["audit", subjects["clean"], subjects["planted"], "--out", str(out), "--ray", "auto",
                   "--corpus", str(corpus), "--num-triggers", "4", "--loops", "2", "--rounds", "3", "--max-length", "32",
                   "--verify-texts", "16", "--quiet"])
    assert status == 1 and "(ray)" in capsys.readouterr().err
    records = store.read_records(out / store.RESULTS_FILE)
    assert {r["runner"] for r in records} == {"ray"} and len(records) == 2
    assert ray_session.is_initialized()  # a session this process started before is left running


def test_ray_refuses_a_scan_no_node_can_hold(tmp_path, subjects, ray_session):
    with pytest.raises(audit.ClusterTooSmallError, match="GPU"):
        audit.run_audit([subjects["clean"]], tmp_path / "gpu", tiny_settings(),
                        runner=audit.RayRunner(gpus_per_scan=1), progress=False)


# -- benchmarks/bench_audit.py's arithmetic --------------------------------------------------------
def test_bench_overhead_from_task_timestamps():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import bench_audit

    def record(start, end, verdict="clean", load=0.5, scan=2.0):
        return {"model": f"m{start}-{end}", "verdict": verdict, "timings": {
            "submitted_at": 0.0, "started_at": start, "finished_at": end, "received_at": end + 0.01,
            "task": end - start, "load": load, "scan": scan}}

    # Two slots: tasks of 4 s and 3 s at once, then 3 s on the slot that freed first; the last ends at 8 s.
    stats = bench_audit.overhead_stats([record(1, 5), record(1, 4), record(5, 8, verdict=None)], slots=2)
    assert stats["tasks"] == 3 and stats["dispatch_span"] == pytest.approx(8.01)
    assert stats["overhead_per_task"] == pytest.approx((2 * 8.01 - 10) / 3)
    assert stats["median_task"] == pytest.approx(3.5)  # models with a verdict only
    assert stats["median_in_task_other"] == pytest.approx(1.0)
    assert stats["median_return_latency"] == pytest.approx(0.01) and stats["first_start_latency"] == 1
    note = bench_audit.scaling_note(stats, None, 40)
    assert any("40 models on 4 node(s) x 2 slot(s): 5 waves" in line for line in note)
