"""`mt serve` against LibreTranslate serving the same model as an Argos package: sentences/s, p50, p99, BLEU.

Both servers run on this machine with the run's model: `mt serve RUN --engine ctranslate2
--compute-type TYPE --beam B`, and LibreTranslate (its own virtual environment, given with
--libretranslate) with the package of `mt export RUN --format argos`, installed into an isolated,
offline Argos directory (ARGOS_COMPUTE_TYPE=TYPE, ARGOS_BEAM_SIZE=B). Lengths: Argos divides scores
by length ** 0.2, mt serve by GNMT's ((5 + length) / 6) ** alpha, alpha the run's
decode.length_penalty or --length-penalty. Argos's CTranslate2 threads: as LibreTranslate sets
them, one worker of all the threads, or with --libretranslate-threads inter one worker per thread
(as mt serve). The same test2016 sentences are sent one sentence a request by 1, 8 and 32 clients
(each its own keep-alive connection); the runs are interleaved (every round runs every client count
on each server in turn) and each row reports the median sentences/s of its rounds, the p50 and p99
of all its requests' latencies, and the BLEU of the server's translations. Prints the CPU, its ISA
and both command lines.

LibreTranslate in a virtual environment of its own, with the CPU build of torch and spaCy:

    python3 -m venv lt-venv && lt-venv/bin/pip install libretranslate==1.9.6 spacy -c <(echo torch==2.13.0)

    python scripts/bench/serve_vs_libretranslate.py RUN --libretranslate /path/to/venv/bin/libretranslate \
        [--sentences 400] [--clients 1 8 32] [--rounds 3] [--beam 4] [--threads 2] [--length-penalty 0.2] \
        [--libretranslate-threads inter]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from http.client import HTTPConnection
from pathlib import Path

from common import free_port, machine_line, median, percentile

from mt.config import load_config
from mt.ctranslate2_engine import compute_type_of
from mt.data import read_lines
from mt.evaluate import bleu
from mt.translate import run_of


def argos_threads(threads: int, layout: str) -> dict:
    """CTranslate2's threads in Argos: ``intra`` is LibreTranslate's default (one worker of all the
    threads), ``inter`` is mt serve's (one worker per thread, requests side by side)."""
    intra, inter = (threads, 1) if layout == "intra" else (1, threads)
    return {"ARGOS_INTRA_THREADS": str(intra), "ARGOS_INTER_THREADS": str(inter)}


def isolated_argos(home: Path, compute_type: str, beam: int, threads: dict) -> dict:
    """Argos's and LibreTranslate's settings all inside ``home``, offline: an empty package index,
    spaCy's rule-based splitter (MiniSBD downloads a model)."""
    (home / "index").mkdir(parents=True, exist_ok=True)
    (home / "index" / "index.json").write_text("[]\n", encoding="utf-8")
    env = {**os.environ, "HOME": str(home / "home"), "ARGOS_PACKAGES_DIR": str(home / "packages"),
           "ARGOS_TRANSLATE_PACKAGE_DIR": str(home / "packages"), "ARGOS_PACKAGE_INDEX": (home / "index").as_uri() + "/",
           "ARGOS_CHUNK_TYPE": "SPACY", "ARGOS_DEVICE_TYPE": "cpu", "ARGOS_COMPUTE_TYPE": compute_type,
           "ARGOS_BEAM_SIZE": str(beam), **threads}
    for name in ("XDG_DATA_HOME", "XDG_CONFIG_HOME", "XDG_CACHE_HOME"):
        env[name] = str(home / name.lower())
    # Argos tries to download spaCy's multilingual model unless this cache exists; the package brings its own
    (home / "xdg_cache_home" / "argos-translate" / "spacy" / "senter" / "model").mkdir(parents=True, exist_ok=True)
    return env


def start(name: str, command: list[str], port: int, env: dict | None = None, timeout: float = 600) -> subprocess.Popen:
    """Start a server and wait until it answers /languages."""
    log = open(Path(tempfile.gettempdir()) / f"bench-{name}-{port}.log", "w")
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{name} exited with {proc.returncode} before answering; its log: {log.name}")
        try:
            conn = HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/languages")
            if conn.getresponse().status == 200:
                return proc
        except OSError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise SystemExit(f"{name} did not answer within {timeout:g} s; its log: {log.name}")


def servers(args, work: Path) -> list[tuple[str, int, subprocess.Popen]]:
    """mt serve and LibreTranslate, each listening on its own port."""
    package = work / "model.argosmodel"
    subprocess.run([sys.executable, "-m", "mt", "export", args.run, "--format", "argos", "-o", str(package)], check=True)
    threads = argos_threads(args.threads, args.libretranslate_threads)
    env = isolated_argos(work / "argos", args.compute_type, args.beam, threads)
    lt_python = Path(args.libretranslate).parent / "python"
    subprocess.run([str(lt_python), "-c", "import sys, argostranslate.package as p; p.install_from_path(sys.argv[1])",
                    str(package)], check=True, env=env)
    mt_port, lt_port = free_port(), free_port()
    mt_command = [sys.executable, "-m", "mt", "serve", args.run, "--port", str(mt_port), "--engine", "ctranslate2",
                  "--compute-type", args.compute_type, "--beam", str(args.beam), "--threads", str(args.threads)]
    if args.length_penalty is not None:
        mt_command += ["--length-penalty", str(args.length_penalty)]
    lt_command = [args.libretranslate, "--host", "127.0.0.1", "--port", str(lt_port), "--load-only",
                  f"{args.source},{args.target}"]
    print(f"mt serve: mt {' '.join(mt_command[3:])}")
    print(f"LibreTranslate: {' '.join(lt_command)} with ARGOS_COMPUTE_TYPE={args.compute_type} "
          f"ARGOS_BEAM_SIZE={args.beam} {' '.join(f'{k}={v}' for k, v in threads.items())} ARGOS_CHUNK_TYPE=SPACY")
    out = [("mt serve", mt_port, start("mt-serve", mt_command, mt_port))]
    out.append(("LibreTranslate", lt_port, start("libretranslate", lt_command, lt_port, env=env)))
    return out


def load(port: int, sentences: list[str], clients: int, source: str, target: str) -> tuple[float, list, list]:
    """Send every sentence once, one a request, from ``clients`` connections: (seconds, latencies, outputs)."""
    todo, lock = iter(range(len(sentences))), threading.Lock()
    outputs, latencies, errors = [None] * len(sentences), [], []

    def client() -> None:
        conn = HTTPConnection("127.0.0.1", port, timeout=600)
        while True:
            with lock:
                i = next(todo, None)
            if i is None:
                break
            body = json.dumps({"q": sentences[i], "source": source, "target": target})
            started = time.perf_counter()
            conn.request("POST", "/translate", body, {"Content-Type": "application/json"})
            response = conn.getresponse()
            data = response.read()
            latencies.append(time.perf_counter() - started)
            if response.status != 200:
                errors.append(f"{response.status} {data[:200]!r}")
                break
            outputs[i] = json.loads(data)["translatedText"]
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise SystemExit(f"port {port}: {errors[0]}")
    return time.perf_counter() - started, latencies, outputs


def measure(args, running, sentences: list[str], refs: list[str]) -> None:
    for _, port, _ in running:  # warm up: the first requests load and allocate
        load(port, sentences[:8], 1, args.source, args.target)
    results = {(name, c): {"rates": [], "latencies": [], "outputs": None} for name, _, _ in running for c in args.clients}
    for _ in range(args.rounds):
        for clients in args.clients:
            for name, port, _ in running:
                seconds, latencies, outputs = load(port, sentences, clients, args.source, args.target)
                row = results[name, clients]
                row["rates"].append(len(sentences) / seconds)
                row["latencies"] += latencies
                row["outputs"] = outputs
    print("| server | clients | sentences/s | p50 ms | p99 ms | BLEU |")
    print("|---|---|---|---|---|---|")
    for (name, clients), row in results.items():
        print(f"| {name} | {clients} | {median(row['rates']):.1f} | "
              f"{1000 * percentile(row['latencies'], 50):.1f} | {1000 * percentile(row['latencies'], 99):.1f} | "
              f"{bleu(row['outputs'], refs):.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="a trained run directory with a joint tokenizer")
    parser.add_argument("--libretranslate", required=True, help="the libretranslate executable of its own venv")
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("MT_DATA_ROOT", "../shared/data")))
    parser.add_argument("--sentences", type=int, default=400, help="the first N test2016 sentences")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per row")
    parser.add_argument("--beam", type=int, default=4, help="beam size of both servers (Argos's default: 4)")
    parser.add_argument("--compute-type", default=None,
                        help="CTranslate2 compute type of both (default: the run's tuned type, else float32)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="CPU threads of each server")
    parser.add_argument("--length-penalty", type=float, default=None,
                        help="mt serve's GNMT alpha (default: the run's; 0.2 decodes closest to Argos)")
    parser.add_argument("--libretranslate-threads", choices=("intra", "inter"), default="intra",
                        help="LibreTranslate's CTranslate2 threads: intra = one worker of all threads (its default), "
                             "inter = one worker per thread (as mt serve)")
    args = parser.parse_args()
    config = load_config(run_of(Path(args.run))[0] / "config.yaml")
    args.source, args.target = config.data.src_lang, config.data.tgt_lang
    args.compute_type = args.compute_type or compute_type_of(config.decode.mode) or "float32"
    sentences = read_lines(args.data / "multi30k" / f"test2016.{args.source}")[:args.sentences]
    refs = read_lines(args.data / "multi30k" / f"test2016.{args.target}")[:args.sentences]
    print(f"# {machine_line()}")
    print(f"{len(sentences)} test2016 sentences, one a request; beam {args.beam}, {args.compute_type}; {args.run}")
    with tempfile.TemporaryDirectory(prefix="serve-vs-lt-") as work:
        running = servers(args, Path(work))
        try:
            measure(args, running, sentences, refs)
        finally:
            for _, _, proc in running:
                proc.terminate()
                proc.wait(120)


if __name__ == "__main__":
    main()
