"""
The table of docs/reddit.md's models trained on the depression data set and on Pirina's Reddit groups, made from
the results of bench/probes.py, bench/crossdomain.py and bench/reddit.py (it trains nothing).

    python -m bench.summary                  # print the table
    python -m bench.summary --write          # and write it into docs/reddit.md between its two marker lines

Rows: the baselines that see only a post's length or its words, every setup trained on the depression data set
(mean over seeds), and every training set of bench/reddit.py. Columns: accuracy on the depression data set's
validation posts; on Reddit posts, the AUC of depressed against not-depressed groups, the share of r/depression
posts (ds) and of posts by people who are not depressed (nd) and from r/breastcancer (bc) flagged depressive at
0.5, and the AUC of depressed against not-depressed authors in the same subreddits (do:nd).
"""

import argparse
import json
from pathlib import Path

from bench.harness import ROOT, machine_slug

START, END = "<!-- accuracy table: python -m bench.summary --write -->", "<!-- end of the accuracy table -->"
PAGE = ROOT / "docs" / "reddit.md"


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--results", default=str(ROOT / "bench" / "results"), help="folder of the results files")
    p.add_argument("--machine", default=None, help="machine part of the file names (default: this machine's)")
    p.add_argument("--write", action="store_true", help="write the table into docs/reddit.md between its marker lines")
    return p.parse_args(argv)


def pct(x, sd=None):
    return "-" if x is None else f"{100 * x:.1f}" + ("" if sd is None else f" ± {100 * sd:.1f}")


def ms(s):
    """mean ± sd over seeds (the mean alone for one seed)."""
    return pct(s["mean"], s["sd"] if len(s["values"]) > 1 else None)


def seeds(n):
    return f"{n} seed{'' if n == 1 else 's'}"


def table(probes, crossdomain, reddit):
    lines = [
        "| model | trained on | in-domain accuracy % | Reddit posts | AUC depressed vs not % | ds flagged % | "
        "nd flagged % | bc flagged % | AUC do:nd % |",
        "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    everything = f"all {crossdomain['reddit_posts']:,}" if crossdomain else "all"
    for r in probes["probes"] if probes else []:
        if "(seed" in r["name"]:
            continue  # the trained models come from crossdomain.py, over every seed
        g = r["reddit_groups"]
        lines.append(
            f"| {r['name']} (logistic regression) | depression data set | {pct(r['val_accuracy'])} | {everything} | "
            f"{pct(r['reddit_auc'])} | {pct(g['ds'])} | {pct(g['nd'])} | {pct(g['bc'])} | "
            f"{pct(r['reddit_pair_auc']['do:nd'])} |"
        )
    n_seeds = len(crossdomain["seeds"]) if crossdomain else 0
    for name, s in (crossdomain or {}).get("setups", {}).items():
        f = s["flagged"]
        lines.append(
            f"| {name} ({seeds(n_seeds)}) | depression data set | {ms(s['in_domain_accuracy'])} | {everything} | "
            f"{ms(s['auc_all'])} | {ms(f['ds'])} | {ms(f['nd'])} | {ms(f['bc'])} | {ms(s['pair_auc']['do:nd'])} |"
        )
    for name, s in (reddit or {}).get("sets", {}).items():
        at = s["at_0.5"]
        m = lambda pair: pct(pair[0], pair[1] if len(s["seeds"]) > 1 else None)  # noqa: E731  (mean, sd)
        model = "full fine-tuning" if "full fine-tuning" in name else "Pfeiffer"
        lines.append(
            f"| {model} ({seeds(len(s['seeds']))}) | {name.replace(', full fine-tuning', '')} | "
            f"{m(s['original_accuracy'])} | held-out {reddit['test_posts']:,} | {m(s['auc'])} | {m(at['ds'])} | "
            f"{m(at['nd'])} | {m(at['bc'])} | "
            f"{m(s['auc_do_nd'])} |"
        )
    return "\n".join(lines) + "\n"


def read(folder, name, machine):
    path = Path(folder) / f"{name}-{machine}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def main(argv=None):
    args = parse_args(argv)
    machine = args.machine or machine_slug()
    text = table(*(read(args.results, n, machine) for n in ("probes", "crossdomain", "reddit")))
    print(text)
    if args.write:
        old = PAGE.read_text()
        if START not in old or END not in old:
            raise SystemExit(f"error: {PAGE.name} lacks the marker lines {START} and {END}")
        head, rest = old.split(START, 1)
        PAGE.write_text(head + START + "\n" + text + rest[rest.index(END) :])
        print(f"wrote the table into {PAGE.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
