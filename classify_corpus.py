"""
Classify a whole corpus with Ray Data: a folder of .jsonl/.parquet shards in, one .jsonl of results per shard out
(predict.py's --output rows), one ONNX model per Ray actor. A stopped run resumes: shards whose results exist are
skipped, and a shard's results appear only once the shard is whole.

    python export.py --adapter adapters/depression-pfeiffer              # the ONNX model the actors run
    python classify_corpus.py --adapter adapters/depression-pfeiffer --input corpus/ --output results/
    RAY_ADDRESS=auto python classify_corpus.py ...                      # a cluster started with `ray start`

Needs the optional extra: pip install -r requirements-scale.txt. Without RAY_ADDRESS it starts a local cluster on
this machine. This is a research and teaching tool, not a diagnostic instrument.
"""

import json
import os
from pathlib import Path

import pandas as pd

import posts
from errors import DataError, ModelError, fail
from textclassifier import cli, inference

SHARD_SUFFIXES = (".jsonl", ".parquet")


def build_parser():
    p = cli.command_parser("classify_corpus.py", __doc__)
    p.add_argument(
        "--adapter",
        required=True,
        help="folder written by train.py and exported by export.py, or the Hugging Face Hub id of one pushed with "
        "its export (org/name[@revision]; a local folder of that name wins)",
    )
    p.add_argument("--input", required=True, help="folder of .jsonl/.parquet shards, each with a text column")
    p.add_argument("--output", required=True, help="folder for the results: <shard name>.jsonl per input shard")
    p.add_argument("--text-column", default=None, help="text column of the shards (default: text or clean_text)")
    p.add_argument(
        "--backend",
        default="auto",
        choices=["auto", "onnx", "onnx-int8"],
        help="the ONNX model the actors run (default auto: the fastest verified export in the folder)",
    )
    p.add_argument("--actors", type=int, default=1, help="models running at once, one per Ray actor (default: 1)")
    p.add_argument("--batch-size", type=int, default=256, help="posts handed to an actor at a time (default: 256)")
    return p


def shard_plan(input_folder, output_folder):
    """(every input shard, those without results yet)."""
    input_folder, output_folder = Path(input_folder), Path(output_folder)
    if not input_folder.is_dir():
        raise DataError(f"--input {input_folder} is not a folder; pass the folder that holds the shards")
    shards = sorted(p for p in input_folder.iterdir() if p.suffix in SHARD_SUFFIXES and p.is_file())
    if not shards:
        raise DataError(f"--input {input_folder} holds no .jsonl or .parquet shards")
    if len({p.stem for p in shards}) < len(shards):
        raise DataError(f"--input {input_folder}: two shards share a name (a.jsonl and a.parquet); rename one")
    return shards, [p for p in shards if not result_path(output_folder, p).exists()]


def result_path(output_folder, shard):
    return Path(output_folder) / f"{shard.stem}.jsonl"


def check_model(folder, backend, hub_id=None):
    """The ONNX backend to run ("auto": the fastest verified export) and the model's label names; refused with one
    line when there is no usable export. hub_id: the Hub id the folder was downloaded for."""
    chosen = inference.fastest_export(folder) if backend == "auto" else backend
    if chosen is None:
        how = (
            f"its owner can push one with python export.py --adapter FOLDER --push-to-hub {hub_id}"
            if hub_id
            else f"run python export.py --adapter {folder} first"
        )
        raise ModelError(f"{hub_id or folder} holds no verified ONNX export; {how}")
    loaded = inference.load(folder, backend=chosen, threads=1)  # stale, damaged, missing: one line here
    if note := inference.cpu_beside_gpu_note(loaded, instead=""):  # the actors' sessions, on the CPU beside a GPU
        print(note, flush=True)
    return chosen, loaded.label_names


class Classifier:
    """What each Ray actor runs: the exported model, loaded once, over batches of posts (pandas frames)."""

    def __init__(self, folder, backend, column, threads):
        self.loaded = inference.load(folder, backend=backend, threads=threads)
        self.column = column

    def __call__(self, batch):
        batch = batch[batch[self.column].notna()]
        texts = batch[self.column].astype(str).str.strip()
        keep = (texts != "").to_numpy()  # blank posts are skipped, as predict.py skips them
        probs = inference.classify(self.loaded, texts[keep].tolist())
        return {
            "path": batch["path"][keep],
            "text": texts[keep],
            **{f"p{i}": probs[:, i] for i in range(probs.shape[1])},
        }


def read_shards(shards, suffix, text_column):
    """One Ray dataset over shards of one format, in their order, with each post's shard path; and the text column."""
    import ray.data

    paths = [str(shard) for shard in shards]
    if suffix == ".jsonl":
        ds = ray.data.read_json(paths, lines=True, include_paths=True)
    else:
        ds = ray.data.read_parquet(paths, include_paths=True)
    column = posts.find_column(pd.DataFrame(columns=shard_columns(shards[0])), text_column, posts.TEXT_COLUMNS, "text")
    return ds, column


def shard_columns(shard):
    """A shard's column names, from its first line (.jsonl) or its schema (.parquet), without Ray."""
    if shard.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_schema(shard).names
    with open(shard) as f:
        first = f.readline()
    try:
        return list(json.loads(first)) if first.strip() else []
    except ValueError:
        raise DataError(f"cannot read {shard}: its first line is not a JSON object") from None


def classify_shards(pending, args, backend, names):
    """The pending shards through the actors, one streaming run per format. Results come in the shards' order
    (preserve_order), so a shard is whole when the next one starts: its temporary file is then renamed."""
    import ray.data

    cpus = os.cpu_count() or 1
    done = set()
    for suffix in SHARD_SUFFIXES:
        shards = [shard for shard in pending if shard.suffix == suffix]
        if not shards:
            continue
        ds, column = read_shards(shards, suffix, args.text_column)
        results = ds.map_batches(
            Classifier,
            fn_constructor_args=(str(args.adapter), backend, column, max(1, cpus // args.actors)),
            batch_size=args.batch_size,
            batch_format="pandas",
            compute=ray.data.ActorPoolStrategy(size=args.actors),
            num_cpus=min(1.0, max(0.25, (cpus - 1) / args.actors)),  # leave a core's share for reading the shards
        )
        current, out = None, None
        for batch in results.iter_batches(batch_size=None, batch_format="pandas"):
            for path, rows in batch.groupby("path", sort=False):
                if path != current:
                    finish(current, out, args.output)
                    if path in done:
                        raise RuntimeError(f"the results of {path} came out of order")
                    current, out = path, open(partial_path(args.output, path), "w")
                    done.add(path)
                probs = rows[[f"p{i}" for i in range(len(names))]].to_numpy()
                rows = inference.result_rows(rows["text"].tolist(), probs, names)
                out.writelines(json.dumps(row) + "\n" for row in rows)
        finish(current, out, args.output)
    seen = {Path(path).name for path in done}
    for shard in pending:  # shards without a single post
        if shard.name not in seen:
            result_path(args.output, shard).write_text("")


def partial_path(output_folder, path):
    return result_path(output_folder, Path(path)).with_suffix(".jsonl.partial")


def finish(path, out, output_folder):
    """Close a shard's temporary file and give it its final name."""
    if path is None:
        return
    out.close()
    partial_path(output_folder, path).rename(result_path(output_folder, Path(path)))
    print(f"{Path(path).name} -> {result_path(output_folder, Path(path))}", flush=True)


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.actors < 1 or args.batch_size < 1:
        fail("--actors and --batch-size must be at least 1")
    try:
        import ray
    except ImportError:
        fail("Ray is not installed; pip install -r requirements-scale.txt")
    try:
        shards, pending = shard_plan(args.input, args.output)
        # a Hub id: its folder in the Hugging Face cache
        found = inference.find_adapters([args.adapter], several="apart")
        [folder] = found.folders
        backend, names = check_model(folder, args.backend, hub_id=args.adapter if folder != args.adapter else None)
        args.adapter = folder  # what the actors load
    except (DataError, ModelError) as e:
        fail(str(e))
    for note in found.notes:
        print(note, flush=True)
    Path(args.output).mkdir(parents=True, exist_ok=True)
    print(f"{len(shards)} shards, {len(shards) - len(pending)} already classified; {backend}, {args.actors} actor(s)")
    ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
    ray.data.DataContext.get_current().execution_options.preserve_order = True  # results in the shard's order
    try:
        if pending:
            classify_shards(pending, args, backend, names)
    except DataError as e:
        fail(f"{e}")
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
