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
elif fault.startswith(('signal-at-', 'fill-inodes-at-')):
    # just before iteration N: SIGINT to this process, or every free inode of OUT's
    # file system taken by empty files (bytes stay free)
    import signal, train
    kind, n = fault.rsplit('-at-', 1)
    real_step = train.step
    def step(run):
        if run.solver.iter == int(n) - 1:
            if kind == 'signal':
                os.kill(os.getpid(), signal.SIGINT)
            else:
                filler = os.path.join(os.path.dirname(run.out), 'filler')
                os.makedirs(filler, exist_ok=True)
                try:
                    for i in range(10 ** 6):
                        open(os.path.join(filler, str(i)), 'w').close()
                except OSError:
                    pass
        return real_step(run)
    train.step = step
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


# --- the run's files in OUT: never over the model's, never through a link -----------

def test_out_in_the_models_own_folder_leaves_its_solver_as_it_was(model, tmp_path):
    """--out MODEL_DIR rewrote the model's solver.prototxt with absolute paths: moved,
    the folder no longer trained. The run's solver is OUT/run_solver.prototxt."""
    solver = os.path.join(model, 'solver.prototxt')
    before = open(solver, 'rb').read()
    ok(cli(model, '--rounds', 1, '--iters', 1, '--out', model))
    assert open(solver, 'rb').read() == before
    assert os.path.isfile(os.path.join(model, 'run_solver.prototxt'))
    moved = str(tmp_path / 'moved')
    shutil.move(model, moved)
    ok(cli(moved, '--rounds', 1, '--iters', 1, '--out', tmp_path / 'again'))


def test_a_symlinked_train_lock_is_refused_and_its_target_kept(model, tmp_path):
    """OUT/train.lock a symbolic link: the file it pointed to was truncated."""
    out, victim = tmp_path / 'out', tmp_path / 'precious.txt'
    out.mkdir()
    victim.write_text('keep me')
    (out / 'train.lock').symlink_to(victim)
    proc = cli(model, '--rounds', 1, '--iters', 1, '--out', out)
    clean_error(proc, str(out / 'train.lock'), 'symbolic link')
    assert victim.read_text() == 'keep me' and os.path.islink(out / 'train.lock')


def test_a_symlinked_staging_folder_is_refused_and_its_files_kept(model, tmp_path):
    """OUT/.staging a symbolic link to a folder: every file in it was deleted after the
    first snapshot."""
    out, theirs = tmp_path / 'out', tmp_path / 'theirs'
    out.mkdir()
    theirs.mkdir()
    (theirs / 'thesis.tex').write_text('years of work')
    (out / '.staging').symlink_to(theirs)
    proc = cli(model, '--rounds', 1, '--iters', 1, '--out', out)
    clean_error(proc, str(out / '.staging'), 'symbolic link')
    assert os.listdir(theirs) == ['thesis.tex']


def test_symlinked_snapshot_log_and_plot_files_are_never_written_through(model, tmp_path):
    """A link planted at the log's or the plot's name is refused, its target untouched
    (atomic_write never follows or replaces one); one at a snapshot's name is deleted
    by --no-resume as a name in OUT, never its target."""
    victim = tmp_path / 'precious.txt'
    victim.write_text('keep me')
    for name in ('log.jsonl', 'log.png', 'train_iter_1.caffemodel'):
        out = tmp_path / ('out-' + name)
        out.mkdir()
        (out / name).symlink_to(victim)
        proc = cli(model, '--rounds', 1, '--iters', 1, '--out', out, '--no-resume')
        if name.startswith('log'):
            clean_error(proc, str(out / name), 'symbolic link')
            assert os.path.islink(out / name)
        else:
            ok(proc)
            assert not os.path.islink(out / name)
        assert victim.read_text() == 'keep me'


# --- a signal in a round's last iteration: the round is scored and logged -----------

def test_signal_in_a_rounds_last_iteration_still_scores_and_logs_that_round(model, tmp_path):
    """The snapshot taken on the signal was not marked as the round's end: the rerun
    never scored that round and the next record averaged two rounds' losses."""
    split, straight = tmp_path / 'split', tmp_path / 'straight'
    proc = cli(model, '--rounds', 2, '--iters', 2, '--out', split, fault='signal-at-2')
    assert proc.returncode == 130, proc.stderr
    assert snapshots.snapshot_iters(str(split)) == [2]
    resumed = ok(cli(model, '--rounds', 2, '--iters', 2, '--out', split))
    assert 'scoring round 2' in resumed.stdout
    ok(cli(model, '--rounds', 2, '--iters', 2, '--out', straight))
    a, b = snapshots.read_log(str(straight)), snapshots.read_log(str(split))
    assert [r['iter'] for r in b] == [2, 4]
    for x, y in zip(a, b):
        assert x['train_loss'] == y['train_loss'] and x['scores'] == y['scores']


# --- a snapshot without its manifest is not complete --------------------------------

def test_a_snapshot_without_its_manifest_is_not_trusted(model, tmp_path):
    """Killed between the weights' rename and the manifest: the snapshot was trusted as
    one from before manifests and its round was never logged."""
    out = tmp_path / 'out'
    ok(cli(model, '--rounds', 2, '--iters', 2, '--out', out))
    os.unlink(out / 'train_iter_4.json')
    snapshots.rewrite_log(str(out), snapshots.read_log(str(out), upto=2))  # as the kill left it
    proc = ok(cli(model, '--rounds', 3, '--iters', 2, '--out', out))
    assert 'snapshot train_iter_4 is not usable' in proc.stdout and 'no manifest' in proc.stdout
    assert 'resuming from %s' % (out / 'train_iter_2.solverstate') in proc.stdout
    assert [r['iter'] for r in snapshots.read_log(str(out))] == [2, 4, 6]
    assert snapshots.latest_weights(str(out)) == str(out / 'train_iter_6.caffemodel')


# --- damaged JSON in OUT never makes every rerun fail -------------------------------

@pytest.mark.parametrize('content', [
    b'[' * 100000, b'\x89PNG\r\n\x1a\n\x00\xff', b'{"iter": 4, "round": [1, 2]}', b'[4]'],
    ids=['nested too deep', 'binary', 'round a list', 'a list'])
def test_a_damaged_manifest_makes_its_snapshot_untrusted(model, tmp_path, content):
    out = tmp_path / 'out'
    ok(cli(model, '--rounds', 2, '--iters', 2, '--out', out))
    (out / 'train_iter_4.json').write_bytes(content)
    proc = ok(cli(model, '--rounds', 3, '--iters', 2, '--out', out))
    assert 'snapshot train_iter_4 is not usable' in proc.stdout
    assert str(out / 'train_iter_4.json') in proc.stdout
    assert [r['iter'] for r in snapshots.read_log(str(out))] == [2, 4, 6]


def test_damaged_log_lines_are_dropped_with_a_note_and_the_run_goes_on(model, tmp_path):
    """A log.jsonl line of valid JSON of another shape, binary bytes or deep nesting was
    a traceback on every rerun. Such lines are dropped, each named with its line, the
    damaged file kept as log.jsonl.damaged."""
    out = tmp_path / 'out'
    ok(cli(model, '--rounds', 2, '--iters', 2, '--out', out))
    log = out / 'log.jsonl'
    good = log.read_bytes().splitlines()
    damaged = b'\n'.join([good[0], b'[1, 2]', b'\x89PNG\x00\xff', b'[' * 100000,
                          b'{"iter": 3, "scores": 7}', good[1]]) + b'\n'
    log.write_bytes(damaged)
    proc = ok(cli(model, '--rounds', 3, '--iters', 2, '--out', out))
    for line in (2, 3, 4, 5):
        assert '%s line %d' % (log, line) in proc.stdout, proc.stdout
    assert '4 damaged line(s) dropped' in proc.stdout
    assert [r['iter'] for r in snapshots.read_log(str(out))] == [2, 4, 6]
    assert (out / 'log.jsonl.damaged').read_bytes() == damaged


# --- a file system out of inodes (bytes free) ---------------------------------------

@pytest.fixture
def few_inodes(tmp_path):
    """A 64 MB tmpfs with 64 inodes (mounting needs root; skipped where it cannot)."""
    mnt = tmp_path / 'mnt'
    mnt.mkdir()
    r = subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=64m,nr_inodes=64', 'tmpfs', str(mnt)],
                       capture_output=True, text=True)
    if r.returncode:
        pytest.skip('cannot mount a tmpfs here: %s' % r.stderr.strip())
    try:
        yield mnt
    finally:
        subprocess.run(['umount', str(mnt)], check=True)


def test_no_free_inodes_is_a_clean_error_before_caffe_writes(model, few_inodes):
    """Free bytes but no free inodes: Caffe could not create the snapshot file and
    aborted (SerializeToOstream CHECK)."""
    out = few_inodes / 'out'
    proc = cli(model, '--rounds', 1, '--iters', 2, '--out', out, fault='fill-inodes-at-2')
    clean_error(proc, str(out), 'free inodes', 'train_iter_2')
    assert snapshots.snapshot_iters(str(out)) == []


# --- solver.prototxt values Caffe aborts on: one line naming the file and the field ---

SOLVER_EDITS = [  # (what, (old line start, new line) or an added line, the field named)
    ('unknown type', 'type: "Adamm"', 'type'),
    ('unknown lr_policy', ('lr_policy:', 'lr_policy: "fixd"'), 'lr_policy'),
    ('step without stepsize', ('lr_policy:', 'lr_policy: "step"'), 'stepsize'),
    ('sigmoid without stepsize', ('lr_policy:', 'lr_policy: "sigmoid"'), 'stepsize'),
    ('negative gamma', ('lr_policy:', 'lr_policy: "exp" gamma: -0.5'), 'gamma'),
    ('wrong test_iter count', 'test_iter: 3', 'test_iter'),
    ('average_loss 0', ('average_loss:', 'average_loss: 0'), 'average_loss'),
    ('unknown regularization', 'regularization_type: "L3"', 'regularization_type'),
    ('RMSProp with momentum', 'type: "RMSProp"', 'momentum'),
    ('AdaGrad with momentum', 'type: "AdaGrad"', 'momentum'),
    ('RMSProp rms_decay 1', ('momentum:', 'type: "RMSProp" momentum: 0 rms_decay: 1'), 'rms_decay'),
    ('solver_type and type', 'solver_type: ADAM type: "Adam"', 'solver_type'),
]


@pytest.mark.parametrize('what,edit,field', SOLVER_EDITS, ids=[e[0] for e in SOLVER_EDITS])
def test_solver_values_caffe_aborts_on_are_one_line_errors(model, tmp_path, what, edit, field):
    path = os.path.join(model, 'solver.prototxt')
    lines = open(path).read().splitlines()
    if isinstance(edit, tuple):
        start, new = edit
        assert any(l.startswith(start) for l in lines), start
        lines = [new if l.startswith(start) else l for l in lines]
    else:
        lines.append(edit)
    with open(path, 'w') as f:
        f.write('\n'.join(lines) + '\n')
    proc = cli(model, '--rounds', 1, '--iters', 2, '--out', tmp_path / 'out')
    clean_error(proc, path, field)
