"""
The ONNX export of a trained folder and its checks: the fp32 graph (export_fp32), its int8 copy (export_int8), and
what each must show against its reference on the check posts before it is kept: fp32 within FP32_TOLERANCE of torch,
int8 within its gate (int8_failure: no clear answer changes its label, a bounded mean difference), and for both a
post's answer that does not depend on the posts beside it (batch_failure).

    >>> checks = label_checks(probs=[[0.45, 0.55], [0.9, 0.1]], reference=[[0.6, 0.4], [0.95, 0.05]])
    >>> checks["label_changes"], checks["label_changes_beyond_margin"], round(checks["largest_changed_margin"], 2)
    (1, 0, 0.1)
    >>> int8_failure({**checks, "batch_movement": 0.0})     # the changed post was near the boundary, but
    'probabilities moved by 0.100 on average (> 0.01)'
"""

import logging
import re
import warnings

import numpy as np
import torch
from transformers.utils import logging as hf_logging

import posts
from errors import DataError
from textclassifier import hardware, inference, saved

# Adapter configs that can be exported: bottleneck adapters as they are, LoRA-kind adapters merged into the weights.
BOTTLENECK_CONFIGS = ("pfeiffer", "houlsby", "seq_bn", "double_seq_bn", "parallel", "par_bn", "scaled_parallel",
                      "scaled_par_bn")  # fmt: skip
EXPORTABLE = BOTTLENECK_CONFIGS + saved.MERGEABLE_CONFIGS + ("fusion",)  # fusion: an AdapterFusion of bottlenecks
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
    """Hide the known, checked notices that would bury an export's own lines: the TorchScript exporter's
    deprecation, the tracer's note that the adapters library's batch-size comparisons become constants (they compare
    two sizes of the same batch; the export is checked on real posts in batches of 64 and of the remainder), the
    quantizer's suggestion to pre-process the graph, and transformers' notices. For a command's main: it changes
    the process's warnings and logging."""
    warnings.filterwarnings("ignore", message="You are using the legacy TorchScript-based ONNX export")
    warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
    logging.getLogger().setLevel(logging.ERROR)
    hf_logging.set_verbosity_error()


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
    parts of their names; docs/speed.md measures the choices)."""
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
    """The export's probabilities for `texts` (through inference.classify, as any prediction computes them) against
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
