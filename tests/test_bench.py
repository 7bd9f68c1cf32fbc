import json
import re

import pytest
from conftest import ROOT, run_cli


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
def test_compare_pairs_every_setup_with_full_fine_tuning_post_by_post(tiny_bert, posts_csv, tmp_path):
    """--quick on the tiny BERT: 2 training seeds of full and Pfeiffer on one split, one more split seed; the
    results file has the issue's shape, and the re-predicted accuracy of every saved run equals its own."""
    run_cli(
        "-m",
        "bench.compare",
        "--quick",
        "--model",
        tiny_bert,
        "--data",
        posts_csv,
        "--setups",
        "full",
        "pfeiffer",
        "--seeds",
        "1",
        "2",
        "--split-seeds",
        "5",
        "--out",
        tmp_path,
    )
    [result_file] = tmp_path.glob("compare-*-quick.json")
    result = json.loads(result_file.read_text())
    assert result["complete"] and set(result["setups"]) == {"full", "pfeiffer"}
    pfeiffer = result["setups"]["pfeiffer"]
    assert pfeiffer["seeds"] == [1, 2] and len(pfeiffer["accuracy"]) == len(pfeiffer["f1"]) == 2
    assert all(s > 0 for s in pfeiffer["seconds_per_epoch"]) and pfeiffer["trainable"] > 0
    paired = result["paired"]["pfeiffer"]
    assert 0 <= paired["mcnemar_p"] <= 1 and len(paired["mcnemar_p_per_seed"]) == 2
    lo, hi = paired["diff_ci95"]
    assert lo <= paired["diff_mean"] <= hi
    assert set(result["split_spread"]) == {"full", "pfeiffer"}
    assert result["split_spread"]["full"]["split_seeds"] == [42, 5]
    for run in result["runs"]:
        assert abs(run["predicted_accuracy"] - run["best_accuracy"]) < 1e-6 and len(run["correct"]) == 13
    assert "python train.py --mode adapter --adapter-config pfeiffer" in result["runs"][1]["command"]
    table = result_file.with_suffix(".md").read_text()
    assert "| pfeiffer | 1, 2 |" in table and "Spread across split seeds" in table
    assert result["commands"] == [
        f"python -m bench.compare --quick --model {tiny_bert} --data {posts_csv} --setups "
        f"full pfeiffer --seeds 1 2 --split-seeds 5 --out {tmp_path}"
    ]
    assert result_file.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"


def test_mcnemar_and_bootstrap_on_known_cases():
    from bench import compare

    assert compare.mcnemar_exact("1111100000", "1111100000") == (1.0, 0, 0)
    p, only_first, only_second = compare.mcnemar_exact("0000011111", "1111111111")  # 5 discordant, all one way
    assert (only_first, only_second) == (0, 5) and abs(p - 2 / 32) < 1e-12
    p, _, _ = compare.mcnemar_exact("1" * 9 + "0" * 11, "0" * 9 + "1" * 11)  # 9 against 11: a fair coin could
    assert p > 0.8
    runs = [{"correct": "1100"}, {"correct": "1000"}]
    diff, (lo, hi) = compare.bootstrap_diff(runs, runs)
    assert diff == lo == hi == 0.0
    diff, (lo, hi) = compare.bootstrap_diff([{"correct": "0" * 50 + "1" * 50}], [{"correct": "1" * 100}])
    assert diff == 0.5 and 0.35 < lo < 0.5 < hi <= 0.65
    assert compare.majority([{"correct": "110"}, {"correct": "101"}, {"correct": "000"}]) == "100"


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


def test_compare_draws_accuracy_and_time_per_epoch_from_its_results_file(tmp_path):
    """The README's chart: `--redraw` draws the committed results again (nothing trained): accuracy per setup on the
    left, the median seconds per epoch on the right; no results file is one line."""
    import statistics

    from bench import compare
    from bench.harness import machine_slug

    committed = ROOT / "bench" / "results" / "compare-cpu-2cores.json"
    result = json.loads(committed.read_text())
    fig = compare.chart(result)
    acc, speed = fig.axes
    assert [t.get_text() for t in speed.get_xticklabels()] == list(result["setups"])
    heights = [bar.get_height() for bar in speed.patches]
    assert heights == [statistics.median(s["seconds_per_epoch"]) for s in result["setups"].values()]
    assert heights[0] > heights[1]  # full fine-tuning takes longer per epoch than Pfeiffer
    (tmp_path / f"compare-{machine_slug()}.json").write_text(committed.read_text())
    compare.main(["--redraw", "--out", str(tmp_path)])
    assert (tmp_path / f"compare-{machine_slug()}.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(SystemExit, match="no results file"):
        compare.main(["--redraw", "--out", str(tmp_path), "--name", "missing"])
