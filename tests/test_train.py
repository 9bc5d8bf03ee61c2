"""The solving loop (train.py) on narrow nets and tiny datasets in the real formats:
it lowers the loss, writes log / plot / snapshots atomically, resumes exactly, stops on
NaN and on SIGTERM, and drives every dataset's nets."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import datasets
import models
import net
import netload
import project
import snapshots
import train

WIDTHS = (4, 4, 8, 8, 8, 16)
VOC_TRAIN = ['t%02d' % i for i in range(4)]
VOC_VAL = ['v%02d' % i for i in range(3)]


def voc_model(tmp_path, base_lr=1e-5, momentum=0.9, head='8s'):
    """A narrow VOC FCN model dir whose data layers read a tiny VOC tree under tmp_path."""
    root = tmp_path / 'data'
    datasets.make_voc(str(root), VOC_TRAIN, split='train', n_classes=4)
    datasets.make_voc(str(root), VOC_VAL, split='seg11valid', n_classes=4, seed=1)
    voc_dir = str(root / 'pascal' / 'VOC2011')
    data = {'train': ('VOCSegDataLayer', {'voc_dir': voc_dir, 'split': 'train', 'seed': 1337}),
            'val': ('VOCSegDataLayer', {'voc_dir': voc_dir, 'split': 'seg11valid'})}
    model = tmp_path / 'voc-narrow'
    net.write_model_dir(str(model), 'voc-fcn%s' % head, widths=WIDTHS, data=data,
                        solver={'test_iter': len(VOC_VAL), 'base_lr': base_lr, 'momentum': momentum})
    return str(model)


def run(model, out, spec=None, **config):
    """train.solve with typed arguments: spec the registry's ModelSpec saying how the model
    starts (None: the nets' fillers), config RunConfig's fields (rounds, iters, ...)."""
    return train.solve(train.Model(model, spec), train.RunConfig(out=str(out), **config))


def read_params(model_dir, caffemodel):
    n = netload.open_net(os.path.join(model_dir, 'deploy.prototxt'), 'test', caffemodel)
    return {k: [b.data.copy() for b in v] for k, v in n.params.items()}


def test_short_solve_lowers_loss_and_writes_log_plot_snapshot(tmp_path):
    model = voc_model(tmp_path)
    out = str(tmp_path / 'out')
    records = run(model, out, rounds=3, iters=4)
    assert [r['iter'] for r in records] == [4, 8, 12]
    assert records[-1]['train_loss'] < records[0]['train_loss']
    for r in records:
        s = r['scores']['seg']
        assert 0 <= s['overall_acc'] <= 1 and np.isfinite(s['loss'])
    # machine-readable log, plot and complete snapshots; nothing half-written left behind
    with open(os.path.join(out, 'log.jsonl')) as f:
        assert [json.loads(line)['iter'] for line in f] == [4, 8, 12]
    with open(os.path.join(out, 'log.png'), 'rb') as f:
        assert f.read(8) == b'\x89PNG\r\n\x1a\n'
    for it in (4, 8, 12):
        assert os.path.isfile(os.path.join(out, 'train_iter_%d.caffemodel' % it))
        assert os.path.isfile(os.path.join(out, 'train_iter_%d.solverstate' % it))
    assert not [f for f in os.listdir(out) if f.endswith('.part')]
    assert os.listdir(os.path.join(out, '.staging')) == []
    # the bilinear surgery was applied to every Deconvolution layer (fixed, lr_mult 0)
    import surgery
    p = read_params(model, os.path.join(out, 'train_iter_12.caffemodel'))
    np.testing.assert_allclose(p['upscore8'][0][1, 1], surgery.upsample_filt(16), rtol=1e-6)
    assert np.all(p['upscore8'][0][0, 1] == 0)


def test_resume_continues_exactly_where_it_stopped(tmp_path):
    model = voc_model(tmp_path)
    straight, split = str(tmp_path / 'straight'), str(tmp_path / 'split')
    run(model, straight, rounds=2, iters=3)
    run(model, split, rounds=1, iters=3)
    records = run(model, split, rounds=2, iters=3)
    assert [r['iter'] for r in records] == [3, 6]
    a = read_params(model, os.path.join(straight, 'train_iter_6.caffemodel'))
    b = read_params(model, os.path.join(split, 'train_iter_6.caffemodel'))
    # same images in the same order, same momentum history: the same weights
    for k in a:
        for x, y in zip(a[k], b[k]):
            np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7)
    assert snapshots.snapshot_iters(split) == [3, 6]


def test_nan_loss_stops_with_a_message(tmp_path):
    """Weights holding a NaN (as after a blow-up) make the loss NaN at the first step."""
    model = voc_model(tmp_path)
    n = netload.open_net(os.path.join(model, 'deploy.prototxt'), 'test')
    n.params['score_fr'][1].data[...] = np.nan
    bad = str(tmp_path / 'nan.caffemodel')
    n.save(bad)
    with pytest.raises(project.InputError, match=r'loss became nan at iteration 1: training diverged'):
        run(model, tmp_path / 'out', rounds=1, iters=30, weights=bad)


def test_missing_parent_weights_name_the_file_and_the_command(tmp_path, monkeypatch):
    model = voc_model(tmp_path)
    with pytest.raises(project.InputError, match=r'vgg16-fcn\.caffemodel.*weights\.py vgg16'):
        run(model, tmp_path / 'o', models.get('voc-fcn32s'), rounds=1, iters=1)
    with pytest.raises(project.InputError, match='nope.caffemodel: weights file not found'):
        run(model, tmp_path / 'o', rounds=1, iters=1, weights=str(tmp_path / 'nope.caffemodel'))


def test_sigterm_snapshots_and_exits_cleanly_then_resumes(tmp_path):
    model = voc_model(tmp_path)
    solve_py = os.path.join(model, 'solve.py')
    with open(solve_py, 'w') as f:
        f.write('import sys\nsys.path.insert(0, %r)\nimport train\n'
                'train.main(__file__)\n' % project.REPO)
    out = str(tmp_path / 'out')
    env = dict(os.environ, GLOG_minloglevel='2')
    proc = subprocess.Popen([sys.executable, solve_py, '--rounds', '1', '--iters', '100000',
                             '--out', out], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    deadline = time.time() + 120
    for line in proc.stdout:  # wait until it is training
        if line.startswith('iter ') or time.time() > deadline:
            break
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert 'Traceback' not in err and 'snapshot' in err
    it = snapshots.snapshot_iters(out)[-1]
    records = run(model, out, rounds=1, iters=it + 2)
    assert records[-1]['iter'] == it + 2


# --- every dataset's nets through the same loop (narrow, a few iterations) ---------------

def _solve_dataset(tmp_path, model_name, make, data, widths=WIDTHS):
    root = tmp_path / 'data'
    make(str(root))
    model = tmp_path / model_name
    net.write_model_dir(str(model), model_name, widths=widths, data=data,
                        solver={'test_iter': 2, 'base_lr': 1e-6, 'momentum': 0.9})
    return run(str(model), tmp_path / 'out', rounds=1, iters=2, score_limit=2, data_root=str(root))


@pytest.mark.parametrize('model_name,second', [('nyud-fcn32s-color-d', 'depth'),
                                               ('nyud-fcn32s-color-hha', 'hha')])
def test_nyud_two_stream_solves(tmp_path, model_name, second):
    def make(root):
        datasets.make_nyud(root, split='trainval')
        datasets.make_nyud(root, split='test')
    data = {s: ('NYUDSegDataLayer', {'nyud_dir': 'nyud', 'split': sp,
                                     'tops': ['color', second, 'label']})
            for s, sp in (('train', 'trainval'), ('val', 'test'))}
    rec = _solve_dataset(tmp_path, model_name, make, data)
    assert rec[-1]['scores']['seg']['pixels'] > 0
    assert np.isfinite(rec[-1]['train_loss'])


def test_siftflow_solves_and_scores_both_tasks(tmp_path):
    def make(root):
        datasets.make_siftflow(root, split='trainval')
        datasets.make_siftflow(root, split='test')
    data = {s: ('SIFTFlowSegDataLayer', {'siftflow_dir': 'sift-flow', 'split': sp})
            for s, sp in (('train', 'trainval'), ('val', 'test'))}
    rec = _solve_dataset(tmp_path, 'siftflow-fcn16s', make, data)
    scores = rec[-1]['scores']
    assert set(scores) == {'sem', 'geo'}
    import layers
    absent = sorted(layers.SIFTFLOW_SEM_CLASSES.index(c) for c in ('cow', 'desert', 'moon'))
    assert sorted(scores['sem']['excluded']) == absent


def test_pascalcontext_solves(tmp_path):
    def make(root):
        datasets.make_pascalcontext(root, split='train')
        datasets.make_pascalcontext(root, split='val')
    data = {s: ('PASCALContextSegDataLayer', {'voc_dir': 'pascal/VOC2010', 'context_dir': 'pascal-context',
                                              'split': s}) for s in ('train', 'val')}
    rec = _solve_dataset(tmp_path, 'pascalcontext-fcn32s', make, data)
    assert len(rec[-1]['scores']['seg']['per_class_iu']) == 60


def test_every_model_dir_has_a_solve_py_that_answers_help():
    for model in models.BUILTIN:
        path = os.path.join(models.model_dir(model), 'solve.py')
        out = subprocess.run([sys.executable, path, '--help'], capture_output=True, text=True,
                             env=dict(os.environ, GLOG_minloglevel='2'), cwd='/')
        assert out.returncode == 0, (model, out.stderr)
        assert '--gpu' in out.stdout and '--rounds' in out.stdout
