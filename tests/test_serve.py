"""serve.py over loopback, as a client sees it: every endpoint, micro-batched answers equal to predict.py's, bad
requests get a 4xx JSON answer and the server keeps answering, a full queue gives 503, SIGTERM drains the requests in
flight, the page in a real headless browser, the ONNX backend, and Ray Serve replicas once."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import (
    ROOT,
    assert_clean_failure,
    assert_same_answer,
    fill_hub_cache,
    folder_files,
    free_port,
    int8_copy,
    run_cli,
    run_main,
    save_plain_adapter,
)

import serve
import train

POSTS = [f"{text} {i}" for i, text in enumerate(["I feel hopeless and EMPTY!", "our team won the cup today",
         "nothing matters anymore, i cannot sleep", "made pancakes for the whole family"] * 6)]  # fmt: skip
# one worker trains the adapters (session-scoped), once
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("serve")]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
STOPPED = (0, -signal.SIGTERM)  # uvicorn finishes its shutdown, then ends by the signal it was sent, as asked


@pytest.fixture(scope="session")
def adapters(tiny_bert, posts_csv, tmp_path_factory):
    """Two adapters on the tiny BERT (one on normalised texts), the first also exported to ONNX."""
    out = tmp_path_factory.mktemp("served")
    for name, flags in {"first": [], "second": ["--normalize-text", "--seed", "3"]}.items():
        args = ["--model", tiny_bert, "--data", posts_csv, "--output-dir", str(out), "--name", name, *flags]
        train.run(train.parse_args([*args, "--epochs", "2", "--batch-size", "8", "--max-length", "32", "--lr", "1e-2"]))
    run_cli("export.py", "--adapter", out / "first", "--data", posts_csv, "--no-int8")
    return out


class Server:
    """serve.py in its own process on a free loopback port; stopped with SIGTERM."""

    def __init__(self, *args, env=None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "serve.py", *map(str, args), "--port", str(self.port)],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        )  # fmt: skip
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"serve.py exited {self.proc.returncode}: {self.proc.stderr.read()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.3)
        self.stop()
        raise AssertionError("serve.py did not answer /health within 120 s")

    def post(self, body, timeout=30, **kwargs):
        content = body if isinstance(body, (bytes, str)) else json.dumps(body)
        return httpx.post(f"{self.url}/classify", content=content, timeout=timeout, **kwargs)

    def stop(self):
        """SIGTERM, then (stdout, stderr, exit code)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            out, err = self.proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
        return out, err, self.proc.returncode


@pytest.fixture(scope="module")
def two(adapters):
    server = Server("--adapter", adapters / "first", adapters / "second", "--max-texts", "8", "--max-chars", "500")
    yield server
    server.stop()


def predict_py(folder, texts, backend="torch"):
    """predict.py's probabilities (its main() in this process: predict.py's new processes are tested elsewhere)."""
    proc = run_main("predict.py", "--adapter", folder, "--backend", backend, "--json", *texts)
    return np.array([list(json.loads(line)["probabilities"].values()) for line in proc.stdout.splitlines()])


def test_every_endpoint_answers(two):
    health = httpx.get(f"{two.url}/health").json()
    assert health["status"] == "ok" and health["adapters"] == 2 and health["backend"] == "torch"
    listed = httpx.get(f"{two.url}/adapters").json()["adapters"]
    assert [a["name"] for a in listed] == ["first", "second"]
    assert listed[0]["labels"] == ["not depressive", "depressive"] and listed[1]["normalize_text"]
    assert all(0 <= a["validation_accuracy"] <= 1 and a["base_model"] for a in listed)
    answer = two.post({"texts": POSTS[:2]}).json()
    assert [r["text"] for r in answer["results"]] == POSTS[:2] and "not a diagnostic instrument" in answer["note"]
    assert list(answer["results"][0]["adapters"]) == ["first", "second"]
    only = two.post({"texts": POSTS[:1], "adapters": ["second"]}).json()["results"][0]["adapters"]
    assert list(only) == ["second"]
    assert_same_answer(only["second"], answer["results"][0]["adapters"]["second"])  # alone as in a batch of two
    page = httpx.get(f"{two.url}/")
    assert page.status_code == 200 and "not a diagnostic instrument" in page.text
    assert "/classify" in httpx.get(f"{two.url}/openapi.json").json()["paths"]
    assert httpx.get(f"{two.url}/docs").status_code == 200


def test_batched_answers_equal_predict_py(two, adapters):
    """One-post requests from 12 clients at once share model calls and get predict.py's probabilities."""
    before = httpx.get(f"{two.url}/health").json()["batches"]
    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(lambda text: two.post({"texts": [text]}).json(), POSTS))
    batches = httpx.get(f"{two.url}/health").json()["batches"] - before
    assert 1 <= batches < len(POSTS)  # requests were batched together
    for name in ("first", "second"):
        expected = predict_py(adapters / name, POSTS)
        served = np.array([list(a["results"][0]["adapters"][name]["probabilities"].values()) for a in answers])
        assert np.abs(served - expected).max() < 1e-5


BAD_REQUESTS = {
    "empty body": (b"", 400),
    "not JSON": (b"texts=hello", 400),
    "truncated JSON": (b'{"texts": ["a"', 400),
    "non-UTF-8 bytes": (b'{"texts": ["\xff\xfe"]}', 400),
    "a JSON array": ([["hello"]], 422),
    "a JSON string": (b'"hello"', 422),
    "no texts": ({"adapters": ["first"]}, 422),
    "texts not a list": ({"texts": "hello"}, 422),
    "a number as text": ({"texts": [1]}, 422),
    "null texts": ({"texts": None}, 422),
    "nested lists": ({"texts": [["a"]]}, 422),
    "no text at all": ({"texts": []}, 422),
    "an empty text": ({"texts": [""]}, 422),
    "a blank text": ({"texts": ["   "]}, 422),
    "too many texts": ({"texts": ["a"] * 9}, 413),
    "a huge text": ({"texts": ["a" * 501]}, 413),
    "a huge body": ({"texts": ["a" * 10_000_000]}, 413),
    "an unknown adapter": ({"texts": ["a"], "adapters": ["third"]}, 422),
    "a path as adapter name": ({"texts": ["a"], "adapters": ["../../../etc/passwd"]}, 422),
    "a folder as adapter name": ({"texts": ["a"], "adapters": [str(ROOT / "adapters")]}, 422),
    "adapters not a list": ({"texts": ["a"], "adapters": "first"}, 422),
    "no adapter named": ({"texts": ["a"], "adapters": []}, 422),
    "an unknown field": ({"texts": ["a"], "model": "x"}, 422),
}


@pytest.mark.parametrize("kind", list(BAD_REQUESTS))
def test_a_bad_request_gets_a_4xx_json_answer_and_the_server_goes_on(two, kind):
    body, status = BAD_REQUESTS[kind]
    response = two.post(body)
    assert response.status_code == status, response.text
    message = response.json()["error"]
    assert isinstance(message, str) and message and "Traceback" not in response.text
    assert two.post({"texts": ["still answering"]}).status_code == 200


def test_wrong_methods_and_paths_get_json_errors(two):
    assert httpx.get(f"{two.url}/classify").status_code == 405
    missing = httpx.get(f"{two.url}/etc/passwd")
    assert missing.status_code == 404 and missing.json() == {"error": "Not Found"}


def test_a_full_queue_gives_503_with_retry_after(adapters):
    server = Server("--adapter", adapters / "first", "--backend", "torch", "--no-batching", "--max-queue", "8",
                    "--max-texts", "8")  # fmt: skip
    try:
        with ThreadPoolExecutor(32) as pool:
            responses = list(pool.map(lambda _: server.post({"texts": POSTS[:8]}), range(64)))
        codes = [r.status_code for r in responses]
        assert set(codes) <= {200, 503} and 503 in codes and 200 in codes
        busy = next(r for r in responses if r.status_code == 503)
        assert busy.headers["retry-after"] == "1" and "busy" in busy.json()["error"]
        assert server.post({"texts": ["after the rush"]}).status_code == 200
    finally:
        _, err, code = server.stop()
    assert code in STOPPED and "Traceback" not in err


def test_sigterm_lets_the_requests_in_flight_finish(adapters):
    server = Server("--adapter", adapters / "first", "--backend", "torch", "--max-wait-ms", "1500")
    with ThreadPoolExecutor(4) as pool:
        pending = [pool.submit(server.post, {"texts": [text]}) for text in POSTS[:4]]
        time.sleep(0.5)  # the requests wait in the batcher's 1.5 s window
        server.proc.send_signal(signal.SIGTERM)
        responses = [f.result() for f in pending]
    _, err, code = server.stop()
    assert [r.status_code for r in responses] == [200] * 4
    assert code in STOPPED and "Traceback" not in err and "Finished server process" in err


def test_onnx_backend_answers_as_predict_py(adapters):
    server = Server("--adapter", adapters / "first", "--backend", "onnx")
    try:
        answer = server.post({"texts": POSTS[:6]}).json()
        assert httpx.get(f"{server.url}/health").json()["backend"] == "onnx"
    finally:
        server.stop()
    served = np.array([list(r["adapters"]["first"]["probabilities"].values()) for r in answer["results"]])
    assert np.abs(served - predict_py(adapters / "first", POSTS[:6], "onnx")).max() < 1e-5


def test_int8_served_batched_answers_each_post_as_alone(adapters, tmp_path):
    """int8 is micro-batched by default now; one-post requests from 12 clients at once share batches and get
    exactly what each post gets alone from predict.py (one post per model call: its scales are its own)."""
    folder = int8_copy(adapters / "first", tmp_path / "first")
    server = Server("--adapter", folder, "--backend", "onnx-int8")
    try:
        with ThreadPoolExecutor(12) as pool:
            answers = list(pool.map(lambda text: server.post({"texts": [text]}).json(), POSTS))
        health = httpx.get(f"{server.url}/health").json()
    finally:
        server.stop()
    assert health["backend"] == "onnx-int8" and 1 <= health["batches"] < len(POSTS)  # batched together
    served = np.array([list(a["results"][0]["adapters"]["first"]["probabilities"].values()) for a in answers])
    alone = np.concatenate([predict_py(folder, [text], "onnx-int8") for text in POSTS])
    assert np.abs(served - alone).max() <= 1e-6


def test_a_folder_saved_by_plain_adapters_is_served_beside_a_trained_one(adapters, tiny_bert, tmp_path):
    save_plain_adapter(tiny_bert, tmp_path / "sentiment")
    server = Server("--adapter", adapters / "first", tmp_path / "sentiment")
    try:
        listed = {a["name"]: a for a in httpx.get(f"{server.url}/adapters").json()["adapters"]}
        assert listed["sentiment"]["labels"] == ["neg", "neu", "pos"] and listed["first"]["trained_on"]
        answer = server.post({"texts": POSTS[:2]}).json()["results"]
    finally:
        out, _, code = server.stop()
    assert code in STOPPED and f"note: {tmp_path / 'sentiment'} was saved by the adapters library" in out
    for name, folder in (("first", adapters / "first"), ("sentiment", tmp_path / "sentiment")):
        got = np.array([list(r["adapters"][name]["probabilities"].values()) for r in answer])
        assert np.abs(got - predict_py(folder, POSTS[:2])).max() < 0.02


def test_an_adapter_from_the_hub_is_served_by_its_repositorys_name(adapters, tmp_path):
    """--adapter me/depression-first (a Hub id, from a filled cache, offline) beside a local folder: the task is
    called by the repository's name, and answers as the local copy does."""
    cache = tmp_path / "cache"
    fill_hub_cache(cache, "me/depression-first", folder_files(adapters / "first"))
    env = {"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    server = Server("--adapter", "me/depression-first", adapters / "second", env=env)
    try:
        names = [a["name"] for a in httpx.get(f"{server.url}/adapters").json()["adapters"]]
        answer = server.post({"texts": POSTS[:2], "adapters": ["depression-first"]}).json()["results"]
    finally:
        out, _, code = server.stop()
    assert code in STOPPED and names == ["depression-first", "second"]
    assert "note: me/depression-first from the Hugging Face Hub" in out
    got = np.array([list(r["adapters"]["depression-first"]["probabilities"].values()) for r in answer])
    assert np.abs(got - predict_py(adapters / "first", POSTS[:2])).max() < 0.02


def test_bad_flags_and_folders_get_one_line(adapters, tmp_path):
    proc = run_cli("serve.py", "--adapter", tmp_path / "missing", "--port", str(free_port()), check=False)
    assert_clean_failure(proc, "no trained adapter")  # in a new process; the others in this one (nothing listens)
    port = free_port()
    proc = run_main("serve.py", "--adapter", adapters / "first", adapters / "second", "--backend", "onnx",
                    "--port", str(port), check=False)  # fmt: skip
    assert_clean_failure(proc, "--backend onnx", "torch")
    proc = run_main("serve.py", "--max-queue", "4", "--max-texts", "8", check=False)
    assert_clean_failure(proc, "--max-queue")


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium (.ci/run installs it)")
def test_the_page_in_a_real_browser(adapters, tmp_path):
    from playwright.sync_api import sync_playwright

    server = Server("--adapter", adapters / "first", adapters / "second", "--max-chars", "100")
    flags = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
             "--no-first-run", "--disable-sync", "--disable-quic"]  # fmt: skip
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=flags)
            page = browser.new_page()
            page.goto(server.url + "/")
            assert page.is_visible("#note") and "not a diagnostic instrument" in page.inner_text("#note")
            page.fill("#text", "i can't get out of bed anymore and nothing feels worth it")
            page.click("#go")
            page.wait_for_selector(".task", timeout=30_000)
            tasks = page.query_selector_all(".task")
            assert [t.get_attribute("data-task") for t in tasks] == ["first", "second"]
            for task in tasks:
                assert len(task.query_selector_all(".bar")) == 2 and "depressive" in task.inner_text()
                widths = [float(v.inner_text()) for v in task.query_selector_all(".value")]
                assert abs(sum(widths) - 1) < 0.01
            page.wait_for_function("document.getElementById('adapters').textContent.includes('first')")
            page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
            page.fill("#text", "x" * 101)  # the server refuses it: the page says so
            page.click("#go")
            page.wait_for_function("document.getElementById('error').textContent.length > 0", timeout=30_000)
            assert "413" in page.inner_text("#error") and "100" in page.inner_text("#error")
            assert not page.query_selector_all(".task") and page.is_visible("#note")
            browser.close()
    finally:
        server.stop()
    assert (tmp_path / "page.png").read_bytes()[:4] == b"\x89PNG"


def test_ray_serve_replicas_answer_as_uvicorn_does(adapters):
    pytest.importorskip("ray.serve")
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "serve.py", "--adapter", adapters / "first", "--backend", "torch", "--ray-replicas", "2",
         "--port", str(port)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), "RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": "60"},
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline, answer = time.monotonic() + 300, None
        while time.monotonic() < deadline and answer is None and proc.poll() is None:
            try:
                response = httpx.post(f"{url}/classify", json={"texts": POSTS[:4]}, timeout=30)
                answer = response.json() if response.status_code == 200 else None
            except httpx.HTTPError:
                time.sleep(2)
        assert answer is not None, "Ray Serve did not answer within 300 s"
        served = np.array([list(r["adapters"]["first"]["probabilities"].values()) for r in answer["results"]])
        assert np.abs(served - predict_py(adapters / "first", POSTS[:4])).max() < 1e-5
        assert httpx.post(f"{url}/classify", content=b"{bad").status_code == 400
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


def test_load_benchmark_runs_every_part_bounded(adapters, posts_csv, tmp_path):
    """bench/load.py --quick on the tiny adapter: every run, the overload and soak runs, the memory of three
    adapters on one base, and the goals it checks, within its bounds."""
    run_cli("-m", "bench.load", "--quick", "--adapter", adapters / "first", "--data", posts_csv, "--backends",
            "onnx", "--out", tmp_path)  # fmt: skip
    [result_file] = tmp_path.glob("load-*-quick.json")
    result = json.loads(result_file.read_text())
    assert [(r["batching"], r["clients"]) for r in result["runs"]] == [(True, 1), (True, 8), (False, 1), (False, 8)]
    for r in result["runs"]:
        assert r["requests"] <= result["requests"] and r["errors"] == 0 and r["p99_ms"] >= r["p50_ms"] > 0
    for name in ("overload", "soak"):
        assert result[name]["alive_after"] and result[name]["stop"]["tracebacks"] == 0
    assert result["memory"]["three_adapters_mb"] > 0 and "soak: 0 failed requests" in result["goals"]
    assert result_file.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"


def test_every_backend_is_served_batched_unless_told_not_to(tmp_path):
    """Batching is on by default on every backend, onnx-int8 included (one post per model call: its answers are the
    posts' own); --no-batching turns it off."""
    folder = str(tmp_path / "any")
    cases = [([], True), (["--backend", "onnx-int8"], True), (["--batching"], True), (["--no-batching"], False),
             (["--backend", "onnx-int8", "--no-batching"], False)]  # fmt: skip
    for flags, expected in cases:
        args = serve.parse_args(["--adapter", folder, *flags])
        assert serve.limits_for(args).batching is expected, flags
