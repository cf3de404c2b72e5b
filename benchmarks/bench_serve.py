# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Throughput and latency of the OpenAI-compatible server (``monai_llava_med.apps.serve``), over loopback.

Starts the real server (a subprocess on ``127.0.0.1``, a free port, the shipped demo model unless ``--model_dir``
says otherwise, ``file://`` images from the bundle's ``sample/`` folder) and talks to it over loopback, one client
(one keep-alive connection) per thread:

* **(a) batching**: the same ``--n`` requests sent one at a time, then by ``--concurrency`` clients at once, in
  ``--rounds`` alternating rounds against the same server; prints the throughput of each (median over rounds) and
  their ratio, with the range of the per-round ratios. The server's ``generate_calls`` counter says how many
  shared ``generate`` calls answered the concurrent requests. Each round runs three times: with a plain HTTP/1.1
  client (the standard library's ``http.client``, the same JSON bodies; every answer checked) and with the official
  ``openai`` client, both as threads of this process, and with the ``openai`` client in ``--concurrency`` forked
  processes (``openai_processes``: separate programs, as several users' clients are, each with its own interpreter
  lock; the serial baseline is one of them alone). The clients run on the server's machine, so their own CPU time
  counts against the server's; ``client_cpu_ms`` (the clients' CPU time per request) says how much: the plain
  client's line is the server's figure, the ``openai`` lines what that client adds (in threads it also waits for
  its own lock).
* **(b) load**: ``--requests`` streamed requests with the ``openai`` client over ``--connections`` connections:
  errors, p50/p95 latency and p50/p95 time to first token (the first chunk with text), next to the serial requests'
  p50 latency of (a).
* **stages** (not with ``--smoke``): in the benchmark's process, without HTTP, the ms per request to prepare an item
  (read the image, build the prompt) and, per sample image, to generate its questions alone vs ``--max_batch`` of
  them in one batch: what batching can share.

Questions cycle over the sample datalist's; answers are greedy (``temperature`` 0) with ``--max_tokens``. A few
warm-up requests precede the timings. The server's flags (``--max_batch``, ``--batch_wait_ms``, ``--threads``) are
printed with the results; the serial baseline runs on the same server (a request alone waits for no window).

Run: ``python benchmarks/bench_serve.py [--n 64] [--concurrency 8] [--requests 200] [--connections 20]
[--max_batch 8] [--batch_wait_ms 5] [--smoke]``. Prints ``RESULT key=value ...`` lines; stops the server by PID.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "llava_med"
SERVER_START_S = 180.0


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str) -> dict[str, Any]:
    """``GET url`` as JSON."""
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


def start_server(args: argparse.Namespace, log: Path) -> tuple[subprocess.Popen, str]:
    """Start the server; wait (bounded) until ``/health`` answers."""
    port = free_port()
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS=str(args.threads))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    cmd = [sys.executable, "-m", "monai_llava_med.apps.serve", "--model_dir", str(args.model_dir), "--host",
           "127.0.0.1", "--port", str(port), "--allowed_root", str(BUNDLE / "sample"), "--threads", str(args.threads),
           "--max_batch", str(args.max_batch), "--batch_wait_ms", str(args.batch_wait_ms),
           "--queue_size", str(max(64, 2 * args.connections)), "--log_level", "warning"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            get_json(f"{url}/health")
            return proc, url
        except OSError:
            time.sleep(0.25)
    stop_server(proc)
    raise RuntimeError(f"the server did not answer /health within {SERVER_START_S:.0f} s")


def stop_server(proc: subprocess.Popen) -> None:
    """SIGTERM by PID, then SIGKILL if it has not exited within 20 s."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


class Asker:
    """The benchmark's requests: question ``i`` (cycled) with its image, greedy, ``max_tokens`` long; a client
    adds ``ask(i) -> latency``.

    Args:
        model: the served model's name.
        questions: ``(question, file:// URL)`` pairs, cycled by request index.
        max_tokens: answer bound.
    """

    def __init__(self, model: str, questions: list[tuple[str, str]], max_tokens: int) -> None:
        self.model, self.questions, self.max_tokens = model, questions, max_tokens

    def _body(self, i: int) -> dict[str, Any]:
        question, image = self.questions[i % len(self.questions)]
        return {"model": self.model, "messages": [{"role": "user", "content": [{"type": "text", "text": question},
                                                          {"type": "image_url", "image_url": {"url": image}}]}],
                "max_tokens": self.max_tokens, "temperature": 0}


class Client(Asker):
    """One ``openai`` client (its own connection) asking the benchmark's questions, plain or streamed.

    Args:
        url: the server's base URL.
        model: the served model's name.
        questions: ``(question, file:// URL)`` pairs, cycled by request index.
        max_tokens: answer bound.
    """

    def __init__(self, url: str, model: str, questions: list[tuple[str, str]], max_tokens: int) -> None:
        import openai

        super().__init__(model, questions, max_tokens)
        self.client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)

    def ask(self, i: int) -> float:
        """One plain request; its latency in seconds."""
        start = time.perf_counter()
        r = self.client.chat.completions.create(**self._body(i))
        if not r.choices[0].message.content:
            raise RuntimeError("empty answer")
        return time.perf_counter() - start

    def ask_streamed(self, i: int) -> tuple[float, float]:
        """One streamed request: ``(latency, time to first token)`` in seconds."""
        start = time.perf_counter()
        first = None
        for chunk in self.client.chat.completions.create(**self._body(i), stream=True):
            if first is None and chunk.choices and chunk.choices[0].delta.content:
                first = time.perf_counter() - start
        if first is None:
            raise RuntimeError("no text streamed")
        return time.perf_counter() - start, first


class PlainClient(Asker):
    """The same plain requests as :class:`Client` over one ``http.client`` keep-alive connection, with little
    client CPU (arguments as :class:`Client`'s)."""

    def __init__(self, url: str, model: str, questions: list[tuple[str, str]], max_tokens: int) -> None:
        super().__init__(model, questions, max_tokens)
        parts = urlsplit(url)
        self.connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=120)

    def ask(self, i: int) -> float:
        """One plain request; its latency in seconds. Raises on a status other than 200 or an empty answer."""
        start = time.perf_counter()
        self.connection.request("POST", "/v1/chat/completions", json.dumps(self._body(i)),
                                {"Content-Type": "application/json"})
        response = self.connection.getresponse()
        body = response.read()
        if response.status != 200:
            raise RuntimeError(f"status {response.status}")
        if not json.loads(body)["choices"][0]["message"]["content"]:
            raise RuntimeError("empty answer")
        return time.perf_counter() - start


def run_parallel(make_client: Callable[[], Asker], indices: list[int], workers: int, streamed: bool
                 ) -> tuple[float, list[Any], int]:
    """Send ``indices`` over ``workers`` threads (one client each); ``(wall seconds, results, errors)``."""
    local = threading.local()
    errors = [0]
    lock = threading.Lock()

    def one(i: int) -> Any:
        if not hasattr(local, "client"):
            local.client = make_client()
        try:
            return local.client.ask_streamed(i) if streamed else local.client.ask(i)
        except Exception as err:  # noqa: BLE001 - an error is counted, the run goes on
            with lock:
                errors[0] += 1
                if errors[0] <= 3:
                    print(f"request {i} failed: {type(err).__name__}", file=sys.stderr)
            return None

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(one, indices))
    return time.perf_counter() - start, [r for r in results if r is not None], errors[0]


def _cpu_s() -> float:
    times = os.times()
    return times.user + times.system


Runner = Callable[[list[int], int], tuple[float, list[float], int, float]]


def thread_runner(make_client: Callable[[], Asker]) -> Runner:
    """Plain requests over ``workers`` threads of this process, one client each (:func:`run_parallel`):
    ``(wall seconds, latencies, errors, this process's CPU seconds)``."""

    def run(indices: list[int], workers: int) -> tuple[float, list[float], int, float]:
        cpu = _cpu_s()
        wall, latency, errors = run_parallel(make_client, indices, workers, False)
        return wall, latency, errors, _cpu_s() - cpu

    return run


def _client_process(make_client: Callable[[], Asker], jobs: Any, taken: Any, results: Any) -> None:
    """One client process: per job ``(start time, indices)``, wait for the common start, then claim the next index
    from the shared counter ``taken`` until all are claimed; report ``(end time, latencies, errors, CPU seconds)``."""
    client = make_client()
    client.ask(0)  # warm-up: connection and imports
    results.put("ready")
    while (job := jobs.get()) is not None:
        start_at, indices = job
        while time.time() < start_at:
            time.sleep(0.0005)
        cpu, latency, errors = _cpu_s(), [], 0
        while True:
            with taken.get_lock():
                position = taken.value
                taken.value += 1
            if position >= len(indices):
                break
            try:
                latency.append(client.ask(indices[position]))
            except Exception:  # noqa: BLE001 - an error is counted, the run goes on
                errors += 1
        results.put((time.time(), latency, errors, _cpu_s() - cpu))


class ClientProcesses:
    """``count`` forked processes with one client each: concurrent clients that are separate programs, each with its
    own interpreter lock, as several users' notebooks are (threads of one process share one, which makes a heavy
    client such as ``openai`` a bottleneck of its own). Call it as a runner; :meth:`close` ends the processes.

    Args:
        make_client: builds a process's client (called in the child).
        count: processes started.
    """

    def __init__(self, make_client: Callable[[], Asker], count: int) -> None:
        context = multiprocessing.get_context("fork")
        self.results = context.Queue()
        self.taken = context.Value("i", 0)
        self.jobs = [context.Queue() for _ in range(count)]
        self.processes = [context.Process(target=_client_process, args=(make_client, q, self.taken, self.results),
                                          daemon=True) for q in self.jobs]
        for process in self.processes:
            process.start()
        for _ in self.processes:
            if self.results.get(timeout=120) != "ready":
                raise RuntimeError("a client process failed to start")

    def __call__(self, indices: list[int], workers: int) -> tuple[float, list[float], int, float]:
        """``indices`` sent by the first ``workers`` processes at once (each takes the next index when it is free):
        ``(wall seconds, latencies, errors, the processes' CPU seconds)``."""
        with self.taken.get_lock():
            self.taken.value = 0
        start_at = time.time() + 0.05
        for q in self.jobs[:workers]:
            q.put((start_at, indices))
        ends = [self.results.get(timeout=600) for _ in range(workers)]
        latency = [lat for _, lats, _, _ in ends for lat in lats]
        return (max(end for end, _, _, _ in ends) - start_at, latency, sum(e for _, _, e, _ in ends),
                sum(c for _, _, _, c in ends))

    def close(self) -> None:
        """End the processes (bounded wait, then terminate)."""
        for q in self.jobs:
            q.put(None)
        for process in self.processes:
            process.join(10)
            if process.is_alive():
                process.terminate()
                process.join(5)


class Rounds:
    """Part (a) for one kind of client: per round the serial and the concurrent throughput, their ratio, the
    ``generate`` calls, this process's CPU time per request and the errors."""

    def __init__(self) -> None:
        self.serial: list[float] = []
        self.batched: list[float] = []
        self.ratios: list[float] = []
        self.calls: list[int] = []
        self.cpu_ms = {"serial": [], "batched": []}
        self.n = 0
        self.errors = 0

    def run(self, runner: Runner, work: list[int], url: str, concurrency: int) -> list[float]:
        """One round: ``work`` one at a time, then by ``concurrency`` clients; the serial latencies."""
        self.n = len(work)
        wall_s, latency, err_s, cpu_s = runner(work, 1)
        self.cpu_ms["serial"].append(cpu_s / len(work) * 1000)
        before = get_json(f"{url}/health")["batcher"]["generate_calls"]
        wall_c, _, err_c, cpu_c = runner(work, concurrency)
        self.cpu_ms["batched"].append(cpu_c / len(work) * 1000)
        self.calls.append(get_json(f"{url}/health")["batcher"]["generate_calls"] - before)
        self.errors += err_s + err_c
        self.serial.append(len(work) / wall_s)
        self.batched.append(len(work) / wall_c)
        self.ratios.append(wall_s / wall_c)
        return latency

    def last(self) -> str:
        """The last round in words."""
        return (f"serial {self.serial[-1]:.2f} req/s, concurrent {self.batched[-1]:.2f} req/s "
                f"({self.calls[-1]} generate calls for {self.n} requests)")

    def summary(self) -> str:
        """The ``key=value`` figures over the rounds (medians, the ratio's range)."""
        med = statistics.median
        return (f"serial_rps={med(self.serial):.2f} batched_rps={med(self.batched):.2f} "
                f"speedup={med(self.ratios):.2f} speedup_min={min(self.ratios):.2f} "
                f"speedup_max={max(self.ratios):.2f} "
                f"mean_batch={self.n * len(self.calls) / max(1, sum(self.calls)):.2f} "
                f"client_cpu_ms_serial={med(self.cpu_ms['serial']):.2f} "
                f"client_cpu_ms_batched={med(self.cpu_ms['batched']):.2f} errors={self.errors}")


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (linear interpolation)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo, hi = int(pos), min(int(pos) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def sample_questions() -> list[tuple[str, str]]:
    """The sample datalist's questions, each with its image as a ``file://`` URL."""
    items = json.loads((BUNDLE / "sample" / "datalist.json").read_text())
    return [(it["question"], (BUNDLE / "sample" / it["image"]).resolve().as_uri()) for it in items]


def stage_costs(args: argparse.Namespace, questions: list[tuple[str, str]], repeats: int = 20) -> list[str]:
    """In this process, without HTTP: ms per request to prepare one item, and, per sample image, to generate its
    questions one at a time vs ``--max_batch`` of them (distinct questions, cycled) in one batch.

    Explains the end-to-end ratio: dynamic batching shares ``generate`` (and, between questions about the same
    image, the prompt up to it); preparing (reading the image, building the prompt) stays per request.
    """
    import torch

    from monai_llava_med.engines import LlavaMedPredictor
    from monai_llava_med.engines.streaming import GenerationRequest, stream_generate

    torch.set_num_threads(args.threads)
    p = LlavaMedPredictor.from_pretrained(args.model_dir, device="cpu")
    items = [{"image": unquote(urlsplit(image).path), "question": question} for question, image in questions]
    for _ in range(3):
        p.prepare(items[0])
    start = time.perf_counter()
    for _ in range(repeats):
        p.prepare(items[0])
    lines = [f"RESULT stage=in_process prepare_ms={(time.perf_counter() - start) / repeats * 1000:.1f}"]

    def per_request(group: list[dict[str, Any]], size: int) -> float:
        batches = [group[i : i + size] for i in range(0, len(group), size)]

        def answer_all() -> None:
            for batch in batches:
                stream_generate(p, [GenerationRequest(x, lambda k, v: None, max_tokens=args.max_tokens) for x in batch])

        answer_all()  # warm-up
        begin = time.perf_counter()
        for _ in range(repeats):
            answer_all()
        return (time.perf_counter() - begin) / repeats / len(group) * 1000

    for image in dict.fromkeys(it["image"] for it in items):
        mine = [p.prepare(it) for it in items if it["image"] == image]
        group = [mine[i % len(mine)] for i in range(args.max_batch)]
        alone, batched = per_request(group, 1), per_request(group, args.max_batch)
        tokens = statistics.mean(int(x["input_ids"].numel()) for x in group)
        lines.append(f"RESULT stage=in_process image={Path(image).name} prompt_tokens={tokens:.0f} "
                     f"generate_ms_per_request_batch1={alone:.1f} generate_ms_per_request_batch{args.max_batch}="
                     f"{batched:.1f} generate_speedup={alone / batched:.2f}")
    return lines


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The benchmark's options (``--smoke``: a quick check of the whole path with small counts)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model_dir", type=Path, default=BUNDLE / "models")
    p.add_argument("--n", type=int, default=64, help="requests per round of (a)")
    p.add_argument("--rounds", type=int, default=3, help="alternating serial/concurrent rounds of (a)")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--requests", type=int, default=200, help="streamed requests of (b)")
    p.add_argument("--connections", type=int, default=20)
    p.add_argument("--max_tokens", type=int, default=8)
    p.add_argument("--max_batch", type=int, default=8, help="server flag")
    p.add_argument("--batch_wait_ms", type=float, default=5.0, help="server flag")
    p.add_argument("--threads", type=int, default=1, help="server's torch CPU threads")
    p.add_argument("--smoke", action="store_true", help="n=8, rounds=1, requests=20, connections=4")
    args = p.parse_args(argv)
    if args.smoke:
        args.n, args.rounds, args.requests, args.connections = 8, 1, 20, 4
    return args


def main(argv: list[str] | None = None) -> int:
    """Start the server, run (a) and (b), print the RESULT lines, stop the server."""
    args = parse_args(argv)
    questions = sample_questions()
    print(f"server flags: --max_batch {args.max_batch} --batch_wait_ms {args.batch_wait_ms:g} --threads {args.threads}"
          f"; max_tokens={args.max_tokens}; cpus={os.cpu_count()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench_serve_") as tmp:
        proc, url = start_server(args, Path(tmp) / "server.log")
        print(f"server: pid {proc.pid} at {url}", flush=True)
        try:
            model = get_json(f"{url}/health")["model"]
            kinds = {"http.client": PlainClient, "openai": Client}
            makers = {k: (lambda c=c: c(url, model, questions, args.max_tokens)) for k, c in kinds.items()}
            for make in makers.values():
                run_parallel(make, list(range(2 * args.concurrency)), args.concurrency, False)  # warm-up
            runners: dict[str, Runner] = {k: thread_runner(make) for k, make in makers.items()}
            processes = ClientProcesses(makers["openai"], args.concurrency)
            runners["openai_processes"] = processes
            rounds = {k: Rounds() for k in runners}
            serial_latency: list[float] = []
            try:
                for r in range(args.rounds):
                    work = list(range(r * args.n, (r + 1) * args.n))
                    for kind, runner in runners.items():
                        serial_latency += rounds[kind].run(runner, work, url, args.concurrency)
                        print(f"round {r} ({kind}): {rounds[kind].last()}", flush=True)
            finally:
                processes.close()
            for kind, result in rounds.items():
                print(f"RESULT client={kind} {result.summary()} rounds={args.rounds} n={args.n} "
                      f"concurrency={args.concurrency} max_batch={args.max_batch} "
                      f"batch_wait_ms={args.batch_wait_ms:g}", flush=True)
            total_errors = sum(result.errors for result in rounds.values())

            wall, results, errors = run_parallel(makers["openai"], list(range(args.requests)), args.connections, True)
            latency = [lat for lat, _ in results]
            ttft = [first for _, first in results]
            print(f"RESULT requests={args.requests} connections={args.connections} errors={errors} "
                  f"rps={len(results) / wall:.2f} p50_s={percentile(latency, 50):.3f} "
                  f"p95_s={percentile(latency, 95):.3f} ttft_p50_s={percentile(ttft, 50):.3f} "
                  f"ttft_p95_s={percentile(ttft, 95):.3f} serial_p50_s={percentile(serial_latency, 50):.3f}",
                  flush=True)
        finally:
            stop_server(proc)
    if not args.smoke:
        print("\n".join(stage_costs(args, questions)), flush=True)
    return 1 if total_errors or errors else 0


if __name__ == "__main__":
    sys.exit(main())
