"""
The HTTP service over trained adapters (and its Ray Serve deployment): the adapters loaded once (Models), requests
from many clients micro-batched into one model call (Batcher), limits that answer 4xx/503 instead of failing
(Limits), and the page at /. create_app(models, limits) gives the FastAPI app that uvicorn or Ray Serve runs.

Endpoints: POST /classify {"texts": [...], "adapters": [...]} (adapters by name, default all), GET /adapters,
GET /health, GET / (the page), GET /docs (FastAPI's OpenAPI page). Requests name adapters, never files: the names
are keys of what was loaded at start.
"""

import asyncio
import logging
import math
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from errors import ModelError, first_line
from textclassifier import inference

PAGE = Path(__file__).resolve().parent / "static" / "index.html"
NOTE = (
    "A research and teaching tool, not a diagnostic instrument: a label says nothing reliable about a person. "
    "If you or someone you know is struggling, please reach out to a local crisis line or a health professional."
)
log = logging.getLogger("serve")


@dataclass
class Limits:
    """What one request and the queue may hold, and how batches close (serve.py's flags, measured in docs/serve.md)."""

    max_texts: int = 64  # texts per request (more: 413)
    max_chars: int = 20_000  # characters per text (more: 413)
    max_queue: int = 512  # texts waiting for the model (more: 503 with Retry-After)
    max_batch: int = 64  # texts per model call: a batch closes when it holds this many...
    max_wait_ms: float = 5.0  # ...or this long after its first request arrived
    batching: bool = True  # False: one request per model call, as if there were no batcher

    @property
    def max_body_bytes(self):
        """The largest request body worth reading: every text at its limit, escaped, plus the rest."""
        return self.max_texts * (self.max_chars * 6 + 16) + 65_536


class Models(inference.Adapters):
    """The adapters a server answers with, by task name (inference.Adapters: one base model for several adapters on
    torch, otherwise each folder alone), and what GET /adapters says of them."""

    def describe(self):
        """What GET /adapters says of each task: labels, base model, what it was trained on, validation accuracy."""
        return [
            {
                "name": name,
                "labels": info["label_names"],
                "base_model": info["base_model"],
                "mode": info["mode"],
                "adapter_config": info.get("adapter_config"),
                "trained_on": info.get("data_set") or info.get("data"),
                "validation_accuracy": (info.get("best") or {}).get("accuracy"),
                "max_length": info["max_length"],
                "normalize_text": bool(info.get("normalize_text")),
                "backend": self.backend,
            }
            for name, info in self.infos.items()
        ]


class QueueFull(Exception):
    pass


class Batcher:
    """Requests from many clients into few model calls: a request waits in a bounded queue; a batch takes requests
    until it holds max_batch texts or max_wait_ms have passed since its first, and the model runs it in a worker
    thread, off the event loop (inference sorts the texts by length). A request is never split across batches."""

    def __init__(self, models, limits):
        self.models, self.limits = models, limits
        self.queue = asyncio.Queue()
        self.waiting = 0  # texts queued, not yet in a batch
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="model")
        self.batches = 0

    async def classify(self, texts, names):
        """Every text's {task: probabilities}, once its batch has run; QueueFull when the queue cannot take it."""
        if self.waiting + len(texts) > self.limits.max_queue:
            raise QueueFull
        future = asyncio.get_running_loop().create_future()
        self.waiting += len(texts)
        self.queue.put_nowait((texts, names, future))
        return await future

    async def run(self):
        """The batching loop (a task for the server's lifetime)."""
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            size = len(batch[0][0])
            deadline = loop.time() + self.limits.max_wait_ms / 1000
            while self.limits.batching and size < self.limits.max_batch:
                try:
                    item = (
                        self.queue.get_nowait()
                        if self.queue.qsize()
                        else await asyncio.wait_for(self.queue.get(), max(deadline - loop.time(), 0))
                    )
                except (asyncio.TimeoutError, TimeoutError):
                    break
                batch.append(item)
                size += len(item[0])
            self.waiting -= size
            await self.run_batch(loop, batch)

    async def run_batch(self, loop, batch):
        texts = [t for request in batch for t in request[0]]
        names = sorted({n for request in batch for n in request[1]})
        try:
            probs = await loop.run_in_executor(self.executor, self.models.classify, texts, names)
        except Exception as error:  # the model failed: each request of the batch gets a 500, the server goes on
            log.exception("model call failed")
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(error)
            return
        self.batches += 1
        start = 0
        for request_texts, request_names, future in batch:
            rows = slice(start, start + len(request_texts))
            start += len(request_texts)
            if not future.done():  # a client that left has its future cancelled
                future.set_result({n: probs[n][rows] for n in request_names})

    def close(self):
        self.executor.shutdown(wait=True)


class ClassifyRequest(BaseModel):
    """POST /classify's body."""

    texts: list[str] = Field(description="posts to classify (at most the server's max texts, each at most its "
                             "max characters)", min_length=1)  # fmt: skip
    adapters: list[str] | None = Field(default=None, description="names from GET /adapters; default: every one")

    model_config = {"extra": "forbid", "strict": True}


class Answer(BaseModel):
    label: str
    score: float
    probabilities: dict[str, float]


class Result(BaseModel):
    text: str
    adapters: dict[str, Answer]


class ClassifyResponse(BaseModel):
    results: list[Result]
    note: str


def error(status, message, headers=None):
    """Every refusal: a JSON object {"error": message} with a 4xx/5xx status."""
    return JSONResponse({"error": message}, status_code=status, headers=headers)


async def read_body(request, limit):
    """The request body, read up to `limit` bytes; None when it is larger."""
    size = int(request.headers.get("content-length") or 0)
    if size > limit:
        return None
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)


def parse_request(body, models, limits):
    """(texts, adapter names) from a body, or (status, message) of the refusal."""
    try:
        request = ClassifyRequest.model_validate_json(body)
    except ValidationError as e:
        first = e.errors()[0]
        if first["type"] in ("json_invalid", "json_type") or not body.strip():
            return None, (400, f'the body is not a JSON object ({first["msg"]}); send {{"texts": ["..."]}}')
        where = ".".join(str(part) for part in first["loc"]) or "body"
        return None, (422, f'{where}: {first["msg"]}; send {{"texts": ["..."], "adapters": ["..."]}}')
    if len(request.texts) > limits.max_texts:
        return None, (413, f"{len(request.texts)} texts in one request; the limit is {limits.max_texts}")
    for i, text in enumerate(request.texts):
        if len(text) > limits.max_chars:
            return None, (413, f"text {i} has {len(text):,} characters; the limit is {limits.max_chars:,}")
        if not text.strip():
            return None, (422, f"text {i} is empty")
    names = request.adapters if request.adapters is not None else models.names
    if not names:
        return None, (422, "adapters: name at least one, or leave the field out for every adapter")
    unknown = [n for n in names if n not in models.infos]
    if unknown:
        return None, (422, f"unknown adapter {unknown[0][:100]!r}; this server has: {', '.join(models.names)}")
    return (request.texts, list(dict.fromkeys(names))), None


def create_app(models, limits=None):
    """The FastAPI app over loaded Models: the routes, the batcher's lifetime, and JSON errors for everything."""
    limits = limits or Limits()
    label_names = models.label_names

    @asynccontextmanager
    async def lifespan(app):
        app.state.batcher = Batcher(models, limits)
        task = asyncio.create_task(app.state.batcher.run())
        yield
        task.cancel()  # uvicorn calls this after the requests in flight have their answers
        try:
            await task
        except asyncio.CancelledError:
            pass
        app.state.batcher.close()

    app = FastAPI(title="Depression classifier (bottleneck adapters)", description=NOTE, lifespan=lifespan)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, exc):
        return error(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request, exc):
        return error(422, str(exc.errors()[0].get("msg", "invalid request")))

    @app.exception_handler(Exception)
    async def internal_error(request, exc):  # never a traceback to the client
        log.exception("request failed")
        return error(500, "internal error; the server is still running")

    @app.post(
        "/classify",
        response_model=ClassifyResponse,
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": ClassifyRequest.model_json_schema()}},
            }
        },  # fmt: skip
        responses={400: {}, 413: {}, 422: {}, 503: {}},
    )
    async def classify(request: Request):
        """Each text's label and probabilities from each adapter named (default: all)."""
        body = await read_body(request, limits.max_body_bytes)
        if body is None:
            return error(413, f"request body too large; at most {limits.max_texts} texts of {limits.max_chars:,} "
                         "characters each")  # fmt: skip
        parsed, refusal = parse_request(body, models, limits)
        if refusal:
            return error(*refusal)
        texts, names = parsed
        try:
            probs = await request.app.state.batcher.classify(texts, names)
        except QueueFull:
            return error(503, "the server is busy (queue full); retry shortly", {"Retry-After": "1"})
        rows = inference.shared_rows(texts, probs, label_names)  # predict.py's rows of several adapters
        return {"results": [{"text": row["text"], "adapters": row["results"]} for row in rows], "note": NOTE}

    @app.get("/adapters")
    async def adapters():
        """The adapters this server answers with."""
        return {"adapters": models.describe(), "note": NOTE}

    @app.get("/health")
    async def health(request: Request):
        """Whether the server answers, and how much waits."""
        batcher = request.app.state.batcher
        return {"status": "ok", "adapters": len(models.names), "queued_texts": batcher.waiting,
                "batches": batcher.batches, "backend": models.backend, "device": models.device,
                "time": time.time()}  # fmt: skip

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(PAGE, media_type="text/html")

    return app


def replica_gpus(backend, cluster_gpus, replicas):
    """The GPUs each Ray Serve replica asks for: on torch, one each where the cluster has as many GPUs as
    replicas, else an equal share (Ray places replicas with a fraction of a GPU together on one); none for ONNX
    (its sessions compute on the replicas' CPUs) or where the cluster has no GPU. Ray hides from a replica every
    GPU it did not ask for, so a replica without any computes on its CPUs."""
    if backend != "torch" or not cluster_gpus:
        return 0
    return min(1, math.floor(cluster_gpus / replicas * 100) / 100)


def deploy_on_ray(folders, backend, threads, limits, replicas, host, port, precision="auto"):
    """The same app on Ray Serve: `replicas` replicas, each loading the models and running create_app's app (its
    batcher included) as the ingress, each with a GPU (or a share of one) where the cluster has GPUs and the
    backend is torch (replica_gpus); Ray's proxy listens on host:port. Blocks until interrupted (SIGINT/SIGTERM),
    then shuts Serve down. A local Ray instance unless RAY_ADDRESS names a cluster."""
    import ray
    from ray import serve

    def build_app():  # evaluated on each replica
        return create_app(Models(folders, backend, threads, precision), limits)

    # Serve's proxy must report ready within 5 s by default, which a busy 2-core machine misses while it imports
    os.environ.setdefault("RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S", "60")
    ray.init(include_dashboard=False, ignore_reinit_error=True, log_to_driver=False)
    try:
        cluster_gpus = ray.cluster_resources().get("GPU", 0)
        gpus = replica_gpus(backend, cluster_gpus, replicas)
        serve.start(http_options={"host": host, "port": port})
        deployment = serve.deployment(
            serve.ingress(build_app)(), name="classifier", num_replicas=replicas, ray_actor_options={"num_gpus": gpus}
        )
        serve.run(deployment.bind(), name="classifier", route_prefix="/")
    except Exception as e:  # a replica that cannot load its models, a proxy that cannot listen, ...
        ray.shutdown()
        raise ModelError(f"Ray Serve did not start ({type(e).__name__}: {first_line(e)})") from None
    where = (
        f"{gpus:g} GPU each" if gpus else
        f"{backend} on their CPUs" + (" (the cluster has no GPU)" if backend == "torch" and not cluster_gpus else "")
    )  # fmt: skip
    print(f"serving on Ray Serve: {replicas} replica(s), {where}, at http://{host}:{port}/ (Ctrl-C or SIGTERM stops)",
          flush=True)  # fmt: skip
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    serve.shutdown()
    ray.shutdown()
