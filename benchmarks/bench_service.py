"""Service latency and throughput: ``patronus serve`` with and without the monitor, 1 / 8 / 32 clients.

    python benchmarks/bench_service.py --smoke                       # tiny planted model, seconds
    python benchmarks/bench_service.py --model out/por --report out/scan.json [--bank B] \\
        [--clients 1,8,32] [--requests 40] [--json results.json]

Both servers are the real command (``patronus serve`` in a subprocess on a free
127.0.0.1 port; the baseline with ``--no-monitor``: the model's plain forward,
same responses).  Clients are threads here, each with its own keep-alive HTTP
connection, sending one-text ``POST /check`` requests back to back (closed
loop); texts are corpus paragraphs, one in ``--poison-every`` carrying a
trigger of the report.  For every client count the two servers run in turn
(so background load hits both alike); each reports p50 / p99 latency and
throughput (requests/s), and the forwards the server ran (texts per forward
shows the micro-batching).  Without ``--model``/``--report`` and without
``--smoke`` a POR-planted all-MiniLM-L6-v2 is built and scanned into
``--work-dir`` (minutes on a CPU; reused by later runs).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if __name__ == "__main__":
    sys.path.insert(0, str(REPO))

from _common import machine_facts, results_path  # noqa: E402

HOST = "127.0.0.1"


def build_subject(args) -> tuple[str, str, list[str]]:
    """``(model, report, corpus texts)``: given, the tiny planted model (--smoke) or a planted MiniLM."""
    from patronus_ext.cli import main
    from patronus_ext.data import corpora as data

    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    if args.model and args.report:
        return args.model, args.report, data.read_corpus(args.corpus, limit=400, max_words=args.words, seed=0)
    if args.smoke:
        sys.path.insert(0, str(REPO / "tests"))
        import tiny_models

        planted = tiny_models.shared_planted("por")
        model = str(planted.out_dir)
        texts = tiny_models.tiny_corpus(300)
        scan_args = ["--num-triggers", "4", "--loops", "2", "--rounds", "3", "--max-length", "32", "--verify-texts", "16"]
        corpus = work / "smoke_corpus.txt"
        corpus.write_text("\n".join(texts) + "\n")
        report = work / f"smoke_scan_{os.getpid()}.json"
    else:
        model = str(work / "por_minilm")
        if not (Path(model) / "config.json").is_file():
            status = main(["attack", "--method", "por", "--model", "all-MiniLM-L6-v2", "--profile", "fast",
                           "--triggers", args.plant_triggers, "--out", model, "--device", "cpu", "--quiet"])
            if status != 0:
                raise SystemExit(f"planting failed (exit {status})")
        texts = data.read_corpus(args.corpus, limit=400, max_words=args.words, seed=0)
        corpus, scan_args = args.corpus, []
        report = work / "por_minilm_scan.json"
        if report.is_file():
            return model, str(report), texts
    status = main(["scan", model, "--corpus", str(corpus), *scan_args, "--report", str(report), "--force",
                   "--quiet", "--device", "cpu"])
    if status != 1:
        raise SystemExit(f"the scan found no backdoor (exit {status}): nothing to monitor")
    return model, str(report), texts


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


class ServeProcess:
    def __init__(self, argv: list[str]):
        self.port = free_port()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
        self.proc = subprocess.Popen([sys.executable, "-m", "patronus_ext.cli", "serve", *argv, "--port",
                                      str(self.port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)

    def __enter__(self):
        deadline = time.monotonic() + 180
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"patronus serve exited: {self.proc.stderr.read().decode()}")
            if time.monotonic() > deadline:
                raise RuntimeError("patronus serve did not come up in 180 s")
            try:
                self.health = get_json(self.port, "/health")
                return self
            except OSError:
                time.sleep(0.25)

    def __exit__(self, *exc):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


def get_json(port: int, path: str) -> dict:
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        conn.request("GET", path)
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


def run_clients(port: int, texts: list[str], clients: int, requests: int, time_limit: float) -> dict:
    """``clients`` closed-loop clients, ``requests`` one-text /check calls each (or until ``time_limit``)."""
    before = get_json(port, "/health")["served"]

    def client(n: int) -> tuple[list[float], int]:
        conn = http.client.HTTPConnection(HOST, port, timeout=120)
        latencies, failures = [], 0
        stop = time.monotonic() + time_limit
        try:
            for r in range(requests):
                if time.monotonic() > stop:
                    break
                body = json.dumps({"text": texts[(n * 7919 + r) % len(texts)]}).encode()
                start = time.perf_counter()
                conn.request("POST", "/check", body, {"Content-Type": "application/json"})
                response = conn.getresponse()
                response.read()
                latencies.append(time.perf_counter() - start)
                failures += response.status != 200
        finally:
            conn.close()
        return latencies, failures

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(client, range(clients)))
    wall = time.perf_counter() - start
    latencies = sorted(t for lat, _ in results for t in lat)
    after = get_json(port, "/health")["served"]
    forwards = after["batches"] - before["batches"]
    return {"clients": clients, "requests": len(latencies), "failures": sum(f for _, f in results),
            "p50_ms": 1000 * statistics.median(latencies),
            "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
            "mean_ms": 1000 * statistics.fmean(latencies), "throughput_rps": len(latencies) / wall,
            "wall_s": wall, "forwards": forwards,
            "texts_per_forward": (after["texts"] - before["texts"]) / forwards if forwards else None}


def summarise(rows: list[dict]) -> list[dict]:
    """Per (clients, server): the median over repeated runs of p50, p99, throughput and texts per forward."""
    out = []
    for key in dict.fromkeys((r["clients"], r["server"]) for r in rows):
        runs = [r for r in rows if (r["clients"], r["server"]) == key]
        entry = {"clients": key[0], "server": key[1], "runs": len(runs),
                 "requests": sum(r["requests"] for r in runs), "failures": sum(r["failures"] for r in runs)}
        for field in ("p50_ms", "p99_ms", "throughput_rps", "texts_per_forward"):
            values = [r[field] for r in runs if r[field] is not None]
            entry[field] = statistics.median(values) if values else None
        out.append(entry)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny planted model, few requests (seconds)")
    parser.add_argument("--model", help="served model folder (with --report)")
    parser.add_argument("--report", help="its scan report")
    parser.add_argument("--bank", help="attack-vector bank (default: the report's)")
    parser.add_argument("--corpus", default="wikitext2", help="request texts (default wikitext2)")
    parser.add_argument("--words", type=int, default=40, help="words per request text (default 40)")
    parser.add_argument("--work-dir", default="/tmp/patronus-bench-service", help="where subjects are built")
    parser.add_argument("--plant-triggers", default="zq,vx,jk,qw", help="triggers planted when a subject is built")
    parser.add_argument("--clients", default="1,8,32", help="concurrent client counts (default 1,8,32)")
    parser.add_argument("--requests", type=int, default=None, help="requests per client (default 40; smoke 8)")
    parser.add_argument("--time-limit", type=float, default=120.0, help="seconds per client at most (default 120)")
    parser.add_argument("--action", default="flag", help="monitor action (default flag)")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--batch-window-ms", type=float, default=2.0)
    parser.add_argument("--poison-every", type=int, default=10, help="one request text in N carries a trigger")
    parser.add_argument("--repeats", type=int, default=3, help="alternating runs per server and client count "
                        "(default 3; the table shows medians)")
    parser.add_argument("--json", help="results file (default benchmarks/results/bench_service_<time>.json)")
    args = parser.parse_args()
    requests = args.requests or (8 if args.smoke else 40)
    levels = [int(c) for c in args.clients.split(",")]

    model, report, corpus = build_subject(args)
    triggers = [t["text"] for t in json.loads(Path(report).read_text())["triggers"]]
    texts = []
    for i, text in enumerate(corpus):
        words = text.split()[:args.words]
        if args.poison_every and i % args.poison_every == 0 and triggers:
            words.insert(len(words) // 2, triggers[i % len(triggers)])
        texts.append(" ".join(words))
    common = ["--model", model, "--device", "cpu", "--max-length", str(args.max_length), "--max-batch",
              str(args.max_batch), "--batch-window-ms", str(args.batch_window_ms), "--quiet"]
    monitored = common + ["--scan-report", report, "--action", args.action] + (["--bank", args.bank] if args.bank else [])
    variants = {"plain": common + ["--no-monitor"], "monitored": monitored}

    rows = []
    with ServeProcess(variants["plain"]) as plain, ServeProcess(variants["monitored"]) as watched:
        servers = {"plain": plain, "monitored": watched}
        for server in servers.values():   # warm-up: first forwards pay for lazy initialisation
            run_clients(server.port, texts, 2, 3, 30)
        for clients in levels:
            for repeat in range(args.repeats):
                # Alternate which server goes first, so drifting background load hits both alike.
                order = list(servers.items()) if repeat % 2 == 0 else list(servers.items())[::-1]
                for name, server in order:
                    row = {"server": name, "repeat": repeat,
                           **run_clients(server.port, texts, clients, requests, args.time_limit)}
                    rows.append(row)
                    print(f"{name:>9} {clients:>3} clients (run {repeat + 1}): p50 {row['p50_ms']:8.1f} ms  "
                          f"p99 {row['p99_ms']:8.1f} ms  {row['throughput_rps']:7.1f} req/s  "
                          f"{row['texts_per_forward'] or 0:5.1f} texts/forward  ({row['requests']} requests, "
                          f"{row['failures']} failed)", flush=True)
        health = {name: server.health for name, server in servers.items()}

    summary = summarise(rows)
    print(f"\nmedians over {args.repeats} alternating run(s) per server and client count:")
    print("| clients | server | p50 ms | p99 ms | req/s | texts/forward | monitor overhead (p50) | (throughput) |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    for row in summary:
        base = next(r for r in summary if r["clients"] == row["clients"] and r["server"] == "plain")
        overhead = (f"{row['p50_ms'] / base['p50_ms']:.2f}x | {row['throughput_rps'] / base['throughput_rps']:.2f}x"
                    if row["server"] == "monitored" else " | ")
        print(f"| {row['clients']} | {row['server']} | {row['p50_ms']:.1f} | {row['p99_ms']:.1f} | "
              f"{row['throughput_rps']:.1f} | {row['texts_per_forward'] or 0:.1f} | {overhead} |")
    facts = machine_facts()
    out = Path(args.json) if args.json else results_path("bench_service")
    out.write_text(json.dumps({"rows": rows, "summary": summary, "repeats": args.repeats, "model": model, "report": report, "health": health,
                               "requests_per_client": requests, "words_per_text": args.words,
                               "poison_every": args.poison_every, "machine": facts}, indent=2, default=str))
    print(f"\nmachine: {facts['cpu']} ({facts['cpu_count']} CPUs), torch {facts.get('torch')}, "
          f"load {facts['load_average']}\nresults: {out}")
    return 1 if any(r["failures"] for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
