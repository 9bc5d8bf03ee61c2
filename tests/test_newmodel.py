"""newmodel.py: the dataset check and `net.py new` on tiny generated datasets.

    .venv/bin/python -m pytest tests/test_newmodel.py -q
"""
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import common
import newmodel
from datasets import OWN_CLASSES, OWN_TRAIN, OWN_VAL, make_own, read_rgb

REPO = common.REPO
PY = sys.executable


def label_values(root, ids):
    values = []
    for i in ids:
        with Image.open(os.path.join(str(root), 'SegmentationClass', i + '.png')) as im:
            values.append(np.array(im).ravel())
    return np.concatenate(values)


# ----------------------------------------------------------------------------- the check

@pytest.mark.parametrize('grayscale', [False, True])
def test_check_clean_dataset_counts_pixels_and_mean(tmp_path, grayscale):
    classes = make_own(tmp_path, grayscale=grayscale)
    report = newmodel.check_dataset(tmp_path, classes, mean=True, progress=False)
    assert report.problems == []
    assert report.classes == list(OWN_CLASSES)
    assert report.splits == {'train': list(OWN_TRAIN), 'val': list(OWN_VAL)}
    for split, ids in (('train', OWN_TRAIN), ('val', OWN_VAL)):
        counts = np.bincount(label_values(tmp_path, ids), minlength=256)
        np.testing.assert_array_equal(report.pixels[split],
                                      list(counts[:len(OWN_CLASSES)]) + [counts[255]])
    rgb = np.concatenate([read_rgb(os.path.join(str(tmp_path), 'JPEGImages', i + '.jpg'))
                          .reshape(-1, 3) for i in OWN_TRAIN])
    np.testing.assert_allclose(report.mean, rgb.mean(axis=0)[::-1], rtol=1e-9)  # B, G, R
    text = '\n'.join(report.lines())
    assert 'no problems' in text and '(void, 255)' in text and 'road' in text


def test_check_names_every_problem_by_file(tmp_path):
    classes = make_own(tmp_path)
    root = str(tmp_path)
    img = lambda i: os.path.join(root, 'JPEGImages', i + '.jpg')
    lab = lambda i: os.path.join(root, 'SegmentationClass', i + '.png')
    with open(os.path.join(root, 'ImageSets', 'Segmentation', 'train.txt'), 'a') as f:
        f.write('ghost\nroad_01\n')                                # no files; listed twice
    open(os.path.join(root, 'ImageSets', 'Segmentation', 'val.txt'), 'w').close()  # empty
    Image.fromarray(np.zeros((5, 5), np.uint8), mode='L').save(lab('orphan'))  # no image
    Image.fromarray(np.zeros((5, 5, 3), np.uint8)).save(img('spare'))  # warning only
    with open(img('road_01'), 'r+b') as f:                            # truncated JPEG
        f.truncate(40)
    Image.fromarray(np.zeros((3, 4), np.uint8), mode='L').save(lab('road_02'))   # wrong size
    h, w = np.array(Image.open(lab('road_03'))).shape
    bad = np.zeros((h, w), np.uint8)
    bad[0, 0], bad[1, 1] = 7, 255                                     # 7 >= 5 classes
    common.save_label_png(lab('road_03'), bad)
    with open(classes, 'a') as f:
        f.write('car\n')                                              # listed twice

    report = newmodel.check_dataset(root, classes, progress=False)
    problems = '\n'.join(report.problems)
    expected = [
        (img('ghost'), 'not found'), (lab('ghost'), 'not found'),
        ('train.txt', 'more than once: road_01'),
        ('val.txt', 'no image ids'),
        (lab('orphan'), 'a label without an image'),
        (img('road_01'), 'not a readable image'),
        (lab('road_02'), '4 x 3 pixels but its image'),
        (lab('road_03'), 'label values 7 beyond the 6 classes'),
        (classes, 'listed twice: car'),
    ]
    for path, what in expected:
        assert any(path in p and what in p for p in report.problems), (path, what, problems)
    assert len(report.problems) == len(expected), problems
    assert any(img('spare') in w for w in report.warnings)


def test_check_rgb_labels_and_missing_folders(tmp_path):
    classes = make_own(tmp_path)
    label = os.path.join(str(tmp_path), 'SegmentationClass', OWN_TRAIN[0] + '.png')
    with Image.open(label) as im:
        im.convert('RGB').save(label)  # a colour-coded label: the layer needs indices
    report = newmodel.check_dataset(tmp_path, classes, progress=False)
    assert [p for p in report.problems if label in p and '3 channels' in p]
    empty = tmp_path / 'empty'
    empty.mkdir()
    open(empty / 'names.txt', 'w').close()
    report = newmodel.check_dataset(empty, empty / 'names.txt', progress=False)
    for what in ('JPEGImages: folder not found', 'SegmentationClass: folder not found',
                 'train.txt: split list not found', 'val.txt: split list not found',
                 'names.txt: no class names'):
        assert any(what in p for p in report.problems), (what, report.problems)
