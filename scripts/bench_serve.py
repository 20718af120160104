"""Throughput and latency of `mt serve`, side by side with `mt translate` in the same run.

    python scripts/bench_serve.py --run-dir RUN_DIR --src test_2016_flickr.de.gz [--lines 1000]

Starts `mt serve` on a free port of 127.0.0.1 (a subprocess, as a user starts it), then:

  1. `mt translate`'s own path (the model loaded here, `translate_lines` on the whole file,
     which is what `mt translate` runs on it), timed once after a warm-up: sentences/s;
  2. the server with 1, 8 and 32 clients, each sending one sentence per request over a
     keep-alive connection until the file is done: sentences/s and the ratio to (1);
  3. the ceiling for the largest client count N: the same search functions here, on the file
     in batches of N sentences in file order (what N clients of one sentence each can give a
     server at most), sentences/s and the ratio to (1);
  4. one short sentence, sent alone --repeats times: p50/p95 latency, against the bare search
     of that sentence here (`fit_source` + `translate_ids`), and the difference.

The two processes take turns (nothing is timed while the other one works), so on a shared
machine the ratios say more than the absolute figures. `--threads N` gives both sides N torch
threads: on an overloaded machine two threads that wait for each other can make one side
many times slower, which says nothing about the server.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from mt.checkpoint import load_for_inference  # noqa: E402
from mt.files import read_lines  # noqa: E402
from mt.translate import fit_source, translate_ids, translate_lines  # noqa: E402


def start_server(run_dir: str, checkpoint: str, beam: int, device: str, threads: Optional[int],
                 max_wait_ms: float) -> tuple[subprocess.Popen, str, int]:
    env = os.environ | ({"OMP_NUM_THREADS": str(threads)} if threads else {})
    process = subprocess.Popen([sys.executable, "-m", "mt", "serve", "--run-dir", run_dir, "--port", "0",
                                "--checkpoint", checkpoint, "--beam", str(beam), "--device", device,
                                "--max-wait-ms", str(max_wait_ms)],
                               stderr=subprocess.PIPE, text=True, env=env)
    for line in process.stderr:
        found = re.search(r"at http://(127\.0\.0\.1):(\d+)/", line)
        if found:
            threading.Thread(target=lambda: [None for _ in process.stderr], daemon=True).start()  # drain the log
            return process, found.group(1), int(found.group(2))
    raise SystemExit(f"mt serve did not start (exit {process.wait()})")


def post(connection: http.client.HTTPConnection, lines: list[str]) -> list[str]:
    body = json.dumps({"text": lines})
    try:
        connection.request("POST", "/v1/translate", body, {"Content-Type": "application/json"})
        response = connection.getresponse()
    except (BrokenPipeError, ConnectionResetError, http.client.RemoteDisconnected):
        connection.close()  # the server closed a connection idle past its keep-alive time: reconnect
        connection.request("POST", "/v1/translate", body, {"Content-Type": "application/json"})
        response = connection.getresponse()
    body = json.loads(response.read())
    if response.status != 200:
        raise SystemExit(f"server answered {response.status}: {body}")
    return [r["translation"] for r in body["results"]]


def served_throughput(host: str, port: int, lines: list[str], clients: int) -> tuple[float, list[str]]:
    """Sentences/s with `clients` threads, each sending one sentence at a time."""
    out: list = [None] * len(lines)
    next_line = iter(range(len(lines)))
    lock = threading.Lock()

    def client() -> None:
        connection = http.client.HTTPConnection(host, port)
        while True:
            with lock:
                k = next(next_line, None)
            if k is None:
                return
            out[k] = post(connection, [lines[k]])[0]

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        for future in [pool.submit(client) for _ in range(clients)]:
            future.result()
    return len(lines) / (time.perf_counter() - start), out


def chunked_rate(loaded, lines: list[str], size: int, beam: int) -> float:
    """Sentences/s of the bare search over `lines` in batches of `size`, in file order."""
    start = time.perf_counter()
    for k in range(0, len(lines), size):
        translate_ids(loaded, fit_source(loaded, lines[k : k + size]), beam)
    return len(lines) / (time.perf_counter() - start)


def percentiles(seconds: list[float]) -> tuple[float, float]:
    ms = sorted(s * 1000 for s in seconds)
    return statistics.median(ms), ms[min(len(ms) - 1, round(0.95 * (len(ms) - 1)))]


def latency(host: str, port: int, loaded, sentence: str, beam: int, repeats: int) -> dict:
    """p50/p95 of one short sentence through HTTP and of its bare search here, in alternation."""
    connection = http.client.HTTPConnection(host, port)
    served, bare = [], []
    for _ in range(repeats + 3):  # the first three warm up both sides
        start = time.perf_counter()
        post(connection, [sentence])
        served.append(time.perf_counter() - start)
        start = time.perf_counter()
        translate_ids(loaded, fit_source(loaded, [sentence]), beam)
        bare.append(time.perf_counter() - start)
    (s50, s95), (b50, b95) = percentiles(served[3:]), percentiles(bare[3:])
    return {"served_p50_ms": s50, "served_p95_ms": s95, "search_p50_ms": b50, "search_p95_ms": b95,
            "overhead_p50_ms": s50 - b50, "overhead_p95_ms": s95 - b95}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--src", required=True, help="source file, plain or .gz")
    parser.add_argument("--lines", type=int, default=None, help="only the first N lines")
    parser.add_argument("--beam", type=int, default=5)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--short", default="Ein Hund rennt.", help="the sentence for the latency figures")
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--checkpoint", default="best")
    parser.add_argument("--max-wait-ms", type=float, default=20.0, help="the server's --max-wait-ms")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads on both sides (the server gets OMP_NUM_THREADS); default: torch's")
    args = parser.parse_args()

    lines = read_lines(args.src)[: args.lines]
    if args.threads:
        torch.set_num_threads(args.threads)
    loaded = load_for_inference(args.run_dir, args.checkpoint, args.device)
    process, host, port = start_server(args.run_dir, args.checkpoint, args.beam, args.device, args.threads,
                                       args.max_wait_ms)
    try:
        translate_lines(loaded, lines[:50], args.beam)  # warm-up
        start = time.perf_counter()
        reference = translate_lines(loaded, lines, args.beam)
        cli_rate = len(lines) / (time.perf_counter() - start)
        print(f"mt translate path: {len(lines)} sentences, beam {args.beam}: {cli_rate:.1f} sentences/s")
        served_throughput(host, port, lines[:50], 8)  # warm-up
        for clients in args.clients:
            rate, out = served_throughput(host, port, lines, clients)
            same = sum(a == b for a, b in zip(out, reference))
            print(f"mt serve, {clients:2d} clients: {rate:.1f} sentences/s, {rate / cli_rate:.2f}x mt translate "
                  f"({same}/{len(lines)} translations identical)")
        most = max(args.clients)
        ceiling = chunked_rate(loaded, lines, most, args.beam)
        print(f"bare search in batches of {most} in file order: {ceiling:.1f} sentences/s, "
              f"{ceiling / cli_rate:.2f}x mt translate (the most {most} one-sentence clients can get)")
        figures = latency(host, port, loaded, args.short, args.beam, args.repeats)
        print(f"one short sentence ({args.short!r}), {args.repeats} requests: served p50 {figures['served_p50_ms']:.1f} ms, "
              f"p95 {figures['served_p95_ms']:.1f} ms; bare search p50 {figures['search_p50_ms']:.1f} ms, "
              f"p95 {figures['search_p95_ms']:.1f} ms; overhead p50 {figures['overhead_p50_ms']:.1f} ms, "
              f"p95 {figures['overhead_p95_ms']:.1f} ms")
    finally:
        process.terminate()
        print(f"server exit code {process.wait()}")


if __name__ == "__main__":
    main()
