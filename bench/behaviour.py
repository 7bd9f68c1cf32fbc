"""
Behaviour tests of trained depression classifiers, in the CheckList manner (Ribeiro et al. 2020): hand-written posts
in bench/behaviour_cases.json, each test with its expectation, and the share of cases each model passes, on the
suite's tune part (for choosing between models) and its test part (scored once, on the model chosen).

    python -m bench.behaviour --adapter adapters/depression-pfeiffer
    python -m bench.behaviour --adapter adapters/depression-pfeiffer adapters/depression-original-pfeiffer \\
        --backend onnx-int8 --name behaviour-int8

The tests (a post is flagged when P(depressive) >= 0.5):
  a  short first-person depressive statements (sadness, exhaustion, worthlessness, numbness, hopelessness): flagged
  b  short everyday posts, questions and good news: not flagged
  c  "depression" in other senses (the Great Depression, a tropical depression, a pedal) and negations and
     recoveries ("i'm not depressed, just tired"): not flagged
  d  invariance: a base post with a neutral paragraph or a URL appended, in upper or lower case, without
     punctuation or with exclamation marks: the label must not flip
  e  direction: a neutral post with one depressive sentence added: P(depressive) must rise
  f  longer depressive posts that never say depress* or suicid*: flagged
Writes bench/results/<name>-<machine>.{json,md,png}. Two-class models only (class 1 is "depressive").
"""

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np

from bench import harness as H
from textclassifier import model_card

CASES = Path(__file__).resolve().parent / "behaviour_cases.json"
# test -> (its cases in the cases file, what it checks: the words model cards use too)
TESTS = {
    test: (cases, model_card.BEHAVIOUR_TESTS[test])
    for test, cases in {
        "a": "a_short_depressive", "b": "b_everyday", "c": "c_other_senses", "d": "d_invariance",
        "e": "e_direction", "f": "f_without_the_word",
    }.items()
}  # fmt: skip
PARTS = ("tune", "test")  # the suite's fixed parts (the cases file says how they were drawn)


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    p.add_argument("--adapter", nargs="+", required=True, metavar="FOLDER", help="folders written by train.py")
    p.add_argument("--cases", default=str(CASES), help=f"the cases file (default: {CASES.relative_to(H.ROOT)})")
    p.add_argument("--backend", default="torch", choices=["torch", "onnx", "onnx-int8"], help="what computes the model")
    p.add_argument(
        "--parts", nargs="+", default=list(PARTS), choices=PARTS,
        help="the suite's parts to score: tune (for choosing between models), test (once, on the model chosen)",
    )  # fmt: skip
    H.add_common_flags(p, model=False, data_set=False)
    H.add_run_flags(p, "behaviour")
    return p


def perturb(text, kind, index, cases):
    """One invariance perturbation of a base post (the index picks the appended paragraph or URL)."""
    if kind == "append neutral paragraph":
        paragraphs = cases["neutral_paragraphs"]
        return f"{text} {paragraphs[index % len(paragraphs)]}"
    if kind == "append URL":
        return f"{text} {cases['urls'][index % len(cases['urls'])]}"
    if kind == "upper case":
        return text.upper()
    if kind == "lower case":
        return text.lower()
    if kind == "strip punctuation":
        return " ".join(re.sub(r"[^\w\s]", " ", text).split())
    if kind == "add exclamation marks":
        return text.rstrip(".!?") + "!!!"
    raise ValueError(f"unknown perturbation {kind!r}")


def expand(cases, part):
    """One part ("tune" or "test") of the cases file -> {test: list of cases}: a-c and f one text each ({"text",
    "expect_flagged"}), d a base and its perturbation ({"text", "variant", "perturbation"}), e a neutral post and it
    with a depressive sentence added."""
    out = {test: [{"text": t, "expect_flagged": test in "af"} for t in cases[TESTS[test][0]][part]] for test in "abcf"}
    inv = cases[TESTS["d"][0]]
    out["d"] = [
        {"text": base, "variant": perturb(base, kind, i, inv), "perturbation": kind}
        for i, base in enumerate(inv["bases"][part])
        for kind in inv["perturbations"]
    ]
    out["e"] = [
        {"text": neutral, "variant": f"{neutral} {sentence}"} for neutral, sentence in cases[TESTS["e"][0]][part]
    ]
    return {test: out[test] for test in TESTS}


def load_cases(path=CASES, part="tune"):
    """One part of the suite, expanded (expand)."""
    return expand(json.loads(Path(path).read_text()), part)


def texts_of(tests):
    """Every distinct text the tests need classified, in a fixed order."""
    texts = {}
    for cases in tests.values():
        for case in cases:
            texts.setdefault(case["text"])
            if "variant" in case:
                texts.setdefault(case["variant"])
    return list(texts)


def score(tests, p_depressive):
    """Pass rates per test from P(depressive) of every text ({text: probability}); with the failing cases."""
    result = {}
    for test, cases in tests.items():
        rows = []
        for case in cases:
            p = p_depressive[case["text"]]
            if "expect_flagged" in case:
                passed = (p >= 0.5) == case["expect_flagged"]
                rows.append({**case, "p": p, "passed": passed})
            else:
                q = p_depressive[case["variant"]]
                passed = (q >= 0.5) == (p >= 0.5) if test == "d" else q > p
                rows.append({**case, "p": p, "p_variant": q, "passed": passed})
        passed = sum(r["passed"] for r in rows)
        result[test] = {
            "description": TESTS[test][1],
            "cases": len(rows),
            "passed": passed,
            "pass_rate": passed / len(rows),
            "flagged": float(np.mean([r["p"] >= 0.5 for r in rows])) if test in "abcf" else None,
            "failures": [r for r in rows if not r["passed"]],
        }
        if test == "d":
            result[test]["flips_by_perturbation"] = {
                kind: sum(not r["passed"] for r in rows if r["perturbation"] == kind)
                for kind in dict.fromkeys(r["perturbation"] for r in rows)
            }
    return result


def run_model(loaded, tests):
    """P(depressive) of every text the tests need, from what inference.load returned."""
    from textclassifier import inference

    if len(loaded.label_names) != 2:
        raise ValueError("behaviour tests need a two-class model (class 1: depressive)")
    texts = texts_of(tests)
    probs = np.asarray(inference.classify(loaded, texts))[:, 1]
    return score(tests, dict(zip(texts, probs.tolist())))


def summary_row(result):
    """The headline figures: share flagged in a-c and f, share flipped in d, share raised in e."""
    return {
        "a_flagged": result["a"]["flagged"],
        "b_flagged": result["b"]["flagged"],
        "c_flagged": result["c"]["flagged"],
        "d_flips": 1 - result["d"]["pass_rate"],
        "e_raised": result["e"]["pass_rate"],
        "f_flagged": result["f"]["flagged"],
    }


def markdown(results, command):
    """results: {part: {folder: result}}."""
    lines = [
        f"Command: `{command}`",
        "",
        "Pass rate per test (cases passed / cases); the default model's goals (issue 45): a >= 85% flagged, b <= 10% "
        "flagged, c <= 35% flagged, d <= 5% flips.",
    ]
    for part, models in results.items():
        lines += [
            "",
            f"Part `{part}`:",
            "",
            "| model | " + " | ".join(f"{t}: {TESTS[t][1]}" for t in TESTS) + " |",
            "| --- |" + " ---: |" * len(TESTS),
        ]
        for folder, r in models.items():
            cells = [f"{100 * r[t]['pass_rate']:.1f}% ({r[t]['passed']}/{r[t]['cases']})" for t in TESTS]
            lines.append(f"| {folder} | " + " | ".join(cells) + " |")
        lines += ["", f"Invariance flips by perturbation, part `{part}`:", ""]
        kinds = list(next(iter(models.values()))["d"]["flips_by_perturbation"])
        lines += ["| model | " + " | ".join(kinds) + " |", "| --- |" + " ---: |" * len(kinds)]
        for folder, r in models.items():
            lines.append(f"| {folder} | " + " | ".join(str(r["d"]["flips_by_perturbation"][k]) for k in kinds) + " |")
    return "\n".join(lines) + "\n"


def draw(result):
    import matplotlib.pyplot as plt

    parts = result["models"]
    fig, axes = plt.subplots(1, len(parts), figsize=(7 * len(parts), 3.5), squeeze=False)
    for ax, (part, models) in zip(axes[0], parts.items()):
        width = 0.8 / max(len(models), 1)
        for i, (folder, r) in enumerate(models.items()):
            ax.bar(
                [j + i * width for j in range(len(TESTS))],
                [100 * r[t]["pass_rate"] for t in TESTS],
                width,
                label=Path(folder).name,
            )
        ax.set_xticks([j + width * (len(models) - 1) / 2 for j in range(len(TESTS))], list(TESTS))
        ax.set(ylabel="cases passed %", ylim=(0, 100), title=f"behaviour tests, part {part} (a-f: see the table)")
        ax.legend(fontsize=7)
    return fig


def record_in_card(folder, backend, results):
    """Every part's pass rates of one folder into its model card (model_card.record_behaviour), under the part's
    name (and the backend's, where it is not torch). results: {part: {folder: result}}."""
    suffix = "" if backend == "torch" else f" ({backend})"
    parts = {part + suffix: {t: models[folder][t]["pass_rate"] for t in TESTS} for part, models in results.items()}
    model_card.record_behaviour(folder, parts)


def main(argv=None):
    args = build_parser().parse_args(argv)
    from errors import ModelError, fail
    from textclassifier import inference

    parts = {part: load_cases(args.cases, part) for part in args.parts}
    results = {part: {} for part in parts}
    for folder in args.adapter:
        try:
            loaded = inference.load(folder, backend=args.backend)
            for part, tests in parts.items():
                results[part][folder] = run_model(loaded, tests)
            record_in_card(folder, args.backend, results)
        except (ModelError, ValueError) as e:
            fail(str(e))
    command = H.command_line(__file__, argv)
    result = {
        "command": command,
        "device": H.device_name(),
        "backend": args.backend,
        "cases": {part: {t: len(c) for t, c in tests.items()} for part, tests in parts.items()},
        "models": results,
        "summary": {part: {folder: summary_row(r) for folder, r in models.items()} for part, models in results.items()},
    }
    H.write_results(H.results_stem(args), result, markdown(results, command), draw)


if __name__ == "__main__":
    sys.exit(main())
