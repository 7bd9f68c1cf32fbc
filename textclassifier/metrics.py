"""
Every metric of the project, by scikit-learn and numpy: of predicted labels against true ones (label_metrics: what
training reports after every epoch), and of class probabilities (probability_metrics): AUC, Brier score, expected
calibration error, bootstrap intervals, the share of each group flagged and the AUC between two groups; and two
models compared on the same posts (mcnemar, paired_bootstrap). With two
classes, precision, recall and F1 are class 1's (the positive class, "depressive"); with more, their macro
averages. macro_f1 is the mean F1 over all classes in both cases.

    >>> scores = label_metrics(preds=[1, 0, 1, 1], labels=[1, 0, 0, 1], label_names=["not depressive", "depressive"])
    >>> scores["accuracy"], round(scores["precision"], 3), scores["recall"], scores["confusion_matrix"]
    (0.75, 0.667, 1.0, [[1, 1], [0, 2]])
"""

import numpy as np
from scipy.stats import binomtest
from sklearn.metrics import (
    accuracy_score,
    brier_score_loss,
    confusion_matrix,
    precision_recall_fscore_support,
    roc_auc_score,
)

BOOTSTRAP = 1000  # resamples for the 95% intervals
ECE_BINS = 10


def label_metrics(preds, labels, label_names):
    """accuracy, precision, recall, f1, macro_f1, per_class (precision, recall, F1 and support by class name) and
    the confusion matrix (rows: true class, columns: predicted; every class, also one absent from both)."""
    classes = list(range(len(label_names)))
    precision, recall, f1, support = precision_recall_fscore_support(labels, preds, labels=classes, zero_division=0)
    headline = (lambda values: float(values[1])) if len(classes) == 2 else (lambda values: float(values.mean()))
    return {
        "accuracy": float(accuracy_score(labels, preds)),
        "precision": headline(precision),
        "recall": headline(recall),
        "f1": headline(f1),
        "macro_f1": float(f1.mean()),
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(label_names)
        },
        "confusion_matrix": confusion_matrix(labels, preds, labels=classes).tolist(),
    }


def source_metrics(preds, labels, positive, sources, label_names):
    """Per data source (several training sources): posts, accuracy and, with two classes, the share of each class
    flagged positive (class 1's is its recall, class 0's the false alarms) and the AUC of P(class 1), where both
    classes are present. preds, labels, positive (P(class 1), or None) and sources run in parallel."""
    out = {}
    for name in dict.fromkeys(sources):
        rows = [i for i, s in enumerate(sources) if s == name]
        p, y = [preds[i] for i in rows], [labels[i] for i in rows]
        row = {"n": len(rows), "accuracy": float(accuracy_score(y, p))}
        if len(label_names) == 2:
            for cls in (0, 1):
                members = [pred for pred, true in zip(p, y) if true == cls]
                row[f"class_{cls}_flagged"] = float(sum(members) / len(members)) if members else None
            if positive is not None and len(set(y)) == 2:
                row["auc"] = float(roc_auc_score(y, [positive[i] for i in rows]))
        out[name] = row
    return out


def predictions(probs, threshold=None):
    """Predicted classes: the most probable one, or (two classes) positive at P(class 1) >= threshold."""
    if threshold is None:
        return probs.argmax(1)
    return (probs[:, 1] >= threshold).astype(int)


def expected_calibration_error(probs, labels, bins=ECE_BINS):
    """Weighted mean gap between confidence (the predicted class's probability) and accuracy over equal-width bins."""
    confidence, correct = probs.max(1), probs.argmax(1) == labels
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    return float(
        sum(
            abs(correct[which == b].mean() - confidence[which == b].mean()) * (which == b).mean()
            for b in range(bins)
            if (which == b).any()
        )
    )


def scores(probs, labels, threshold=None, label_names=None):
    """The point metrics of one model on one set of posts: label_metrics (the same as training's) and the
    ones that need probabilities: AUC, Brier score, expected calibration error."""
    pred = predictions(probs, threshold)
    k = probs.shape[1]
    auc = None
    if len(set(labels.tolist())) > 1:
        auc = float(
            roc_auc_score(labels, probs[:, 1])
            if k == 2
            else roc_auc_score(labels, probs, multi_class="ovr", labels=list(range(k)))
        )
    return {
        "n": int(len(labels)),
        **label_metrics(pred, labels, label_names or [str(i) for i in range(k)]),
        "auc": auc,
        "brier": float(
            brier_score_loss(labels, probs[:, 1]) if k == 2 else ((probs - np.eye(k)[labels]) ** 2).sum(1).mean()
        ),
        "ece": expected_calibration_error(probs, labels),
    }


def interval(values):
    values = [v for v in values if v is not None]
    return [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))] if values else None


def bootstrap(probs, labels, threshold, resamples, seed):
    """95% percentile intervals of accuracy, F1 and AUC, the posts resampled with replacement."""
    rng = np.random.default_rng(seed)
    draws = [scores(probs[i], labels[i], threshold) for i in rng.integers(0, len(labels), (resamples, len(labels)))]
    return {f"{key}_ci": interval([d[key] for d in draws]) for key in ("accuracy", "f1", "auc")}


def group_results(probs, groups, threshold, pairs, resamples, seed, label_names=None):
    """Two classes: the share flagged positive per group (with an interval, each group's posts resampled) and the AUC
    of the positive probability between the groups of each POS:NEG pair (each group resampled on its own). More
    classes: per group, the share predicted as each class."""
    if probs.shape[1] > 2:
        pred = predictions(probs)
        names = label_names or [str(i) for i in range(probs.shape[1])]
        shares = {
            g: {name: float((pred[groups == g] == i).mean()) for i, name in enumerate(names)}
            for g in sorted(set(groups))
        }
        return shares, {g: {"n": int((groups == g).sum())} for g in shares}, {}
    flagged = predictions(probs, threshold) == 1
    positive = probs[:, 1]
    rng = np.random.default_rng(seed)
    shares, detail = {}, {}
    for group in sorted(set(groups)):
        mine = flagged[groups == group]
        shares[group] = float(mine.mean())
        draws = mine[rng.integers(0, len(mine), (resamples, len(mine)))].mean(1) if resamples else []
        detail[group] = {"n": int(len(mine)), "flagged": shares[group], "flagged_ci": interval(list(draws))}
    aucs = {}
    for pair in pairs:
        pos, neg = pair.split(":")
        a, b = positive[groups == pos], positive[groups == neg]
        auc = pair_auc(a, b)
        draws = [
            pair_auc(a[rng.integers(0, len(a), len(a))], b[rng.integers(0, len(b), len(b))]) for _ in range(resamples)
        ]
        aucs[pair] = {"auc": auc, "auc_ci": interval(draws), "n_pos": int(len(a)), "n_neg": int(len(b))}
    return shares, detail, aucs


def pair_auc(pos_scores, neg_scores):
    """ROC AUC of telling posts of one group (positives) from another's by a score."""
    y = np.r_[np.ones(len(pos_scores)), np.zeros(len(neg_scores))]
    return float(roc_auc_score(y, np.r_[pos_scores, neg_scores]))


def probability_metrics(
    probs, labels, groups=None, threshold=None, pairs=(), resamples=BOOTSTRAP, seed=0, label_names=None
):
    """Every metric of one model's probabilities on one set of posts (numpy arrays), as written to the JSON."""
    result = {**scores(probs, labels, threshold, label_names), "threshold": threshold}
    if label_names:
        result["label_names"] = list(label_names)
    if resamples:
        result.update(bootstrap(probs, labels, threshold, resamples, seed))
    if groups is not None:
        result["groups"], result["groups_detail"], result["group_auc"] = group_results(
            probs, groups, threshold, pairs, resamples, seed, label_names
        )
    return result


def mcnemar(first_right, second_right):
    """Two-sided exact McNemar test on per-post correctness (booleans): the posts only one of the two models gets
    right are a fair coin's tosses if both are equally accurate. Returns (p, only first right, only second right)."""
    first, second = np.asarray(first_right, bool), np.asarray(second_right, bool)
    b, c = int((first & ~second).sum()), int((~first & second).sum())
    return (float(binomtest(c, b + c).pvalue) if b + c else 1.0), b, c


def weighted_scores(weights, preds, labels, num_classes):
    """Accuracy and macro F1 (scikit-learn's over every class, 0 for a class with no post and no prediction) of
    preds for each row of weights, a weight (a count) per post: {"accuracy": array, "macro_f1": array}."""
    preds, labels = np.asarray(preds), np.asarray(labels)
    f1 = []
    for k in range(num_classes):
        tp, fp, fn = (weights @ m for m in ((preds == k) & (labels == k), (preds == k) & (labels != k),
                                            (preds != k) & (labels == k)))  # fmt: skip
        f1.append(np.divide(2 * tp, 2 * tp + fp + fn, out=np.zeros(len(weights)), where=2 * tp + fp + fn > 0))
    return {"accuracy": weights @ (preds == labels) / weights.sum(1), "macro_f1": np.mean(f1, 0)}


def paired_bootstrap(labels, first, second, num_classes, resamples=10_000, seed=0):
    """Accuracy and macro F1 of `second` less `first` on the same posts, each given as predictions per seed (seeds x
    posts, the seeds paired) and averaged over seeds, with its 95% interval, the posts resampled with replacement:
    {"accuracy": (difference, [low, high]), "macro_f1": ...}."""
    n = len(labels)
    weights = np.vstack([np.ones(n), np.random.default_rng(seed).multinomial(n, np.full(n, 1 / n), resamples)])
    diff = {"accuracy": 0.0, "macro_f1": 0.0}
    for a, b in zip(first, second):
        sa, sb = weighted_scores(weights, a, labels, num_classes), weighted_scores(weights, b, labels, num_classes)
        diff = {key: diff[key] + (sb[key] - sa[key]) / len(first) for key in diff}
    return {key: (float(d[0]), [float(np.percentile(d[1:], 2.5)), float(np.percentile(d[1:], 97.5))])
            for key, d in diff.items()}  # fmt: skip
