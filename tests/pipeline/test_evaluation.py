import numpy as np
import pytest

from appliance.pipeline.evaluation import confusion_matrix, evaluate, scores_from_confusion


def test_iou_and_dice_by_hand():
    truth = np.array([[0, 0, 1, 1], [0, 2, 2, -1]])
    prediction = np.array([[0, 1, 1, 1], [0, 2, 0, 2]])
    confusion = confusion_matrix(truth, prediction, num_classes=2)
    assert confusion.tolist() == [[2, 1, 0], [0, 2, 0], [1, 0, 1]]  # the -1 pixel is ignored
    scores = scores_from_confusion(confusion)
    assert scores.iou == pytest.approx([2 / 4, 2 / 3, 1 / 2])
    assert scores.dice == pytest.approx([4 / 6, 4 / 5, 2 / 3])
    assert scores.mean_foreground_iou == pytest.approx((2 / 3 + 1 / 2) / 2)


def test_a_class_absent_everywhere_has_no_score_and_is_left_out():
    scores = scores_from_confusion(confusion_matrix(np.array([[0, 1]]), np.array([[0, 1]]), num_classes=2))
    assert scores.iou == [1.0, 1.0, None]
    assert scores.mean_foreground_iou == 1.0


def test_set_scores_pool_pixels_over_images():
    masks = [np.ones((10, 10), np.int64), np.zeros((2, 2), np.int64)]
    predictions = iter([np.ones((10, 10), np.uint8), np.ones((2, 2), np.uint8)])
    result = evaluate(lambda image: next(predictions), [None, None], masks, num_classes=1, names=["big", "small"])
    assert result.overall.iou[1] == pytest.approx(100 / 104)
    assert result.per_image["small"].iou[1] == 0.0
    assert result.mean_foreground_iou == pytest.approx(100 / 104)
