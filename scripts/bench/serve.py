"""`mt serve` under load: 1, 8 and 32 clients sending test2016 sentences (one per request) to
a server on localhost; requests/s, sentences/s, latency p50/p99, errors, the server's peak
RSS. The ceiling: the same sentences through `mt translate`'s Translator in one process
(median of 3, measured again just before each level),
and the latency of translating one sentence directly. For each level, the worker's own
counters (``/mt/stats``): decoding rounds, sentences per round, and the share of the wall time
the worker spent decoding; and the CPU the server and the clients (this process) used, in
cores (the clients share the machine's cores with the server they measure).

    python scripts/bench/serve.py runs/demo [--sentences 400] [--threads 2] [--concurrency 1 8 32]
        [--server="--gather-window-ms 5" --server=""]   # several server settings in one run
        [--server="OMP_WAIT_POLICY=PASSIVE"]            # NAME=VALUE first: the server's environment
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import threading
import time
from http.client import HTTPConnection
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from common import cpu_seconds, free_port, machine_line, median, peak_rss_mb, percentile, timed
from mt.data import read_lines
from mt.translate import Translator


def start_server(run: str, threads: int, max_queue: int, extra: list[str]) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = dict(os.environ)
    while extra and "=" in extra[0] and not extra[0].startswith("-"):  # NAME=VALUE first: the server's environment
        name, value = extra.pop(0).split("=", 1)
        env[name] = value
    proc = subprocess.Popen([sys.executable, "-m", "mt", "serve", run, "--port", str(port), "--threads", str(threads),
                             "--max-queue", str(max_queue), *extra], stderr=subprocess.PIPE, text=True, env=env)
    for line in proc.stderr:  # mt serve announces the address once it listens
        if "mt serve: listening on" in line:
            break
    else:
        raise SystemExit(f"mt serve exited with {proc.wait()} before listening")
    threading.Thread(target=proc.stderr.read, daemon=True).start()  # keep draining its log
    return proc, f"http://127.0.0.1:{port}"


def load(url: str, sentences: list[str], clients: int) -> dict:
    """``clients`` threads, each with its own connection, share the sentences (one per request)."""
    latencies, errors, outputs = [], [], [None] * len(sentences)
    lock, next_index = threading.Lock(), [0]

    host, port = urlsplit(url).hostname, urlsplit(url).port

    def client():
        # The standard library's keep-alive client: the load generator shares the cores with the
        # server it measures, so it should cost little (httpx took ~7 ms of CPU a request here).
        http = HTTPConnection(host, port, timeout=600)
        try:
            while True:
                with lock:
                    i = next_index[0]
                    next_index[0] += 1
                if i >= len(sentences):
                    return
                body = json.dumps({"q": sentences[i], "source": "de", "target": "en"})
                start = time.perf_counter()
                http.request("POST", "/translate", body, {"Content-Type": "application/json"})
                r = http.getresponse()
                data = r.read()
                elapsed = time.perf_counter() - start
                with lock:
                    latencies.append(elapsed)
                    if r.status == 200:
                        outputs[i] = json.loads(data)["translatedText"]
                    else:
                        errors.append(r.status)
        finally:
            http.close()

    start = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    return {"clients": clients, "wall": wall, "rps": len(sentences) / wall, "p50": percentile(latencies, 50),
            "p99": percentile(latencies, 99), "errors": len(errors), "outputs": outputs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="run directory")
    parser.add_argument("--data", default=os.environ.get("MT_DATA_ROOT", "../shared/data"))
    parser.add_argument("--sentences", type=int, default=400, help="the first N sentences of test2016")
    parser.add_argument("--single", type=int, default=100, help="sentences for the one-at-a-time latencies")
    parser.add_argument("--threads", type=int, default=2, help="torch threads, server and ceiling alike")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--server", action="append", default=None, metavar="ARGS",
                        help="extra mt serve options, e.g. \"--gather-window-ms 5\"; repeat to compare settings "
                             "in one run (default: one server with the defaults)")
    args = parser.parse_args()
    sentences = read_lines(Path(args.data) / "multi30k" / "test2016.de")[:args.sentences]
    print(f"# {machine_line()} at start; {args.threads} threads a server and ceiling")

    translator = Translator.from_pretrained(args.run, threads=args.threads)
    translator.translate(sentences[:8])  # warm up
    reference = translator.translate(sentences)

    def ceiling() -> float:
        """mt translate's sentences/s now, median of 3: the speed of this machine drifts (by up to
        1.4x within an hour on a shared VM), so each level is compared with the ceiling just before it."""
        return len(sentences) / median([timed(lambda: translator.translate(sentences)) for _ in range(3)])

    single = [timed(lambda: translator.translate([s])) for s in sentences[:args.single]]
    print(f"mt translate, one process: {ceiling():.1f} sentences/s; one sentence at a time: "
          f"p50 {1000 * percentile(single, 50):.1f} ms, p99 {1000 * percentile(single, 99):.1f} ms")

    for extra in args.server or [""]:
        bench_server(args, extra, sentences, reference, ceiling)
    print(f"\nmt translate again at the end: {ceiling():.1f} sentences/s; "
          f"load average {os.getloadavg()[0]:.1f} at the end")


def worker_stats(http: httpx.Client, url: str) -> dict:
    return http.get(url + "/mt/stats").json()[0]


def bench_server(args, extra: str, sentences: list[str], reference: list[str], ceiling) -> None:
    proc, url = start_server(args.run, args.threads, max(args.concurrency) * 2, shlex.split(extra))
    try:
        load(url, sentences[:8], 1)  # warm up
        print(f"\nmt serve {extra or '(defaults)'}")
        print("| clients | requests/s | sentences/s | mt translate just before | % of it | p50 ms | p99 ms | errors "
              "| same output | rounds | sentences/round | worker decoding | CPU: server / clients |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        with httpx.Client() as http:
            for clients in args.concurrency:
                top = ceiling()  # the server is idle meanwhile
                before = worker_stats(http, url)
                server_cpu, client_cpu = cpu_seconds(proc.pid), cpu_seconds(os.getpid())
                r = load(url, sentences, clients)
                server_cpu, client_cpu = cpu_seconds(proc.pid) - server_cpu, cpu_seconds(os.getpid()) - client_cpu
                after = worker_stats(http, url)
                rounds = after["rounds"] - before["rounds"]
                per_round = (after["sentences"] - before["sentences"]) / max(rounds, 1)
                busy = (after["decode_seconds"] - before["decode_seconds"]) / r["wall"]
                same = sum(a == b for a, b in zip(r["outputs"], reference))
                print(f"| {clients} | {r['rps']:.1f} | {r['rps']:.1f} | {top:.1f} | {100 * r['rps'] / top:.0f}% | "
                      f"{1000 * r['p50']:.1f} | {1000 * r['p99']:.1f} | {r['errors']} | {same}/{len(sentences)} | "
                      f"{rounds} | {per_round:.1f} | {100 * busy:.0f}% | "
                      f"{server_cpu / r['wall']:.2f} / {client_cpu / r['wall']:.2f} cores |", flush=True)
        print(f"server peak RSS: {peak_rss_mb(proc.pid):.0f} MB")
    finally:
        proc.terminate()
        proc.wait(60)


if __name__ == "__main__":
    main()
