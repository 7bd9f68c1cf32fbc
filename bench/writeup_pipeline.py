"""
The original write-up's input pipeline, re-created as the benchmark's baseline (not used for training here).

The write-up tokenised every post padded to 512 tokens and trained with batch size 2 from a plainly shuffled
DataLoader: every step computes 1,024 token positions, whatever the posts' real lengths.
"""

import torch
from torch.utils.data import DataLoader

MAX_LENGTH = 512
BATCH_SIZE = 2


def writeup_loader(texts, labels, tokenizer, seed=42):
    enc = tokenizer(list(texts), padding="max_length", truncation=True, max_length=MAX_LENGTH, return_tensors="pt")
    rows = [
        {"input_ids": i, "attention_mask": m, "labels": torch.tensor(y)}
        for i, m, y in zip(enc["input_ids"], enc["attention_mask"], labels)
    ]
    return DataLoader(rows, batch_size=BATCH_SIZE, shuffle=True, generator=torch.Generator().manual_seed(seed))
