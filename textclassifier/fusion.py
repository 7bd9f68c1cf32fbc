"""
AdapterFusion (Pfeiffer et al., 2021): adapters trained on other tasks, frozen, with a Fusion layer per
transformer layer that learns, for a new task, how much of each adapter's output to take (attention over the
adapters, per token), and a new classification head. train.py --fusion trains the Fusion and the head only.

    >>> sources = check_sources(["adapters/depression-pfeiffer", "adapters/reviews-pfeiffer"])  # or refused
    >>> model, names = build_model(sources, ["negative", "positive"])

- check_sources: the folders (or Hub ids) to fuse, refused in one line (ModelError) where Fusion cannot combine them.
- build_model: the base model with those adapters (frozen), the Fusion and a new head, ready to train.
- attention_by_adapter: how much the trained Fusion weighs each adapter, averaged over texts (bench/compare.py).
"""

from pathlib import Path

from errors import ModelError
from textclassifier import saved, sharing

# The library's "dynamic" Fusion (query, key and value matrices; the value matrix kept near the identity by a
# regularisation term in the loss), the paper's and AdapterHub's default.
FUSION_CONFIG = "dynamic"
# Where an adapter's modules sit: Fusion combines, in each layer and place, the outputs of adapters that all sit
# there, in the same way (in sequence, or in parallel to the block they adapt).
PLACEMENT = {"mh_adapter": "after attention", "output_adapter": "after the feed-forward block",
             "is_parallel": "in parallel", "leave_out": "layers left out"}  # fmt: skip


def check_sources(words, model_name=None):
    """The adapters to fuse (folders written by train.py or saved by the adapters library, or Hub ids) -> a list of
    (name, folder, training info, adapter config). Refused (ModelError, one line, before any weights load): fewer
    than two; one that is not an adapter (a full model, a Fusion); another kind of adapter than a bottleneck
    (Fusion combines bottleneck outputs: LoRA, prefix tuning, (IA)^3 ... have none); invertible adapters (the
    library fuses their layers' adapters but not their embedding part); adapters in other places or layers (the
    library refuses some of those deep inside and silently mixes others); another base model than the first's
    (or than model_name)."""
    if len(words) < 2:
        raise ModelError(f"--fusion combines at least two trained adapters; {len(words)} given")
    folders, _ = sharing.adapter_folders(words)
    names = [sharing.folder_name(f).replace(".", "_").replace(",", "_") for f in folders]
    if len(set(names)) < len(names):
        raise ModelError("--fusion: two adapter folders have the same name; each fused adapter is called by its "
                         "folder's name, so give them different names")  # fmt: skip
    sources = []
    for word, name, folder in zip(words, names, folders):
        info = saved.read_training_info(folder, model_name)
        if info["mode"] != "adapter" or saved.is_fusion(info):
            kind = "a fully fine-tuned model" if info["mode"] != "adapter" else "an AdapterFusion"
            raise ModelError(f"--fusion {word}: {kind}, not an adapter; fuse the adapters themselves")
        config = saved.read_json(Path(folder) / "adapter_config.json")["config"]
        kind = info.get("adapter_config") or config.get("architecture") or "this"
        if config.get("architecture") not in (None, "bottleneck") or "output_adapter" not in config:
            raise ModelError(f"--fusion {word}: a {kind} adapter; Fusion combines bottleneck adapters only "
                             f"(pfeiffer, houlsby, par_bn, ...), whose outputs it weighs")  # fmt: skip
        if config.get("inv_adapter"):
            raise ModelError(f"--fusion {word}: a {kind} adapter with invertible adapters on the embeddings, "
                             f"which the adapters library does not fuse; fuse adapters without them (pfeiffer, "
                             f"houlsby)")  # fmt: skip
        sources.append((name, folder, info, config))
    first, first_config = sources[0][2:]
    base = model_name or first["base_model"]
    for word, (_, _, info, config) in zip(words, sources):
        if not saved.same_base_model(info["base_model"], base):
            raise ModelError(f"--fusion {word} was trained on {info['base_model']}, not {base}: fused adapters "
                             f"must share one base model")  # fmt: skip
        for key, what in PLACEMENT.items():
            if placement(config, key) != placement(first_config, key):
                raise ModelError(
                    f"--fusion: {word} and {words[0]} differ in where their modules sit ({what}: "
                    f"{config.get(key)} vs {first_config.get(key)}); Fusion combines adapters of one placement, "
                    f"e.g. all pfeiffer or all houlsby"
                )
    return sources


def placement(config, key):
    """An adapter config's PLACEMENT `key`: the layers left out (sorted), or whether it has that module."""
    return sorted(config.get(key) or []) if key == "leave_out" else bool(config.get(key))


def build_model(sources, label_names, model_name=None, seed=42, attention_dropout=None, attention=None):
    """The base model (model_name, else the adapters') with the adapters of check_sources loaded under their names
    and frozen, an AdapterFusion over them (FUSION_CONFIG) and a new classification head named as the Fusion, the
    Fusion and head trainable -> (model, the fused names)."""
    import torch
    from adapters import AutoAdapterModel, Fuse

    import model as M

    base = model_name or sources[0][2]["base_model"]
    model = AutoAdapterModel.from_pretrained(
        M.resolve_model_path(base), **M.config_overrides(attention_dropout, attention)
    )
    M.drop_pretraining_heads(model)
    names = []
    for name, folder, info, _ in sources:
        names.append(saved.load_adapter(model, folder, load_as=name, again=saved.how_to_mend(info)))
    M.drop_pretraining_heads(model)  # the adapters' own heads: the new task gets its own
    fuse = Fuse(*names)
    torch.manual_seed(seed)  # the Fusion and the head are random at creation
    with M.no_inactive_adapter_notice():
        model.add_adapter_fusion(fuse, config=FUSION_CONFIG)
        model.add_classification_head(fuse.name, num_labels=len(label_names), id2label=dict(enumerate(label_names)))
        model.train_adapter_fusion(fuse)  # freezes the base and the adapters, activates the Fusion
    M.contiguous_fusion_inputs(model)
    return model, names


def describe(words, sources):
    """What training.json records of each fused adapter: its name in the folder, --fusion's word for it, its task,
    adapter config and labels."""
    return [{"name": name, "from": word, "data_set": info.get("data_set"), "adapter_config": info.get("adapter_config"),
             "label_names": info["label_names"]} for word, (name, _, info, _) in zip(words, sources)]  # fmt: skip


def regularization(model):
    """The dynamic Fusion's regularisation term (its value matrices kept near the identity), added to the loss as
    the library's AdapterTrainer adds it; None for a model without one."""
    return model.get_fusion_regularization_loss() if model.adapters_config.fusions else None


def attention_by_adapter(model, tokenizer, texts, max_length, batch_size=64):
    """{fused adapter name: its mean attention weight}: the trained Fusion's weights over the adapters, averaged
    over every real token of the texts, every layer and place (the model as saved.load_fusion leaves it)."""
    import numpy as np
    import torch

    fuse = model.active_adapters
    names = [str(child) for child in fuse.children]
    total, count = np.zeros(len(names)), 0
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(texts[start : start + batch_size], truncation=True, max_length=max_length,
                              padding=True, return_tensors="pt").to(model.device)  # fmt: skip
            out = model(**batch, output_adapter_fusion_attentions=True)
            real = batch["attention_mask"].bool().cpu().numpy()
            for places in out.adapter_fusion_attentions[fuse.name].values():
                for weights in places.values():  # batch x tokens x adapters
                    total += weights[real].sum(0)
                    count += int(real.sum())
    return dict(zip(names, (total / max(count, 1)).tolist()))
