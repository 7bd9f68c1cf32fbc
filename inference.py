"""
Load a folder written by train.py and classify texts: what predict.py, evaluate.py, bench/ and the notebook share.

    loaded = load("adapters/depression-pfeiffer")        # (model, tokenizer, training info)
    probs = classify(loaded, ["some text", "another"])  # n_texts x n_labels tensor, in the order of the texts
"""

import torch
from accelerate import PartialState
from transformers import DataCollatorWithPadding

import data
import saved


def load(folder, model_name=None, merge=True):
    """(model on the best device, tokenizer, training info) from a folder written by train.py; LoRA-kind adapters
    (model.MERGEABLE_CONFIGS) folded into the base weights unless merge=False."""
    model, tokenizer, info = saved.load_trained(folder, model_name)
    if merge:
        saved.merge_adapter(model, info)
    return model.to(PartialState().device), tokenizer, info


def classify(loaded, texts, batch_size=64):
    """Class probabilities for `texts` from what load() returned, the texts prepared as in training (normalised
    when the model was trained on normalised texts, truncated at its max length)."""
    model, tokenizer, info = loaded
    if info.get("normalize_text"):
        texts = [data.normalize_text(t) for t in texts]
    return predict_proba(model, tokenizer, texts, info["max_length"], batch_size)


def predict_proba(model, tokenizer, texts, max_length, batch_size=64):
    """Class probabilities (n_texts x n_labels, in the order of `texts`): tokenised once, batched by length
    so that little padding is computed, mixed precision on CUDA, no autograd."""
    device = next(model.parameters()).device
    encoded = tokenizer(texts, truncation=True, max_length=max_length)
    rows = [{k: v[i] for k, v in encoded.items()} for i in range(len(texts))]
    pad = DataCollatorWithPadding(tokenizer)  # the same dynamic padding as in training
    half = torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float16
    order, chunks = [], []
    model.eval()
    with torch.inference_mode(), torch.autocast(device.type, dtype=half, enabled=device.type == "cuda"):
        for batch in data.sorted_batches([len(r["input_ids"]) for r in rows], batch_size):
            inputs = pad([rows[i] for i in batch]).to(device)
            chunks.append(model(**inputs).logits.float().softmax(-1).cpu())
            order += batch
    return torch.cat(chunks)[torch.argsort(torch.tensor(order))]
