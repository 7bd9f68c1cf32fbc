"""Pushing a trained folder to the Hugging Face Hub and using one by its Hub id, offline: the push through a fake
Hub client that records what it would upload (conftest.FakeHub), the pull from a Hugging Face cache laid out as
huggingface_hub lays it out (conftest.fill_hub_cache) with HF_HUB_OFFLINE=1, as on this machine and in CI."""

import json
import shutil

import huggingface_hub
import numpy as np
import pytest
from conftest import (
    ONE_QUICK_EPOCH,
    FakeHub,
    assert_clean_failure,
    fill_hub_cache,
    folder_files,
    run_cli,
    run_main,
    run_train,
    save_plain_adapter,
)
from huggingface_hub.errors import HfHubHTTPError

from errors import ModelError
from textclassifier import inference, sharing

COMMIT = "0123456789abcdef0123456789abcdef01234567"
POSTS = ["i feel hopeless and empty every day", "our team won the cup today"]


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache for this test (huggingface_hub reads its place when it looks)."""
    cache = tmp_path / "hub-cache"
    cache.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


@pytest.fixture
def fake_hub(monkeypatch):
    """A token, and huggingface_hub.HfApi replaced by a FakeHub that records what a push would upload."""
    hub = FakeHub()
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    monkeypatch.setattr(huggingface_hub, "HfApi", lambda *args, **kwargs: hub)
    return hub


@pytest.fixture(scope="module")
def plain(tiny_bert, tmp_path_factory):
    """An adapter with its head saved by plain adapters (no training.json): quick to make, loadable by every CLI."""
    folder = tmp_path_factory.mktemp("plain") / "sentiment"
    save_plain_adapter(tiny_bert, folder)
    return folder


def probabilities(adapter, *texts, **options):
    proc = run_main("predict.py", "--adapter", adapter, "--json", "--precision", "fp32", *texts, **options)
    return np.array([list(json.loads(line)["probabilities"].values()) for line in proc.stdout.splitlines()]), proc


def test_hub_ids_are_told_from_folders_by_their_form():
    for name in ["org/name", "me/depression-pfeiffer", "me/a.b_c@main", f"me/x@{COMMIT}", "me/x@refs/pr/1"]:
        assert sharing.looks_like_hub_id(name), name
    for name in ["name", "./org/name", "/abs/path", "~/x/y", "a/b/c", "has space/x", "org/", "-x/y", "i feel/bad"]:
        assert not sharing.looks_like_hub_id(name), name
    assert sharing.split_hub_id("me/x@v2") == ("me/x", "v2") and sharing.split_hub_id("me/x") == ("me/x", None)
    # where train.py saves, and paths under a local folder, stay local paths, wherever the command runs
    assert not sharing.is_hub_id("adapters/depression-pfeiffer") and not sharing.is_hub_id("models/depression-full")
    assert not sharing.is_hub_id("tests/nothing-here") and sharing.is_hub_id("me/depression-pfeiffer")


def test_a_push_uploads_the_folders_own_files_and_nothing_else(tmp_path):
    folder = tmp_path / "depression-pfeiffer"
    (folder / "checkpoint").mkdir(parents=True)
    for name in ["adapter.safetensors", "adapter_config.json", "head_config.json", "model.onnx", "README.md"]:
        (folder / name).write_text(name)
    for name in [".DS_Store", "x.lock", "checkpoint/state.json"]:  # hidden, a lock, a subfolder: never uploaded
        (folder / name).write_text(name)
    hub = FakeHub()
    url = sharing.push_folder(folder, "me/depression-pfeiffer", private=True, api=hub)
    assert url == "https://huggingface.co/me/depression-pfeiffer"
    assert hub.repos == [{"repo_id": "me/depression-pfeiffer", "private": True, "exist_ok": True}]
    [upload] = hub.uploads
    assert sorted(upload["files"]) == ["README.md", "adapter.safetensors", "adapter_config.json", "head_config.json",
                                       "model.onnx"]  # fmt: skip
    assert upload["repo_id"] == "me/depression-pfeiffer" and upload["delete_patterns"] == "*"  # the repo = the folder

    failing = FakeHub(error=HfHubHTTPError("401 Client Error: Unauthorized for url: https://huggingface.co/api"))
    with pytest.raises(ModelError, match="could not push .*401 Client Error.*the folder is kept") as error:
        sharing.push_folder(folder, "me/depression-pfeiffer", api=failing)
    assert "\n" not in str(error.value) and (folder / "adapter.safetensors").read_text() == "adapter.safetensors"
    # the real client, offline (HF_HUB_OFFLINE=1, as in every test): it stops at its first request
    with pytest.raises(ModelError, match="the Hub cannot be reached: no network, or HF_HUB_OFFLINE=1"):
        sharing.push_folder(folder, "me/depression-pfeiffer")
    assert sorted(p.name for p in folder.iterdir()) == sorted([*upload["files"], ".DS_Store", "x.lock", "checkpoint"])


def test_train_pushes_what_it_saved_and_predict_uses_it_by_its_hub_id(
    tiny_bert, posts_csv, tmp_path, fake_hub, hub_cache
):
    """train.py --push-to-hub --private: the saved folder's files go up, its card names the Hub id; the files as the
    Hub would serve them (a cache filled from the upload) give predict.py the local folder's answers."""
    out = tmp_path / "adapters"
    proc = run_train(tiny_bert, posts_csv, out, *ONE_QUICK_EPOCH, "--name", "tiny", "--push-to-hub", "me/tiny",
                     "--private", run=run_main)  # fmt: skip
    assert "pushed" in proc.stdout and "python predict.py --adapter me/tiny" in proc.stdout
    assert fake_hub.repos == [{"repo_id": "me/tiny", "private": True, "exist_ok": True}]
    [upload] = fake_hub.uploads
    assert upload["files"] == folder_files(out / "tiny")  # every file of the folder, as it is now, and only those
    assert {"training.json", "adapter.safetensors", "model_head.safetensors", "README.md"} <= set(upload["files"])
    card = upload["files"]["README.md"].decode()
    assert 'predict.py --adapter me/tiny "some text"' in card and 'load_adapter("me/tiny"' in card

    fill_hub_cache(hub_cache, "me/tiny", upload["files"], commit=COMMIT)
    local, _ = probabilities(out / "tiny", *POSTS)
    pulled, proc = probabilities("me/tiny", *POSTS)
    assert np.abs(pulled - local).max() <= 1e-6
    assert f"note: me/tiny from the Hugging Face Hub (commit {COMMIT[:12]})" in proc.stderr
    by_commit, _ = probabilities(f"me/tiny@{COMMIT}", *POSTS)
    assert np.abs(by_commit - local).max() <= 1e-6
    # the card's plain-adapters code, run as written: load_adapter("me/tiny") finds the same files in the cache
    code = card.split("```python\n")[1].split("```")[0].replace('"some text"', repr(POSTS[0]))
    names = {}
    exec(code, names)
    assert names["logits"].softmax(-1)[0].tolist() == pytest.approx(local[0].tolist(), abs=1e-5)


def test_a_push_that_cannot_be_made_stops_before_training(tiny_bert, posts_csv, tmp_path, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    out = tmp_path / "adapters"
    for flags, words in [
        (["--push-to-hub", "me/tiny"], ["token", "hf auth login"]),
        (["--push-to-hub", "not a repo id"], ["--push-to-hub", "not a Hub repository id"]),
        (["--push-to-hub", "me/tiny@v2"], ["without @revision"]),
        (["--private"], ["--private applies to --push-to-hub"]),
    ]:
        proc = run_train(tiny_bert, posts_csv, out, *ONE_QUICK_EPOCH, *flags, run=run_main, check=False)
        assert_clean_failure(proc, *words)
    assert not out.exists()  # nothing trained, nothing written


def test_a_hub_id_is_read_from_the_cache_offline_and_checked_as_a_folder_is(plain, hub_cache, tmp_path):
    snapshot = fill_hub_cache(hub_cache, "me/sentiment", folder_files(plain), commit=COMMIT)
    local, _ = probabilities(plain, *POSTS)
    pulled, proc = probabilities("me/sentiment", *POSTS)
    assert np.abs(pulled - local).max() <= 1e-6 and "from the Hugging Face Hub" in proc.stderr
    assert "was saved by the adapters library" in proc.stderr  # then checked and told as the local folder is
    assert inference.task_names([snapshot]) == ["sentiment"]  # a task is named by its repository

    for name, words in [
        ("me/missing", ["me/missing is not a folder here", "cannot be reached", "HF_HUB_OFFLINE"]),
        ("me/sentiment@v9", ["me/sentiment@v9", "cannot be reached"]),  # a revision the cache has not seen
    ]:
        assert_clean_failure(run_main("predict.py", "--adapter", name, "some text", check=False), *words)

    damaged = {**folder_files(plain), "adapter_config.json": b"{not json"}  # refused as a damaged folder is
    fill_hub_cache(hub_cache, "me/damaged", damaged)
    assert_clean_failure(run_main("predict.py", "--adapter", "me/damaged", "x", check=False), "damaged")
    pickled = {"adapter_config.json": b"{}", "head_config.json": b"{}", "pytorch_adapter.bin": b"pickle"}
    fill_hub_cache(hub_cache, "me/pickled", pickled)
    assert_clean_failure(run_main("predict.py", "--adapter", "me/pickled", "x", check=False), "no safetensors")


def test_several_hub_ids_share_one_base_and_posts_follow_them(plain, hub_cache):
    fill_hub_cache(hub_cache, "me/first", folder_files(plain))
    fill_hub_cache(hub_cache, "me/second", folder_files(plain))
    proc = run_main("predict.py", "--adapter", "me/first", "me/second", "--json", *POSTS)
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["text"] for r in rows] == POSTS and all(set(r["results"]) == {"first", "second"} for r in rows)


def test_a_local_folder_wins_over_the_hub_id_of_its_name(plain, hub_cache, tmp_path, monkeypatch):
    fill_hub_cache(hub_cache, "me/sentiment", folder_files(plain))
    monkeypatch.chdir(tmp_path)
    shutil.copytree(plain, tmp_path / "me" / "sentiment")
    folder, note = sharing.adapter_folder("me/sentiment")
    assert folder == "me/sentiment" and "using the local folder me/sentiment, not the Hub repository" in note
    assert sharing.adapter_folder(str(plain)) == (str(plain), None)  # a folder with no Hub id's form: no note


@pytest.mark.slow
def test_every_command_takes_a_hub_id_in_a_new_process(plain, tiny_bert, posts_csv, tmp_path):
    """predict.py, assess.py and classify_corpus.py as a user runs them, offline, with the cache in HF_HUB_CACHE."""
    cache = tmp_path / "cache"
    fill_hub_cache(cache, "me/sentiment", folder_files(plain))
    env = {"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    proc = run_cli("predict.py", "--adapter", "me/sentiment", *POSTS, env=env)
    assert len(proc.stdout.splitlines()) == 2 and "from the Hugging Face Hub" in proc.stderr
    labelled = tmp_path / "labelled.csv"
    labelled.write_text("text,label\n" + "".join(f"post {i},{['neg', 'neu', 'pos'][i % 3]}\n" for i in range(12)))
    proc = run_cli("assess.py", "--adapter", "me/sentiment", "--data", labelled, env=env)
    assert "me/sentiment" in proc.stdout and "accuracy" in proc.stdout.lower()
    proc = run_cli("predict.py", "--adapter", "me/nothing", "x", env=env, check=False)
    assert_clean_failure(proc, "cannot be reached")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.jsonl").write_text('{"text": "x"}\n')
    proc = run_cli("classify_corpus.py", "--adapter", "me/sentiment", "--input", corpus, "--output", tmp_path / "r",
                   env=env, check=False)  # fmt: skip
    assert_clean_failure(proc, "me/sentiment holds no verified ONNX export", "--push-to-hub me/sentiment")
