"""AudioSet metrics against scikit-learn, with ties, excluded classes and single-label accuracy."""
import json
import math

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, average_precision_score, roc_auc_score

from fastsca.metrics import d_prime, tagging_metrics


def _random_set(rng, clips, classes, decimals):
    """Random multi-hot targets where every class has at least one positive and one negative clip
    (a sparse class on few clips would otherwise be excluded by chance), and tied scores."""
    targets = rng.random((clips, classes)) < rng.uniform(0.02, 0.4, size=classes)
    for k in range(classes):
        positive, negative = rng.choice(clips, size=2, replace=False)
        targets[positive, k], targets[negative, k] = True, False
    scores = np.round(rng.random((clips, classes)) + 0.3 * targets, decimals)   # rounding makes ties
    return targets, scores


@pytest.mark.parametrize("clips, classes, decimals", [(257, 31, 1), (1000, 7, 2), (53, 13, 3)])
def test_per_class_ap_and_auc_equal_sklearn(clips, classes, decimals):
    rng = np.random.default_rng(66138)
    targets, scores = _random_set(rng, clips, classes, decimals)
    targets[:, 0] = True            # no negatives: excluded
    targets[:, 1] = False           # no positives: excluded
    metrics = tagging_metrics(targets, scores)
    assert metrics.excluded_classes == 2
    assert np.isnan(metrics.average_precision[:2]).all() and np.isnan(metrics.roc_auc[:2]).all()
    ap = [average_precision_score(targets[:, k], scores[:, k]) for k in range(2, classes)]
    auc = [roc_auc_score(targets[:, k], scores[:, k]) for k in range(2, classes)]
    np.testing.assert_allclose(metrics.average_precision[2:], ap, atol=1e-6, rtol=0)
    np.testing.assert_allclose(metrics.roc_auc[2:], auc, atol=1e-6, rtol=0)
    assert metrics.mean_average_precision == pytest.approx(np.mean(ap), abs=1e-9)
    assert metrics.mean_roc_auc == pytest.approx(np.mean(auc), abs=1e-9)
    np.testing.assert_array_equal(metrics.positives, targets.sum(axis=0))


@pytest.mark.slow
def test_audioset_eval_size_matches_sklearn_on_sampled_classes():
    rng = np.random.default_rng(32256)
    targets, scores = _random_set(rng, 20_371, 527, 3)
    scores = scores.astype(np.float32)
    metrics = tagging_metrics(targets, scores)
    for k in rng.choice(527, size=5, replace=False):
        assert metrics.average_precision[k] == pytest.approx(average_precision_score(targets[:, k], scores[:, k]), abs=1e-6)
        assert metrics.roc_auc[k] == pytest.approx(roc_auc_score(targets[:, k], scores[:, k]), abs=1e-6)


def test_d_prime_pairs_as_in_the_paper():
    assert d_prime(0.9696) == pytest.approx(2.652, abs=1e-3)
    assert d_prime(0.5) == pytest.approx(0.0, abs=1e-12)
    assert math.isnan(d_prime(1.0))


def test_summary_and_d_prime_agree():
    rng = np.random.default_rng(68790)
    targets, scores = _random_set(rng, 300, 9, 2)
    metrics = tagging_metrics(targets, scores)
    assert metrics.d_prime == pytest.approx(d_prime(metrics.mean_roc_auc))
    assert set(metrics.summary()) == {"mAP", "mAUC", "d_prime", "excluded_classes"}


@pytest.mark.parametrize("targets, scores, message", [
    (np.zeros((4, 3)), np.zeros((4, 2)), "clips, classes"),
    (np.zeros((4, 3)), np.full((4, 3), np.nan), "NaN"),
])
def test_bad_input_raises(targets, scores, message):
    with pytest.raises(ValueError, match=message):
        tagging_metrics(targets, scores)


@pytest.mark.parametrize("clips, classes", [(97, 10), (400, 3)])
def test_single_label_sets_add_top1_accuracy_equal_to_sklearn(clips, classes):
    rng = np.random.default_rng(89621)
    truth = rng.integers(0, classes, clips)
    targets = np.eye(classes)[truth]
    scores = rng.random((clips, classes)) + 0.5 * targets
    metrics = tagging_metrics(targets, scores)
    assert metrics.summary()["accuracy"] == pytest.approx(accuracy_score(truth, scores.argmax(axis=1)), abs=1e-12)
    targets[rng.integers(clips), :] = 1                  # one clip with several labels: no accuracy
    assert "accuracy" not in tagging_metrics(targets, scores).summary()


def test_no_scorable_class_gives_none_never_nan():
    rng = np.random.default_rng(82403)
    targets = np.ones((int(rng.integers(5, 50)), 1))   # one class, every clip positive: nothing to rank
    summary = tagging_metrics(targets, rng.random(targets.shape)).summary()
    assert summary == {"mAP": None, "mAUC": None, "d_prime": None, "excluded_classes": 1}
    json.dumps(summary, allow_nan=False)
    targets, scores = _random_set(rng, 60, 4, 2)
    targets[:, 0] = True                                 # one class without negatives: skipped and counted
    summary = tagging_metrics(targets, scores).summary()
    assert summary["excluded_classes"] == 1 and summary["mAP"] == pytest.approx(
        np.mean([average_precision_score(targets[:, k], scores[:, k]) for k in range(1, 4)]), abs=1e-9)
