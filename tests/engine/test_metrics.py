"""Metrics against hand-computed values and scikit-learn."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from imgcls.engine import metrics as M


def test_topk_accuracy_hand_counted():
    # 4 samples, 6 classes; the rank of the target among the logits is 1, 3, 6 and 2.
    logits = torch.tensor(
        [
            [9.0, 1.0, 2.0, 3.0, 4.0, 5.0],  # target 0: rank 1
            [1.0, 9.0, 8.0, 3.0, 4.0, 5.0],  # target 5: rank 3 (9, 8, 5)
            [1.0, 9.0, 8.0, 7.0, 6.0, 5.0],  # target 0: rank 6 (the lowest)
            [5.0, 4.0, 9.0, 3.0, 2.0, 1.0],  # target 0: rank 2
        ]
    )
    targets = torch.tensor([0, 5, 0, 0])
    top1, top2, top5 = M.topk_accuracy(logits, targets, (1, 2, 5))
    assert top1 == pytest.approx(25.0)
    assert top2 == pytest.approx(50.0)
    assert top5 == pytest.approx(75.0)
    assert M.topk_correct(logits, targets, (1, 3, 6)).tolist() == [1, 3, 4]


def test_topk_is_none_when_k_exceeds_classes_and_soft_targets_count_by_argmax():
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1]])
    soft = torch.tensor([[0.05, 0.9, 0.05], [0.1, 0.1, 0.8]])  # mixup-style rows: argmax 1 and 2
    top1, top5 = M.topk_accuracy(logits, soft, (1, 5))
    assert top1 == pytest.approx(50.0)
    assert top5 is None


def test_single_binary_logit_reads_as_two_classes():
    z = torch.tensor([2.0, -1.0, 0.5, -3.0])
    y = torch.tensor([1, 1, 0, 0])
    # predictions: 1, 0, 1, 0 → 2 of 4 right
    assert M.topk_accuracy(z, y, (1,)) == [pytest.approx(50.0)]
    two = M.class_logits(z[:, None])
    assert two.shape == (4, 2)
    assert torch.allclose(torch.softmax(two, 1)[:, 1], torch.sigmoid(z))


def test_confusion_matrix_hand_and_sklearn():
    targets = torch.tensor([0, 0, 1, 2, 2, 2])
    preds = torch.tensor([0, 1, 1, 2, 0, 2])
    cm = M.confusion_matrix(preds, targets, 3)
    assert cm.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]
    logits = torch.nn.functional.one_hot(preds, 3).float() * 5
    assert torch.equal(M.confusion_matrix(logits, targets, 3), cm)
    assert np.array_equal(cm.numpy(), skm.confusion_matrix(targets.numpy(), preds.numpy(), labels=[0, 1, 2]))


def test_per_class_metrics_hand_counted():
    # From the matrix above: class 0 precision 1/2 recall 1/2; class 1 precision 1/2 recall 1; class 2 2/2, 2/3.
    cm = torch.tensor([[1, 1, 0], [0, 1, 0], [1, 0, 2]])
    pc = M.per_class_metrics(cm)
    assert pc["precision"] == pytest.approx([0.5, 0.5, 1.0])
    assert pc["recall"] == pytest.approx([0.5, 1.0, 2 / 3])
    assert pc["f1"] == pytest.approx([0.5, 2 / 3, 0.8])
    assert pc["support"] == [2, 1, 3]


def test_per_class_metrics_match_sklearn_with_an_unpredicted_and_an_absent_class():
    gen = torch.Generator().manual_seed(0)
    k = 7
    targets = torch.randint(0, k - 1, (300,), generator=gen)  # class 6 never occurs
    preds = torch.where(torch.rand(300, generator=gen) < 0.6, targets, torch.randint(0, k, (300,), generator=gen))
    preds[preds == 3] = 4  # class 3 never predicted
    pc = M.per_class_metrics(M.confusion_matrix(preds, targets, k))
    p, r, f, s = skm.precision_recall_fscore_support(
        targets.numpy(), preds.numpy(), labels=list(range(k)), zero_division=0
    )
    assert np.allclose(pc["precision"], p)
    assert np.allclose(pc["recall"], r)
    assert np.allclose(pc["f1"], f)
    assert pc["support"] == s.tolist()
    assert pc["precision"][3] == 0.0 and pc["recall"][6] == 0.0


def test_binary_auc_matches_sklearn_for_one_and_two_logits():
    gen = torch.Generator().manual_seed(1)
    y = torch.randint(0, 2, (200,), generator=gen)
    z = y.float() * 1.5 + torch.randn(200, generator=gen)
    expected = skm.roc_auc_score(y.numpy(), z.numpy())
    assert M.binary_auc(z, y) == pytest.approx(expected)
    two = torch.stack([-z / 2, z / 2], dim=1)  # softmax(two)[:, 1] = sigmoid(z): the same ranking
    assert M.binary_auc(two, y) == pytest.approx(expected)
    assert M.binary_auc(z, torch.ones(200, dtype=torch.long)) is None


def test_binary_auc_hand_counted():
    # Positives score 0.9, 0.4; negatives 0.5, 0.1: 3 of the 4 (pos, neg) pairs are ordered right.
    logit = torch.logit(torch.tensor([0.9, 0.4, 0.5, 0.1]))
    assert M.binary_auc(logit, torch.tensor([1, 1, 0, 0])) == pytest.approx(0.75)


def test_multilabel_map_hand_counted():
    probs = torch.tensor([[0.9, 0.2], [0.8, 0.6], [0.7, 0.3], [0.1, 0.4]])
    truth = torch.tensor([[1, 0], [0, 1], [1, 0], [0, 0]])
    out = M.multilabel_metrics(torch.logit(probs), truth, threshold=0.5)
    # class 0 ranks pos, neg, pos, neg: AP = (1/1 + 2/3) / 2; class 1 ranks its only positive first: AP = 1.
    assert out["per_class"]["ap"] == pytest.approx([5 / 6, 1.0])
    assert out["mAP"] == pytest.approx(100 * (5 / 6 + 1) / 2)
    # At 0.5: class 0 predicts rows 0, 1, 2 (tp 2, fp 1); class 1 predicts row 1 (tp 1). Micro F1 = 6/7.
    assert out["f1_micro"] == pytest.approx(100 * 6 / 7)
    assert out["f1_macro"] == pytest.approx(100 * (0.8 + 1.0) / 2)
    # Highest label per row: 0, 0, 0, 1 → positive in rows 0 and 2.
    assert out["precision_at_1"] == pytest.approx(50.0)
    # Every label right in rows 0, 2 and 3 (row 1 predicts class 0 wrongly).
    assert out["subset_accuracy"] == pytest.approx(75.0)


def test_multilabel_matches_sklearn_and_skips_classes_without_positives():
    gen = torch.Generator().manual_seed(2)
    truth = (torch.rand(120, 6, generator=gen) < 0.3).long()
    truth[:, 5] = 0  # no positive: AP undefined
    logits = truth.float() * 2 - 1 + torch.randn(120, 6, generator=gen)
    out = M.multilabel_metrics(logits, truth, threshold=0.4)
    probs = torch.sigmoid(logits).numpy()
    expected_map = skm.average_precision_score(truth[:, :5].numpy(), probs[:, :5], average="macro")
    assert out["mAP"] == pytest.approx(100 * expected_map)
    assert out["per_class"]["ap"][5] is None
    pred = (probs >= 0.4).astype(int)
    assert out["f1_micro"] == pytest.approx(100 * skm.f1_score(truth.numpy(), pred, average="micro", zero_division=0))
    assert out["f1_macro"] == pytest.approx(100 * skm.f1_score(truth.numpy(), pred, average="macro", zero_division=0))


@pytest.mark.parametrize("task,k", [("multiclass", 10), ("multiclass", 3), ("binary", 2), ("multilabel", 4)])
def test_classification_metrics_are_json_ready(task, k):
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(50, k, generator=gen)
    if task == "multilabel":
        targets = (torch.rand(50, k, generator=gen) < 0.5).long()
    else:
        targets = torch.randint(0, k, (50,), generator=gen)
    out = M.classification_metrics(logits, targets, task)
    json.dumps(out, allow_nan=False)
    assert out["num_samples"] == 50
    assert 0.0 <= out["top1"] <= 100.0
    if task == "multilabel":
        assert out["top5"] is None and out["mAP"] is not None
    else:
        assert (out["top5"] is None) == (k < 5)
        assert np.asarray(out["confusion_matrix"]).sum() == 50
        assert out["top1"] == pytest.approx(100 * np.trace(np.asarray(out["confusion_matrix"])) / 50)
        assert out["macro_f1"] == pytest.approx(
            100 * skm.f1_score(targets.numpy(), logits.argmax(1).numpy(), average="macro", labels=list(range(k)))
        )
    if task == "binary":
        assert out["auc"] == pytest.approx(skm.roc_auc_score(targets.numpy(), torch.softmax(logits, 1)[:, 1].numpy()))


def test_default_loss_per_task():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    y = torch.tensor([0, 1])
    expected = -(math.log(math.exp(2) / (math.exp(2) + 1)) + math.log(math.e / (math.e + 1))) / 2
    assert M.default_loss(logits, y, "multiclass").item() == pytest.approx(expected)
    z = torch.tensor([[2.0], [-1.0]])
    bce = -(math.log(1 / (1 + math.exp(-2))) + math.log(1 / (1 + math.exp(-1)))) / 2  # targets 1 and 0
    assert M.default_loss(z, torch.tensor([1, 0]), "binary").item() == pytest.approx(bce)
    assert M.default_loss(z.T, torch.tensor([[1, 0]]), "multilabel").item() == pytest.approx(bce)


# --- audit (issue 11): every metric against scikit-learn on random and edge-case inputs ------------------------


def _random_multiclass(seed: int, n: int, k: int):
    gen = torch.Generator().manual_seed(seed)
    targets = torch.randint(0, k, (n,), generator=gen)
    logits = torch.randn(n, k, generator=gen) + 1.5 * torch.nn.functional.one_hot(targets, k)
    return logits, targets


@pytest.mark.parametrize(("seed", "n", "k"), [(0, 200, 10), (1, 37, 3), (2, 500, 20), (3, 9, 12)])
def test_macro_scores_and_balanced_accuracy_match_sklearn(seed, n, k):
    logits, targets = _random_multiclass(seed, n, k)
    out = M.classification_metrics(logits, targets, "multiclass")
    y, p = targets.numpy(), logits.argmax(1).numpy()
    labels = list(range(k))
    for key, fn in (("macro_precision", skm.precision_score), ("macro_recall", skm.recall_score),
                    ("macro_f1", skm.f1_score)):  # fmt: skip
        assert out[key] == pytest.approx(100 * fn(y, p, labels=labels, average="macro", zero_division=0)), key
    assert out["balanced_accuracy"] == pytest.approx(100 * skm.balanced_accuracy_score(y, p))
    assert out["top1"] == pytest.approx(100 * skm.accuracy_score(y, p))


@pytest.mark.parametrize("k", [5, 7])
def test_topk_matches_sklearn_top_k_accuracy(k):
    logits, targets = _random_multiclass(4, 300, k)
    for top in (1, 2, 3, 5):
        expected = skm.top_k_accuracy_score(targets.numpy(), logits.numpy(), k=top, labels=list(range(k)))
        assert M.topk_accuracy(logits, targets, (top,))[0] == pytest.approx(100 * expected)


def test_auc_matches_sklearn_with_ties_and_is_half_for_constant_scores():
    gen = torch.Generator().manual_seed(5)
    y = torch.randint(0, 2, (400,), generator=gen)
    z = torch.round(y.float() + torch.randn(400, generator=gen))  # a handful of distinct scores: many ties
    assert len(torch.unique(z)) < 10
    assert M.binary_auc(z, y) == pytest.approx(skm.roc_auc_score(y.numpy(), z.numpy()))
    assert M.binary_auc(torch.zeros(400), y) == pytest.approx(0.5)
    assert M.binary_auc(-z, y) == pytest.approx(1 - skm.roc_auc_score(y.numpy(), z.numpy()))  # sign is right


def test_multilabel_per_class_scores_match_sklearn_with_ties_and_smoothed_labels():
    gen = torch.Generator().manual_seed(6)
    truth = (torch.rand(150, 5, generator=gen) < 0.35).long()
    logits = torch.round(2 * (truth.float() - 0.5) + torch.randn(150, 5, generator=gen))  # tied scores
    smoothed = truth.float() * 0.9 + 0.025  # label smoothing keeps positives >= 0.5
    out = M.multilabel_metrics(logits, smoothed, threshold=0.5)
    probs = torch.sigmoid(logits).numpy()
    y = truth.numpy()
    ap = skm.average_precision_score(y, probs, average=None)
    assert out["per_class"]["ap"] == pytest.approx(list(ap))
    pred = (probs >= 0.5).astype(int)
    p, r, f, s = skm.precision_recall_fscore_support(y, pred, average=None, zero_division=0)
    assert out["per_class"]["precision"] == pytest.approx(list(p))
    assert out["per_class"]["recall"] == pytest.approx(list(r))
    assert out["per_class"]["f1"] == pytest.approx(list(f))
    assert out["per_class"]["support"] == s.tolist()
    assert out["subset_accuracy"] == pytest.approx(100 * skm.accuracy_score(y, pred))


def test_confusion_matrix_orientation_on_a_known_case():
    # Every image of class 0 is called class 2, and nothing else is wrong: row 0 (true class 0), column 2.
    targets = torch.tensor([0, 0, 0, 1, 2, 2])
    preds = torch.tensor([2, 2, 2, 1, 2, 2])
    cm = M.confusion_matrix(preds, targets, 3)
    assert cm[0, 2] == 3 and cm[2, 0] == 0
    pc = M.per_class_metrics(cm)
    assert pc["recall"][0] == 0.0 and pc["precision"][2] == pytest.approx(2 / 5)


@pytest.mark.parametrize("task", ["multiclass", "binary", "multilabel"])
def test_no_samples_gives_json_ready_nones_not_nan(task):
    k = 2 if task == "binary" else 4
    targets = torch.zeros(0, k) if task == "multilabel" else torch.zeros(0, dtype=torch.long)
    out = M.classification_metrics(torch.zeros(0, k), targets, task)
    json.dumps(out, allow_nan=False)
    assert out["num_samples"] == 0 and out["top1"] is None


def test_tuned_thresholds_maximise_each_class_f1():
    gen = torch.Generator().manual_seed(7)
    truth = (torch.rand(80, 4, generator=gen) < 0.3).long()
    truth[:, 3] = 0  # no positive: keeps 0.5
    logits = 2.5 * (truth.float() - 0.3) + torch.randn(80, 4, generator=gen)
    thresholds = M.tune_thresholds(logits, truth)
    probs = torch.sigmoid(logits).numpy()
    assert thresholds[3] == 0.5
    for c in range(3):
        y = truth[:, c].numpy()
        f1_at = skm.f1_score(y, probs[:, c] >= thresholds[c], zero_division=0)
        best = max(skm.f1_score(y, probs[:, c] >= t, zero_division=0) for t in np.unique(probs[:, c]))
        assert f1_at == pytest.approx(best)  # no threshold does better on these samples
        assert 0.0 < thresholds[c] < 1.0
    # The tuned thresholds go through the metrics as one value per class.
    out = M.multilabel_metrics(logits, truth, threshold=thresholds)
    assert out["threshold"] == thresholds


def test_tuned_threshold_lies_between_the_separated_scores():
    # Positives at 0.9 and 0.8, negatives at 0.3 and 0.1: any cut in (0.3, 0.8) is perfect; the midpoint is kept.
    probs = torch.tensor([[0.9], [0.8], [0.3], [0.1]])
    (t,) = M.tune_thresholds(torch.logit(probs), torch.tensor([[1], [1], [0], [0]]))
    assert t == pytest.approx(0.55)
