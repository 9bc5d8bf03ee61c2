"""score.py: evaluation through real Caffe nets fed by layers.py's data layers on tiny
generated datasets, and the command's errors (the metrics: tests/test_metrics.py).

    .venv/bin/python -m pytest tests/test_score.py -q
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import cli
import guard
import layers
import metrics
import project
import score
from datasets import random_weights  # tests/datasets.py

caffe = guard.import_caffe()
L = caffe.layers
PY = sys.executable
NARROW = (2, 2, 2, 2, 2, 4)  # net.py widths: conv blocks 1-5, fc6/fc7


# ----------------------------------------------------------------------------- nets

def scoring_spec(voc_dir, n_classes=3):
    """layers.py's VOC layer, then a 'score' computed from the label alone so the
    prediction is known: score_c = c * (0.5 x + 0.3) - c^2 / 2 is largest for the class
    c nearest 0.5 x + 0.3, so labels 0, 1, 2 are predicted 0, 1, 1 (void: n - 1)."""
    n = caffe.NetSpec()
    n.data, n.label = L.Python(module='layers', layer='VOCSegDataLayer', ntop=2,
                               param_str=json.dumps({'voc_dir': str(voc_dir), 'split': 'seg11valid'}))
    n.score = L.Convolution(n.label, num_output=n_classes, kernel_size=1)
    n.loss = L.SoftmaxWithLoss(n.score, n.label, loss_param=dict(normalize=False, ignore_label=255))
    n.silence = L.Silence(n.data, ntop=0)
    return n


def set_score_weights(net, n_classes=3):
    c = np.arange(n_classes, dtype=np.float32)
    net.params['score'][0].data[:, 0, 0, 0] = 0.5 * c
    net.params['score'][1].data[...] = 0.3 * c - c ** 2 / 2


def expected(voc_dir, ids, n_classes=3):
    """(hist, mean loss, predictions) computed with numpy from the label PNGs."""
    hist = np.zeros((n_classes, n_classes), np.int64)
    losses, preds = [], []
    c = np.arange(n_classes)
    for idx in ids:
        gt = np.array(Image.open(os.path.join(voc_dir, 'SegmentationClass', idx + '.png')))
        x = 0.5 * gt.astype(np.float64) + 0.3
        s = c[:, None, None] * x[None] - (c ** 2 / 2)[:, None, None]
        pred = s.argmax(0)
        preds.append(pred)
        hist += metrics.fast_hist(gt, pred, n_classes)
        valid = gt != 255
        logp = s - s.max(0) - np.log(np.exp(s - s.max(0)).sum(0))
        losses.append(-logp[gt[valid], np.nonzero(valid)[0], np.nonzero(valid)[1]].sum())
    return hist, float(np.mean(losses)), preds


@pytest.fixture
def voc(tmp_path):
    datasets = pytest.importorskip('datasets')
    root = tmp_path / 'data'
    ids = datasets.make_voc(root, n_classes=3)
    return root / 'pascal' / 'VOC2011', ids


def test_evaluate_with_layers_py(tmp_path, voc, capsys):
    voc_dir, ids = voc
    (tmp_path / 'val.prototxt').write_text(str(scoring_spec(voc_dir).to_proto()))
    net = caffe.Net(str(tmp_path / 'val.prototxt'), caffe.TEST)
    set_score_weights(net)
    want_hist, want_loss, preds = expected(str(voc_dir), ids)
    assert want_hist[2, 1] > 0 and want_hist[2, 2] == 0  # class 2 is always missed

    save = tmp_path / 'pred'
    ev = score.evaluate(net, ids, save_dir=str(save), progress=True)
    hist, loss = ev.hist, ev.loss
    np.testing.assert_array_equal(hist, want_hist)
    assert loss == pytest.approx(want_loss, rel=1e-4)
    assert ev.scores['per_class_iu'][2] == 0.0 and ev.scores['images'] == 3
    assert ev.scores['mean_iu'] == pytest.approx(metrics.scores(want_hist)['mean_iu'])
    for idx, pred in zip(ids, preds):
        im = Image.open(save / (idx + '.png'))
        assert im.mode == 'P'
        np.testing.assert_array_equal(np.array(im), pred)
    assert 'scoring score 3/3' in capsys.readouterr().err

    # a second run (the data layer wrapped around to the first image) into the same
    # folder: no error, same result
    ev2 = score.evaluate(net, ids, save_dir=str(save), progress=False)
    np.testing.assert_array_equal(ev2.hist, want_hist)
    assert sorted(os.listdir(save)) == sorted(i + '.png' for i in ids)


def test_evaluate_errors(tmp_path, voc):
    voc_dir, ids = voc
    (tmp_path / 'val.prototxt').write_text(str(scoring_spec(voc_dir).to_proto()))
    net = caffe.Net(str(tmp_path / 'val.prototxt'), caffe.TEST)
    with pytest.raises(ValueError, match="no blob 'score_sem'"):
        score.evaluate(net, ids, layer='score_sem')
    assert score.loss_blob(net) == 'loss'
    assert score.evaluate(net, ids[:1], loss=None, progress=False).loss is None


# ----------------------------------------------------------------------------- command

def run_score(*args):
    env = dict(os.environ, GLOG_minloglevel='2')
    env.pop('FCN_DEBUG', None)
    env.pop('FCN_DATA_ROOT', None)
    return subprocess.run([PY, os.path.join(project.REPO, 'score.py')] + [str(a) for a in args],
                          cwd='/', capture_output=True, text=True, env=env, timeout=120)


@pytest.fixture
def voc_model(tmp_path):
    """A narrow voc-fcn32s model directory with the default (relative) data layer paths,
    a tiny VOC under tmp/data, and random weights."""
    net = pytest.importorskip('net')
    datasets = pytest.importorskip('datasets')
    mdir = tmp_path / 'voc-fcn32s'
    net.write_model_dir(str(mdir), 'voc-fcn32s', widths=NARROW)
    ids = datasets.make_voc(tmp_path / 'data', n_classes=3)
    weights = random_weights(os.path.join(mdir, 'deploy.prototxt'), tmp_path / 'w.caffemodel')
    return mdir, weights, ids


def assert_one_line_error(r, *words):
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert 'Traceback' not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: '), r.stderr
    for w in words:
        assert w in lines[0], lines[0]


def test_cli_scores_voc(tmp_path, voc_model):
    mdir, weights, ids = voc_model
    out, pred = tmp_path / 'res' / 'results.json', tmp_path / 'pred'
    args = ['--model', mdir, '--weights', weights, '--data-root', tmp_path / 'data',
            '--out', out, '--save-pred', pred]
    r = run_score(*args)
    assert r.returncode == 0, r.stderr
    res = json.loads(out.read_text())
    assert res['images'] == 3 and res['dataset'] == 'voc' and res['split'] == 'seg11valid'
    assert res['weights'] == weights
    for k in ('overall_acc', 'mean_acc', 'mean_iu', 'fwavacc'):
        assert res[k] is None or 0 <= res[k] <= 1
    assert list(res['per_class_iu'])[:2] == ['background', 'aeroplane']
    assert len(res['per_class_iu']) == 21
    assert res['per_class_acc']['cat'] is None  # not in the ground truth: undefined
    assert res['tasks']['score']['mean_iu'] == res['mean_iu']
    assert 'tvmonitor' in r.stdout and 'mean IU' in r.stdout
    assert sorted(os.listdir(pred)) == sorted(i + '.png' for i in ids)
    # again, into the same prediction folder, on a split given by name, two images
    r = run_score(*(args + ['--limit', 2, '--split', 'seg11valid']))
    assert r.returncode == 0, r.stderr
    assert json.loads(out.read_text())['images'] == 2


def test_cli_siftflow_scores_both_tasks(tmp_path):
    net = pytest.importorskip('net')
    datasets = pytest.importorskip('datasets')
    mdir = tmp_path / 'siftflow-fcn32s'
    net.write_model_dir(str(mdir), 'siftflow-fcn32s', widths=NARROW)
    datasets.make_siftflow(tmp_path / 'data', ids=datasets.SIFTFLOW_IDS[:2])
    weights = random_weights(os.path.join(mdir, 'deploy.prototxt'), tmp_path / 'w.caffemodel')
    out = tmp_path / 'r.json'
    r = run_score('--model', mdir, '--weights', weights, '--data-root', tmp_path / 'data',
                  '--out', out, '--save-pred', tmp_path / 'pred', '--quiet')
    assert r.returncode == 0, r.stderr
    res = json.loads(out.read_text())
    assert sorted(res['tasks']) == ['score_geo', 'score_sem']
    assert res['layer'] == 'score_sem' and res['excluded'] == ['cow', 'desert', 'moon']
    assert res['per_class_iu']['moon'] is None
    assert list(res['tasks']['score_geo']['per_class_iu']) == ['sky', 'horizontal', 'vertical']
    assert res['tasks']['score_geo']['excluded'] == []
    assert 'excluded from the class averages: cow, desert, moon' in r.stdout
    assert len(os.listdir(tmp_path / 'pred' / 'sem')) == 2
    assert len(os.listdir(tmp_path / 'pred' / 'geo')) == 2


def test_cli_errors(tmp_path, voc_model):
    mdir, weights, ids = voc_model
    data = tmp_path / 'data'
    assert_one_line_error(run_score('--model', 'no-such-model', '--weights', weights),
                          'no-such-model', 'voc-fcn8s')
    assert_one_line_error(run_score('--model', mdir, '--weights', tmp_path / 'nope.caffemodel',
                                    '--data-root', data), 'nope.caffemodel')
    # weights of another net: shapes do not fit
    other = tmp_path / 'other'
    import net
    net.write_model_dir(str(other), 'voc-fcn32s', widths=(2, 2, 2, 2, 2, 6))
    wrong = random_weights(os.path.join(other, 'deploy.prototxt'), tmp_path / 'wrong.caffemodel')
    assert_one_line_error(run_score('--model', mdir, '--weights', wrong, '--data-root', data),
                          'wrong.caffemodel', 'fc6')
    # no dataset there / no such split list
    assert_one_line_error(run_score('--model', mdir, '--weights', weights,
                                    '--data-root', tmp_path), 'seg11valid.txt')
    assert_one_line_error(run_score('--model', mdir, '--weights', weights,
                                    '--data-root', data, '--split', 'nosuch'), 'nosuch.txt')
    assert_one_line_error(run_score('--model', mdir, '--weights', weights,
                                    '--data-root', tmp_path / 'missing'), 'missing')
    assert_one_line_error(run_score('--model', mdir, '--weights', weights,
                                    '--data-root', data, '--limit', 0), '--limit')
    # an image missing from the dataset: named, one line
    os.unlink(data / 'pascal' / 'VOC2011' / 'JPEGImages' / (ids[1] + '.jpg'))
    assert_one_line_error(run_score('--model', mdir, '--weights', weights,
                                    '--data-root', data, '--quiet'), ids[1] + '.jpg')


def test_class_info():
    pytest.importorskip('layers')
    names, exclude = score.class_info('siftflow', 'sem', 'test', 33)
    assert [names[i] for i in exclude] == ['cow', 'desert', 'moon'] and exclude == [8, 10, 15]
    assert score.class_info('siftflow', 'sem', 'trainval', 33)[1] == []
    assert score.class_info('siftflow', 'geo', 'test', 3) == (['sky', 'horizontal', 'vertical'], [])
    names, exclude = score.class_info('voc', 'label', 'seg11valid', 21)
    assert names[0] == 'background' and names[20] == 'tvmonitor' and exclude == []
    assert score.class_info('voc', 'label', None, 5)[0] == ['0', '1', '2', '3', '4']


# ----------------------------------------------------------------------------- nothing lost

def test_labels_outside_the_classes_are_refused_not_dropped(tmp_path):
    """A 3-class net on labels up to 20 (and 255 void): an error naming the image and
    the values, not the pixels of classes 3..20 dropped silently."""
    datasets = pytest.importorskip('datasets')
    ids = datasets.make_voc(tmp_path / 'data', n_classes=21)
    voc_dir = tmp_path / 'data' / 'pascal' / 'VOC2011'
    (tmp_path / 'val.prototxt').write_text(str(scoring_spec(voc_dir, 3).to_proto()))
    net = caffe.Net(str(tmp_path / 'val.prototxt'), caffe.TEST)
    with pytest.raises(ValueError, match=r'image %s, label: label values .*outside 0\.\.2 '
                                         r'and 255' % ids[0]):
        score.evaluate(net, ids, progress=False, loss=None)


def test_cli_label_beyond_the_net_names_the_file(tmp_path, voc_model):
    """A label PNG holding 30 (VOC has 21 classes) is an error naming the file."""
    mdir, weights, ids = voc_model
    png = tmp_path / 'data' / 'pascal' / 'VOC2011' / 'SegmentationClass' / (ids[1] + '.png')
    label = np.array(Image.open(png))
    label[3, 3] = 30
    layers.save_label_png(str(png), label)
    r = run_score('--model', mdir, '--weights', weights, '--data-root', tmp_path / 'data',
                  '--quiet')
    assert_one_line_error(r, str(png), '30')


def test_save_pred_into_the_dataset_is_refused(tmp_path, voc_model):
    """Predictions saved into the label folder would replace the ground truth (a
    rescore would then read mean IU 100): refused before scoring, naming both; nothing changes."""
    mdir, weights, ids = voc_model
    gt_dir = tmp_path / 'data' / 'pascal' / 'VOC2011' / 'SegmentationClass'
    before = {p: p.read_bytes() for p in gt_dir.iterdir()}
    r = run_score('--model', mdir, '--weights', weights, '--data-root', tmp_path / 'data',
                  '--save-pred', gt_dir)
    assert_one_line_error(r, str(gt_dir), str(tmp_path / 'data' / 'pascal' / 'VOC2011'))
    assert 'scoring' not in r.stdout
    assert {p: p.read_bytes() for p in gt_dir.iterdir()} == before


def test_out_checked_before_scoring(tmp_path, voc_model):
    """An --out that cannot be written is refused before scoring (the results would be
    lost). So is an --out that is the weights file."""
    mdir, weights, ids = voc_model
    (tmp_path / 'afile').write_text('x')
    base = ['--model', mdir, '--weights', weights, '--data-root', tmp_path / 'data', '--quiet']
    r = run_score(*base, '--out', tmp_path / 'afile' / 'r.json')
    assert_one_line_error(r, '--out', 'afile')
    assert 'scoring' not in r.stdout
    (tmp_path / 'res').mkdir()  # a folder, not a file
    r = run_score(*base, '--out', tmp_path / 'res')
    assert_one_line_error(r, '--out', 'folder')
    size = os.path.getsize(weights)
    r = run_score(*base, '--out', weights)
    assert_one_line_error(r, weights)
    assert 'scoring' not in r.stdout and os.path.getsize(weights) == size


def test_out_on_a_full_disk_names_the_file(tmp_path, voc_model, monkeypatch, capsys):
    """ENOSPC while writing --out (an injected writer fault) names the file and
    leaves neither a partial file nor a .part."""
    import errno
    mdir, weights, ids = voc_model
    out = tmp_path / 'res' / 'r.json'
    monkeypatch.setenv('FCN_DATA_ROOT', str(tmp_path / 'data'))

    def full(fd, data):
        raise OSError(errno.ENOSPC, 'No space left on device')
    real_jsonable = metrics.jsonable

    def jsonable(obj):  # the disk fills up once the scores are ready to be written
        monkeypatch.setattr(os, 'write', full)
        return real_jsonable(obj)
    monkeypatch.setattr(metrics, 'jsonable', jsonable)
    with pytest.raises(SystemExit) as e:
        cli.run_cli(score.main, ['--model', str(mdir), '--weights', weights, '--out', str(out),
                                    '--quiet'])
    assert e.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(out) in err[0] and 'No space left' in err[0], err
    assert os.listdir(out.parent) == []


def test_cli_context_label_list_not_utf8_names_it(tmp_path):
    """A 59_labels.txt that does not decode is named, not val.prototxt."""
    net = pytest.importorskip('net')
    datasets = pytest.importorskip('datasets')
    mdir = tmp_path / 'pascalcontext-fcn32s'
    net.write_model_dir(str(mdir), 'pascalcontext-fcn32s', widths=NARROW)
    datasets.make_pascalcontext(tmp_path / 'data', ids=datasets.CONTEXT_IDS[:1])
    bad = tmp_path / 'data' / 'pascal-context' / '59_labels.txt'
    bad.write_bytes(b'1: aeroplane\n2: \xe9bicycle\n')
    weights = random_weights(os.path.join(mdir, 'deploy.prototxt'), tmp_path / 'w.caffemodel')
    r = run_score('--model', mdir, '--weights', weights, '--data-root', tmp_path / 'data')
    assert_one_line_error(r, str(bad), 'UTF-8')
    assert 'val.prototxt' not in r.stderr


def test_cli_user_model_scores_with_its_own_class_names(tmp_path):
    """A model registered by its model.json (net.py new) is scored with its own dataset's
    class names and split, not those of the built-in dataset its data layer class reads
    (the VOC layer: 21 names, which did not fit, gave '0', '1', '2')."""
    import dataclasses
    import datasets
    import models
    import net
    data = tmp_path / 'roads'
    names = ('background', 'road', 'car')
    datasets.make_own(data, classes=names)
    voc = models.DATASETS['voc']
    dspec = models.DatasetSpec(
        'roads-score-test', 'roads', labels=(models.Labels('label', names),),
        inputs=voc.inputs, readmes=(), mean_param=True, train_split='train', score_split='val',
        splits=tuple(models.Split(s, n, 'VOCSegDataLayer', (('voc_dir', str(data)),))
                     for s, n in (('train', 3), ('val', 2))))
    folder = tmp_path / 'my-roads'
    spec = dataclasses.replace(
        models.get('voc-fcn32s'), name='my-roads-score-test', folder=str(folder), family='mine',
        dataset=dspec.name, builder='fcn', builder_args=(),
        weights=None)
    models.DATASETS[dspec.name] = dspec  # net.py builds from it; forgotten below
    try:
        net.write_model_dir(str(folder), spec, widths=NARROW)
        (folder / models.SPEC_FILE).write_text(json.dumps(models.to_dict(spec)))
    finally:
        del models.DATASETS[dspec.name]
    weights = random_weights(folder / 'deploy.prototxt', tmp_path / 'w.caffemodel')
    out = tmp_path / 'r.json'
    r = run_score('--model', folder, '--weights', weights, '--out', out, '--quiet')
    assert r.returncode == 0, r.stderr
    res = json.loads(out.read_text())
    assert list(res['per_class_iu']) == list(names)
    assert (res['dataset'], res['split'], res['images']) == (dspec.name, 'val', 2)
