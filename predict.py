"""
Classify posts with an adapter (or a fully fine-tuned model) saved by train.py.

    python predict.py "i can't get out of bed anymore and nothing feels worth it"
    python predict.py --file posts.txt            # one post per line; or a .csv/.jsonl with a text column
    cat posts.txt | python predict.py -           # standard input, one post per line
    python predict.py --json "some text"          # one JSON object per line
    python predict.py --adapter adapters/depression-houlsby "some text"

This is a research and teaching tool, not a diagnostic instrument.
"""

import argparse
import json
import sys
from pathlib import Path

import torch
from accelerate import PartialState
from transformers import DataCollatorWithPadding
from transformers.utils import logging as hf_logging

import data
import model as M

DEFAULT_ADAPTER = "adapters/depression-pfeiffer"  # where `python train.py --mode adapter` saves
TEXT_SUFFIXES = (".txt", "")  # read as one post per line; other suffixes go through data.load_table


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip(),
                                epilog="This is a research and teaching tool, not a diagnostic instrument.")
    p.add_argument("texts", nargs="*", metavar="TEXT", help="posts to classify; '-' reads one post per line from stdin")
    p.add_argument("--file", help="a text file with one post per line, or a .csv/.tsv/.json/.jsonl/.parquet file "
                                  "with a text column")
    p.add_argument("--text-column", default=None, help="text column of --file (default: text or clean_text)")
    p.add_argument("--adapter", default=DEFAULT_ADAPTER,
                   help=f"folder written by train.py: an adapter with its head, or a full model (default: {DEFAULT_ADAPTER})")
    p.add_argument("--model", default=None,
                   help="base model to load the adapter into (default: the one it was trained on, from training.json)")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object per post: text, label, score, probabilities")
    p.add_argument("--batch-size", type=int, default=64, help="posts per batch (default: 64)")
    p.error = lambda message: fail(f"{message} (see python predict.py --help)")
    args = p.parse_args(argv)
    if args.batch_size < 1:
        fail("--batch-size must be at least 1")
    return args


def fail(message):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def read_texts(args):
    """Posts from the arguments, '-' (stdin) and --file, in that order; blank lines of files and stdin skipped."""
    texts = []
    for i, text in enumerate(args.texts, 1):
        if text == "-":
            texts += [line.strip() for line in sys.stdin if line.strip()]
        elif not text.strip():
            raise data.DataError(f"text {i} is empty; pass the post to classify in quotes")
        else:
            texts.append(text.strip())
    if args.file:
        texts += read_file(args.file, args.text_column)
    if not texts:
        raise data.DataError('no text to predict; pass it as an argument (python predict.py "some text"), '
                             'with --file, or on stdin with -')
    return texts


def read_file(path, text_column=None):
    path = Path(path)
    if path.suffix.lower() in TEXT_SUFFIXES:
        if not path.is_file():
            raise data.DataError(f"file {path} not found")
        return [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    table = data.load_table(str(path))
    column = data.find_column(table, text_column, data.TEXT_COLUMNS, "text")
    texts = table[column].dropna().astype(str).str.strip()
    return texts[texts != ""].tolist()


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


def load(adapter, model_name=None):
    """(model on the best device, tokenizer, training info) from a folder written by train.py."""
    model, tokenizer, info = M.load_trained(adapter, model_name)
    return model.to(PartialState().device), tokenizer, info


def main(argv=None):
    args = parse_args(argv)
    hf_logging.set_verbosity_error()
    try:
        texts = read_texts(args)
        model, tokenizer, info = load(args.adapter, args.model)
    except (data.DataError, M.ModelError) as e:
        fail(str(e))
    names = info["label_names"]
    probs = predict_proba(model, tokenizer, texts, info["max_length"], args.batch_size)
    for text, p in zip(texts, probs.tolist()):
        best = max(range(len(p)), key=p.__getitem__)
        if args.json:
            print(json.dumps({"text": text, "label": names[best], "score": p[best],
                              "probabilities": dict(zip(names, p))}))
        else:
            print(f"{names[best]:<15} {p[best]:.3f}  {text if len(text) <= 70 else text[:67] + '...'}")


if __name__ == "__main__":
    main()
