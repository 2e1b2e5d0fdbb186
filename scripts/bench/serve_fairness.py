"""`mt serve` fairness: can one client sending long texts slow down everybody else?

With 2 decoders, one client sends 5,000-character lines without punctuation in a loop on two
connections; another client sends one sentence at a time. The second client's median latency
is measured alone (idle) and beside the first (loaded); the target is loaded <= 2x idle.

    python scripts/bench/serve_fairness.py RUN_DIR [--requests 40] [--threads 2] [--engine torch]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from http.client import HTTPConnection

from common import free_port, machine_line

SENTENCE = "Ein Mann fährt mit dem Fahrrad über eine Brücke."
WORDS = "der hund läuft im park und die katze schläft am strand während ein mann mit seinem kind spielt".split()


def long_line(chars: int = 5000) -> str:
    """German words, no punctuation: one line that no sentence end cuts."""
    words, size, i = [], 0, 0
    while size < chars - 12:
        words.append(WORDS[i % len(WORDS)])
        size += len(words[-1]) + 1
        i += 1
    return " ".join(words)[:chars]


def start_server(run: str, threads: int, decoders: int, engine: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "mt", "serve", run, "--port", str(port), "--threads", str(threads),
                             "--decoders", str(decoders), "--engine", engine], stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:  # mt serve announces the address once it listens
        if "mt serve: listening on" in line:
            threading.Thread(target=proc.stderr.read, daemon=True).start()  # keep its pipe drained
            return proc, port
    raise SystemExit(f"mt serve exited with {proc.wait()} before listening")


def translate(conn: HTTPConnection, text: str) -> tuple[int, float]:
    body = json.dumps({"q": text, "source": "de", "target": "en"})
    started = time.perf_counter()
    conn.request("POST", "/translate", body, {"Content-Type": "application/json"})
    response = conn.getresponse()
    response.read()
    return response.status, time.perf_counter() - started


def p50_of_one_sentence(port: int, requests: int) -> float:
    conn = HTTPConnection("127.0.0.1", port, timeout=600)
    times = []
    for _ in range(requests):
        status, seconds = translate(conn, SENTENCE)
        assert status == 200, status
        times.append(seconds)
    conn.close()
    return statistics.median(times)


def flood(port: int, stop: threading.Event, out: list) -> None:
    """One connection sending 5,000-character lines, one after the other, until ``stop``."""
    conn, line = HTTPConnection("127.0.0.1", port, timeout=600), long_line()
    while not stop.is_set():
        out.append(translate(conn, line))
    conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="run directory to serve")
    parser.add_argument("--requests", type=int, default=40, help="one-sentence requests per measurement")
    parser.add_argument("--threads", type=int, default=2, help="mt serve --threads (default 2)")
    parser.add_argument("--engine", default="auto", help="mt serve --engine (default auto: the run's tuned mode)")
    args = parser.parse_args()
    print(f"# {machine_line()} at start")
    proc, port = start_server(args.run, args.threads, decoders=2, engine=args.engine)
    try:
        translate(HTTPConnection("127.0.0.1", port, timeout=600), SENTENCE)  # warm up
        idle = p50_of_one_sentence(port, args.requests)
        stop, flooded = threading.Event(), []
        floods = [threading.Thread(target=flood, args=(port, stop, flooded)) for _ in range(2)]
        for thread in floods:
            thread.start()
        while not flooded:  # the long lines are being decoded
            time.sleep(0.1)
        loaded = p50_of_one_sentence(port, args.requests)
        stop.set()
        for thread in floods:
            thread.join()
    finally:
        proc.terminate()
        proc.wait(120)
    statuses = sorted({status for status, _ in flooded})
    long_p50 = statistics.median(seconds for _, seconds in flooded)
    print(f"mt serve --decoders 2 --threads {args.threads} --engine {args.engine}, defaults otherwise; {args.run}")
    print(f"| one sentence, p50 of {args.requests} | ms |\n|---|---|")
    print(f"| idle | {1000 * idle:.1f} |\n| beside 2 connections of 5,000-character lines | {1000 * loaded:.1f} |")
    print(f"ratio {loaded / idle:.2f}x (target <= 2x); the long lines: {len(flooded)} answered "
          f"(status {statuses}), p50 {long_p50:.1f} s; load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
