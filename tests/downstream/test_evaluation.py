"""The evaluation toolkit shared by ``histodrl classify`` and ``histodrl probe``: subsets,
batched predictions, scores."""

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from histodrl.data.augment import IMAGENET_MEAN, IMAGENET_STD
from histodrl.downstream.classifier import build_classifier
from histodrl.downstream.evaluation import (
    SUBSET_FILE,
    class_counts,
    classification_scores,
    eval_input,
    eval_loader,
    labelled_subset,
    markdown_table,
    predict_class_probabilities,
    predict_probabilities,
    predicted_classes,
    read_subset,
    roc_auc_ovr,
    write_subset,
)
from histodrl.errors import UserInputError

pytestmark = pytest.mark.usefixtures("one_thread")


class TinyPatches(Dataset):
    """uint8 (3, 32, 32) patches with 0/1 labels, fetched one at a time."""

    def __init__(self, n: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.x = torch.from_numpy(rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8))
        self.y = torch.from_numpy(rng.integers(0, 2, n))

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], int(self.y[i])


def test_eval_input_is_imagenet_normalised():
    x = torch.randint(0, 256, (2, 3, 4, 5), dtype=torch.uint8)
    mean = np.asarray(IMAGENET_MEAN).reshape(1, 3, 1, 1)
    std = np.asarray(IMAGENET_STD).reshape(1, 3, 1, 1)
    expected = (x.numpy() / 255.0 - mean) / std
    np.testing.assert_allclose(eval_input(x).numpy(), expected, rtol=1e-5, atol=1e-5)


def test_predictions_match_a_patch_by_patch_loop_and_leave_batchnorm_alone():
    data = TinyPatches(10)
    model = build_classifier("vgg19_bn", 0.125, 0.5, seed=0)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loader = eval_loader(data, [9, 0, 3, 4, 5, 6, 7, 8, 1, 2], batch_size=4)
    labels, probs = predict_probabilities(model, loader, torch.device("cpu"), "32-true")
    assert model.training
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    order = [9, 0, 3, 4, 5, 6, 7, 8, 1, 2]
    assert labels.tolist() == [int(data.y[i]) for i in order]
    model.eval()
    with torch.no_grad():
        for row, i in enumerate(order):
            logits = model(eval_input(data.x[i : i + 1]))[0].double()
            p1 = float(torch.exp(logits[1]) / torch.exp(logits).sum())
            assert probs[row] == pytest.approx(p1, abs=1e-5)


def test_scores_agree_with_scikit_learn():
    from sklearn.metrics import accuracy_score, roc_auc_score

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    probs = np.clip(labels * 0.3 + rng.random(200) * 0.7, 0, 1)
    scores = classification_scores(labels, probs)
    assert scores["accuracy"] == pytest.approx(accuracy_score(labels, probs > 0.5))
    assert scores["auc"] == pytest.approx(roc_auc_score(labels, probs))
    assert classification_scores(np.ones(5, dtype=int), np.full(5, 0.9))["auc"] is None


def test_subset_file_round_trips_and_bad_lines_are_named(tmp_path):
    indices = np.array([3, 17, 262_143])
    path = write_subset(tmp_path, indices)
    assert path == tmp_path / SUBSET_FILE == tmp_path / "subset_indices.txt"
    assert path.read_text() == "3\n17\n262143\n"
    assert np.array_equal(read_subset(path), indices)
    path.write_text("3\nseven\n")
    with pytest.raises(UserInputError, match="line 2"):
        read_subset(path)


def test_labelled_subset_refuses_a_fraction_outside_the_unit_interval():
    with pytest.raises(UserInputError, match="2.0"):
        labelled_subset(np.array([0, 1, 0, 1]), 2.0, seed=0)


def test_markdown_table_writes_floats_with_four_decimals_and_none_as_na():
    table = markdown_table(["a", "b", "c"], [["x", 0.5, None], [3, 1 / 3, "y"]])
    assert table.splitlines() == [
        "| a | b | c |",
        "|---|---|---|",
        "| x | 0.5000 | n/a |",
        "| 3 | 0.3333 | y |",
    ]


def _three_class_probabilities(n: int, seed: int):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    logits = rng.normal(size=(n, 3)) + 1.5 * np.eye(3)[labels]
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return labels, probs


def test_multi_class_scores_agree_with_scikit_learn():
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, recall_score, roc_auc_score

    labels, probs = _three_class_probabilities(300, seed=0)
    probs[:5] = probs[5]  # tied scores count 1/2 in the AUC
    scores = classification_scores(labels, probs)
    predicted = probs.argmax(axis=1)
    assert scores["accuracy"] == pytest.approx(accuracy_score(labels, predicted))
    assert scores["auc"] == pytest.approx(
        roc_auc_score(labels, probs, multi_class="ovr", average="macro")
    )
    assert roc_auc_ovr(labels, probs) == scores["auc"]
    assert scores["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(labels, predicted))
    np.testing.assert_allclose(
        scores["per_class_accuracy"], recall_score(labels, predicted, average=None)
    )


def test_two_columns_score_as_the_class_1_probability_and_missing_classes_have_no_auc():
    labels, probs = _three_class_probabilities(100, seed=1)
    two = np.stack([1 - probs[:, 1], probs[:, 1]], axis=1)
    binary = (labels == 1).astype(np.int64)
    assert classification_scores(binary, two) == classification_scores(binary, two[:, 1])
    # Class 2 absent from the labels: its AUC and accuracy are undefined.
    only = labels[labels < 2]
    scores = classification_scores(only, probs[labels < 2])
    assert scores["auc"] is None and scores["per_class_accuracy"][2] is None
    assert scores["balanced_accuracy"] == pytest.approx(np.mean(scores["per_class_accuracy"][:2]))
    with pytest.raises(ValueError, match="class 2 has no examples"):
        roc_auc_ovr(only, probs[labels < 2])


def test_class_probabilities_have_a_column_per_class_and_sum_to_one():
    data = TinyPatches(6)
    model = build_classifier("vgg19_bn", 0.125, 0.5, seed=0, num_classes=3)
    loader = eval_loader(data, range(6), batch_size=4)
    labels, probs = predict_class_probabilities(model, loader, torch.device("cpu"), "32-true")
    assert probs.shape == (6, 3) and labels.tolist() == data.y.tolist()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-6)
    assert predicted_classes(probs).tolist() == probs.argmax(axis=1).tolist()
    assert class_counts(np.array([2, 0, 2]), ["a", "b", "c"]) == {"a": 1, "b": 0, "c": 2}
