"""Multi-GPU training (parallel.py) as far as a machine without a GPU allows: the --gpu list,
its one-line errors, the launcher's process handling (status, a failed rank ends the
others, a signal reaches rank 0), the data layers' shared random stream, and real CPU
solvers in rank processes (train.train_rank) with only rank 0 writing outputs."""
import argparse
import os
import signal
import subprocess
import sys
import time

import pytest

import cli
import guard
import layers
import parallel
import project
import snapshots
import train
import trainsetup
from test_train import voc_model

caffe = guard.import_caffe()
REPO = project.REPO


def test_gpu_ids_parse_lists_and_refuse_bad_ones():
    assert cli.gpu_ids('0') == [0]
    assert cli.gpu_ids('0,1,3') == [0, 1, 3]
    for bad in ('a', '0,', '-1', '0,0', '1.5'):
        with pytest.raises(argparse.ArgumentTypeError):
            cli.gpu_ids(bad)


def test_solve_parses_a_gpu_list():
    model = train.Model.of(os.path.join(REPO, 'voc-fcn32s'))
    p = train.parser(model)
    assert train.run_config(model, p.parse_args(['--gpu', '2'])).gpus == (2,)
    assert train.run_config(model, p.parse_args(['--gpu', '0,1,3'])).gpus == (0, 1, 3)
    assert train.run_config(model, p.parse_args([])).gpus == ()
    with pytest.raises(SystemExit):
        p.parse_args(['--gpu', '0,x'])


@pytest.mark.parametrize('gpus', ['0', '0,1'])
def test_gpu_flag_without_a_usable_gpu_is_one_line(tmp_path, gpus):
    """On a CPU build, or a CUDA build on a machine without a GPU: one line, status 1, and
    never Caffe's abort (set_device would abort: status -6 and a stack dump)."""
    problem = guard.gpu_problem(0)
    if problem is None:
        pytest.skip('a GPU is usable here')
    out = subprocess.run([sys.executable, os.path.join(REPO, 'voc-fcn32s', 'solve.py'),
                          '--gpu', gpus, '--out', str(tmp_path / 'out')],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 1, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: --gpu 0'), out.stderr
    assert 'CUDA' in lines[0]


def test_cuda_build_without_gpu_refuses_set_mode_and_stays_usable():
    if not guard.build_info().get('cuda'):
        pytest.skip('CPU build: test_caffe_setup covers it')
    if guard.gpu_problem(0) is None:
        pytest.skip('a GPU is usable here')
    with pytest.raises(project.InputError, match='no usable CUDA GPU'):
        guard.set_mode(0)
    assert guard.set_mode(None) == 'cpu'


# --- the launcher, with CPU work in the rank processes ----------------------------------------

def test_launch_runs_one_process_per_rank_with_the_shared_id(tmp_path):
    def work(rank, uid):
        (tmp_path / ('rank%d' % rank)).write_text('%d %s' % (os.getpid(), uid.decode()))
        return 0
    assert parallel.launch([0, 1, 2], work, uid=b'id') == 0
    seen = [(tmp_path / ('rank%d' % r)).read_text().split() for r in range(3)]
    assert [s[1] for s in seen] == ['id'] * 3
    assert len(set(s[0] for s in seen) | {str(os.getpid())}) == 4


def test_a_failed_rank_ends_the_others_with_its_status(tmp_path, capfd):
    def work(rank, uid):
        if rank == 1:
            raise project.InputError('bad data in rank 1')
        time.sleep(600)  # as a rank waiting in NCCL for the failed one would
    t0 = time.time()
    assert parallel.launch([0, 1], work, uid=b'id') == 1
    assert time.time() - t0 < 60
    err = capfd.readouterr().err
    assert 'error: rank 1: bad data in rank 1' in err and 'rank 1 (GPU 1) ended with status 1' in err


def test_sigterm_reaches_rank_0_which_ends_the_run(tmp_path):
    """The parent passes SIGTERM to rank 0 only (it snapshots, in train.py); the others,
    which would wait in NCCL, are ended when it is done. Run in a child python so the
    signal hits the launcher's process and nothing else."""
    script = tmp_path / 'run.py'
    script.write_text('''
import os, signal, sys, time
sys.path.insert(0, %r)
import parallel
def work(rank, uid):
    if rank == 0:
        got = []
        signal.signal(signal.SIGTERM, lambda s, f: got.append(s))
        open(%r, 'w').close()
        while not got:
            time.sleep(0.05)
        open(%r, 'w').write('rank 0 stopped on %%d' %% got[0])
        return 143
    time.sleep(600)
sys.exit(parallel.launch([0, 1], work, uid=b'id'))
''' % (REPO, str(tmp_path / 'started'), str(tmp_path / 'stopped')))
    p = subprocess.Popen([sys.executable, str(script)])
    for _ in range(600):
        if (tmp_path / 'started').exists():
            break
        time.sleep(0.05)
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=60) == 143
    assert (tmp_path / 'stopped').read_text() == 'rank 0 stopped on %d' % signal.SIGTERM


# --- the data layers' shared stream, and CPU solvers as ranks ------------------------------

def train_layer(net):
    return [l for l in net.layers if isinstance(l, layers.SegDataLayer)][0]


def drawn(solver, steps):
    """The ids the training data layer feeds in `steps` single steps."""
    layer, ids = train_layer(solver.net), []
    for _ in range(steps):
        ids.append(layer.indices[layer.idx])
        solver.step(1)
    return ids


def test_ranks_together_draw_the_single_stream(tmp_path):
    model = voc_model(tmp_path)
    param = trainsetup.read_solver(model)
    guard.set_mode(None)
    single = drawn(trainsetup.make_solver(param, str(tmp_path / 's')), 6)
    ranks = []
    for rank in range(2):
        solver = trainsetup.make_solver(param, str(tmp_path / ('r%d' % rank)))
        parallel.interleave(solver.net, rank, 2)
        ranks.append(drawn(solver, 3))
    assert [ranks[i % 2][i // 2] for i in range(6)] == single
    # a resumed rank (iteration 2) continues its own share of the stream
    solver = trainsetup.make_solver(param, str(tmp_path / 'r1b'))
    parallel.interleave(solver.net, 1, 2, iteration=2)
    assert drawn(solver, 1) == [single[5]]


def listing(folder):
    """{file: bytes} of everything under `folder` (nothing if it does not exist)."""
    found = {}
    for top, _, files in os.walk(folder):
        for f in files:
            path = os.path.join(top, f)
            with open(path, 'rb') as fh:
                found[os.path.relpath(path, folder)] = fh.read()
    return found


def test_a_rank_other_than_0_writes_and_prints_nothing(tmp_path, capsys):
    """train.train_rank as rank 1 (on the CPU: no NCCL here) steps like rank 0 but leaves
    OUT as it was: no lock, solver file, snapshot, log or plot; it resumes from rank 0's
    snapshot without repairing or deleting anything, and prints nothing."""
    model = voc_model(tmp_path)
    fresh = tmp_path / 'fresh'
    train.train_rank(train.Model(model), train.RunConfig(rounds=1, iters=2, out=str(fresh)), rank=1)
    assert not fresh.exists()
    out = tmp_path / 'out'
    train.train_rank(train.Model(model), train.RunConfig(rounds=1, iters=2, out=str(out)))
    before = listing(out)
    assert 'train_iter_2.caffemodel' in before and 'log.jsonl' in before
    capsys.readouterr()
    train.train_rank(train.Model(model), train.RunConfig(rounds=2, iters=2, out=str(out)), rank=1)
    assert listing(out) == before
    assert capsys.readouterr().out == ''


def test_cpu_ranks_launched_only_rank_0_writes_the_run(tmp_path):
    """Two CPU ranks through parallel.launch and train.train_rank into one OUT (without
    NCCL, which needs GPUs: each steps on its own): rank 0 alone takes the lock (a second
    holder would fail the launch) and writes the snapshots and one log record per round."""
    model = voc_model(tmp_path)
    config = train.RunConfig(rounds=2, iters=2, out=str(tmp_path / 'out'))
    assert parallel.launch([0, 1], lambda rank, uid: train.train_rank(train.Model(model), config, rank),
                           uid=b'id') == 0
    assert [r['iter'] for r in snapshots.read_log(config.out)] == [2, 4]
    assert snapshots.snapshot_iters(config.out) == [2, 4]
