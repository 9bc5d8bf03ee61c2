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
import models
import predict
import project
from datasets import random_weights  # tests/datasets.py
from guard import import_caffe
from project import REPO, InputError

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
    r = run_infer(tmp_path / 'x.jpg', '--deploy', deploy, '--no-download')
    one_line_error(r, path, 'python weights.py voc-fcn8s')


def released(monkeypatch, tmp_path, url, size=None):
    """Point weights.py's record for every model at a temporary one holding `url`;
    returns where the weights go (the record's folder + the URL's basename)."""
    import weights
    record = tmp_path / 'release' / 'caffemodel-url'
    record.parent.mkdir()
    record.write_text(url + '\n' + ('size: %d\n' % size if size is not None else ''))
    monkeypatch.setattr(weights, 'record_path', lambda model: str(record))
    return record.parent / url.rsplit('/', 1)[-1]


def test_released_weights_fetched_on_first_use(model, tmp_path, monkeypatch, capsys):
    """As torch.hub does, the first run fetches the weights (size
    checked) where weights.py keeps them; later runs use them; --no-download never fetches."""
    deploy, good, _ = model
    dest = released(monkeypatch, tmp_path, 'file://' + str(good), os.path.getsize(good))
    img = tmp_path / 'a.png'
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(img)
    args = [str(img), '--deploy', deploy, '--out', str(tmp_path / 'o')]
    with pytest.raises(SystemExit) as e:
        infer.run_cli(infer.main, args + ['--no-download'])
    assert e.value.code == 1 and str(dest) in capsys.readouterr().err
    assert infer.main(args) == 0
    assert dest.read_bytes() == open(good, 'rb').read()
    assert 'fetching' in capsys.readouterr().err
    assert infer.main(args + ['--no-download']) == 0  # present now: no fetch
    assert 'fetching' not in capsys.readouterr().err
    assert (tmp_path / 'o' / 'a.png').is_file()


def test_present_released_weights_cut_short_are_refused(model, tmp_path, monkeypatch, capsys):
    """A released file already in place but cut short (no size recorded) is refused with
    one line naming it: the content check of the net that is opened (open_net)."""
    deploy, good, _ = model
    dest = released(monkeypatch, tmp_path, 'file://' + str(good), None)
    data = open(good, 'rb').read()
    dest.write_bytes(data[:len(data) // 2])
    img = tmp_path / 'a.png'
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(img)
    with pytest.raises(SystemExit) as e:
        infer.run_cli(infer.main, [str(img), '--deploy', deploy, '--out', str(tmp_path / 'o')])
    assert e.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(dest) in err[0], err
    assert not (tmp_path / 'o' / 'a.png').exists()


def test_offline_names_the_url_and_the_path(model, tmp_path, monkeypatch, capsys):
    deploy = model[0]
    url = 'http://127.0.0.1:9/fcn8s-heavy-pascal.caffemodel'  # the discard port: refused
    dest = released(monkeypatch, tmp_path, url, 1000)
    with pytest.raises(SystemExit) as e:
        infer.run_cli(infer.main, [str(tmp_path / 'x.jpg'), '--deploy', deploy])
    assert e.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert url in err[-1] and str(dest) in err[-1] and 'Traceback' not in '\n'.join(err)
    assert not dest.exists()


def test_out_folder_is_the_input_folder(model, tmp_path):
    """`infer.py DIR --out DIR` never writes its label maps over the input PNGs."""
    src = tmp_path / 'photos'
    src.mkdir()
    rng = np.random.RandomState(5)
    for name in ('a.png', 'b.jpg', 'b.png'):
        Image.fromarray(rng.randint(0, 256, (H, W, 3)).astype(np.uint8)).save(src / name)
    before = {n: (src / n).read_bytes() for n in os.listdir(str(src))}
    r = run_infer(src, '--out', src, *net_args(model))
    assert r.returncode == 0, r.stderr
    for name, data in before.items():
        assert (src / name).read_bytes() == data, name
    assert '3 of 3' in r.stdout
    outputs = sorted(set(os.listdir(str(src))) - set(before))
    assert outputs == ['a-2-overlay.jpg', 'a-2.png', 'b-2-overlay.jpg', 'b-2.png',
                       'b-3-overlay.jpg', 'b-3.png'], outputs


def test_output_names_unique_against_inputs_and_outputs(model, tmp_path):
    """x/a.png, y/a.png and z/a-2.png: three results, none replacing another (the
    second a and the real a-2.png never share a name), and the summary says 3 of 3."""
    sizes = {'x': (H, W), 'y': (20, 30), 'z': (25, 17)}
    paths = []
    for folder, size in sizes.items():
        (tmp_path / folder).mkdir()
        name = 'a-2.png' if folder == 'z' else 'a.png'
        Image.fromarray(np.zeros(size + (3,), np.uint8)).save(tmp_path / folder / name)
        paths.append(tmp_path / folder / name)
    out = tmp_path / 'out'
    r = run_infer(*paths, '--out', out, *net_args(model))
    assert r.returncode == 0, r.stderr
    assert '3 of 3' in r.stdout
    got = {n: Image.open(out / n).size[::-1] for n in os.listdir(str(out)) if not n.endswith('.jpg')}
    assert got == {'a.png': sizes['x'], 'a-2.png': sizes['y'], 'a-2-2.png': sizes['z']}, got
    assert infer.output_names([str(p) for p in paths], 'o') == [
        ('o/a.png', 'o/a-overlay.jpg'), ('o/a-2.png', 'o/a-2-overlay.jpg'),
        ('o/a-2-2.png', 'o/a-2-2-overlay.jpg')]


def test_full_disk_overlay_is_an_error_not_done(model, tmp_path, monkeypatch, capsys):
    """The disk fills while the overlay JPEG is written: no truncated file under its
    final name, and the image is not reported done."""
    real = os.write

    def full_at_overlay(fd, data):
        if 'overlay' in os.path.basename(os.readlink('/proc/self/fd/%d' % fd)):
            real(fd, bytes(data[:len(data) // 2]))
            raise OSError(28, 'No space left on device')
        return real(fd, data)
    img = tmp_path / 'a.png'
    Image.fromarray(np.random.RandomState(6).randint(0, 256, (H, W, 3)).astype(np.uint8)).save(img)
    monkeypatch.setattr(os, 'write', full_at_overlay)
    code = infer.main([str(img), '--out', str(tmp_path / 'o')] + net_args(model))
    monkeypatch.setattr(os, 'write', real)
    err = capsys.readouterr().err
    assert code == 1 and 'a-overlay.jpg' in err and 'No space left' in err, err
    assert sorted(os.listdir(str(tmp_path / 'o'))) == ['a.png']  # no truncated JPEG, no .part


def test_classes_count_must_match_the_net(model, tmp_path):
    """a --classes file with another number of names than the net's classes."""
    img = tmp_path / 'a.png'
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(img)
    classes = tmp_path / 'classes.txt'
    classes.write_text('background\ncat\ndog\n')
    r = run_infer(img, '--classes', classes, '--out', tmp_path / 'o', *net_args(model))
    one_line_error(r, classes, '3 class names', '21 classes')
    r = run_infer(img, '--classes', tmp_path / 'missing.txt', '--out', tmp_path / 'o', *net_args(model))
    one_line_error(r, 'missing.txt')
    # the dataset's names against a net of another class count: the deploy is named
    deploy = tmp_path / 'deploy.prototxt'
    deploy.write_text(TINY_DEPLOY % 5)
    weights = random_weights(deploy, tmp_path / 'w.caffemodel')
    r = run_infer(img, '--deploy', deploy, '--weights', weights, '--out', tmp_path / 'o')
    one_line_error(r, deploy, '21 class names', '--classes')


def test_partial_weights_need_allow_partial(tmp_path):
    """FCN-32s weights into FCN-8s are refused (not 'background 100%' and exit 0)."""
    import net
    net.write_model_dir(str(tmp_path / '32s'), 'voc-fcn32s', widths=(4, 4, 4, 4, 4, 8))
    weights32 = random_weights(tmp_path / '32s' / 'deploy.prototxt', tmp_path / 'w32.caffemodel')
    deploy8 = narrow_fcn8s(tmp_path / '8s')
    img = tmp_path / 'a.png'
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(img)
    args = [img, '--deploy', deploy8, '--weights', weights32, '--out', tmp_path / 'o']
    r = run_infer(*args)
    one_line_error(r, weights32, 'score_pool4')
    assert run_infer(*args, '--allow-partial').returncode == 0


BIG = 4000  # a 16 Mpx photo: FCN-8s's conv1_2 im2col buffer at this size passes INT_MAX


@pytest.fixture(scope='module')
def wide_conv1(tmp_path_factory):
    """FCN-8s with 16-channel conv1 (so a 4000 x 4000 input passes Caffe's blob limit)
    and random weights."""
    import net
    folder = tmp_path_factory.mktemp('wide')
    net.write_model_dir(str(folder), 'voc-fcn8s', widths=(16, 4, 4, 4, 4, 8))
    deploy = os.path.join(str(folder), 'deploy.prototxt')
    return deploy, random_weights(deploy, folder / 'w.caffemodel')


def test_big_photo_segmented_at_the_trained_scale(wide_conv1, tmp_path):
    """A photo over ~3.7 Mpx would make Caffe abort ('blob size exceeds INT_MAX') and
    end a folder run. By default it is segmented with its long side at 500 and the
    labels come back at its own size; a --max-side too large for the net is a one-line
    error naming the side that fits, and the other images are still done."""
    deploy, weights = wide_conv1
    src = tmp_path / 'photos'
    src.mkdir()
    Image.new('RGB', (BIG, BIG), (90, 120, 200)).save(src / 'big.jpg', quality=80)
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(src / 'small.png')
    out = tmp_path / 'out'
    args = ['--model', 'voc-fcn8s', '--deploy', deploy, '--weights', weights, '--out', out]
    r = run_infer(src, *args)
    assert r.returncode == 0, r.stderr
    assert Image.open(out / 'big.png').size == (BIG, BIG)
    assert Image.open(out / 'big-overlay.jpg').size == (BIG, BIG)
    (out / 'small.png').unlink()
    r = run_infer(src, '--max-side', BIG, *args)
    assert r.returncode == 1 and 'Traceback' not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and 'big.jpg' in lines[0] and 'conv1_2' in lines[0], r.stderr
    side = int(lines[0].split('the largest that fits is --max-side ')[1].split(',')[0])
    assert 3000 < side < BIG
    assert (out / 'small.png').is_file() and '1 of 2' in r.stdout
    param = infer.read_net_param(deploy)
    assert infer.fit_error(param, deploy, 'data', (side, side)) is None
    assert isinstance(infer.fit_error(param, deploy, 'data', (side + 1, side + 1)), project.TooLargeError)


def test_image_too_small_for_the_net(tmp_path):
    """A net without FCN's padding cannot take an image smaller than its kernel: a
    one-line error for that image (no scale hint), the others done, never an abort."""
    deploy = tmp_path / 'deploy.prototxt'
    deploy.write_text((TINY_DEPLOY % 21).replace('kernel_size: 3 pad: 1', 'kernel_size: 9')
                      .replace('top: "score"', 'top: "score0"') +
                      'layer { name: "up" type: "Deconvolution" bottom: "score0" top: "score"\n'
                      '  convolution_param { num_output: 21 kernel_size: 9 bias_term: false } }\n')
    weights = random_weights(deploy, tmp_path / 'w.caffemodel')
    Image.fromarray(np.zeros((4, 5, 3), np.uint8)).save(tmp_path / 'tiny.png')
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(tmp_path / 'ok.png')
    r = run_infer(tmp_path / 'tiny.png', tmp_path / 'ok.png', '--deploy', deploy,
                  '--weights', weights, '--out', tmp_path / 'o')
    assert r.returncode == 1 and 'Traceback' not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and 'tiny.png' in lines[0] and "'conv1'" in lines[0], r.stderr
    assert '--max-side' not in lines[0]
    assert (tmp_path / 'o' / 'ok.png').is_file() and '1 of 2' in r.stdout


def test_full_res_is_tiled(model, tmp_path):
    """--full-res: the photo's own size, in overlapping windows; a window too large for
    the net is refused up front with the size that fits."""
    rgb = np.random.RandomState(7).randint(0, 256, (70, 101, 3)).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / 'p.png')
    r = run_infer(tmp_path / 'p.png', '--full-res', '--tile', 40, '--out', tmp_path / 'o',
                  *net_args(model))
    assert r.returncode == 0, r.stderr
    label = np.asarray(Image.open(tmp_path / 'o' / 'p.png'))
    caffe = import_caffe()
    deploy, good, _ = model
    net = caffe.Net(deploy, good, caffe.TEST)
    prep = models.get('voc-fcn8s').preprocess
    want = predict.sliding_logits(net, predict.preprocess(rgb, prep), 40).argmax(0)
    np.testing.assert_array_equal(label, want)


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
    names = models.get('pascalcontext-fcn8s').data.classes
    assert len(names) == 60 and names[0] == 'background'
    spec = models.get('nyud-fcn32s-color')
    assert len(spec.data.classes) == 40
    assert spec.preprocess == models.Preprocess((116.190, 97.203, 92.318), 'BGR', 1.0)


def test_segment_matches_manual_preprocessing(model):
    caffe = import_caffe()
    deploy, good, _ = model
    net = caffe.Net(deploy, good, caffe.TEST)
    rng = np.random.RandomState(3)
    image = rng.randint(0, 256, (H, W, 3)).astype(np.uint8)
    mean = models.get('voc-fcn8s').preprocess.mean
    label = predict.segment(net, image, mean)
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
