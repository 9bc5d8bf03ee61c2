"""The solving loop keeps its promises under hostile use: snapshots are trusted
only when complete and of this net and solver, one run per folder, exact resume with
Dropout, nothing lost on a signal, a bad file, a full disk or a NaN, and never a Caffe
abort. Runs go through a model folder's solve.py in a subprocess wherever Caffe could
abort or a signal is sent; faults are injected in the subprocess (free space, fsync)."""
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import datasets
import demo
import net
import netload
import project
import snapshots
from test_train import VOC_TRAIN, read_params, voc_model

ENV = dict(os.environ, GLOG_minloglevel='2')
# Runs solve.py with a fault injected first: argv = fault, solve.py, its flags.
WRAPPER = '''import errno, os, runpy, shutil, sys
sys.path.insert(0, %r)
fault, solve_py = sys.argv[1], sys.argv[2]
if fault == 'tiny-disk':  # 1 MB free wherever asked
    real = shutil.disk_usage
    shutil.disk_usage = lambda p: real(p)._replace(free=2 ** 20)
elif fault == 'enospc':  # every fsync: the disk is full
    def fsync(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    os.fsync = fsync
sys.argv = [solve_py] + sys.argv[3:]
runpy.run_path(solve_py, run_name='__main__')
''' % project.REPO


def solve_py(model):
    path = os.path.join(model, 'solve.py')
    with open(path, 'w') as f:
        f.write('import sys\nsys.path.insert(0, %r)\nimport train\ntrain.main(__file__)\n'
                % project.REPO)
    return path


def cli(model, *args, fault='none', **popen):
    """Run MODEL/solve.py with `args` in a subprocess (Popen when popen is given)."""
    wrapper = os.path.join(model, 'wrapper.py')
    with open(wrapper, 'w') as f:
        f.write(WRAPPER)
    cmd = [sys.executable, wrapper, fault, solve_py(model)] + [str(a) for a in args]
    if popen:
        return subprocess.Popen(cmd, env=ENV, text=True, **popen)
    return subprocess.run(cmd, env=ENV, text=True, capture_output=True, timeout=300)


def ok(proc):
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def clean_error(proc, *words):
    """Exit 1, no traceback, no abort, one error line holding each of `words`."""
    err = proc.stderr
    assert proc.returncode == 1, (proc.returncode, proc.stdout, err)
    assert 'Traceback' not in err and 'Check failed' not in err and 'double free' not in err, err
    lines = [line for line in err.splitlines() if line.startswith('error: ')]
    assert len(lines) == 1, err
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


def until(proc, text, deadline=120):
    """Read the process's stdout until a line starts with `text`."""
    end = time.time() + deadline
    for line in proc.stdout:
        if line.startswith(text) or time.time() > end:
            return line


@pytest.fixture
def model(tmp_path):
    return voc_model(tmp_path)


# --- only complete snapshots that parse are trusted -------------------------

@pytest.mark.parametrize('ext,keep', [('caffemodel', 0), ('caffemodel', 0.5), ('solverstate', 0.5)])
def test_damaged_latest_snapshot_falls_back_to_the_previous_good_one(model, tmp_path, ext, keep):
    out = tmp_path / 'out'
    ok(cli(model, '--rounds', 2, '--iters', 2, '--out', out))
    path = out / ('train_iter_4.' + ext)
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])
    proc = ok(cli(model, '--rounds', 3, '--iters', 2, '--out', out))
    assert 'snapshot train_iter_4 is not usable' in proc.stdout
    assert 'resuming from %s' % (out / 'train_iter_2.solverstate') in proc.stdout
    assert [r['iter'] for r in snapshots.read_log(str(out))] == [2, 4, 6]


# --- --no-resume starts over for good --------------------------------------------

def test_no_resume_removes_the_old_runs_snapshots(model, tmp_path):
    out = tmp_path / 'out'
    ok(cli(model, '--rounds', 2, '--iters', 2, '--out', out))
    ok(cli(model, '--rounds', 1, '--iters', 2, '--out', out, '--no-resume'))
    assert snapshots.snapshot_iters(str(out)) == [2]
    proc = ok(cli(model, '--rounds', 2, '--iters', 2, '--out', out))
    assert 'resuming from %s' % (out / 'train_iter_2.solverstate') in proc.stdout


# --- signals while scoring lose nothing ------------------------------------------

def test_two_interrupts_while_scoring_keep_the_rounds_log_record(tmp_path):
    root = tmp_path / 'data'
    val = ['v%03d' % i for i in range(60)]
    datasets.make_voc(str(root), VOC_TRAIN, split='train', n_classes=4)
    datasets.make_voc(str(root), val, size=(150, 200), split='seg11valid', n_classes=4, seed=1)
    voc_dir = str(root / 'pascal' / 'VOC2011')
    model = str(tmp_path / 'voc-narrow')
    net.write_model_dir(model, 'voc-fcn8s', widths=(4, 4, 8, 8, 8, 16), solver={'test_iter': len(val)},
                        data={'train': ('VOCSegDataLayer', {'voc_dir': voc_dir, 'split': 'train'}),
                              'val': ('VOCSegDataLayer', {'voc_dir': voc_dir, 'split': 'seg11valid'})})
    out = tmp_path / 'out'
    proc = cli(model, '--rounds', 1, '--iters', 2, '--out', out, stdout=subprocess.PIPE,
               stderr=subprocess.STDOUT)
    end = time.time() + 120
    while not (out / 'train_iter_2.json').exists() and time.time() < end:
        time.sleep(0.05)  # the manifest is written last before scoring starts
    proc.send_signal(signal.SIGINT)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    text, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130 and 'Traceback' not in text, text
    assert snapshots.read_log(str(out)) == []  # stopped while scoring: no record yet
    resumed = ok(cli(model, '--rounds', 1, '--iters', 2, '--out', out))
    assert 'scoring round 2' in resumed.stdout
    records = snapshots.read_log(str(out))
    assert [r['iter'] for r in records] == [2] and records[0]['scores']['seg']['images'] == 60


# --- a NaN loss stops cleanly, never `double free` --------------------------------

def test_diverging_run_stops_with_the_message_and_no_abort(tmp_path):
    voc_dir = str(tmp_path / 'VOCdemo')
    demo.make_dataset(voc_dir, 6, 2, seed=0)
    model = str(tmp_path / 'model')
    demo.write_model(model, voc_dir, 2, seed=0, base_lr=100.0)  # Adam at lr 100 diverges
    proc = cli(model, '--rounds', 1, '--iters', 40, '--out', tmp_path / 'out')
    clean_error(proc, 'loss became nan', 'training diverged')


# --- a full disk is a clean error naming the folder, the last snapshot kept --

def test_too_little_space_for_a_snapshot_keeps_the_previous_one(model, tmp_path):
    out = tmp_path / 'out'
    ok(cli(model, '--rounds', 1, '--iters', 2, '--out', out))
    proc = cli(model, '--rounds', 2, '--iters', 2, '--out', out, fault='tiny-disk')
    clean_error(proc, str(out), 'not enough free space', 'train_iter_4')
    assert snapshots.snapshot_iters(str(out)) == [2]
    assert os.listdir(out / '.staging') == []
    ok(cli(model, '--rounds', 2, '--iters', 2, '--out', out))
    assert [r['iter'] for r in snapshots.read_log(str(out))] == [2, 4]


def test_enospc_while_writing_names_the_file(model, tmp_path):
    out = tmp_path / 'out'
    proc = cli(model, '--rounds', 1, '--iters', 2, '--out', out, fault='enospc')
    clean_error(proc, str(out), 'No space left on device')


# --- a moved or copied folder resumes from its own files ------------------------

def test_moved_and_copied_snapshot_folders_resume_from_their_own_files(model, tmp_path):
    a, moved, copied, straight = (tmp_path / n for n in ('a', 'moved', 'copied', 'straight'))
    ok(cli(model, '--rounds', 1, '--iters', 2, '--out', a))
    shutil.copytree(a, copied)
    os.rename(a, moved)
    ok(cli(model, '--rounds', 2, '--iters', 2, '--out', moved))
    # the original folder's weights replaced by others: the copy must not read them
    os.makedirs(a)
    datasets.random_weights(os.path.join(model, 'deploy.prototxt'), a / 'train_iter_2.caffemodel')
    ok(cli(model, '--rounds', 2, '--iters', 2, '--out', copied))
    ok(cli(model, '--rounds', 2, '--iters', 2, '--out', straight))
    want = read_params(model, str(straight / 'train_iter_4.caffemodel'))
    for folder in (moved, copied):
        got = read_params(model, str(folder / 'train_iter_4.caffemodel'))
        for k in want:
            for x, y in zip(want[k], got[k]):
                np.testing.assert_array_equal(x, y)


# --- a snapshot of another solver type or net is an error, not an abort ----------

@pytest.mark.parametrize('change', ['solver', 'net'])
def test_resume_after_the_solver_or_net_changed_is_a_clean_error(model, tmp_path, change):
    out = tmp_path / 'out'
    ok(cli(model, '--rounds', 1, '--iters', 2, '--out', out))
    if change == 'solver':
        with open(os.path.join(model, 'solver.prototxt'), 'a') as f:
            f.write('type: "Adam"\n')
    else:  # the same folder rewritten as FCN-32s: other parameter layers
        assert voc_model(tmp_path, head='32s') == model
    proc = cli(model, '--rounds', 2, '--iters', 2, '--out', out)
    clean_error(proc, 'train_iter_2', '--no-resume')


# --- an interrupted and resumed run equals an uninterrupted one ------------

def test_interrupted_run_with_dropout_resumes_bit_for_bit(model, tmp_path):
    with open(os.path.join(model, 'train.prototxt')) as f:
        assert 'Dropout' in f.read()
    # small random weights: from the nets' zero start Dropout would only ever drop zeros
    n = netload.open_net(os.path.join(model, 'deploy.prototxt'), 'test')
    rng = np.random.RandomState(0)
    for blobs in n.params.values():
        for b in blobs:
            b.data[...] = rng.normal(0, 0.05, b.data.shape)
    start = str(tmp_path / 'start.caffemodel')
    n.save(start)
    split, straight = tmp_path / 'split', tmp_path / 'straight'
    proc = cli(model, '--rounds', 1, '--iters', 100000, '--out', split, '--weights', start,
               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    until(proc, 'iter ')
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    k = snapshots.snapshot_iters(str(split))[-1]
    total = k + 3  # the round goes on past the interruption
    ok(cli(model, '--rounds', 1, '--iters', total, '--out', split))
    ok(cli(model, '--rounds', 1, '--iters', total, '--out', straight, '--weights', start))
    a = read_params(model, str(straight / ('train_iter_%d.caffemodel' % total)))
    b = read_params(model, str(split / ('train_iter_%d.caffemodel' % total)))
    for name in a:
        for x, y in zip(a[name], b[name]):
            np.testing.assert_array_equal(x, y, err_msg=name)
    ra, rb = snapshots.read_log(str(straight)), snapshots.read_log(str(split))
    assert [r['iter'] for r in rb] == [total]
    assert ra[0]['train_loss'] == rb[0]['train_loss']


# --- a bad training file met mid-round: the round so far is snapshotted ---------

def test_bad_training_file_mid_round_snapshots_before_stopping(tmp_path):
    model = voc_model(tmp_path)
    ids = VOC_TRAIN
    rng = random.Random(1337)  # the data layer's draws: iteration i reads draws[i - 1]
    draws = [rng.randrange(len(ids)) for _ in range(40)]
    k = next(i for i in range(3, 40) if draws[i] not in draws[:i])  # iteration k + 1 fails
    bad = tmp_path / 'data' / 'pascal' / 'VOC2011' / 'JPEGImages' / (ids[draws[k]] + '.jpg')
    bad.write_bytes(b'not a jpeg')
    out = tmp_path / 'out'
    proc = cli(model, '--rounds', 1, '--iters', 50, '--out', out)
    clean_error(proc, str(bad), 'snapshot')
    assert snapshots.snapshot_iters(str(out)) == [k]


# --- one run per folder --------------------------------------------------------

def test_second_run_on_the_same_folder_names_the_first_and_a_stale_lock_is_taken(model, tmp_path):
    out = tmp_path / 'out'
    first = cli(model, '--rounds', 1, '--iters', 100000, '--out', out,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        until(first, 'iter ')
        second = cli(model, '--rounds', 1, '--iters', 2, '--out', out)
        clean_error(second, str(out), 'pid %d' % first.pid)
    finally:
        first.kill()
        first.communicate()
    # killed: its lock file names a process that is gone
    proc = ok(cli(model, '--rounds', 1, '--iters', 2, '--out', out, '--no-resume'))
    assert 'pid %d, which is no longer running: taken over' % first.pid in proc.stdout


# --- pruning ------------------------------------------------------------------------

def test_old_snapshots_are_pruned_but_the_best_is_kept(model, tmp_path):
    out, everything = tmp_path / 'out', tmp_path / 'all'
    ok(cli(model, '--rounds', 6, '--iters', 1, '--out', out))
    records = snapshots.read_log(str(out))
    best = max(records, key=snapshots.mean_iu)['iter']
    assert snapshots.snapshot_iters(str(out)) == sorted({best, 4, 5, 6})
    ok(cli(model, '--rounds', 6, '--iters', 1, '--out', everything, '--keep-snapshots', 'all'))
    assert snapshots.snapshot_iters(str(everything)) == [1, 2, 3, 4, 5, 6]


# --- flags checked, train.py says what it is -------------------------------

def test_negative_score_limit_is_refused(model, tmp_path):
    proc = cli(model, '--rounds', 1, '--iters', 1, '--score-limit', -1, '--out', tmp_path / 'o')
    clean_error(proc, '--score-limit')


def test_train_py_says_what_it_is():
    bare = subprocess.run([sys.executable, os.path.join(project.REPO, 'train.py')], env=ENV,
                          capture_output=True, text=True, cwd='/')
    assert bare.returncode == 2, bare.stderr
    assert 'solving loop' in bare.stderr and 'python voc-fcn8s/solve.py' in bare.stderr
    helped = subprocess.run([sys.executable, os.path.join(project.REPO, 'train.py'), '--help'],
                            env=ENV, capture_output=True, text=True, cwd='/')
    assert helped.returncode == 0 and '--keep-snapshots' in helped.stdout
