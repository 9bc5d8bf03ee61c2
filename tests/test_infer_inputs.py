"""infer.py against hostile inputs: more classes than a palette holds, nets whose
parameters fix the input size, images whose header claims more than the machine holds,
broken EXIF, absurd tiles, sides beyond JPEG's limit, an --out that cannot be written,
options that do not apply to a model. Small nets with random weights, run in-process
(infer.main) where the error text is checked and as a subprocess where an abort would
kill the test run."""
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import infer
import layers
import predict
from datasets import random_weights  # tests/datasets.py
from guard import import_caffe
from project import REPO, InputError

INPUT = """name: "tiny"
layer { name: "input" type: "Input" top: "data"
        input_param { shape { dim: 1 dim: 3 dim: 16 dim: 16 } } }
"""
SCORE = """layer { name: "score" type: "Convolution" bottom: "data" top: "score"
        convolution_param { num_output: %d kernel_size: 1 } }
"""


def tiny_net(folder, classes=21, extra='', name='deploy'):
    """(deploy, weights) of a 1 x 1 convolution `score` over the input (any size), plus
    the layers in `extra` on the side."""
    folder.mkdir(exist_ok=True)
    deploy = folder / (name + '.prototxt')
    deploy.write_text(INPUT + SCORE % classes + extra)
    return str(deploy), random_weights(deploy, folder / (name + '.caffemodel'))


def photo(path, size=(37, 53), seed=0):
    rgb = np.random.RandomState(seed).randint(0, 256, size + (3,)).astype(np.uint8)
    Image.fromarray(rgb).save(path)
    return path


def run_infer(*args):
    env = dict(os.environ, GLOG_minloglevel='2', PYTHONPATH=REPO)
    env.pop('FCN_DEBUG', None)
    return subprocess.run([sys.executable, os.path.join(REPO, 'infer.py')] + [str(a) for a in args],
                          capture_output=True, text=True, timeout=300, env=env)


def one_error_line(r, *needles):
    assert r.returncode == 1 and 'Traceback' not in r.stderr, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: '), r.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


# ----------------------------------------------------------------------------- classes

def test_class_299_of_300_is_written_as_299(tmp_path):
    """A net of 300 classes: the labels are a 16-bit PNG holding 299, never 299 cut to 8
    bits (43); predict.labels keeps the index too."""
    deploy, weights = tiny_net(tmp_path / 'net', classes=300)
    caffe = import_caffe()
    n = caffe.Net(deploy, weights, caffe.TEST)
    n.params['score'][1].data[...] = 0
    n.params['score'][1].data[299] = 1000.0  # class 299 wins everywhere
    n.save(weights)
    names = tmp_path / 'classes.txt'
    names.write_text(''.join('c%d\n' % k for k in range(300)))
    photo(tmp_path / 'a.png')
    out = tmp_path / 'o'
    assert infer.main([str(tmp_path / 'a.png'), '--deploy', deploy, '--weights', weights,
                       '--classes', str(names), '--out', str(out)]) == 0
    saved = Image.open(out / 'a.png')
    assert saved.mode == 'I;16' and saved.size == (53, 37)
    assert (np.asarray(saved) == 299).all()
    assert Image.open(out / 'a-overlay.jpg').size == (53, 37)
    label = predict.segment(n, np.zeros((5, 6, 3), np.uint8), (0, 0, 0))
    assert label.dtype == np.uint16 and (label == 299).all()


def test_labels_of_up_to_256_classes_stay_palette_pngs(tmp_path):
    path = tmp_path / 'l.png'
    layers.save_label_png(path, np.array([[0, 255]], np.int64), num_classes=256)
    assert Image.open(path).mode == 'P'
    layers.save_label_png(path, np.array([[0, 3]], np.int64), num_classes=257)
    assert Image.open(path).mode == 'I;16' and np.asarray(Image.open(path)).tolist() == [[0, 3]]


# ----------------------------------------------------------------------------- nets at a new size

FC = """layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc"
        inner_product_param { num_output: 2 } }
"""
SPP = """layer { name: "spp" type: "SPP" bottom: "data" top: "spp" spp_param { pyramid_height: 3 } }
"""


def test_inner_product_net_at_another_size_is_an_error_not_an_abort(tmp_path):
    """A --deploy net with an InnerProduct layer takes only its declared size: an image of
    another size is a one-line error naming the layer, never Caffe's abort; an image of
    the declared size is segmented."""
    deploy, weights = tiny_net(tmp_path / 'net', extra=FC)
    photo(tmp_path / 'other.png')
    photo(tmp_path / 'declared.png', size=(16, 16))
    r = run_infer(tmp_path / 'other.png', tmp_path / 'declared.png', '--deploy', deploy,
                  '--weights', weights, '--out', tmp_path / 'o')
    one_error_line(r, 'other.png', "'fc'", 'InnerProduct', 'declared')
    assert (tmp_path / 'o' / 'declared.png').is_file() and '1 of 2' in r.stdout


def test_layer_without_a_shape_rule_is_probed_at_the_size_used(tmp_path):
    """SPP (no shape rule here) builds at the declared size but aborts Caffe at 2 x 2: it
    is probed at each image's size, so that image is a one-line error, the others done."""
    deploy, weights = tiny_net(tmp_path / 'net', extra=SPP)
    photo(tmp_path / 'tiny.png', size=(2, 2))
    photo(tmp_path / 'ok.png')
    r = run_infer(tmp_path / 'tiny.png', tmp_path / 'ok.png', '--deploy', deploy,
                  '--weights', weights, '--out', tmp_path / 'o')
    one_error_line(r, 'tiny.png', 'Caffe cannot build this net at input data 1x3x2x2')
    assert (tmp_path / 'o' / 'ok.png').is_file() and '1 of 2' in r.stdout
