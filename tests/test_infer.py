"""infer.py on generated images of every PIL mode and odd sizes, with net.py's VOC FCN-8s
at narrow widths and random weights (written into a temporary folder), run as the user
runs it: a subprocess. Error cases use a two-layer net whose output blob is `score`."""
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import infer
from datasets import random_weights  # tests/datasets.py
from common import REPO, InputError, import_caffe

H, W = 37, 53  # odd sizes on purpose

TINY_DEPLOY = """name: "tiny"
layer { name: "input" type: "Input" top: "data"
        input_param { shape { dim: 1 dim: 3 dim: 16 dim: 16 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "score" type: "Convolution" bottom: "conv1" top: "score"
        convolution_param { num_output: %d kernel_size: 1 } }
"""


def narrow_fcn8s(folder):
    """net.py's VOC FCN-8s (pad 100, skips, crops) with 4-channel conv blocks and 8-channel
    fc6/fc7, written into `folder`; returns its deploy prototxt."""
    import net
    net.write_model_dir(str(folder), 'voc-fcn8s', widths=(4, 4, 4, 4, 4, 8))
    return os.path.join(str(folder), 'deploy.prototxt')


@pytest.fixture(scope='module')
def model(tmp_path_factory):
    """(deploy prototxt, random weights, wrong-shape weights) in a temporary folder: the
    wrong ones are those of the same net with fc6/fc7 twice as wide."""
    folder = tmp_path_factory.mktemp('net')
    deploy = narrow_fcn8s(folder)
    good = random_weights(deploy, folder / 'random.caffemodel')
    wide = folder / 'wide'
    import net
    net.write_model_dir(str(wide), 'voc-fcn8s', widths=(4, 4, 4, 4, 4, 16))
    wrong = random_weights(wide / 'deploy.prototxt', folder / 'wrong.caffemodel')
    return deploy, good, wrong


def make_images(folder):
    """Images of every mode; returns {file name: displayed (width, height)}."""
    rng = np.random.RandomState(1)
    rgb = rng.randint(0, 256, (H, W, 3)).astype(np.uint8)
    sizes = {}

    def save(name, im, **kw):
        im.save(os.path.join(str(folder), name), **kw)
        sizes[name] = im.size if name != 'exif6.jpg' else im.size[::-1]

    save('rgb.jpg', Image.fromarray(rgb), quality=95)
    save('gray.png', Image.fromarray(rgb[:, :, 0]))
    save('la.png', Image.merge('LA', [Image.fromarray(rgb[:, :, c]) for c in (0, 1)]))
    save('rgba.png', Image.fromarray(np.dstack([rgb, rgb[:, :, :1]])))
    save('palette.png', Image.fromarray(rgb).convert('P'))
    i16 = Image.fromarray(rgb[:, :, 0].astype(np.uint16) * 257)
    assert i16.mode.startswith('I;16')
    save('gray16.png', i16)
    save('cmyk.jpg', Image.fromarray(rgb).convert('CMYK'))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    save('exif6.jpg', Image.fromarray(rgb), exif=exif)
    return sizes


def run_infer(*args, cwd=None):
    env = dict(os.environ, GLOG_minloglevel='2', PYTHONPATH=REPO)
    env.pop('FCN_DEBUG', None)
    return subprocess.run([sys.executable, os.path.join(REPO, 'infer.py')] + [str(a) for a in args],
                          capture_output=True, text=True, timeout=120, env=env,
                          cwd=str(cwd) if cwd else None)


def net_args(model, weights=None):
    deploy, good, _ = model
    return ['--model', 'voc-fcn8s', '--deploy', deploy, '--weights', weights or good]


def test_every_mode_and_size(model, tmp_path):
    src = tmp_path / 'images'
    src.mkdir()
    sizes = make_images(src)
    (src / 'notes.txt').write_text('not an image, and not picked up from a folder')
    out = tmp_path / 'out'
    r = run_infer(src, '--out', out, *net_args(model))
    assert r.returncode == 0, r.stderr
    assert r.stderr == ''
    for name, size in sizes.items():
        stem = os.path.splitext(name)[0]
        png = Image.open(out / (stem + '.png'))
        assert png.mode == 'P' and png.size == size, name
        assert np.asarray(png).max() < 21
        overlay = Image.open(out / (stem + '-overlay.jpg'))
        assert overlay.size == size and overlay.mode == 'RGB'
        assert stem in r.stdout
    assert '%d of %d images' % (len(sizes), len(sizes)) in r.stdout
    assert not [n for n in os.listdir(str(out)) if n.endswith('.part')]
    # class shares are printed with the class names (or 'class k')
    assert '%' in r.stdout


def test_default_out_is_fcn_out_in_cwd(model, tmp_path):
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(tmp_path / 'a.png')
    r = run_infer('a.png', *net_args(model), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / 'fcn-out' / 'a.png').is_file()
    assert (tmp_path / 'fcn-out' / 'a-overlay.jpg').is_file()


def test_max_side(model, tmp_path):
    rgb = np.random.RandomState(2).randint(0, 256, (90, 131, 3)).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / 'big.png')
    r = run_infer(tmp_path / 'big.png', '--max-side', 40, '--out', tmp_path / 'o', *net_args(model))
    assert r.returncode == 0, r.stderr
    png = Image.open(tmp_path / 'o' / 'big.png')
    assert png.size == (131, 90) and png.mode == 'P'


def test_bad_inputs_reported_and_others_done(model, tmp_path):
    good = tmp_path / 'good.jpg'
    Image.fromarray(np.full((H, W, 3), 128, np.uint8)).save(good)
    data = good.read_bytes()
    bad = {
        'missing.jpg': None,
        'text.jpg': b'this is not an image\n' * 10,
        'truncated.jpg': data[:len(data) // 2],
        'empty.png': b'',
    }
    for name, content in bad.items():
        if content is not None:
            (tmp_path / name).write_bytes(content)
    args = [tmp_path / n for n in ['missing.jpg', 'text.jpg', good, 'truncated.jpg', 'empty.png']]
    r = run_infer(*args, '--out', tmp_path / 'out', *net_args(model))
    assert r.returncode != 0
    assert 'Traceback' not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == len(bad), r.stderr
    for name in bad:
        assert sum(name in line for line in lines) == 1, (name, r.stderr)
    assert (tmp_path / 'out' / 'good.png').is_file()
    assert (tmp_path / 'out' / 'good-overlay.jpg').is_file()
    assert not (tmp_path / 'out' / 'truncated.png').exists()


def one_line_error(r, *needles):
    assert r.returncode != 0
    assert 'Traceback' not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    for needle in needles:
        assert str(needle) in lines[0], (needle, lines[0])


def test_missing_weights(model, tmp_path):
    img = tmp_path / 'a.png'
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(img)
    missing = tmp_path / 'nope.caffemodel'
    r = run_infer(img, '--out', tmp_path / 'o', *net_args(model, missing))
    one_line_error(r, missing)


def test_wrong_shape_weights(model, tmp_path):
    img = tmp_path / 'a.png'
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(img)
    r = run_infer(img, '--out', tmp_path / 'o', *net_args(model, model[2]))
    one_line_error(r, model[2], 'fc6')


def test_default_weights_missing_names_weights_py(tmp_path):
    import weights
    path = weights.weights_path('voc-fcn8s')
    if os.path.exists(path):
        pytest.skip('released weights are present')
    deploy = tmp_path / 'deploy.prototxt'
    deploy.write_text(TINY_DEPLOY % 21)
    r = run_infer(tmp_path / 'x.jpg', '--deploy', deploy)
    one_line_error(r, path, 'python weights.py voc-fcn8s')


def test_unsupported_models(tmp_path):
    for name in ('nyud-fcn32s-hha', 'nyud-fcn32s-color-hha', 'nyud-fcn16s-color-hha',
                 'nyud-fcn32s-color-d', 'bogus'):
        with pytest.raises(InputError) as e:
            infer.model_info(name)
        assert name in str(e.value) and '\n' not in str(e.value)
    r = run_infer(tmp_path / 'x.jpg', '--model', 'nyud-fcn32s-hha')
    one_line_error(r, 'nyud-fcn32s-hha', 'one RGB input')


SIFTFLOW_DEPLOY = """name: "tiny-siftflow"
layer { name: "input" type: "Input" top: "data"
        input_param { shape { dim: 1 dim: 3 dim: 16 dim: 16 } } }
layer { name: "score_geo" type: "Convolution" bottom: "data" top: "score_geo"
        convolution_param { num_output: 3 kernel_size: 1 } }
layer { name: "score_sem" type: "Convolution" bottom: "data" top: "score_sem"
        convolution_param { num_output: 33 kernel_size: 1 } }
"""


def test_siftflow_semantic_head(tmp_path):
    deploy = tmp_path / 'deploy.prototxt'
    deploy.write_text(SIFTFLOW_DEPLOY)
    weights = random_weights(deploy, tmp_path / 'w.caffemodel')
    Image.fromarray(np.random.RandomState(4).randint(0, 256, (H, W, 3)).astype(np.uint8)) \
        .save(tmp_path / 'street.png')
    r = run_infer(tmp_path / 'street.png', '--model', 'siftflow-fcn16s', '--deploy', deploy,
                  '--weights', weights, '--out', tmp_path / 'o')
    assert r.returncode == 0, r.stderr
    label = np.asarray(Image.open(tmp_path / 'o' / 'street.png'))
    assert label.shape == (H, W) and label.max() < 33
    import layers
    assert any(name in r.stdout for name in layers.SIFTFLOW_SEM_CLASSES)


def test_model_info():
    assert infer.model_info('voc-fcn8s') == ('voc', 'score')
    assert infer.model_info('siftflow-fcn8s') == ('siftflow', 'score_sem')
    assert infer.model_info('pascalcontext-fcn32s') == ('pascalcontext', 'score')
    assert infer.model_info('nyud-fcn32s-color') == ('nyud', 'score')
    mean, names = infer.dataset_info('pascalcontext')
    assert len(names) == 60 and names[0] == 'background'
    mean, names = infer.dataset_info('nyud')
    assert len(names) == 40 and np.allclose(mean, [116.190, 97.203, 92.318])


def test_segment_matches_manual_preprocessing(model):
    caffe = import_caffe()
    deploy, good, _ = model
    net = caffe.Net(deploy, good, caffe.TEST)
    rng = np.random.RandomState(3)
    image = rng.randint(0, 256, (H, W, 3)).astype(np.uint8)
    mean, _ = infer.dataset_info('voc')
    label = infer.segment(net, image, mean)
    assert label.shape == (H, W) and label.dtype == np.uint8
    # the data layers' preprocessing, written out once more
    in_ = image.astype(np.float32)[:, :, ::-1] - np.array(mean, np.float32)
    net.blobs['data'].reshape(1, 3, H, W)
    net.blobs['data'].data[...] = in_.transpose(2, 0, 1)
    net.forward()
    assert np.array_equal(label, net.blobs['score'].data[0].argmax(0))
    assert np.allclose(mean, [104.00699, 116.66877, 122.67892], atol=1e-3)


def test_load_image_modes(tmp_path):
    sizes = make_images(tmp_path)
    for name, size in sizes.items():
        a = infer.load_image(tmp_path / name)
        assert a.dtype == np.uint8 and a.shape == (size[1], size[0], 3), name
    # transparency is composited on white; 16-bit scales to 8-bit
    Image.new('RGBA', (4, 3), (10, 20, 30, 0)).save(tmp_path / 'clear.png')
    assert (infer.load_image(tmp_path / 'clear.png') == 255).all()
    Image.fromarray(np.full((3, 4), 65535, np.uint16)).save(tmp_path / 'white16.png')
    assert (infer.load_image(tmp_path / 'white16.png') == 255).all()
    with pytest.raises(InputError, match='empty'):
        (tmp_path / 'e.jpg').write_bytes(b'')
        infer.load_image(tmp_path / 'e.jpg')


def test_overlay_keeps_background():
    image = np.full((2, 2, 3), 100, np.uint8)
    label = np.array([[0, 15], [255, 1]], np.uint8)
    out = infer.overlay(image, label, background=0)
    assert (out[0, 0] == 100).all() and (out[1, 0] == 100).all()
    assert not (out[0, 1] == 100).all()
