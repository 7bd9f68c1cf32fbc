"""
Metrics of predicted labels against true ones, by scikit-learn: what train.py reports after every epoch and
evaluate.py for every set of posts. With two classes, precision, recall and F1 are class 1's (the positive class,
"depressive"); with more, their macro averages. macro_f1 is the mean F1 over all classes in both cases.
"""

from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support, roc_auc_score


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
