import json
import re

import pytest
from conftest import ROOT, make_posts, run_cli


def test_peers_shuffled_order_keeps_the_peers_batches_and_moves_them():
    """--peer-order shuffled: cut into batches again as the data loader cuts them, the shuffled order gives the
    same batches as the sampler's own order (the short one still last), in another order, from torch's seeded
    generator."""
    import torch

    from bench.peers import ShuffledBatches

    order = list(range(100, 0, -1))  # a sorted order, as the Trainer's length grouping gives
    torch.manual_seed(0)
    shuffled = list(ShuffledBatches(order, 8))
    assert len(ShuffledBatches(order, 8)) == 100
    cut = lambda o: [tuple(o[i : i + 8]) for i in range(0, len(o), 8)]  # noqa: E731 (12 batches of 8, one of 4)
    assert sorted(cut(shuffled)) == sorted(cut(order)) and cut(shuffled)[-1] == cut(order)[-1]
    assert cut(shuffled) != cut(order)
    torch.manual_seed(0)
    assert list(ShuffledBatches(order, 8)) == shuffled


@pytest.mark.slow
def test_peers_train_the_same_posts_on_both_sides_and_count_their_padding(tiny_bert, posts_csv, tmp_path):
    """bench/peers.py: train.py and the Trainer / AdapterTrainer, each in its own process, on the same sampled posts;
    both see every training post once per epoch (same real tokens, same steps), and the table says so."""
    run_cli(
        "-m", "bench.peers", "--model", tiny_bert, "--data", posts_csv, "--posts", "70", "--pairs", "2",
        "--out", tmp_path, "--name", "tiny",
    )  # fmt: skip
    [result_file] = tmp_path.glob("tiny-*.json")  # <name>-<machine>, as every benchmark writes
    result = json.loads(result_file.read_text())
    assert 55 <= result["train_posts"] <= 60  # 70 posts less train.py's 16% for validation
    for setup in ("full", "pfeiffer"):
        pairs = result["runs"][setup]
        assert len(pairs) == 2 and list(pairs[0]) == ["ours", "peer"] and list(pairs[1]) == ["peer", "ours"]
        for pair in pairs:
            ours, peer = pair["ours"], pair["peer"]
            assert ours["real_tokens"] == peer["real_tokens"] > 0  # the same posts, each once
            assert ours["steps"] == peer["steps"] == 2  # batches of 32
            assert ours["computed_tokens"] >= ours["real_tokens"] and ours["seconds"] > 0 and peer["seconds"] > 0
        summary = result["summary"][setup]
        assert summary["ratios"] == [p["peer"]["seconds"] / p["ours"]["seconds"] for p in pairs]
    whole = result["whole_split"]  # the samplers alone, on every training post of --data
    pad = whole["padding"]
    assert whole["train_posts"] > result["train_posts"]
    assert 0 <= pad["fully_sorted"] <= pad["ours"] + 1e-12 and pad["fully_sorted"] < pad["peer"]
    assert 0 < whole["class_1_share"] < 1 and all(
        0 <= share <= 1 for share in whole["class_1_share_last_tenth"].values()
    )
    assert "| full | transformers.Trainer | 1 |" in result_file.with_suffix(".md").read_text()
    assert result_file.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_quick_benchmark_writes_table_json_and_chart(tiny_bert, posts_csv, tmp_path):
    proc = run_cli(
        "-m",
        "bench.writeup_claims",
        "--quick",
        "--model",
        tiny_bert,
        "--data",
        posts_csv,
        "--out",
        tmp_path,
        "--name",
        "tiny",
        "--steps",
        "2",
        "--predict-posts",
        "10",
    )
    [result_file] = tmp_path.glob("tiny-*-quick.json")
    result = json.loads(result_file.read_text())
    setups = {(t["setup"], t["pipeline"]) for t in result["training"]}
    assert setups == {
        (s, p) for s in ["full", "pfeiffer", "houlsby", "pfeiffer-upper-half"] for p in ["ours", "write-up"]
    } | {("pfeiffer-upper-half-cached", "ours")}
    for t in result["training"]:
        assert t["examples_per_second"] > 0 and t["peak_memory_mb"] > 0 and t["steps"] == 2
    assert {
        "ours_vs_writeup_full",
        "pfeiffer_vs_full_speed",
        "pfeiffer_vs_full_peak_memory",
        "pfeiffer-upper-half-cached_vs_full_speed",
        "pfeiffer-upper-half-cached_vs_uncached_speed",
    } <= set(result["ratios"])
    assert 0 < result["sizes"]["ratio"] < 1
    inference = result["inference"]
    assert inference["posts"] == 10 and inference["max_probability_difference"] < 1e-4
    assert set(inference["posts_per_second"]) == {
        "predict.py full",
        "predict.py pfeiffer",
        "predict.py lora",
        "predict.py lora merged",
        "pipeline full, batch 1",
        "pipeline full, batch 64",
    }
    assert 0 <= result["tfidf"]["accuracy"] <= 1
    assert result["command"] == (
        f"python -m bench.writeup_claims --quick --model {tiny_bert} --data {posts_csv} --out {tmp_path} "
        "--name tiny --steps 2 --predict-posts 10"
    )  # as run, every flag
    table = result_file.with_suffix(".md").read_text()
    assert "| pfeiffer-upper-half | write-up |" in table and "| pfeiffer | ours |" in table
    assert "TF-IDF" in table and result["device"] in table and "| predict.py lora merged |" in table
    assert result_file.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    assert "wrote" in proc.stdout


@pytest.mark.slow
def test_compare_fuses_the_other_tasks_adapters_and_the_tasks_own(tiny_bert, posts_csv, tmp_path):
    """--setups pfeiffer fusion-own --baseline pfeiffer on the tiny BERT: an adapter trained on each other source
    task, the task's own Pfeiffer run of the seed fused with them, the Fusion's attention over the three recorded."""
    other = tmp_path / "other.csv"
    make_posts(30).sample(frac=1, random_state=0).to_csv(other, index=False)
    run_cli(
        *("-m", "bench.compare", "--quick", "--model", tiny_bert, "--data", posts_csv, "--seeds", "1"),
        *("--setups", "pfeiffer", "fusion-own", "--baseline", "pfeiffer", "--out", tmp_path, "--name", "fusion"),
        *("--fusion-sources", posts_csv, other, "subreddits", "--source-posts", "60"),
    )
    result = json.loads(next(tmp_path.glob("fusion-*-quick.json")).read_text())
    [own, fused] = result["runs"]
    assert (own["setup"], fused["setup"], result["baseline"]) == ("pfeiffer", "fusion-own", "pfeiffer")
    assert "--fusion" in fused["command"] and fused["megabytes"] > 2 * own["megabytes"]  # the adapters copied in
    assert sorted(fused["attention"]) == ["other", "own", "subreddits"]  # the task's own source left out
    assert sum(fused["attention"].values()) == pytest.approx(1, abs=1e-4)
    assert list(result["tasks"]["posts"]["paired"]) == ["fusion-own vs pfeiffer"]


@pytest.mark.slow
def test_compare_runs_two_tiny_tasks_and_pairs_every_setup_post_by_post(tiny_bert, posts_csv, tmp_path):
    """--quick on the tiny BERT and two tasks (a file of two classes, the shipped 22 subreddits): full, Pfeiffer and
    Houlsby, one training seed (CI's time; several seeds: the hand-made table below); the results file has the
    issue's shape (per task and setup, the paired tests, the summary across tasks), and every saved run re-predicts
    train.py's own accuracy."""
    run_cli(
        *("-m", "bench.compare", "--quick", "--model", tiny_bert, "--data", posts_csv, "subreddits"),
        *("--setups", "houlsby", "pfeiffer", "--seeds", "1", "--out", tmp_path),
    )
    [result_file] = tmp_path.glob("compare-tasks-*-quick.json")
    result = json.loads(result_file.read_text())
    assert result["complete"] and list(result["tasks"]) == ["posts", "subreddits"]
    assert len(result["runs"]) == 2 * 3  # tasks x setups
    subreddits = result["tasks"]["subreddits"]
    assert subreddits["classes"] == 22 and subreddits["val_posts"] == 100
    assert list(subreddits["setups"]) == ["full", "houlsby", "pfeiffer"]
    pfeiffer = subreddits["setups"]["pfeiffer"]
    assert pfeiffer["seeds"] == [1] and len(pfeiffer["accuracy"]) == len(pfeiffer["macro_f1"]) == 1
    assert all(s > 0 for s in pfeiffer["seconds_per_epoch"]) and 0 < pfeiffer["megabytes"] < 1
    assert pfeiffer["trainable"] < subreddits["setups"]["full"]["trainable"]
    assert list(subreddits["paired"]) == ["houlsby vs full", "pfeiffer vs full", "pfeiffer vs houlsby"]
    for paired in subreddits["paired"].values():
        assert 0 <= paired["mcnemar_p"] <= 1 and paired["seeds"] == [1]
        for key in ("accuracy", "macro_f1"):
            lo, hi = paired[f"{key}_ci95"]
            assert lo - 1e-9 <= paired[f"{key}_diff"] <= hi + 1e-9
    for run in result["runs"]:  # the same posts and model; bf16 in other batches may flip a borderline post or two
        assert abs(run["accuracy"] - run["best_accuracy"]) <= 2 / len(run["labels"].split()) + 1e-9
    summary = result["summary"]["macro_f1"]["setups"]
    assert min(s["mean_rank"] for s in summary.values()) >= 1 and summary["full"]["tasks"] == 2
    table = result_file.with_suffix(".md").read_text()
    assert "| subreddits | 22 |" in table and "| posts | pfeiffer vs houlsby |" in table and "mean rank" in table
    assert result_file.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    assert "python train.py --mode adapter --adapter-config houlsby" in result["runs"][1]["command"]


def test_mcnemar_and_the_paired_bootstrap_on_known_cases():
    """textclassifier.metrics: McNemar's exact test counts the posts only one model gets right; the weighted scores
    are scikit-learn's macro F1 when every post weighs 1; the paired bootstrap of two equal sides is 0 exactly."""
    import numpy as np
    from sklearn.metrics import f1_score

    from textclassifier import metrics

    assert metrics.mcnemar([1, 1, 0, 0], [1, 1, 0, 0]) == (1.0, 0, 0)
    p, only_first, only_second = metrics.mcnemar([0] * 5 + [1] * 5, [1] * 10)  # 5 discordant, all one way
    assert (only_first, only_second) == (0, 5) and abs(p - 2 / 32) < 1e-12
    assert metrics.mcnemar([1] * 9 + [0] * 11, [0] * 9 + [1] * 11)[0] > 0.8  # 9 against 11: a fair coin could
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, 200)
    preds = np.where(rng.random(200) < 0.6, labels, rng.integers(0, 4, 200))  # class 4 never predicted
    scores = metrics.weighted_scores(np.ones((1, 200)), preds, labels, 6)  # class 5: no post, no prediction
    expected = f1_score(labels, preds, average="macro", labels=list(range(6)), zero_division=0)
    assert scores["macro_f1"][0] == pytest.approx(expected) and scores["accuracy"][0] == (preds == labels).mean()
    same = metrics.paired_bootstrap(labels, [preds, labels], [preds, labels], 6, resamples=200)
    assert same == {"accuracy": (0.0, [0.0, 0.0]), "macro_f1": (0.0, [0.0, 0.0])}
    half = np.where(np.arange(200) < 100, labels, (labels + 1) % 5)  # right on the first 100 posts only
    diff, (lo, hi) = metrics.paired_bootstrap(labels, [half], [labels], 5, resamples=2000)["accuracy"]
    assert diff == 0.5 and 0.4 < lo < 0.5 < hi < 0.6


def hand_made_task(means):
    """A task's summary as compare.summarise_task writes it: {setup: its macro F1 per seed}."""
    return {
        "setups": {
            name: {"macro_f1_mean": sum(values) / len(values), "accuracy_mean": sum(values) / len(values)}
            for name, values in means.items()
        }
    }


def test_the_summary_ranks_setups_per_task_and_counts_tasks_within_one_point():
    """Ranks per task by the mean (1 best, ties share), mean ranks over the tasks that ran the setup, and the tasks
    where a setup is at most one point below full fine-tuning (one point exactly counts; 1.1 does not)."""
    from bench import compare

    tasks = {
        "a": hand_made_task({"full": [0.90], "pfeiffer": [0.89], "houlsby": [0.95]}),
        "b": hand_made_task({"full": [0.80], "pfeiffer": [0.80], "houlsby": [0.789]}),
        "c": hand_made_task({"full": [0.50], "pfeiffer": [0.70]}),
    }
    summary = compare.across_tasks(tasks)
    assert summary["ranks"] == {
        "a": {"full": 2.0, "pfeiffer": 3.0, "houlsby": 1.0},
        "b": {"full": 1.5, "pfeiffer": 1.5, "houlsby": 3.0},
        "c": {"full": 2.0, "pfeiffer": 1.0},
    }
    setups = summary["setups"]
    assert setups["pfeiffer"]["mean_rank"] == pytest.approx((3 + 1.5 + 1) / 3) and setups["houlsby"]["tasks"] == 2
    assert setups["houlsby"]["mean_rank"] == 2.0
    assert setups["pfeiffer"]["within_one_point_of_full"] == ["a", "b", "c"]
    assert setups["houlsby"]["within_one_point_of_full"] == ["a"]  # b: 1.1 points below


def test_paired_tests_of_a_hand_made_table_and_its_chart():
    """Three setups on one task, 3 seeds: the posts right in most seeds go to McNemar, the bootstrap averages the
    seeds; Pfeiffer against Houlsby is its own comparison; the chart has the metric per task and the weights."""
    from bench import compare

    labels = [0, 1] * 20

    def runs(setup, predictions, trainable):
        return [
            {"task": "t", "setup": setup, "seed": seed, "split_seed": 42, "classes": 2,
             "labels": " ".join(map(str, labels)), "predicted": " ".join(map(str, p)),
             "accuracy": sum(a == b for a, b in zip(p, labels)) / 40, "macro_f1": 0.5, "seconds_per_epoch": 1.0,
             "trainable": trainable, "megabytes": 1.0}
            for seed, p in zip([1, 2, 3], predictions)
        ]  # fmt: skip

    wrong_first = [1 - y if i < 10 else y for i, y in enumerate(labels)]  # the first 10 posts wrong
    full = runs("full", [labels, labels, wrong_first], 10**6)
    pfeiffer = runs("pfeiffer", [wrong_first, wrong_first, labels], 10**4)  # wrong on the 10 in most seeds
    houlsby = runs("houlsby", [labels] * 3, 2 * 10**4)
    other_split = [{**full[0], "split_seed": 5, "accuracy": 0.5}]  # full, seed 1, on another split
    task = compare.summarise_task(full + pfeiffer + houlsby + other_split, first_seed=1)
    spread = task["split_spread"]["full"]
    assert spread["split_seeds"] == [42, 5] and spread["accuracy"] == [1.0, 0.5]
    assert list(task["paired"]) == ["pfeiffer vs full", "houlsby vs full", "pfeiffer vs houlsby"]
    q = task["paired"]["pfeiffer vs full"]
    assert q["right_only"] == {"pfeiffer": 0, "full": 10} and q["mcnemar_p"] == pytest.approx(2 / 2**10)
    assert q["accuracy_diff"] == pytest.approx(-10 / 40 / 3) and q["verdict"] == "differs (accuracy, macro F1)"
    assert task["paired"]["houlsby vs full"]["accuracy_diff"] == pytest.approx(10 / 40 / 3)
    assert task["paired"]["pfeiffer vs houlsby"]["accuracy_diff"] == pytest.approx(-2 * 10 / 40 / 3)
    result = {"tasks": {"t": task, "u": task}, "seeds": [1, 2, 3], "epochs": 1, "train_posts": 10, "device": "CPU"}
    result["summary"] = {key: compare.across_tasks(result["tasks"], key) for key in compare.METRICS}
    fig = compare.chart(result)
    per_task, weights = fig.axes
    assert [t.get_text() for t in per_task.get_xticklabels()] == ["t", "u"]
    means = [tuple(c.get_offsets()[0]) for c in weights.collections[1::2]]  # each setup's mean over the tasks
    assert weights.get_xscale() == "log" and means == [(10**6, 0.0), (10**4, 0.0), (2 * 10**4, 0.0)]
    settings = {"complete": True, "commands": ["x"], "val_posts": 40, "max_length": 64, "model": "m"}
    assert "| t | pfeiffer vs houlsby |" in compare.report({**result, **settings})


def test_fusion_setups_against_the_tasks_own_adapter_with_the_attention_drawn():
    """--baseline pfeiffer: each Fusion paired with the task's own adapter, and the two Fusions with each other; the
    mean attention per adapter over seeds in the summary, the report and a third panel of the chart."""
    from bench import compare

    labels = [0, 1] * 10
    attention = {1: {"a": 0.7, "b": 0.3}, 2: {"a": 0.5, "b": 0.5}}
    runs = [
        {"task": "t", "setup": setup, "seed": seed, "split_seed": 42, "classes": 2,
         "labels": " ".join(map(str, labels)), "predicted": " ".join(map(str, labels)), "accuracy": 1.0,
         "macro_f1": 1.0, "seconds_per_epoch": 1.0,
         "trainable": 10, "megabytes": 1.0, **({"attention": attention[seed]} if setup != "pfeiffer" else {})}
        for seed in (1, 2) for setup in ("pfeiffer", "fusion", "fusion-own")
    ]  # fmt: skip
    result = {"runs": runs, "seeds": [1, 2], "baseline": "pfeiffer", "epochs": 1, "train_posts": 10, "device": "CPU",
              "complete": True, "commands": ["x"], "val_posts": 20, "max_length": 64, "model": "m"}  # fmt: skip
    compare.summarise(result)
    task = result["tasks"]["t"]
    assert list(task["paired"]) == ["fusion vs pfeiffer", "fusion-own vs pfeiffer", "fusion-own vs fusion"]
    assert task["attention"] == {"fusion": {"a": 0.6, "b": 0.4}, "fusion-own": {"a": 0.6, "b": 0.4}}
    assert result["summary"]["macro_f1"]["setups"]["fusion"]["within_one_point_of_full"] == ["t"]  # of the baseline
    report = compare.report(result)
    assert "fusion, fusion-own against pfeiffer" in report and "t, fusion: mean attention" in report
    *_, weighs = compare.chart(result).axes
    assert [t.get_text() for t in weighs.get_yticklabels()] == ["t: fusion", "t: fusion-own"]
    assert [p.get_width() for p in weighs.patches] == pytest.approx([0.6, 0.6, 0.4, 0.4])


def test_gpu_bench_without_a_gpu_exits_2_with_one_line(monkeypatch, capsys):
    import torch

    import bench.gpu

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # as on CI, whatever this machine has
    with pytest.raises(SystemExit) as stop:
        bench.gpu.main([])
    captured = capsys.readouterr()
    assert stop.value.code == 2 and captured.out == ""
    assert captured.err.count("\n") == 1 and "no CUDA GPU" in captured.err


@pytest.mark.slow
def test_gpu_bench_dry_run_measures_every_part_on_the_cpu(tiny_bert, posts_csv, tmp_path):
    """--dry-run on a machine without a GPU: every measurement of python -m bench.gpu runs (tiny sizes), and the
    command itself, without --dry-run, exits 2 with one line."""
    plain = run_cli("-m", "bench.gpu", check=False, env={"CUDA_VISIBLE_DEVICES": ""})
    assert plain.returncode == 2 and plain.stdout == "" and plain.stderr.count("\n") == 1
    # two setups: the others run the same code
    run_cli("-m", "bench.gpu", "--dry-run", "--quick", "--no-bert-base", "--model", tiny_bert, "--data", posts_csv,
            "--out", tmp_path, "--work", tmp_path / "work", "--setups", "full", "pfeiffer-upper-half",
            env={"CUDA_VISIBLE_DEVICES": ""})  # fmt: skip
    [result_file] = tmp_path.glob("gpu-*-quick.json")
    result = json.loads(result_file.read_text())
    assert result["dry_run"] and result["auto"]["predict.py --backend auto"] != "torch"
    setups = {(r["setup"], r["precision"]) for r in result["epochs"]}
    assert {setup for setup, _ in setups} == {"full", "pfeiffer-upper-half"}
    assert all(r["posts_per_second"] > 0 and 0 <= r["accuracy"] <= 1 for r in result["epochs"])
    cached = [r for r in result["epochs"] if r["setup"] == "pfeiffer-upper-half"]
    assert all(r["cache_seconds"] > 0 for r in cached) and all(r["peak_gpu_mb"] is None for r in cached)
    assert [w["setup"] for w in result["writeup"]] == ["pfeiffer", "full"]
    assert all(w["write-up"]["precision"] == "no" and w["speed-up"] > 0 for w in result["writeup"])
    assert {r["precision"] for r in result["prediction"]} == {"auto", "fp32", "bf16"}
    assert set(result["parallel"]) == {"parallel", "separate"}
    assert any(goal.startswith("Pfeiffer per epoch >= 5x") for goal in result["goals"])
    assert any(goal.startswith("upper-half adapter with the cache >= 2x") for goal in result["goals"])
    assert "Dry run: not on a GPU" in result_file.with_suffix(".md").read_text()
    assert result_file.with_suffix(".png").stat().st_size > 0


def test_every_command_in_the_results_runs_today_or_names_the_commit_that_ran_it():
    """A results file names the command that made it. Where that is not a command of today's main (a retired
    script, or the older `python bench/<name>.py` form), the file names the commit to check out and rerun it."""
    checked = 0
    for f in sorted((ROOT / "bench" / "results").iterdir()):
        text = f.read_text() if f.suffix in (".md", ".json", ".txt") else ""
        for form, name in re.findall(r"python3? (-m bench\.|bench/)([a-z0-9_]+)", text):
            checked += 1
            if form == "-m bench." and (ROOT / "bench" / f"{name}.py").is_file():
                continue
            assert re.search(r"(commit|worktree add \S+) [0-9a-f]{7,40}", text), f"{f.name}: python {form}{name}"
    assert checked > 50
