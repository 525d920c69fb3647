"""Both scans end to end on tiny planted models, through the command line, on one device.

    python benchmarks/tiny_end_to_end.py --device cuda [--work DIR] [--only patronus|bait]

benchmarks/run_gpu.sh runs it on the lent GPU; tests/test_bait.py runs the same functions on the CPU, so
the script cannot drift from the package's API unnoticed.

* ``patronus``: POR planted into a 2-layer BERT (tests/tiny_models.py), ``patronus scan`` on it.
* ``bait``: ``instruct-badnet`` planted into a tiny LLaMA with a chat template (a trigger word makes it
  answer one fixed sentence), ``patronus scan --method bait --profile fast`` with the clean model as
  ``--reference``; the trigger search runs too.

Each run prints one line (``PASS``/``FAIL``, verdict, what it found, seconds); exit 0 when every run found
its backdoor, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "tests") not in sys.path:
    sys.path.insert(0, str(ROOT / "tests"))

def plant_patronus_subject(work: Path):
    """POR in a 2-layer BERT: the AttackResult (``out_dir``, ``triggers``)."""
    import tiny_models

    return tiny_models.plant_tiny(work, "por", "bert")


def plant_bait_subject(work: Path) -> tuple[Path, Path]:
    """``(clean, planted)`` tiny LLaMA folders (tests/tiny_models.py's tiny chat subject)."""
    import tiny_models

    clean = tiny_models.make_tiny_llama(work)
    return clean, tiny_models.plant_tiny_chat(clean, work / "planted-chat").out_dir


def _cli_scan(model: Path, report: Path, device: str, *options: str) -> tuple[int, dict | None, float, str]:
    """``patronus scan`` in a fresh Python: (exit status, report or None, seconds, stderr tail)."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "patronus_ext.cli", "scan", str(model), "--report", str(report),
                           "--device", device, "--quiet", "--force", *options], capture_output=True, text=True)
    seconds = time.perf_counter() - started
    payload = json.loads(report.read_text()) if report.is_file() else None
    return done.returncode, payload, seconds, done.stderr[-600:]


def scan_patronus(planted, work: Path, device: str) -> dict:
    """``patronus scan`` on the planted BERT; passes when backdoored with a planted trigger found and every other
    word found confirmed by the shift rule alone (planting a 2-layer model makes a few collateral movers)."""
    import tiny_models

    corpus = work / "corpus.txt"
    corpus.write_text("\n".join(tiny_models.tiny_corpus(300)) + "\n")
    status, report, seconds, err = _cli_scan(planted.out_dir, work / "patronus.json", device, "--corpus",
                                             str(corpus), *tiny_models.TINY_SCAN_ARGS)
    triggers = (report or {}).get("triggers", [])
    found = sorted(t["text"] for t in triggers)
    collateral = sorted(t["text"] for t in triggers if t["text"] not in planted.triggers)
    ok = status == 1 and bool(set(found) & set(planted.triggers)) and \
        all(t["rule"] == "shift" for t in triggers if t["text"] in collateral)
    return {"run": "patronus", "ok": ok, "exit": status, "verdict": (report or {}).get("verdict"),
            "found": found, "collateral": collateral, "planted": list(planted.triggers), "seconds": round(seconds, 1),
            "error": None if status in (0, 1) else err}


def scan_bait(clean: Path, planted: Path, work: Path, device: str) -> dict:
    """``patronus scan --method bait`` on the planted LLaMA against the clean one; passes when backdoored with
    the planted response's first 4 words as the inverted target."""
    import tiny_models

    status, report, seconds, err = _cli_scan(planted, work / "bait.json", device, "--method", "bait", "--profile",
                                             "fast", "--reference", str(clean))
    target = ((report or {}).get("target") or {}).get("text", "")
    ok = status == 1 and target.split()[:4] == tiny_models.CHAT_RESPONSE.split()[:4]
    return {"run": "bait", "ok": ok, "exit": status, "verdict": (report or {}).get("verdict"), "target": target,
            "triggers": [t["text"] for t in (report or {}).get("triggers", [])],
            "timings": (report or {}).get("timings"), "seconds": round(seconds, 1),
            "error": None if status in (0, 1) else err}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--work", help="folder for the planted models and reports (default: a new temp folder)")
    parser.add_argument("--only", choices=("patronus", "bait"), help="run one of the two")
    args = parser.parse_args(argv)
    work = Path(args.work or tempfile.mkdtemp(prefix="tiny_e2e_"))
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    if args.only in (None, "patronus"):
        started = time.perf_counter()
        planted = plant_patronus_subject(work)
        print(f"planted POR {list(planted.triggers)} in {time.perf_counter() - started:.1f} s", flush=True)
        rows.append(scan_patronus(planted, work, args.device))
    if args.only in (None, "bait"):
        started = time.perf_counter()
        clean, planted_chat = plant_bait_subject(work)
        print(f"planted instruct-badnet into a tiny LLaMA in {time.perf_counter() - started:.1f} s", flush=True)
        rows.append(scan_bait(clean, planted_chat, work, args.device))
    for row in rows:
        print(("PASS " if row["ok"] else "FAIL ") + json.dumps(row), flush=True)
    return 0 if all(row["ok"] for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
