"""
Export a folder written by train.py to ONNX, for fast inference with ONNX Runtime (predict.py --backend onnx).

    python export.py --adapter adapters/depression-pfeiffer
    python predict.py --adapter adapters/depression-pfeiffer "some text"   # now uses the fastest verified export
    python export.py --adapter adapters/depression-pfeiffer --push-to-hub your-name/depression-pfeiffer

Writes into the folder: model.onnx (fp32: base + adapter + head for bottleneck adapters, the merged model for
LoRA-kind adapters, the whole model for full fine-tuning; dynamic batch and sequence axes), model.int8.onnx
(dynamic int8 quantisation of the matrix products, per channel with reduced range, which holds accuracy on
CPUs without VNNI; the adapters' own bottleneck products stay fp32; predict.py gives it one post per call),
onnx-tokenizer.json (the tokenizer for the `tokenizers` package) and onnx.json (what the export was made from and
how it was checked, on which kind of CPU). Each model is checked on real posts (2,000 by default) before it is kept:
fp32 probabilities equal torch's within 1e-4; int8 changes no label of a post that fp32 puts further than 0.2 from
the decision boundary and moves probabilities by at most 0.01 on average (the share of labels kept is reported);
every post's probabilities are the same alone and in shuffled batches of mixed lengths (within 1e-6). What fails is
not kept. int8's answers differ between kinds of CPU (AVX2 only, AVX-512, VNNI): predict.py says when it runs on
another kind than the check did.

This is a research and teaching tool, not a diagnostic instrument.
"""

import os
import sys
import time
from importlib.metadata import version
from pathlib import Path

from errors import DataError, ModelError, fail
from textclassifier import cli, exporting, inference, model_card, saved, sharing


def build_parser():
    p = cli.command_parser("export.py", __doc__)
    p.add_argument("--adapter", required=True, help="folder written by train.py (an adapter with its head, or a model)")
    p.add_argument(
        "--data",
        default=None,
        help="posts to check the export on: a .csv/.tsv/.json/.jsonl/.parquet file with a text column (default: "
        "the folder's training data, from training.json)",
    )
    p.add_argument("--text-column", default=None, help="text column of --data (default: text or clean_text)")
    p.add_argument(
        "--check-posts",
        type=int,
        default=2000,
        help="posts drawn at random to check on (default: 2000; int8's gate counts the posts that change label)",
    )
    p.add_argument("--no-int8", dest="int8", action="store_false", help="write model.onnx only")
    p.add_argument("--overwrite", action="store_true", help="replace an export the folder already holds")
    p.add_argument(
        "--push-to-hub",
        default=None,
        metavar="REPO_ID",
        help="then upload the folder (trained weights, card, export) to this Hugging Face Hub model repository, e.g. "
        "your-name/depression-pfeiffer (a token: hf auth login); a folder whose export is current is pushed as it is",
    )
    p.add_argument("--private", action="store_true", help="--push-to-hub: create the repository private")
    return p


def check_exportable(folder, overwrite):
    """training.json of a folder export.py can export; refusals name what can be exported."""
    info = saved.read_training_info(folder)
    if info.get("saved_by") == "adapters":
        raise ModelError(
            f"{folder} was saved by the adapters library, not train.py: export.py exports folders train.py wrote "
            f"(their training.json records how texts were prepared); predict.py --backend torch runs this one"
        )
    config = info.get("adapter_config")
    if info["mode"] == "adapter" and config not in exporting.EXPORTABLE:
        raise ModelError(
            f"cannot export a '{config}' adapter: export.py exports full fine-tuning, bottleneck adapters "
            f"({', '.join(exporting.BOTTLENECK_CONFIGS)}) and LoRA-kind adapters, merged "
            f"({', '.join(saved.MERGEABLE_CONFIGS)}); "
            f"use python predict.py --backend torch for this one"
        )
    if inference.read_export_info(folder) is not None and not overwrite:
        raise ModelError(
            f"{folder} already holds an ONNX export ({inference.EXPORT_INFO}); pass --overwrite to replace it"
        )
    return info


def verify(folder, info, export, backend, texts, reference, failed_if):
    """Check one export against `reference` and record it in onnx.json; a model that fails is deleted. Returns
    the export's probabilities, or None when it failed."""
    path = folder / inference.ONNX_FILES[backend]
    checks, probs = exporting.check(folder, backend, info, export, texts, reference)
    failed = failed_if(checks)
    export["backends"][backend] = {"verified": not failed, **checks, "megabytes": path.stat().st_size / 2**20}
    if failed:
        export["backends"][backend]["failed"] = failed
        path.unlink()
    inference.write_export_info(folder, export)
    against = "torch" if backend == "onnx" else "fp32"
    print(
        f"{path.name}: {'NOT kept, ' + failed if failed else 'kept'} (on {len(texts)} posts against {against}: "
        f"probability difference mean {checks['mean_difference']:.1e}, largest {checks['max_difference']:.1e}; "
        f"same label on {checks['label_agreement']:.2%}, {checks['label_changes']} changed, "
        f"{checks['label_changes_beyond_margin']} beyond {exporting.INT8_MARGIN:g} of the boundary; "
        f"{export['backends'][backend]['megabytes']:.1f} MB)"
    )
    return None if failed else probs


def main(argv=None):
    args = build_parser().parse_args(argv)
    exporting.quiet_known_notices()
    folder = Path(args.adapter)
    try:
        sharing.check_push(args.push_to_hub, args.private)
        current = current_export(folder) if args.push_to_hub and not args.overwrite else None
        if current:
            print(f"{folder} holds a current export ({current}): pushing it as it is")
            update_card(folder, args.push_to_hub)  # the card names the Hub id
            return push(folder, args.push_to_hub, args.private)
        info = check_exportable(folder, args.overwrite)
        texts = exporting.check_posts(info, args.data, args.text_column, args.check_posts)
        # the reference: full precision, on the CPU that exports it (never a GPU's copy moved back)
        loaded = inference.load(folder, backend="torch", precision="fp32", device="cpu")
    except (DataError, ModelError) as e:
        fail(str(e))
    model, tokenizer, info = loaded.model, loaded.tokenizer, loaded.info
    for name in inference.EXPORT_FILES:  # --overwrite: the old export goes first, so nothing stale is left
        (folder / name).unlink(missing_ok=True)
    start = time.perf_counter()
    torch_probs = inference.classify(inference.Loaded(model, tokenizer, info, "fp32"), texts).numpy()
    tokenizer.backend_tokenizer.save(str(folder / inference.ONNX_TOKENIZER))
    export = {
        "trained_fingerprint": inference.trained_fingerprint(folder),
        "pad_token_id": tokenizer.pad_token_id,
        "opset": exporting.OPSET,
        "temperature": inference.temperature(info),  # train.py --calibrate's, applied by inference.classify
        "check_posts": len(texts),
        "checked_on": exporting.checked_on(),  # the kind of CPU: int8's answers differ between kinds
        "backends": {},
        "versions": {name: version(name) for name in ("torch", "onnx", "onnxruntime", "tokenizers")},
    }
    exporting.export_fp32(model, tokenizer, folder / inference.ONNX_FILES["onnx"])
    fp32_probs = verify(folder, info, export, "onnx", texts, torch_probs, exporting.fp32_failure)
    if fp32_probs is None:
        update_card(folder)  # the card says the export failed, and why
        sys.exit(1)  # int8 is made from fp32: nothing more to export
    if args.int8:
        exporting.export_int8(folder / inference.ONNX_FILES["onnx"], folder / inference.ONNX_FILES["onnx-int8"])
        int8_probs = verify(folder, info, export, "onnx-int8", texts, fp32_probs, exporting.int8_failure)
        if int8_probs is not None:
            agreement = float((int8_probs.argmax(1) == torch_probs.argmax(1)).mean())
            export["backends"]["onnx-int8"]["label_agreement_with_torch"] = agreement
            inference.write_export_info(folder, export)
    update_card(folder, args.push_to_hub)
    print(f"exported in {time.perf_counter() - start:.0f} s; predict.py now uses {inference.fastest_backend(folder)}")
    if args.push_to_hub:
        push(folder, args.push_to_hub, args.private)


def current_export(folder):
    """The fastest verified export the folder holds that was made after its last training (None if none); the
    folder is checked whole first (ModelError if not)."""
    saved.read_training_info(folder)
    return inference.fastest_export(folder)


def push(folder, repo_id, private):
    try:
        url = sharing.push_folder(folder, repo_id, private)
    except ModelError as e:
        fail(str(e))
    print(sharing.pushed_line(folder, repo_id, url))


def update_card(folder, repo_id=None):
    """The folder's model card with the export's section, and the Hub id where it is pushed (a card edited by hand
    stays as it is)."""
    if model_card.write_card(folder, repo_id=repo_id) is None:
        print(f"note: {folder / model_card.CARD} was edited by hand, so it is left as it is", file=sys.stderr)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
