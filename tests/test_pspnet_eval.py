"""PSPNet's evaluation as its release does it (predict.py, score.py --model pspnet...,
reproduce.py), and infer.py on PSPNet models, with narrow nets on tiny generated datasets.
The protocol itself is checked against a re-derivation in test_predict.py."""
import dataclasses
import json
import os

import numpy as np
import pytest
from PIL import Image

import datasets  # tests/datasets.py
import guard
import infer
import layers
import models
import net
import predict
import project
import score
import surgery

caffe = guard.import_caffe()

ADE = 'ade20k/ADEChallengeData2016'
NARROW = (4, 4, 8, 4, 4, 8, 8, 4, 8, 4)
BLOCKS = (1, 1, 1, 1)
CROP = 41  # F = 6: bins 1, 2, 3, 6


# ----------------------------------------------------------------------------- the protocol

def conv_net(tmp_path, weights):
    """A net of one 1 x 3 convolution (3 -> K channels, pad 1 along x), any input size."""
    k = weights.shape[0]
    path = tmp_path / 'conv.prototxt'
    path.write_text('layer { name: "data" type: "Input" top: "data" input_param { shape { '
                    'dim: 1 dim: 3 dim: 8 dim: 8 } } }\n'
                    'layer { name: "score" type: "Convolution" bottom: "data" top: "score" '
                    'convolution_param { num_output: %d kernel_h: 1 kernel_w: 3 pad_h: 0 '
                    'pad_w: 1 bias_term: false } }\n' % k)
    n = caffe.Net(str(path), caffe.TEST)
    n.params['score'][0].data[...] = weights
    return n


def conv_x(x, w):
    """K x H x W: the 1 x 3 convolution (zero padded along x) of 3 x H x W `x`, float64."""
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1))).astype(np.float64)
    width = x.shape[2]
    return sum(np.einsum('kc,chw->khw', w[:, :, 0, j], padded[:, :, j:j + width])
               for j in range(3))


# ----------------------------------------------------------------------------- score.py

def narrow_pspnet(tmp_path, classes=150, seed=0):
    """(deploy prototxt, caffemodel) of a narrow PSPNet-50 with random weights: BN as
    identity statistics, the interpolation layers set by surgery.pspnet_interp."""
    deploy = tmp_path / 'deploy.prototxt'
    deploy.write_text(str(net.pspnet('deploy', depth=50, num_classes=classes, crop=CROP,
                                     stride_on='1x1_reduce', widths=NARROW, blocks=BLOCKS)))
    n = caffe.Net(str(deploy), caffe.TEST)
    rng = np.random.RandomState(seed)
    for name, layer in zip(n._layer_names, n.layers):
        blobs = n.params.get(name, [])
        if layer.type == 'BatchNorm':
            blobs[0].data[...], blobs[1].data[...], blobs[2].data[...] = 0, 1, 1
        elif layer.type in ('Convolution', 'Scale'):
            for b in blobs:
                b.data[...] = rng.normal(0, 0.5, b.data.shape)
    surgery.pspnet_interp(n)
    weights = tmp_path / 'w.caffemodel'
    n.save(str(weights))
    return str(deploy), str(weights)


def release_labels(deploy, weights, rgb, base_size, size=None, model='pspnet50-ade20k'):
    """The prediction of the registry's protocol for `model` at `base_size`."""
    spec = models.get(model)
    protocol = dataclasses.replace(spec.evaluation, base_size=base_size)
    return predict.labels(caffe.Net(deploy, weights, caffe.TEST), rgb, protocol, spec.preprocess,
                          spec.outputs[0].score, size=size)


def test_score_pspnet_release_protocol_on_ade20k(root, tmp_path, capsys):
    ids = datasets.make_ade20k(root)
    deploy, weights = narrow_pspnet(tmp_path)
    out, pred_dir = tmp_path / 'single.json', tmp_path / 'pred'
    args = ['--model', 'pspnet50-ade20k', '--weights', weights, '--deploy', deploy,
            '--base-size', '60', '--quiet']
    assert score.main(args + ['--out', str(out), '--save-pred', str(pred_dir)]) == 0
    record = json.loads(out.read_text())
    assert record['images'] == 3 and record['split'] == 'validation'
    assert record['protocol'] == dict(windows='sliding', base_size=60, crop=[CROP, CROP],
                                      scales=[1.0], flip=True, combine='probabilities')
    # every pixel of the annotations but ADE20K's 0 ("other") is scored
    counted = 0
    for idx in ids:
        png = np.array(Image.open(root / ADE / 'annotations/validation' / (idx + '.png')))
        counted += int((png > 0).sum())
        saved = Image.open(pred_dir / (idx + '.png'))
        assert saved.size == png.shape[::-1]
        assert saved.getpalette()[3:6] == list(layers.ADE20K_PALETTE[1])
        # the prediction is the argmax of the release's probabilities at the label's size
        rgb = np.array(Image.open(root / ADE / 'images/validation' / (idx + '.jpg')))
        np.testing.assert_array_equal(np.array(saved),
                                      release_labels(deploy, weights, rgb, 60, png.shape))
    assert record['pixels'] == counted
    assert 0 <= record['mean_iu'] <= 1 and len(record['per_class_iu']) == 150
    multi = tmp_path / 'multi.json'
    assert score.main(args + ['--multi-scale', '--out', str(multi)]) == 0
    record_ms = json.loads(multi.read_text())
    assert record_ms['protocol']['scales'] == [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]
    assert record_ms['overall_acc'] != record['overall_acc']
    assert 'base size 60, scales 0.5 0.75 1 1.25 1.5 1.75, flip yes' in capsys.readouterr().out


def test_score_pspnet_cityscapes_ids_with_folders(root, tmp_path):
    datasets.make_cityscapes(root)
    deploy, weights = narrow_pspnet(tmp_path, classes=19)
    pred = tmp_path / 'pred'
    assert score.main(['--model', 'pspnet101-cityscapes', '--weights', weights, '--deploy',
                       deploy, '--base-size', '50', '--quiet', '--limit', '2',
                       '--save-pred', str(pred)]) == 0
    assert sorted(p.name for p in pred.glob('*/*.png')) == [
        'frankfurt_000000_000294.png', 'frankfurt_000000_000576.png']


def test_pspnet_options_refused_for_fcn_models(tmp_path):
    w = tmp_path / 'w.caffemodel'
    w.write_bytes(b'x')
    with pytest.raises(project.InputError, match='are for models evaluated in sliding windows '
                       r'\(pspnet50-ade20k, .*voc-fcn8s is scored on whole images'):
        score.main(['--model', 'voc-fcn8s', '--weights', str(w), '--multi-scale'])
    with pytest.raises(project.InputError, match='--scales must be positive'):
        score.main(['--model', 'pspnet50-ade20k', '--weights', str(w), '--scales', '0'])


# ----------------------------------------------------------------------------- reproduce.py

def test_reproduce_pspnet_rows_are_score_py_numbers(root, tmp_path, monkeypatch):
    import reproduce
    datasets.make_ade20k(root)
    model_root = tmp_path / 'models'
    folder = model_root / 'pspnet' / 'pspnet50-ade20k'
    folder.mkdir(parents=True)
    deploy, weights = narrow_pspnet(folder)
    with open(os.path.join(project.REPO, 'pspnet/pspnet50-ade20k/val.prototxt')) as f:
        (folder / 'val.prototxt').write_text(f.read())  # the release's data layer
    stock = folder / 'pspnet50_ADE20K-stock.caffemodel'  # where surgery.py pspnet-convert puts it
    stock.write_bytes(open(weights, 'rb').read())
    spec = models.get('pspnet50-ade20k')  # narrow net, tiny images: base size 60
    monkeypatch.setitem(models.MODELS, spec.name, dataclasses.replace(
        spec, evaluation=dataclasses.replace(spec.evaluation, base_size=60)))
    out = tmp_path / 'out'
    base = ['--model-root', str(model_root), '--models', 'pspnet50-ade20k', '--out', str(out),
            '--quiet']
    assert reproduce.main(base) == 0
    rows = {r['name']: r for r in json.loads((out / 'results.json').read_text())['rows']
            if r['model'] == 'pspnet50-ade20k'}
    single, multi = rows['PSPNet50, single scale'], rows['PSPNet50, multi-scale']
    assert single['status'] == 'measured' and multi['status'] == 'multi-scale not run'
    assert single['paper']['mean_iu'] == 41.68 and single['paper']['overall_acc'] == 80.04
    scored = tmp_path / 'score.json'
    assert score.main(['--model', 'pspnet50-ade20k', '--weights', weights, '--deploy', deploy,
                       '--base-size', '60', '--quiet', '--out', str(scored)]) == 0
    by_score = json.loads(scored.read_text())
    assert single['measured']['mean_iu'] == pytest.approx(100 * by_score['mean_iu'])
    assert single['measured']['overall_acc'] == pytest.approx(100 * by_score['overall_acc'])
    assert reproduce.main(base + ['--multi-scale']) == 0
    rows = {r['name']: r for r in json.loads((out / 'results.json').read_text())['rows']}
    assert rows['PSPNet50, multi-scale']['status'] == 'measured'
    assert rows['PSPNet50, multi-scale']['paper']['mean_iu'] == 42.78
    assert rows['PSPNet101 (COCO pre-trained)']['status'] == 'not measurable locally'


def test_reproduce_pspnet_without_converted_weights_says_how(root, tmp_path, capsys):
    import reproduce
    out = tmp_path / 'out'
    assert reproduce.main(['--models', 'pspnet101-cityscapes', '--out', str(out), '--quiet']) == 0
    text = (out / 'results.md').read_text()
    assert 'pspnet101_cityscapes-stock.caffemodel' in text
    assert 'surgery.py pspnet-convert --model pspnet101-cityscapes' in text
    assert 'data/cityscapes/README.md' in text


# ----------------------------------------------------------------------------- infer.py

def test_infer_pspnet_release_protocol_palette_and_names(tmp_path, capsys):
    deploy, weights = narrow_pspnet(tmp_path)
    photo = tmp_path / 'street.jpg'
    rgb = np.random.RandomState(1).randint(0, 256, (30, 50, 3)).astype(np.uint8)
    Image.fromarray(rgb).save(photo)
    rgb = np.array(Image.open(photo))
    out = tmp_path / 'seg'
    assert infer.main([str(photo), '--model', 'pspnet50-ade20k', '--deploy', deploy,
                       '--weights', weights, '--out', str(out)]) == 0
    saved = Image.open(out / 'street.png')
    assert saved.getpalette()[:6] == [120, 120, 120, 180, 120, 120]  # wall, building
    pred = release_labels(deploy, weights, rgb, 512)
    np.testing.assert_array_equal(np.array(saved), pred)
    top = layers.ADE20K_CLASSES[int(np.bincount(pred.ravel()).argmax())]
    assert 'street.jpg (50x30) -> %s: %s ' % (out / 'street.png', top) in capsys.readouterr().out
    # the overlay blends the dataset's colours half and half (JPEG: compare class means)
    over = np.array(Image.open(out / 'street-overlay.jpg')).astype(float)
    k = int(np.bincount(pred.ravel()).argmax())
    mask = pred == k
    want = 0.5 * rgb[mask].mean(0) + 0.5 * np.array(layers.ADE20K_PALETTE[k])
    assert np.abs(over[mask].mean(0) - want).max() < 12


def test_infer_pspnet_missing_weights_and_multi_scale_for_fcn(tmp_path):
    photo = tmp_path / 'a.jpg'
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(photo)
    with pytest.raises(project.InputError, match='pspnet101_VOC2012-stock.caffemodel: '
                       'not found.*surgery.py pspnet-convert --model pspnet101-voc2012'):
        infer.main([str(photo), '--model', 'pspnet101-voc2012', '--out', str(tmp_path / 'o')])
    with pytest.raises(project.InputError, match='--multi-scale is for models evaluated at '
                       'several scales'):
        infer.main([str(photo), '--model', 'voc-fcn8s', '--multi-scale', '--no-download'])
