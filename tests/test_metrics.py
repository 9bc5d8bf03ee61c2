"""metrics.py against hand-computed values, without Caffe (metrics.py imports none).

    .venv/bin/python -m pytest tests/test_metrics.py -q
"""
import json
import math
import subprocess
import sys

import numpy as np
import pytest

import metrics
from project import REPO


def test_no_caffe_needed():
    code = 'import sys, metrics; assert "caffe" not in sys.modules'
    r = subprocess.run([sys.executable, '-c', code], cwd=REPO)
    assert r.returncode == 0


# 3 classes; class 2 occurs in neither the ground truth nor the prediction, and the two
# void pixels (255) are ignored whatever is predicted there.
GT = np.array([[0, 0, 0, 1], [1, 255, 255, 0]])
PRED = np.array([[0, 0, 1, 1], [0, 2, 1, 0]])
# rows = gt, cols = pred:  gt 0: pred 0 x3, pred 1 x1;  gt 1: pred 1 x1, pred 0 x1
HIST = np.array([[3, 1, 0], [1, 1, 0], [0, 0, 0]])


def test_fast_hist_hand_example():
    h = metrics.fast_hist(GT, PRED, 3)
    np.testing.assert_array_equal(h, HIST)
    assert h.dtype == np.int64
    # float labels as they come out of a Caffe blob; -1 also ignored
    h = metrics.fast_hist(np.array([0., 1., -1., 2.]), np.array([0, 1, 2, 0]), 3)
    np.testing.assert_array_equal(h, [[1, 0, 0], [0, 1, 0], [1, 0, 0]])


def test_fast_hist_errors():
    with pytest.raises(ValueError, match='outside'):
        metrics.fast_hist(np.array([0, 1]), np.array([0, 3]), 3)
    with pytest.raises(ValueError, match='3 labels but 2'):
        metrics.fast_hist(np.array([0, 1, 2]), np.array([0, 1]), 3)


def test_scores_hand_example():
    s = metrics.scores(HIST)
    assert s['pixels'] == 6
    assert s['overall_acc'] == pytest.approx(4 / 6)
    # per-class acc: 3/4, 1/2, NaN (absent)       -> mean of the two defined ones
    assert s['per_class_acc'][:2] == pytest.approx([3 / 4, 1 / 2])
    assert math.isnan(s['per_class_acc'][2])
    assert s['mean_acc'] == pytest.approx((3 / 4 + 1 / 2) / 2)
    # IU: 3 / (4 + 4 - 3) = 3/5, 1 / (2 + 2 - 1) = 1/3, NaN
    assert s['per_class_iu'][:2] == pytest.approx([3 / 5, 1 / 3])
    assert math.isnan(s['per_class_iu'][2])
    assert s['mean_iu'] == pytest.approx((3 / 5 + 1 / 3) / 2)
    # fwavacc: freq 4/6, 2/6
    assert s['fwavacc'] == pytest.approx(4 / 6 * 3 / 5 + 2 / 6 * 1 / 3)
    assert s['excluded'] == []


def test_scores_predicted_but_absent_class_counts_zero():
    hist = HIST.copy()
    hist[0, 2] = 2  # two gt-0 pixels predicted as class 2: IU(2) = 0, acc(2) undefined
    s = metrics.scores(hist)
    assert s['per_class_iu'][2] == 0.0
    assert math.isnan(s['per_class_acc'][2])
    assert s['per_class_iu'][0] == pytest.approx(3 / 7)
    assert s['mean_iu'] == pytest.approx((3 / 7 + 1 / 3 + 0) / 3)


def test_scores_exclude():
    hist = HIST.copy()
    hist[0, 2] = 2
    s = metrics.scores(hist, exclude=[2])
    assert s['excluded'] == [2]
    assert math.isnan(s['per_class_iu'][2])
    assert s['mean_iu'] == pytest.approx((3 / 7 + 1 / 3) / 2)
    assert s['overall_acc'] == pytest.approx(4 / 8)  # pixels stay in the matrix
    with pytest.raises(ValueError, match='outside'):
        metrics.scores(HIST, exclude=[3])


def test_scores_empty_no_warnings():
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        s = metrics.scores(np.zeros((3, 3)))
    assert math.isnan(s['overall_acc']) and math.isnan(s['mean_iu'])
    assert s['fwavacc'] == 0.0


def test_jsonable_writes_nan_as_null():
    text = json.dumps(metrics.jsonable(metrics.scores(HIST)), allow_nan=False)
    back = json.loads(text)
    assert back['per_class_iu'][2] is None
    assert back['mean_iu'] == pytest.approx((3 / 5 + 1 / 3) / 2)


def test_confusion_matrix_update_compute_format():
    cm = metrics.ConfusionMatrix(3, exclude=[1])
    cm.update(GT, PRED)
    cm.update(GT[:, :2], PRED[:, :2])
    np.testing.assert_array_equal(cm.hist, HIST + metrics.fast_hist(GT[:, :2], PRED[:, :2], 3))
    s = cm.compute()
    assert s['images'] == 2 and s['excluded'] == [1]
    table = cm.format(['sky', 'horizontal', 'vertical'])
    lines = table.splitlines()
    assert lines[0].split()[:3] == ['class', 'acc', 'IU']
    assert 'horizontal' in lines[2] and '(excluded)' in lines[2]
    assert lines[3].split()[1:3] == ['-', '-']  # class 2: undefined
    assert 'mean IU' in lines[-1] and '(2 images)' in lines[-1]
    with pytest.raises(ValueError, match='2 class names for 3'):
        cm.format(['a', 'b'])
    cm.reset()
    assert not cm.hist.any() and cm.images == 0


def test_confusion_matrix_refuses_labels_outside_the_classes():
    """Labels outside [0, C) are never dropped silently (fewer pixels scored, a higher
    score): 255 is void and counted as such, anything else is an error."""
    cm = metrics.ConfusionMatrix(3)
    cm.update(GT, PRED)
    assert cm.compute()['void_pixels'] == 2
    with pytest.raises(ValueError, match=r'label values 3, 7 outside 0\.\.2 and 255'):
        cm.update(np.array([0, 3, 7, 255]), np.array([0, 1, 1, 2]))
    with pytest.raises(ValueError, match='-1'):
        cm.update(np.array([-1.0, 1.0]), np.array([0, 1]))
    assert cm.images == 1  # a refused image adds nothing


def test_write_json_nan_null_atomic(tmp_path):
    path = tmp_path / 'sub' / 's.json'
    metrics.write_json(path, metrics.scores(HIST))
    assert json.loads(path.read_text())['per_class_iu'][2] is None
    assert [p.name for p in path.parent.iterdir()] == ['s.json']
