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

import logging
import os
import re
import sys
import time
import warnings
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch
from transformers.utils import logging as hf_logging

import posts
from errors import DataError, ModelError, fail
from textclassifier import cli, hardware, inference, model_card, saved, sharing

# Adapter configs export.py exports: bottleneck adapters as they are, LoRA-kind adapters merged into the weights.
BOTTLENECK_CONFIGS = ("pfeiffer", "houlsby", "seq_bn", "double_seq_bn", "parallel", "par_bn", "scaled_parallel",
                      "scaled_par_bn")  # fmt: skip
EXPORTABLE = BOTTLENECK_CONFIGS + saved.MERGEABLE_CONFIGS
FP32_TOLERANCE = 1e-4  # largest difference from torch's probabilities that the fp32 export may show
# What int8 may cost against fp32, on the check posts (measured per kind of CPU in docs/speed.md): no post whose fp32
# answer is clear, further than INT8_MARGIN from the decision boundary (two classes: p outside 0.3-0.7), changes its
# label, and the probabilities move by at most INT8_MEAN_DIFFERENCE on average. Labels of posts nearer the boundary
# may change; the share of posts that keep their label is reported beside the count of posts, not gated, so that one
# post near 0.5 does not decide whether a user gets int8.
INT8_MARGIN = 0.2
INT8_MEAN_DIFFERENCE = 0.01
FP32_MATMULS = ("adapter_down", "adapter_up")  # MatMuls whose names match these stay fp32 in the int8 export
OPSET = 17


def quiet_known_notices():
    """Hide the known, checked notices that would bury export.py's own lines: the TorchScript exporter's
    deprecation, the tracer's note that the adapters library's batch-size comparisons become constants (they compare
    two sizes of the same batch; the export is checked on real posts in batches of 64 and of the remainder), the
    quantizer's suggestion to pre-process the graph, and transformers' notices. For a command's main: it changes
    the process's warnings and logging."""
    warnings.filterwarnings("ignore", message="You are using the legacy TorchScript-based ONNX export")
    warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
    logging.getLogger().setLevel(logging.ERROR)
    hf_logging.set_verbosity_error()


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
    if info["mode"] == "adapter" and config not in EXPORTABLE:
        raise ModelError(
            f"cannot export a '{config}' adapter: export.py exports full fine-tuning, bottleneck adapters "
            f"({', '.join(BOTTLENECK_CONFIGS)}) and LoRA-kind adapters, merged ({', '.join(saved.MERGEABLE_CONFIGS)}); "
            f"use python predict.py --backend torch for this one"
        )
    if inference.read_export_info(folder) is not None and not overwrite:
        raise ModelError(
            f"{folder} already holds an ONNX export ({inference.EXPORT_INFO}); pass --overwrite to replace it"
        )
    return info


def check_posts(info, source, text_column, n):
    """Up to n posts drawn at random (seed 0) from `source`, else from the folder's training data."""
    source = source or (info["data"][0] if isinstance(info["data"], list) else info["data"])
    table = posts.load_table(source)
    column = posts.find_column(table, text_column, posts.TEXT_COLUMNS, "text")
    texts = table[column].dropna().astype(str)
    texts = texts[texts.str.strip() != ""]
    if texts.empty:
        raise DataError(f"{source} holds no posts to check the export on; pass --data with a file of posts")
    return texts.sample(n=min(n, len(texts)), random_state=0).tolist()


class Logits(torch.nn.Module):
    """The classifier as ONNX sees it: (input_ids, attention_mask) -> logits."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


def export_fp32(model, tokenizer, path):
    """model.onnx with dynamic batch and sequence axes, through the TorchScript-based exporter (every module in eval
    mode first, so that no dropout is exported)."""
    example = tokenizer(["an example post", "a second one, a little longer"], padding=True, return_tensors="pt")
    axes = {0: "batch", 1: "sequence"}
    torch.onnx.export(
        Logits(model).eval(),
        (example["input_ids"], example["attention_mask"]),
        str(path),
        input_names=["input_ids", "attention_mask"],
        output_names=["logits"],
        dynamic_axes={"input_ids": axes, "attention_mask": axes, "logits": {0: "batch"}},
        opset_version=OPSET,
        dynamo=False,
    )


def export_int8(fp32_path, int8_path, fp32_parts=FP32_MATMULS, **options):
    """Dynamic int8 of the fp32 export's matrix products, per channel with reduced range (without VNNI, full-range
    int8 products can overflow). The adapters' own small bottleneck products stay fp32: quantising them moved 0.8%
    of a Pfeiffer adapter's labels (512 posts), keeping them costs little time (docs/speed.md). Its activations'
    scales are computed per model call, so inference.OnnxModel gives it one post per call: each post's answer is its
    own (static scales calibrated on training posts were tried and were less accurate: docs/usage.md). `options`
    change quantize_dynamic's weight_type, per_channel or reduce_range, `fp32_parts` the MatMuls kept in fp32 (by
    parts of their names): bench/int8_gate.py measures the choices."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    settings = {"weight_type": QuantType.QInt8, "per_channel": True, "reduce_range": True} | options
    quantize_dynamic(
        str(fp32_path),
        str(int8_path),
        op_types_to_quantize=["MatMul"],
        nodes_to_exclude=fp32_matmuls(fp32_path, fp32_parts),
        **settings,
    )


def fp32_matmuls(fp32_path, parts=FP32_MATMULS):
    """Names of the fp32 export's matrix products that int8 leaves in fp32: the MatMuls, and the Gemms (linear
    layers outside the encoder: heads, pooler) that the quantizer turns into MatMuls named <name>_MatMul, whose
    names match one of the regular expressions `parts` (FP32_MATMULS: the adapters' own products)."""
    import onnx

    graph = onnx.load(str(fp32_path), load_external_data=False).graph
    kept = [n for n in graph.node if n.op_type in ("MatMul", "Gemm") and any(re.search(p, n.name) for p in parts)]
    return [n.name + ("_MatMul" if n.op_type == "Gemm" else "") for n in kept]


def check(folder, backend, info, export, texts, reference):
    """The export's probabilities for `texts` (through inference.classify, as predict.py computes them) against
    `reference`'s: {largest and mean difference, share of posts with the same label, how far a post's answer moves
    with the posts that share its batch (inference.batch_movement)}, and the probabilities."""
    model = inference.open_onnx(folder, backend, export["pad_token_id"], info["max_length"])
    loaded = inference.Loaded(model, model.tokenizer, info)
    probs = inference.classify(loaded, texts)
    return {**label_checks(probs, reference), "batch_movement": inference.batch_movement(loaded, texts)}, probs


def label_checks(probs, reference):
    """How far `probs` are from `reference`'s (posts x classes): the largest and the mean (over posts) of a post's
    largest probability difference, the share of posts with the same label (label_agreement) of how many posts, and
    how many changed label: all of them, and those whose reference answer was further than INT8_MARGIN (recorded as
    margin) from the boundary (boundary_margin), with the largest such distance among them."""
    probs, reference = np.asarray(probs, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    difference = np.abs(probs - reference).max(1)
    changed = probs.argmax(1) != reference.argmax(1)
    margin = boundary_margin(reference)
    return {
        "posts": len(reference),
        "max_difference": float(difference.max(initial=0.0)),
        "mean_difference": float(difference.mean()) if len(reference) else 0.0,
        "label_agreement": float(1 - changed.mean()) if len(reference) else 1.0,
        "label_changes": int(changed.sum()),
        "label_changes_beyond_margin": int((changed & (margin > INT8_MARGIN)).sum()),
        "margin": INT8_MARGIN,
        "largest_changed_margin": float(margin[changed].max(initial=0.0)),  # the clearest answer that changed
    }


def boundary_margin(probs):
    """How far each post's answer is from the decision boundary: half the gap between its two most probable classes
    (two classes: |p - 0.5|)."""
    top_two = np.sort(np.asarray(probs, dtype=np.float64), axis=1)[:, -2:]
    return (top_two[:, 1] - top_two[:, 0]) / 2


def verify(folder, info, export, backend, texts, reference, failed_if):
    """Check one export against `reference` and record it in onnx.json; a model that fails is deleted. Returns
    the export's probabilities, or None when it failed."""
    path = folder / inference.ONNX_FILES[backend]
    checks, probs = check(folder, backend, info, export, texts, reference)
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
        f"{checks['label_changes_beyond_margin']} beyond {INT8_MARGIN:g} of the boundary; "
        f"{export['backends'][backend]['megabytes']:.1f} MB)"
    )
    return None if failed else probs


def checked_on():
    """The CPU the checks ran on: its model name and its int8 kind (hardware.int8_kind), for onnx.json."""
    return {"cpu": hardware.cpu_info().get("model name"), "int8_kind": hardware.int8_kind()}


def fp32_failure(checks):
    if checks["max_difference"] > FP32_TOLERANCE:
        return f"probabilities differ from torch's by up to {checks['max_difference']:.1e} (> {FP32_TOLERANCE:g})"
    return batch_failure(checks)


def int8_failure(checks):
    if failure := batch_failure(checks):
        return failure
    if beyond := checks["label_changes_beyond_margin"]:
        return (
            f"{beyond} post{'s' if beyond > 1 else ''} of {checks['posts']} changed label although fp32's answer was "
            f"further than {INT8_MARGIN:g} from the boundary"
        )
    if checks["mean_difference"] > INT8_MEAN_DIFFERENCE:
        return f"probabilities moved by {checks['mean_difference']:.3f} on average (> {INT8_MEAN_DIFFERENCE:g})"
    return None


def batch_failure(checks):
    """A post's answer must be its own: the same alone and in batches of mixed lengths (inference.batch_movement)."""
    tolerance = inference.BATCH_TOLERANCE["fp32"]
    if checks["batch_movement"] > tolerance:
        return (
            f"a post's probabilities move by up to {checks['batch_movement']:.1e} with the posts that share its batch "
            f"(> {tolerance:g})"
        )
    return None


def main(argv=None):
    args = build_parser().parse_args(argv)
    quiet_known_notices()
    folder = Path(args.adapter)
    try:
        sharing.check_push(args.push_to_hub, args.private)
        current = current_export(folder) if args.push_to_hub and not args.overwrite else None
        if current:
            print(f"{folder} holds a current export ({current}): pushing it as it is")
            update_card(folder, args.push_to_hub)  # the card names the Hub id
            return push(folder, args.push_to_hub, args.private)
        info = check_exportable(folder, args.overwrite)
        texts = check_posts(info, args.data, args.text_column, args.check_posts)
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
        "opset": OPSET,
        "temperature": inference.temperature(info),  # train.py --calibrate's, applied by inference.classify
        "check_posts": len(texts),
        "checked_on": checked_on(),  # the kind of CPU: int8's answers differ between kinds (predict.py says so)
        "backends": {},
        "versions": {name: version(name) for name in ("torch", "onnx", "onnxruntime", "tokenizers")},
    }
    export_fp32(model, tokenizer, folder / inference.ONNX_FILES["onnx"])
    fp32_probs = verify(folder, info, export, "onnx", texts, torch_probs, fp32_failure)
    if fp32_probs is None:
        update_card(folder)  # the card says the export failed, and why
        sys.exit(1)  # int8 is made from fp32: nothing more to export
    if args.int8:
        export_int8(folder / inference.ONNX_FILES["onnx"], folder / inference.ONNX_FILES["onnx-int8"])
        int8_probs = verify(folder, info, export, "onnx-int8", texts, fp32_probs, int8_failure)
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
