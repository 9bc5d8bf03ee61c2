"""cluster.py: score.py / infer.py --ray on a two-node Ray cluster made on this machine with
Ray's own test utilities (ray.cluster_utils.Cluster: a head and a second node, one CPU
each, so two workers land on two nodes), against the local run on a tiny generated VOC
and a narrow FCN-32s with random weights.

    .venv/bin/python -m pytest -q tests/test_cluster.py          # about a minute
    .venv/bin/python -m pytest -q tests --deselect tests/test_cluster.py   # without them

Skipped when Ray (pip install '.[cluster]') is not installed.
"""
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

import cluster
import metrics
import net
import project
import score
import datasets  # tests/datasets.py
from datasets import make_voc, random_weights
from test_pspnet_eval import narrow_pspnet  # a narrow PSPNet-50 with random weights

ray = pytest.importorskip('ray')
cluster_utils = pytest.importorskip('ray.cluster_utils')

PY = sys.executable
NARROW = (2, 2, 2, 2, 2, 4)
IDS = ['2007_%06d' % i for i in range(8)]


@pytest.fixture(scope='module')
def two_nodes():
    """The address of a running two-node cluster (head + one more node, 1 CPU each)."""
    c = cluster_utils.Cluster(initialize_head=True, head_node_args=dict(
        num_cpus=1, include_dashboard=False))
    c.add_node(num_cpus=1)
    c.wait_for_nodes()
    try:
        yield c.address
    finally:
        if ray.is_initialized():
            ray.shutdown()
        c.shutdown()


@pytest.fixture(scope='module')
def world(tmp_path_factory):
    """(folder, model dir, weights, ids): a narrow voc-fcn32s, 8 VOC images of 3 classes."""
    tmp = tmp_path_factory.mktemp('cluster')
    mdir = tmp / 'voc-fcn32s'
    net.write_model_dir(str(mdir), 'voc-fcn32s', widths=NARROW)
    make_voc(tmp / 'data', ids=IDS, n_classes=3)
    weights = random_weights(os.path.join(mdir, 'deploy.prototxt'), tmp / 'w.caffemodel')
    return tmp, mdir, weights, IDS


def run(script, *args):
    env = dict(os.environ, GLOG_minloglevel='2')
    env.pop('FCN_DEBUG', None)
    env.pop('FCN_DATA_ROOT', None)
    return subprocess.run([PY, os.path.join(project.REPO, script)] + [str(a) for a in args],
                          cwd='/', capture_output=True, text=True, env=env, timeout=180)


def one_line_error(r, *words):
    assert r.returncode == 1, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: '), r.stderr
    for w in words:
        assert w in lines[0], lines[0]


def files(folder):
    return {name: (folder / name).read_bytes() for name in sorted(os.listdir(folder))}


def test_score_and_infer_on_two_nodes_equal_the_local_run(two_nodes, world, tmp_path):
    tmp, mdir, weights, ids = world
    base = ['--model', mdir, '--weights', weights, '--data-root', tmp / 'data', '--quiet']
    local = run('score.py', *base, '--out', tmp_path / 'local.json', '--save-pred', tmp_path / 'pl')
    assert local.returncode == 0, local.stderr
    r = run('score.py', *base, '--out', tmp_path / 'ray.json', '--save-pred', tmp_path / 'pr',
            '--ray', two_nodes, '--workers', 2)
    assert r.returncode == 0, r.stderr
    a, b = (json.loads((tmp_path / n).read_text()) for n in ('local.json', 'ray.json'))
    a.pop('date'), b.pop('date')
    assert a == b and a['images'] == len(ids) and a['loss'] is not None
    assert files(tmp_path / 'pl') == files(tmp_path / 'pr') and len(files(tmp_path / 'pl')) == 8
    assert r.stdout == local.stdout.replace(str(tmp_path / 'local.json'), str(tmp_path / 'ray.json'))

    # infer.py: a folder of photos, a bad one among them, the same files
    photos = tmp_path / 'photos'
    photos.mkdir()
    jpegs = tmp / 'data' / 'pascal' / 'VOC2011' / 'JPEGImages'
    for idx in ids[:4]:
        (photos / (idx + '.jpg')).write_bytes((jpegs / (idx + '.jpg')).read_bytes())
    (photos / 'bad.jpg').write_text('not an image')
    model = ['--model', 'voc-fcn32s', '--deploy', mdir / 'deploy.prototxt', '--weights', weights]
    local = run('infer.py', photos, *model, '--out', tmp_path / 'sl')
    r = run('infer.py', photos, *model, '--out', tmp_path / 'sr', '--ray', two_nodes)
    assert local.returncode == r.returncode == 1  # the bad photo, reported, the rest done
    assert files(tmp_path / 'sl') == files(tmp_path / 'sr') and len(files(tmp_path / 'sl')) == 8
    error = 'error: %s: not an image' % (photos / 'bad.jpg')
    assert error in local.stderr and error in r.stderr
    assert sorted(r.stdout.replace('/sr', '/sl').splitlines()) == sorted(local.stdout.splitlines())


def test_cluster_errors_are_one_line(two_nodes, world):
    tmp, mdir, weights, ids = world
    base = ['--model', mdir, '--weights', weights, '--data-root', tmp / 'data', '--quiet']
    one_line_error(run('score.py', *base, '--ray', two_nodes, '--workers', 3),
                   '--workers 3', 'the cluster has 2 CPUs')
    one_line_error(run('score.py', *base, '--ray', '127.0.0.1:9'), '--ray 127.0.0.1:9',
                   'ray start --head')


def test_without_ray_the_flag_says_how_to_install_it(world, tmp_path):
    """Ray missing (a `ray` package that fails to import, first on the path): --ray is a
    one-line error naming the extra; without --ray nothing changes."""
    tmp, mdir, weights, ids = world
    fake = tmp_path / 'noray' / 'ray'
    fake.mkdir(parents=True)
    (fake / '__init__.py').write_text('raise ImportError("No module named ray")\n')
    env = dict(os.environ, GLOG_minloglevel='2', PYTHONPATH=str(tmp_path / 'noray'))
    base = [PY, os.path.join(project.REPO, 'score.py'), '--model', str(mdir), '--weights',
            str(weights), '--data-root', str(tmp / 'data'), '--quiet']
    r = subprocess.run(base + ['--ray'], capture_output=True, text=True, env=env, timeout=120)
    one_line_error(r, "pip install '.[cluster]'")
    r = subprocess.run(base, capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr


# ----------------------------------------------------------------------------- faults

class Opts:
    """What cli.ray_flags gives, for the pool made in this process."""
    def __init__(self, address, workers=2):
        self.ray, self.workers, self.threads_per_worker, self.gpus_per_worker = (
            address, workers, 1, 0)
        self.data_root = None


def val_job(mdir, weights, root, outputs):
    val = os.path.join(mdir, 'val.prototxt')
    return cluster.Job(score.open_val_net, (val, weights, None, root), score.scores_at,
                       (outputs,), {'data root': root, 'weights': weights, 'val net': val}, root)


def test_a_killed_worker_has_its_images_redone(two_nodes, world, monkeypatch):
    """A worker's process is killed once the pool runs: the images it held are scored by
    the others (and its replacement); every image comes back once; the scores are the
    local run's to the last bit."""
    tmp, mdir, weights, ids = world
    root = str(tmp / 'data')
    monkeypatch.setenv('FCN_DATA_ROOT', root)
    val = os.path.join(mdir, 'val.prototxt')
    caffe_net, _, split, _ = score.open_val_net(val, weights, None, root)
    outputs, _ = score.scored_outputs(caffe_net, 'voc', split, val)
    want = score.evaluate_outputs(caffe_net, ids, outputs, progress=False)

    ray.init(address=two_nodes, log_to_driver=False)
    positions, results = [], {}
    with cluster.Pool(Opts(two_nodes), val_job(mdir, weights, root, outputs)) as pool:
        assert len({where for where, _ in pool.pids.values()}) == 2  # one worker per node
        victim = sorted(pool.pids)[1]
        os.kill(pool.pids[victim][1], signal.SIGKILL)
        for position, result in pool.imap(list(enumerate(ids))):
            positions.append(position)
            results[position] = result
        assert pool.redone >= 1 and victim not in pool.actors
    assert sorted(positions) == list(range(len(ids)))  # each image once
    got = score.evaluate_outputs(caffe_net, ids, outputs, False, (results[i] for i in range(len(ids))))
    for w, g in zip(want, got):
        np.testing.assert_array_equal(w.hist, g.hist)
        assert w.loss == g.loss and metrics.jsonable(w.scores) == metrics.jsonable(g.scores)


def test_a_worker_that_cannot_see_the_data_root_names_its_node_and_the_path(two_nodes, world):
    """Every worker checks the data root, weights and prototxt before it opens the net: one
    that does not see them is a one-line error naming its node and the path, not a hang.
    (Both nodes share this machine's disk, so the path is missing for both.)"""
    tmp, mdir, weights, ids = world
    if not ray.is_initialized():
        ray.init(address=two_nodes, log_to_driver=False)
    gone = str(tmp / 'not-on-this-node')
    job = val_job(mdir, weights, gone, [score.ScoredOutput()])
    with pytest.raises(project.InputError) as e:
        with cluster.Pool(Opts(two_nodes), job):
            pass
    message = str(e.value)
    assert '\n' not in message and gone in message and 'data root' in message
    assert '(node ' in message and 'same paths' in message


# ----------------------------------------------------------------------------- the other paths

def test_reproduce_two_outputs_and_sliding_windows_equal_the_local_run(two_nodes, world, tmp_path,
                                                                    monkeypatch):
    """reproduce.py --ray on SIFT Flow (two outputs, two losses) and score.py --ray on a
    sliding-window model (a narrow PSPNet, the release's protocol) give the local numbers."""
    tmp = world[0]
    sift = tmp / 'models' / 'siftflow-fcn' / 'fcn16s'
    if not sift.exists():
        net.write_model_dir(str(sift), 'siftflow-fcn16s', widths=NARROW)
        datasets.make_siftflow(tmp / 'data')
    weights = random_weights(sift / 'deploy.prototxt', tmp_path / 'sift.caffemodel', seed=2)
    base = ['--model-root', tmp / 'models', '--data-root', tmp / 'data', '--models',
            'siftflow-fcn16s', '--weights', 'siftflow-fcn16s=%s' % weights, '--quiet']
    assert run('reproduce.py', *base, '--out', tmp_path / 'local').returncode == 0
    r = run('reproduce.py', *base, '--out', tmp_path / 'ray', '--ray', two_nodes)
    assert r.returncode == 0, r.stderr
    a, b = (json.loads((tmp_path / d / 'results.json').read_text())['models']['siftflow-fcn16s']
            for d in ('local', 'ray'))
    assert a['tasks'] == b['tasks'] and sorted(a['tasks']) == ['score_geo', 'score_sem']
    assert a['tasks']['score_geo']['loss'] is not None and b['ms_per_image'] is None

    root = tmp_path / 'psp'
    datasets.make_ade20k(root)
    deploy, psp_weights = narrow_pspnet(tmp_path)
    args = ['--model', 'pspnet50-ade20k', '--weights', psp_weights, '--deploy', deploy,
            '--base-size', '60', '--data-root', root, '--quiet']
    assert run('score.py', *args, '--out', tmp_path / 'pl.json', '--save-pred',
               tmp_path / 'ppl').returncode == 0
    r = run('score.py', *args, '--out', tmp_path / 'pr.json', '--save-pred', tmp_path / 'ppr',
            '--ray', two_nodes)
    assert r.returncode == 0, r.stderr
    a, b = (json.loads((tmp_path / n).read_text()) for n in ('pl.json', 'pr.json'))
    a.pop('date'), b.pop('date')
    assert a == b and a['images'] == 3
    assert files(tmp_path / 'ppl') == files(tmp_path / 'ppr')
