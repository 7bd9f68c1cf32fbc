"""
Serve trained adapters over HTTP: one base model carries every adapter (torch), requests from many clients are
micro-batched into one model call, and a page at / lets you try it.

    pip install -r requirements-serve.txt
    python serve.py --adapter adapters/depression-pfeiffer                   # http://127.0.0.1:8000
    python serve.py --adapter adapters/a adapters/b adapters/c --port 8080   # three tasks on one base model
    python serve.py --adapter adapters/depression-pfeiffer --backend onnx-int8
    python serve.py --adapter adapters/depression-pfeiffer --ray-replicas 2  # Ray Serve replicas (docs/scale.md)
    python serve.py --adapter your-name/depression-pfeiffer                  # a Hub id: the task depression-pfeiffer
    curl -s 127.0.0.1:8000/classify -H 'content-type: application/json' -d '{"texts": ["some text"]}'

Endpoints: POST /classify, GET /adapters, GET /health, GET / (the page), GET /docs (the OpenAPI page).
SIGTERM (or Ctrl-C) lets the requests in flight finish, then the server stops.
This is a research and teaching tool, not a diagnostic instrument.
"""

import argparse
import logging
import socket

from errors import ModelError, fail
from textclassifier import cli, inference, server

DEFAULT_ADAPTER = "adapters/depression-pfeiffer"
LIMITS = server.Limits()


def build_parser():
    p = cli.command_parser("serve.py", __doc__)
    p.add_argument(
        "--adapter",
        nargs="+",
        default=[DEFAULT_ADAPTER],
        metavar="FOLDER",
        help="folders written by train.py, or Hugging Face Hub ids of them (org/name[@revision], downloaded into "
        "the Hub cache at start; a local folder of that name wins); each is a task named by its folder's (or "
        "repository's) name; on torch, several adapters trained on one base model share it "
        f"(default: {DEFAULT_ADAPTER})",
    )
    inference.add_backend_flag(p, default="auto")
    inference.add_precision_flag(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    p.add_argument(
        "--max-batch-size",
        type=int,
        default=LIMITS.max_batch,
        help=f"texts per model call: a batch closes when it holds this many (default: {LIMITS.max_batch})",
    )
    p.add_argument(
        "--max-wait-ms",
        type=float,
        default=LIMITS.max_wait_ms,
        help="or this many milliseconds after its first request arrived (default: "
        f"{LIMITS.max_wait_ms:g}; docs/serve.md has the measurements)",
    )
    p.add_argument(
        "--batching",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="micro-batching of concurrent requests into one model call (every backend gives each post its own "
        "answer, whatever shares its batch: docs/serve.md); --no-batching: one request per call",
    )
    p.add_argument(
        "--max-queue",
        type=int,
        default=LIMITS.max_queue,
        help=f"texts that may wait for the model; beyond it requests get 503 and Retry-After (default: "
        f"{LIMITS.max_queue})",
    )
    p.add_argument(
        "--max-texts", type=int, default=LIMITS.max_texts, help=f"texts per request (default: {LIMITS.max_texts})"
    )
    p.add_argument(
        "--max-chars",
        type=int,
        default=LIMITS.max_chars,
        help=f"characters per text; longer texts get 413 (default: {LIMITS.max_chars})",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="ONNX Runtime's threads (int8: posts at once, one thread each; default: one per core)",
    )
    p.add_argument(
        "--ray-replicas",
        type=int,
        default=0,
        metavar="N",
        help="serve N replicas on Ray Serve (pip install -r requirements-scale.txt; the local machine, or the "
        "cluster at RAY_ADDRESS) instead of one uvicorn process (default: 0, uvicorn)",
    )
    return p


def parse_args(argv=None):
    args = build_parser().parse_args(argv)
    numbers = {
        "--port": (args.port, 1, 65535), "--max-batch-size": (args.max_batch_size, 1, 10_000),
        "--max-queue": (args.max_queue, 1, 10_000_000), "--max-texts": (args.max_texts, 1, 100_000),
        "--max-chars": (args.max_chars, 1, 10_000_000), "--ray-replicas": (args.ray_replicas, 0, 1000),
    }  # fmt: skip
    for flag, (value, low, high) in numbers.items():
        if not low <= value <= high:
            fail(f"{flag} must be between {low} and {high:,}")
    if not 0 <= args.max_wait_ms <= 10_000:
        fail("--max-wait-ms must be between 0 and 10000")
    if args.max_queue < args.max_texts:
        fail("--max-queue must hold at least one request of --max-texts texts")
    return args


def limits_for(args):
    """The server's limits from the flags; batching on every backend unless --no-batching (a post's answer does not
    depend on the others in its batch on any backend: inference.BATCH_TOLERANCE)."""
    return server.Limits(
        max_texts=args.max_texts, max_chars=args.max_chars, max_queue=args.max_queue,
        max_batch=args.max_batch_size, max_wait_ms=args.max_wait_ms, batching=args.batching,
    )  # fmt: skip


def check_port(host, port):
    """One line instead of uvicorn's traceback when the address cannot be listened on."""
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, port))
    except OSError as e:
        fail(f"cannot listen on {host}:{port} ({e.strerror}); pass another --port or --host")


def main(argv=None):
    args = parse_args(argv)
    check_port(args.host, args.port)
    try:
        found = inference.find_adapters(args.adapter, args.backend)  # Hub ids -> their folders in the HF cache
    except ModelError as e:
        fail(str(e))
    backend, limits = found.backend, limits_for(args)
    if args.ray_replicas:
        for note in found.notes:
            print(note, flush=True)
        try:
            return server.deploy_on_ray(
                found.folders, backend, args.threads, limits, args.ray_replicas, args.host, args.port, args.precision
            )
        except ModelError as e:
            fail(str(e))
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    try:
        models = server.Models(found.folders, backend, args.threads, args.precision)
    except ModelError as e:
        fail(str(e))
    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(levelname)s:     %(message)s")
    for note in found.notes + models.notes():
        print(note, flush=True)
    print(
        f"serving {', '.join(models.names)} ({backend} on {models.device}) at http://{args.host}:{args.port}/ "
        f"(API: /docs); batches of up to {args.max_batch_size} texts, {args.max_wait_ms:g} ms"
        + ("" if limits.batching else " (batching off)"),
        flush=True,
    )
    uvicorn.run(server.create_app(models, limits), host=args.host, port=args.port, timeout_graceful_shutdown=30)


if __name__ == "__main__":
    main()
