"""Metrics on small hand-made predictions whose answers are worked out in the comments."""
from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch

from utils.metrics import (
    confusion_matrix,
    expected_calibration_error,
    format_shot_table,
    largest_confusions,
    negative_log_likelihood,
    per_class_accuracy,
    shot_accuracy,
    shot_groups,
    summarize,
    topk_accuracy,
)


def test_topk_accuracy_hand_ranks():
    descending = [0.5, 0.4, 0.3, 0.2, 0.1, 0.0]
    logits = torch.tensor(
        [
            [0.1, 0.9, 0.0, 0.0, 0.0, 0.0],  # target 1 ranked 1st
            descending,  # target 4 ranked 5th
            descending,  # target 5 ranked 6th
            [0.0, 0.0, 1.0, 0.5, 0.0, 0.0],  # target 3 ranked 2nd
        ]
    )
    targets = torch.tensor([1, 4, 5, 3])
    assert topk_accuracy(logits, targets) == {1: 25.0, 5: 75.0}
    assert topk_accuracy(logits, targets, ks=(2,)) == {2: 50.0}


def test_topk_clipped_to_num_classes():
    logits = torch.tensor([[0.0, 1.0, 2.0], [3.0, 2.0, 1.0]])
    assert topk_accuracy(logits, torch.tensor([0, 0])) == {1: 50.0, 5: 100.0}


def test_per_class_accuracy_with_absent_class():
    predictions = [0, 0, 1, 1, 1, 2]
    targets = [0, 1, 1, 1, 0, 2]
    accuracy = per_class_accuracy(predictions, targets, num_classes=4)
    # class 0: 1 of 2, class 1: 2 of 3, class 2: 1 of 1, class 3: no test sample
    assert accuracy[:3].tolist() == pytest.approx([50.0, 200.0 / 3, 100.0])
    assert math.isnan(accuracy[3])
    assert accuracy.dtype == np.float64
    with pytest.raises(ValueError):
        per_class_accuracy([0], [4], num_classes=4)


def test_confusion_matrix_counts_true_rows_and_predicted_columns():
    predictions = [0, 1, 1, 2, 0, 0, 1]
    targets = [0, 1, 0, 2, 2, 2, 2]
    # class 0: one right, one taken by 1; class 1: one right; class 2: one right, two taken by 0, one by 1
    matrix = confusion_matrix(predictions, targets, num_classes=4)
    assert matrix.tolist() == [[1, 1, 0, 0], [0, 1, 0, 0], [2, 1, 1, 0], [0, 0, 0, 0]]
    assert matrix.dtype == np.int64
    assert np.diag(matrix).sum() == 3  # the correct predictions, the diagonal
    # Shares of class 2's four images: class 0 took 50 %, class 1 25 %; its own and empty cells left out.
    assert largest_confusions(matrix, 2) == [(0, 50.0), (1, 25.0)]
    assert largest_confusions(matrix, 2, k=1) == [(0, 50.0)]
    assert largest_confusions(matrix, 1) == [] and largest_confusions(matrix, 3) == []
    assert largest_confusions(np.array([[2, 1, 1], [0, 1, 0], [0, 0, 1]]), 0) == [(1, 25.0), (2, 25.0)]  # ties: index
    with pytest.raises(ValueError, match="predictions must lie in"):
        confusion_matrix([4], [0], num_classes=4)
    with pytest.raises(ValueError, match="targets must lie in"):
        confusion_matrix([0], [-1], num_classes=4)


def test_summary_holds_the_confusion_matrix_only_when_asked():
    logits = torch.tensor([[2.0, 1.0], [0.0, 3.0], [5.0, 1.0]])
    targets = torch.tensor([0, 1, 1])
    assert "confusion" not in summarize(logits, targets, [10, 2])
    assert summarize(logits, targets, [10, 2], confusion=True)["confusion"] == [[1, 0], [1, 1]]


def test_shot_groups_thresholds_are_strict():
    # > 100 many, < 20 few; exactly 100 and exactly 20 are medium (OLTR)
    groups = shot_groups([500, 101, 100, 20, 19, 5])
    assert groups == {"many": [0, 1], "medium": [2, 3], "few": [4, 5]}


def test_shot_accuracy_empty_group_is_none():
    result = shot_accuracy(np.array([80.0, 60.0, 40.0]), [500, 200, 50])
    assert result == {"many": 70.0, "medium": 40.0, "few": None}
    # a class without test samples (NaN) is skipped, not counted as 0
    result = shot_accuracy(np.array([80.0, np.nan, 40.0, 10.0]), [500, 200, 50, 5])
    assert result == {"many": 80.0, "medium": 40.0, "few": 10.0}
    assert shot_accuracy(np.array([np.nan, 40.0]), [500, 50])["many"] is None


# Four samples, three classes: confidences 0.9 (right), 0.7 (wrong), 0.5 (right), 0.85 (wrong).
PROBS = torch.tensor(
    [
        [0.90, 0.05, 0.05],
        [0.70, 0.20, 0.10],
        [0.30, 0.50, 0.20],
        [0.05, 0.10, 0.85],
    ]
)
PROB_TARGETS = torch.tensor([0, 1, 1, 0])


def test_ece_five_bins_by_hand():
    # bins of width 0.2: (0.8, 1] holds 0.9 and 0.85 -> acc 0.5, conf 0.875, weight 2/4;
    # (0.6, 0.8] holds 0.7 -> acc 0, weight 1/4; (0.4, 0.6] holds 0.5 -> acc 1, weight 1/4.
    expected = 100 * (abs(0.5 - 0.875) * 2 / 4 + abs(0.0 - 0.7) / 4 + abs(1.0 - 0.5) / 4)
    assert expected == pytest.approx(48.75)
    assert expected_calibration_error(PROBS, PROB_TARGETS, n_bins=5) == pytest.approx(expected, abs=1e-5)


def test_ece_fifteen_bins_by_hand():
    # with 15 bins every sample is alone in its bin: ECE = mean |correct - confidence|
    expected = 100 * (0.1 + 0.7 + 0.5 + 0.85) / 4
    assert expected_calibration_error(PROBS, PROB_TARGETS) == pytest.approx(expected, abs=1e-5)


def test_ece_perfect_calibration_and_edge_bin():
    # confidence exactly 1.0 lands in the last bin; right and sure -> ECE 0
    probs = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert expected_calibration_error(probs, torch.tensor([0, 1])) == 0.0


def test_nll_hand_value():
    logits = torch.tensor([[2.0, 1.0, 0.1], [0.5, 2.5, 0.0]])
    row0 = math.log(math.exp(2.0) + math.exp(1.0) + math.exp(0.1)) - 2.0
    row1 = math.log(math.exp(0.5) + math.exp(2.5) + math.exp(0.0)) - 0.0
    assert negative_log_likelihood(logits, torch.tensor([0, 2])) == pytest.approx((row0 + row1) / 2, rel=1e-6)


def test_summarize_and_table():
    train_counts = [500, 50, 5, 3]  # many: {0}; medium: {1}; few: {2, 3}
    # class 3 has no test sample; one-hot style logits make the predictions explicit
    predictions = [0, 0, 1, 0, 2, 1]
    targets = torch.tensor([0, 0, 1, 1, 2, 2])
    logits = torch.nn.functional.one_hot(torch.tensor(predictions), 4).float() * 4.0

    summary = summarize(logits, targets, train_counts)
    assert summary["top1"] == pytest.approx(100 * 4 / 6)
    assert summary["top5"] == 100.0  # clipped to 4 classes
    assert summary["per_class"][:3] == pytest.approx([100.0, 50.0, 50.0])
    assert summary["per_class"][3] is None
    assert summary["mean_per_class"] == pytest.approx(200.0 / 3)
    assert (summary["many"], summary["medium"], summary["few"]) == pytest.approx((100.0, 50.0, 50.0))
    assert summary["group_sizes"] == {"many": 1, "medium": 1, "few": 2}
    assert summary["num_samples"] == 6
    # each row: p = e^4 / (e^4 + 3) on the predicted class
    confidence = math.exp(4) / (math.exp(4) + 3)
    assert summary["nll"] == pytest.approx(
        (4 * -math.log(confidence) + 2 * -math.log(1 / (math.exp(4) + 3))) / 6, rel=1e-6
    )
    assert summary["ece"] == pytest.approx(100 * abs(4 / 6 - confidence), abs=1e-4)
    json.dumps(summary, allow_nan=False)  # results.json must be strict JSON

    table = format_shot_table(summary)
    assert "66.67" in table and "n/a" not in table
    no_few = summarize(logits[:4, :2], targets[:4], [500, 50])
    assert no_few["few"] is None and "n/a" in format_shot_table(no_few)


def test_per_class_statistics_file_and_resume_truncation(tmp_path):
    from utils.logger import RunLogger

    logger = RunLogger(str(tmp_path), tensorboard=True)
    for epoch in (1, 2, 3):
        logger.per_class({"a": [epoch, 2.5], "b": [0, 1]}, epoch)
    logger.forget_per_class_after(2)  # resumed after epoch 2: epoch 3 is trained again
    logger.per_class({"a": [30, 0.125], "b": [1, 1]}, 3)
    logger.close()
    rows = (tmp_path / "per_class.csv").read_text().splitlines()
    assert rows == ["epoch,statistic,class_0,class_1", "1,a,1,2.5", "1,b,0,1", "2,a,2,2.5", "2,b,0,1",
                    "3,a,30,0.125", "3,b,1,1"]
    assert any(name.startswith("events") for name in os.listdir(tmp_path / "tb"))


def test_each_test_time_variant_scores_its_own_hand_computed_logits():
    # A two-class classifier on 1x2-pixel images: features (left, right) of channel 0, head rows
    # w0 = (2, 0) and w1 = (0, 1), classes seen 9 : 1 in training. By hand, per image (target):
    #   A (1): pixels (1, 1.6)  plain (2, 1.6) -> 0;  tau-norm rows (1,0),(0,1): (1, 1.6) -> 1
    #          post-hoc adds (-log .9, -log .1) = (0.105, 2.303): (2.105, 3.903) -> 1
    #          flip: mirrored (1.6, 1) gives (3.2, 1), mean with plain (2.6, 1.3) -> 0
    #   B (0): pixels (0, 1)    plain (0, 1) -> 1;  tau-norm (0, 1) -> 1;  post-hoc (0.105, 3.303) -> 1
    #          flip: mirrored (1, 0) gives (2, 0), mean (1, 0.5) -> 0
    #   C (1): pixels (1, 0.8)  plain (2, 0.8) -> 0;  tau-norm (1, 0.8) -> 0;  post-hoc (2.105, 3.103) -> 1
    #          flip: mirrored (0.8, 1) gives (1.6, 1), mean (1.8, 0.9) -> 0
    from models import Classifier
    from utils.dist import DeviceContext
    from utils.engine import DeviceInputs
    from utils.evaluation import Variant, evaluate_variants

    class Pixels(torch.nn.Module):
        out_dim = 2

        def forward(self, images):
            return images[:, 0, 0, :]

    head = torch.nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[2.0, 0.0], [0.0, 1.0]]))
    model = Classifier(Pixels(), head).eval()

    class Trained:
        predict = staticmethod(model)
        tau_norm_keeps_bias, logit_scale = False, 1.0  # a head without bias: either rule gives the same

        @staticmethod
        def classifier():
            return model

    pixels = torch.tensor([[1.0, 1.6], [0.0, 1.0], [1.0, 0.8]])
    images = pixels.view(3, 1, 1, 2).expand(3, 3, 1, 2).contiguous()
    loader = [(images, torch.tensor([1, 0, 1]), torch.arange(3))]
    cpu = torch.device("cpu")
    variants = {"plain": Variant(), "flip": Variant(flip=True), "tau": Variant(tau_norm=1.0),
                "posthoc": Variant(posthoc_tau=1.0)}
    summaries = evaluate_variants(Trained, list(variants.values()), loader, DeviceInputs((0,) * 3, (1,) * 3, cpu),
                                  DeviceContext(cpu), train_counts=[9, 1])
    per_class = {name: summaries[variant]["per_class"] for name, variant in variants.items()}
    assert per_class == {"plain": [0.0, 0.0], "flip": [100.0, 0.0], "tau": [0.0, 50.0], "posthoc": [0.0, 100.0]}
    assert summaries[variants["posthoc"]]["top1"] == pytest.approx(200 / 3)
    assert head.weight.tolist() == [[2.0, 0.0], [0.0, 1.0]]  # tau-normalised on a copy
