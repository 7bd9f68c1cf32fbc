"""
Load test of serve.py on loopback: one-post requests from concurrent clients, with micro-batching on and off, on
torch and ONNX int8; an overload run far past the queue; a soak run; memory of one base with three adapters.

    python -m bench.load --adapter adapters/depression-pfeiffer          # needs its ONNX export (export.py)
    python -m bench.load --adapter DIR --quick                           # seconds, not minutes (CI)

Every loop is bounded in requests and in seconds, and every server listens on 127.0.0.1 only. Per run: requests/s,
posts/s, latency p50/p95/p99, errors by status, the server's peak resident memory (VmHWM), and the same posts
through `predict.py --file` on the same backend (ONNX int8 where measured) for comparison. The overload run samples
the server's memory while clients far outnumber its queue; the soak run keeps 16 clients busy for --soak-seconds.
Writes bench/results/<name>-<machine>[-quick].{json,md,png}.
"""

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

import data
from bench import harness as H

SAMPLE_EVERY = 1.0  # seconds between memory samples of the server


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--adapter", required=True, help="a folder written by train.py and exported by export.py")
    H.add_common_flags(p, model=False, data_help="posts to send: the depression data set's split")
    p.add_argument("--concurrency", nargs="+", type=int, default=[1, 8, 32, 128], help="clients at once")
    p.add_argument("--backends", nargs="+", default=["torch", "onnx-int8"], help="serve.py --backend values")
    p.add_argument("--requests", type=int, default=1000, help="requests per run at most (default: 1000)")
    p.add_argument("--seconds", type=float, default=60, help="seconds per run at most (default: 60)")
    p.add_argument("--overload-clients", type=int, default=512, help="clients in the overload run (default: 512)")
    p.add_argument("--overload-seconds", type=float, default=30, help="length of the overload run (default: 30)")
    p.add_argument("--soak-seconds", type=float, default=300, help="length of the soak run (default: 300)")
    H.add_run_flags(p, "load", "a few seconds per run, small counts (CI)")
    args = p.parse_args(argv)
    if args.quick:
        args.concurrency, args.requests, args.seconds = [1, 8], 40, 20
        args.overload_clients, args.overload_seconds, args.soak_seconds = 64, 3, 3
    return args


class Server:
    """serve.py in its own process on a free loopback port, with its memory read from /proc."""

    def __init__(self, *flags):
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.TemporaryFile("w+")
        self.proc = subprocess.Popen(
            [sys.executable, "serve.py", *map(str, flags), "--host", "127.0.0.1", "--port", str(self.port)],
            cwd=H.ROOT, stdout=self.log, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.3)
        self.log.seek(0)
        raise RuntimeError(f"serve.py {' '.join(map(str, flags))} did not start:\n{self.log.read()[-3000:]}")

    def memory_mb(self, field):
        status = Path(f"/proc/{self.proc.pid}/status")
        if not status.exists():
            return None
        line = next(line for line in status.read_text().splitlines() if line.startswith(f"{field}:"))
        return int(line.split()[1]) / 1024

    def alive(self):
        return self.proc.poll() is None

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.seek(0)
        text = self.log.read()
        return {"exit_code": self.proc.returncode, "tracebacks": text.count("Traceback")}


async def drive(url, posts, clients, max_requests, max_seconds, server=None):
    """`clients` clients, each sending one-post requests one after another, until max_requests were sent or
    max_seconds passed; returns latencies of answered requests, status counts, seconds, memory samples."""
    latencies, statuses, samples = [], {}, []
    sent = 0
    start = time.perf_counter()
    stop_at = start + max_seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async def client(http):
        nonlocal sent
        while sent < max_requests and time.perf_counter() < stop_at:
            text = posts[sent % len(posts)]
            sent += 1
            t0 = time.perf_counter()
            try:
                response = await http.post(f"{url}/classify", json={"texts": [text]}, timeout=60)
                status = response.status_code
            except httpx.HTTPError as e:
                status = type(e).__name__
            if status == 200:
                latencies.append(time.perf_counter() - t0)
            statuses[str(status)] = statuses.get(str(status), 0) + 1

    async def sample():
        while time.perf_counter() < stop_at and server is not None:
            samples.append({"t": time.perf_counter() - start, "rss_mb": server.memory_mb("VmRSS")})
            await asyncio.sleep(SAMPLE_EVERY)

    async with httpx.AsyncClient(limits=limits) as http:
        sampler = asyncio.create_task(sample())
        await asyncio.gather(*(client(http) for _ in range(clients)))
        sampler.cancel()
    return latencies, statuses, time.perf_counter() - start, samples


def percentile(values, q):
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def run_level(server, posts, clients, args):
    latencies, statuses, seconds, _ = asyncio.run(drive(server.url, posts, clients, args.requests, args.seconds))
    answered = len(latencies)
    return {
        "clients": clients,
        "requests": sum(statuses.values()),
        "answered": answered,
        "statuses": statuses,
        "errors": sum(n for s, n in statuses.items() if s != "200"),
        "seconds": seconds,
        "requests_per_second": answered / seconds,
        "posts_per_second": answered / seconds,  # one post per request
        "p50_ms": 1000 * percentile(latencies, 50) if latencies else None,
        "p95_ms": 1000 * percentile(latencies, 95) if latencies else None,
        "p99_ms": 1000 * percentile(latencies, 99) if latencies else None,
        "server_peak_mb": server.memory_mb("VmHWM"),
    }


def predict_py_rate(folder, posts, backend):
    """posts/s of `predict.py --backend BACKEND --file` on the same posts (the whole command, start-up included)."""
    work = Path(tempfile.mkdtemp())
    try:
        (work / "posts.txt").write_text("\n".join(p.replace("\n", " ") for p in posts) + "\n")
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, "predict.py", "--adapter", folder, "--backend", backend, "--file", work / "posts.txt",
             "--output", work / "out.jsonl"],
            cwd=H.ROOT, check=True, capture_output=True,
        )  # fmt: skip
        return {"posts": len(posts), "seconds": time.perf_counter() - start}
    finally:
        shutil.rmtree(work)


def idle_memory(flags, warm_posts):
    """A server's resident memory after a few requests (its model loaded and run)."""
    server = Server(*flags)
    try:
        for text in warm_posts:
            httpx.post(f"{server.url}/classify", json={"texts": [text]}, timeout=60)
        return server.memory_mb("VmRSS")
    finally:
        server.stop()


def markdown(result):
    lines = [
        f"Command: `{result['command']}`",
        "",
        f"Device: {result['device']}. One-post requests, clients on the same 2-core machine as the server "
        f"(they share its cores); each run at most {result['requests']} requests or {result['seconds']:g} s.",
        "",
        "| backend | batching | clients | requests/s | posts/s | p50 ms | p95 ms | p99 ms | errors | server peak MB |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in result["runs"]:
        ms = lambda v: "-" if v is None else f"{v:.1f}"  # noqa: E731
        cells = [r["backend"], "on" if r["batching"] else "off", r["clients"], f"{r['requests_per_second']:.1f}",
                 f"{r['posts_per_second']:.1f}", ms(r["p50_ms"]), ms(r["p95_ms"]), ms(r["p99_ms"]), r["errors"],
                 f"{r['server_peak_mb']:.0f}"]  # fmt: skip
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    ref = result["predict_py"]
    lines += ["", f"`predict.py --backend {result['reference_backend']} --file` on the same {ref['posts']} posts: "
              f"{ref['posts'] / ref['seconds']:.1f} posts/s ({ref['seconds']:.1f} s, start-up included)."]  # fmt: skip
    for name in ("overload", "soak"):
        r = result[name]
        rss = [s["rss_mb"] for s in r["memory"] if s["rss_mb"]]
        lines += ["", f"**{name}**: {r['clients']} clients for {r['seconds']:.0f} s: {r['answered']} answered, "
                  f"statuses {r['statuses']}, p99 {r['p99_ms']:.0f} ms, server memory {min(rss):.0f}-{max(rss):.0f} MB "
                  f"(first {rss[0]:.0f}, last {rss[-1]:.0f}), alive after: {r['alive_after']}, exit "
                  f"{r['stop']['exit_code']}, tracebacks {r['stop']['tracebacks']}."]  # fmt: skip
    m = result["memory"]
    extra = m["three_adapters_mb"] - m["one_adapter_mb"]
    lines += ["", f"**One base, three adapters (torch)**: {m['three_adapters_mb']:.0f} MB resident against "
              f"{m['one_adapter_mb']:.0f} MB with one ({extra:+.0f} MB)."]  # fmt: skip
    lines += ["", "Goals: " + "; ".join(f"{k}: {'held' if v['held'] else 'NOT held'} ({v['value']})"
                                        for k, v in result["goals"].items())]  # fmt: skip
    return "\n".join(lines) + "\n"


def goals(result):
    def find(backend, batching, clients):
        return next((r for r in result["runs"] if (r["backend"], r["batching"], r["clients"]) == (backend, batching,
                     clients)), None)  # fmt: skip

    out = {}
    on, off = find("onnx-int8", True, 32), find("onnx-int8", False, 32)
    ref = result["predict_py"]["posts"] / result["predict_py"]["seconds"]
    if on and off:
        ratio = on["requests_per_second"] / off["requests_per_second"]
        out["int8, 32 clients, batching on / off >= 3x"] = {"value": f"{ratio:.2f}x", "held": ratio >= 3}
        share = on["posts_per_second"] / ref
        out["int8, 32 clients >= 70% of predict.py's posts/s"] = {"value": f"{share:.0%}", "held": share >= 0.7}
    eight = find("onnx-int8", True, 8)
    if eight:
        out["int8, 8 clients, p99 <= 100 ms"] = {"value": f"{eight['p99_ms']:.0f} ms", "held": eight["p99_ms"] <= 100}
    m = result["memory"]
    extra = m["three_adapters_mb"] - m["one_adapter_mb"]
    out["3 adapters on one base <= one model + 3 x 5 MB"] = {"value": f"{extra:+.0f} MB", "held": extra <= 10}
    crashes = (not result["overload"]["alive_after"]) + (not result["soak"]["alive_after"])
    tracebacks = result["overload"]["stop"]["tracebacks"] + result["soak"]["stop"]["tracebacks"]
    out["overload: 0 crashes, 0 tracebacks"] = {"value": f"{crashes} / {tracebacks}", "held": crashes + tracebacks == 0}
    failed = result["soak"]["requests"] - result["soak"]["answered"]
    out["soak: 0 failed requests"] = {"value": str(failed), "held": failed == 0}
    return out


def draw(result):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for backend in dict.fromkeys(r["backend"] for r in result["runs"]):
        for batching in (True, False):
            rows = [r for r in result["runs"] if r["backend"] == backend and r["batching"] == batching]
            if not rows:
                continue
            label = f"{backend}, batching {'on' if batching else 'off'}"
            style = "o-" if batching else "x--"
            axes[0].plot([r["clients"] for r in rows], [r["requests_per_second"] for r in rows], style, label=label)
            axes[1].plot([r["clients"] for r in rows], [r["p99_ms"] or 0 for r in rows], style, label=label)
    axes[0].set(xscale="log", xlabel="clients", ylabel="requests/s", title="throughput (one-post requests)")
    axes[1].set(xscale="log", yscale="log", xlabel="clients", ylabel="p99 latency, ms", title="tail latency")
    for ax in axes:
        ax.legend(fontsize=7)
    return fig


def main(argv=None):
    args = parse_args(argv)
    _, val_ds, _, _ = data.load_splits(args.data)
    posts = [t for t in val_ds["text"] if t.strip()]
    reference = "onnx-int8" if "onnx-int8" in args.backends else args.backends[-1]  # overload, soak, predict.py
    runs = []
    for backend in args.backends:
        for batching in (True, False):
            flags = ["--adapter", args.adapter, "--backend", backend, "--batching" if batching else "--no-batching"]
            server = Server(*flags)
            try:
                for clients in args.concurrency:
                    r = run_level(server, posts, clients, args)
                    runs.append({"backend": backend, "batching": batching, **r})
                    print(f"{backend}, batching {batching}, {clients} clients: {r['requests_per_second']:.1f} req/s, "
                          f"p99 {r['p99_ms']} ms, errors {r['errors']}", file=sys.stderr, flush=True)  # fmt: skip
            finally:
                server.stop()
    result = {
        "command": H.command_line(__file__, argv),
        "device": H.device_name(),
        "requests": args.requests,
        "seconds": args.seconds,
        "runs": runs,
        "reference_backend": reference,
        "predict_py": predict_py_rate(args.adapter, posts[: max(args.requests, 200)], reference),
    }
    for name, flags, clients, seconds in (
        ("overload", ["--max-queue", "64", "--max-texts", "8"], args.overload_clients, args.overload_seconds),
        ("soak", [], 16, args.soak_seconds),
    ):
        server = Server("--adapter", args.adapter, "--backend", reference, *flags)
        try:
            latencies, statuses, took, samples = asyncio.run(drive(server.url, posts, clients, 10**9, seconds, server))
            alive = server.alive() and httpx.get(f"{server.url}/health", timeout=10).status_code == 200
        finally:
            stop = server.stop()
        result[name] = {
            "clients": clients, "seconds": took, "requests": sum(statuses.values()), "answered": len(latencies),
            "statuses": statuses, "p99_ms": 1000 * (percentile(latencies, 99) or 0), "memory": samples,
            "alive_after": alive, "stop": stop,
        }  # fmt: skip
        print(f"{name}: {statuses}, alive {alive}", file=sys.stderr, flush=True)
    result["memory"] = memory_of_three(args, posts)
    result["goals"] = goals(result)
    stem = H.results_stem(args)
    H.write_results(stem, result, markdown(result), draw)


def memory_of_three(args, posts):
    """Resident memory of a torch server with the adapter three times (copies under other names) against once."""
    work = Path(tempfile.mkdtemp())
    try:
        copies = []
        for name in ("task-a", "task-b", "task-c"):
            shutil.copytree(args.adapter, work / name, ignore=shutil.ignore_patterns("*.onnx", "onnx*.json"))
            copies.append(work / name)
        info = json.loads((work / "task-a" / "training.json").read_text())
        if info["mode"] != "adapter":
            return {"one_adapter_mb": float("nan"), "three_adapters_mb": float("nan")}
        one = idle_memory(["--adapter", copies[0], "--backend", "torch"], posts[:8])
        three = idle_memory(["--adapter", *copies, "--backend", "torch"], posts[:8])
        return {"one_adapter_mb": one, "three_adapters_mb": three}
    finally:
        shutil.rmtree(work)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
