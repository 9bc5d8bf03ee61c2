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
import models
import net
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


# ----------------------------------------------------------------------------- images

def exif_with_text_in_a_float_tag():
    """EXIF (TIFF IFD0): orientation 6 and SMaxSampleValue (a DOUBLE tag) holding text:
    Pillow's exif_transpose fails writing it back with struct.error."""
    import struct
    entries = [(0x0112, 3, 1, struct.pack('<H', 6) + b'\0\0'), (0x0155, 2, 6, b'hello\0')]
    head = b'II*\x00' + struct.pack('<IH', 8, len(entries))
    extra_at = 8 + 2 + 12 * len(entries) + 4
    body = b''.join(struct.pack('<HHI', t, k, n) + (d if len(d) == 4 else struct.pack('<I', extra_at))
                    for t, k, n, d in entries)
    return b'Exif\x00\x00' + head + body + b'\0\0\0\0' + b'hello\0'


def test_broken_exif_is_one_line_and_the_batch_goes_on(tmp_path, capsys):
    deploy, weights = tiny_net(tmp_path / 'net')
    bad = tmp_path / 'a-bad.jpg'
    Image.new('RGB', (8, 6)).save(bad, exif=exif_with_text_in_a_float_tag())
    photo(tmp_path / 'b-good.png')
    assert infer.main([str(bad), str(tmp_path / 'b-good.png'), '--deploy', deploy,
                       '--weights', weights, '--out', str(tmp_path / 'o')]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(bad) in err[0] and 'cannot read image' in err[0], err
    assert (tmp_path / 'o' / 'b-good.png').is_file()


def png_header_only(path, width, height):
    """A PNG whose header claims width x height RGB pixels, with almost no pixel data."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data))
    path.write_bytes(b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', width, height, 8, 2, 0, 0, 0))
                     + chunk(b'IDAT', zlib.compress(b'\0' * 64)) + chunk(b'IEND', b''))
    return path


def test_image_claiming_more_than_memory_holds_is_refused_from_its_header(tmp_path, monkeypatch, capsys):
    """A 1.7 KB-class file claiming 160 Mpx: refused before anything is decoded, naming
    what segmenting it needs and what the machine has; the other images are done."""
    deploy, weights = tiny_net(tmp_path / 'net')
    bomb = png_header_only(tmp_path / 'a-claims.png', 12650, 12650)
    photo(tmp_path / 'b-good.png')
    monkeypatch.setattr(infer, 'available_memory', lambda: 2 * 10 ** 9, raising=False)
    assert infer.main([str(bomb), str(tmp_path / 'b-good.png'), '--deploy', deploy,
                       '--weights', weights, '--out', str(tmp_path / 'o')]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(bomb) in err[0], err
    assert '12650 x 12650 pixels (160 Mpx) need about 6.4 GB' in err[0], err
    assert '2.0 GB available' in err[0], err
    assert (tmp_path / 'o' / 'b-good.png').is_file()


@pytest.mark.parametrize('mpx', [100, 200])
def test_large_photos_meet_the_projects_bound_not_pils(tmp_path, monkeypatch, capsys, mpx):
    """PIL warns from 89 Mpx and refuses from 179 Mpx as 'decompression bombs' whatever the
    machine: infer.py's own bound (the memory available; here plenty) decides instead,
    with no warning printed. These files hold almost no pixels: they fail as truncated."""
    deploy, weights = tiny_net(tmp_path / 'net')
    side = int((mpx * 1e6) ** 0.5)
    path = png_header_only(tmp_path / 'big.png', side, side)
    monkeypatch.setattr(infer, 'available_memory', lambda: 10 ** 13, raising=False)
    import warnings
    with warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter('always')
        assert infer.main([str(path), '--deploy', deploy, '--weights', weights,
                           '--out', str(tmp_path / 'o')]) == 1
    assert not warned, [str(w.message) for w in warned]
    err = capsys.readouterr().err
    assert 'bomb' not in err and 'too large' not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        'error: %s: cannot read image: truncated or corrupt image' % path), err
    seen = []

    def check(h, w):
        seen.append((h, w))
        raise InputError('checked')
    with pytest.raises(InputError, match='big.png: checked'):
        infer.load_image(path, check)
    assert seen == [(side, side)]


def test_overlay_of_a_side_beyond_jpeg_is_written_as_png(tmp_path):
    """A side over JPEG's 65500 pixels: the overlay is a PNG (IMG-overlay.png), so both
    outputs are written; an ordinary image keeps its JPEG overlay."""
    deploy, weights = tiny_net(tmp_path / 'net')
    Image.new('RGB', (65501, 2), (40, 90, 200)).save(tmp_path / 'wide.png')
    photo(tmp_path / 'small.png')
    out = tmp_path / 'o'
    assert infer.main([str(tmp_path / 'wide.png'), str(tmp_path / 'small.png'), '--deploy',
                       deploy, '--weights', weights, '--out', str(out)]) == 0
    assert Image.open(out / 'wide.png').size == (65501, 2)
    over = Image.open(out / 'wide-overlay.png')
    assert over.format == 'PNG' and over.size == (65501, 2)
    assert Image.open(out / 'small-overlay.jpg').format == 'JPEG'


def test_out_checked_before_the_model_is_opened(tmp_path, monkeypatch):
    """--out that cannot be a folder (under a file) is refused before any work: the model
    (a weights download, possibly) is not opened."""
    (tmp_path / 'file').write_text('x')
    photo(tmp_path / 'a.png')

    def work(args):
        raise AssertionError('the work started before --out was checked')
    monkeypatch.setattr(infer, 'open_model', work)
    with pytest.raises(InputError, match='--out .*file/seg: cannot be created'):
        infer.main([str(tmp_path / 'a.png'), '--out', str(tmp_path / 'file' / 'seg')])


# ----------------------------------------------------------------------------- --full-res

@pytest.fixture(scope='module')
def fcn8s(tmp_path_factory):
    folder = tmp_path_factory.mktemp('fcn8s')
    net.write_model_dir(str(folder), 'voc-fcn8s', widths=(4, 4, 4, 4, 4, 8))
    deploy = os.path.join(str(folder), 'deploy.prototxt')
    return ['--deploy', deploy, '--weights', random_weights(deploy, folder / 'w.caffemodel')]


def test_tile_below_the_nets_stride_is_refused(fcn8s, tmp_path):
    photo(tmp_path / 'a.png', size=(8, 8))
    with pytest.raises(InputError, match="--tile 1: smaller than the net's coarsest stride 32"):
        infer.main([str(tmp_path / 'a.png'), '--full-res', '--tile', '1',
                    '--out', str(tmp_path / 'o')] + fcn8s)


def test_absurd_window_counts_are_refused_and_long_tilings_show_progress(tmp_path, capsys):
    """A net of stride 1 takes --tile 1, but 200 x 200 windows of 1 pixel is refused up
    front for that image; a tiling of more than WINDOW_PROGRESS windows shows progress."""
    deploy, weights = tiny_net(tmp_path / 'net')
    photo(tmp_path / 'a.png', size=(200, 200))
    assert infer.main([str(tmp_path / 'a.png'), '--full-res', '--tile', '1', '--deploy', deploy,
                       '--weights', weights, '--out', str(tmp_path / 'o')]) == 1
    err = capsys.readouterr().err
    assert '40000 windows (at most 10000): use a larger --tile' in err, err
    assert not (tmp_path / 'o' / 'a.png').exists()
    assert infer.main([str(tmp_path / 'a.png'), '--full-res', '--tile', '8', '--deploy', deploy,
                       '--weights', weights, '--out', str(tmp_path / 'o')]) == 0
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith('windows 0/1089') and lines[-1].startswith('windows 1089/1089'), lines


def test_tiled_labels_keep_a_band_not_the_whole_images_logits(tmp_path):
    """--full-res memory is K x tile x W (a band of rows), not K x H x W: the peak of
    predict.labels tiled stays far below the whole image's logits, and the labels are
    exactly those of the averaged logits (sliding_logits)."""
    import tracemalloc
    deploy, weights = tiny_net(tmp_path / 'net', classes=40)
    caffe = import_caffe()
    n = caffe.Net(deploy, weights, caffe.TEST)
    rgb = np.random.RandomState(3).randint(0, 256, (600, 300, 3)).astype(np.uint8)
    prep = models.get('voc-fcn8s').preprocess
    whole = 40 * 600 * 300 * 4
    tracemalloc.start()
    label = predict.labels(n, rgb, models.Protocol(), prep, tile=30)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < whole / 4, (peak, whole)
    np.testing.assert_array_equal(label, predict.sliding_logits(
        n, predict.preprocess(rgb, prep), 30).argmax(0))


def test_full_res_on_a_sliding_window_model_says_why_it_does_not_apply(tmp_path):
    from test_pspnet_eval import narrow_pspnet
    deploy, weights = narrow_pspnet(tmp_path)
    photo(tmp_path / 'a.png')
    for flags in (['--full-res'], ['--tile', '300'], ['--max-side', '100']):
        with pytest.raises(InputError) as e:
            infer.main([str(tmp_path / 'a.png'), '--model', 'pspnet50-ade20k', '--deploy', deploy,
                        '--weights', weights, '--out', str(tmp_path / 'o')] + flags)
        assert 'evaluated in sliding windows' in str(e.value) and flags[0] in str(e.value)
        assert 'largest' not in str(e.value)
