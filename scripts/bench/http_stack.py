"""The HTTP stack's own cost under `mt serve`: uvicorn with h11 + asyncio against httptools + uvloop.

A Starlette app that echoes the `/translate` body (no model), 32 keep-alive clients
(stdlib `http.client`, one thread each), 3,000 requests per server; the server's CPU time per
request from /proc. Each stack is measured twice, interleaved.

    python scripts/bench/http_stack.py [--requests 3000] [--clients 32]
"""
from __future__ import annotations

import argparse
import http.client
import json
import socket
import subprocess
import sys
import threading
import time

from common import cpu_seconds, free_port, machine_line

STACKS = [("h11", "asyncio"), ("httptools", "uvloop")]


def serve(port: int, http_impl: str, loop: str) -> None:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def translate(request):
        return JSONResponse({"translatedText": (await request.json())["q"]})

    app = Starlette(routes=[Route("/translate", translate, methods=["POST"])])
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False, http=http_impl, loop=loop)


def measure(http_impl: str, loop: str, requests: int, clients: int) -> tuple[float, float]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, __file__, "--serve", str(port), http_impl, loop])
    try:
        for _ in range(100):  # wait until it listens
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
                break
            except OSError:
                time.sleep(0.1)
        body = json.dumps({"q": "Ein Mann fährt Fahrrad auf der Straße.", "source": "de", "target": "en"})

        def client(n: int) -> None:
            conn = http.client.HTTPConnection("127.0.0.1", port)
            for _ in range(n):
                conn.request("POST", "/translate", body, {"Content-Type": "application/json"})
                conn.getresponse().read()

        per_client = requests // clients
        cpu0, t0 = cpu_seconds(proc.pid), time.perf_counter()
        threads = [threading.Thread(target=client, args=(per_client,)) for _ in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall, cpu = time.perf_counter() - t0, cpu_seconds(proc.pid) - cpu0
        done = per_client * clients
        return done / wall, 1000 * cpu / done
    finally:
        proc.terminate()
        proc.wait()


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--serve":
        serve(int(sys.argv[2]), sys.argv[3], sys.argv[4])
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--clients", type=int, default=32)
    args = parser.parse_args()
    print(f"# {machine_line()} at start")
    print("| uvicorn http | loop | requests/s | server CPU ms a request |\n|---|---|---|---|")
    for http_impl, loop in STACKS * 2:
        rate, cpu_ms = measure(http_impl, loop, args.requests, args.clients)
        print(f"| {http_impl} | {loop} | {rate:.0f} | {cpu_ms:.3f} |", flush=True)


if __name__ == "__main__":
    main()
