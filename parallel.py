"""Data-parallel training on several GPUs, the way Caffe itself does it.

    python voc-fcn32s/solve.py --gpu 0,1,2,3     # one process per GPU, gradients all-reduced

This is Caffe's python/train.py example turned into three calls that the solving loop
(train.py) makes: one process per GPU, each with its own solver on its own GPU; Caffe is
told the world size and the process's rank (caffe.set_solver_count / set_solver_rank,
set_multiprocess) before the solver is made; once rank 0 has its starting weights,
caffe.NCCL broadcasts them to every rank (nccl.bcast), and the same object, added as a
solver callback (and, with layer_wise_reduce, run after each layer's backward), sums
the gradients of all ranks over NCCL and divides them by the number of ranks before
each update. Every rank steps the same number of iterations; only rank 0 writes the
snapshots and the log and scores the validation split (the others wait for it in their
next all-reduce).

How the solving loop uses it:

    gpus = cli.gpu_ids('0,1')                 # argparse type of --gpu: [0, 1]
    parallel.launch(gpus, work)               # in the parent; runs work(rank, uid) per GPU
    # in work(rank, uid), in the rank's own process:
    parallel.init_rank(gpus, rank)            # before the solver is made
    solver = ...; weights / restore / surgery (rank 0's are the ones that count)
    nccl = parallel.join(solver, uid)         # keep `nccl` alive while stepping
    parallel.interleave(solver.net, rank, len(gpus), solver.iter)
    if rank == 0: snapshots, log, scoring

The images: the project's data layers (layers.py) draw one image per forward from their
own seeded random stream. With N ranks, rank r takes draws r, r + N, r + 2N, ... of that
one stream (`interleave`), so iteration i of the N ranks together sees draws iN ... iN+N-1:
the images a single process would see with iter_size N, not N copies of the same image.
Caffe's NCCL averages the N gradients, so N GPUs train like one GPU with a batch of N
normalized by N (the papers' recipes are batch 1: their learning rates are for one GPU).

The parent process never touches CUDA (processes are forked, as in Caffe's example, and a
CUDA context does not survive a fork): it only makes the NCCL id. Ctrl-C / SIGTERM are
passed to rank 0, which snapshots and stops with status 130 / 143; when a rank ends with a
non-zero status, the others (which would wait in NCCL for it forever) are ended, and that
status is returned.
"""
import multiprocessing
import os
import signal
import sys
import time

import guard
from project import InputError

GRACE_SECONDS = 10  # how long an ended rank gets to exit before it is killed


def check_gpus(gpus):
    """InputError unless this pycaffe has CUDA and NCCL and every GPU in `gpus` exists."""
    info = guard.build_info()
    if not info.get('cuda'):
        raise InputError('--gpu %s: this pycaffe was built without CUDA (CPU only); rebuild on '
                         'a machine with nvcc (make caffe) or drop --gpu' % ','.join(map(str, gpus)))
    caffe = guard.import_caffe()
    if len(gpus) > 1 and not caffe.has_nccl():
        raise InputError('--gpu %s: this pycaffe was built without NCCL, which several GPUs need'
                         % ','.join(map(str, gpus)))
    # asking the CUDA runtime starts CUDA, which would not survive the fork of the ranks:
    # the parent asks in a child of its own
    ctx = multiprocessing.get_context('fork')
    with ctx.Pool(1) as pool:
        problems = pool.map(guard.gpu_problem, gpus)
    for problem in problems:
        if problem:
            raise InputError(problem)


# --- in each rank's process -----------------------------------------------------------------

def init_rank(gpus, rank):
    """Put this process on GPU gpus[rank] and tell Caffe the world size and this rank;
    before the solver is made (Caffe sizes its NCCL buffers and its data sharing from it)."""
    caffe = guard.import_caffe()
    caffe.set_device(gpus[rank])
    caffe.set_mode_gpu()
    caffe.set_solver_count(len(gpus))
    caffe.set_solver_rank(rank)
    caffe.set_multiprocess(True)


def join(solver, uid):
    """Connect `solver` to the other ranks: broadcast rank 0's weights to all, then hook
    the gradient all-reduce into every step. Returns the caffe.NCCL object: keep it alive."""
    caffe = guard.import_caffe()
    nccl = caffe.NCCL(solver, uid)
    nccl.bcast()
    solver.add_callback(nccl)
    if solver.param.layer_wise_reduce:
        solver.net.after_backward(nccl)
    return nccl


def interleave(net, rank, count, iteration=0):
    """Make every layers.py data layer of `net` take draws rank, rank + count, ... of its
    random stream, positioned for `iteration` (a resumed run's solver.iter). A no-op for
    count 1 apart from the seek. Walking (non-random) layers are left alone."""
    for layer in net.layers:
        if hasattr(layer, 'seek') and getattr(layer, 'random', False):
            layer.share_stream(rank, count)
            layer.seek(iteration)


# --- in the parent --------------------------------------------------------------------------

def _rank_main(work, rank, uid):
    """A rank's process: Ctrl-C is rank 0's to handle (the parent passes it on); input errors
    are one line, as in the main process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN if rank else signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the parent's forwarding handler
    os.setpgid(0, 0)  # a terminal's Ctrl-C reaches the parent only, which passes it on once
    try:
        code = work(rank, uid)
    except InputError as e:
        print('error: rank %d: %s' % (rank, e), file=sys.stderr, flush=True)
        code = 1
    sys.stdout.flush()
    os._exit(code or 0)  # no atexit handlers of the parent's copy, no CUDA teardown races


def _end(procs):
    for p in procs:
        if p.is_alive():
            p.terminate()
    deadline = time.time() + GRACE_SECONDS
    for p in procs:
        p.join(max(0, deadline - time.time()))
        if p.is_alive():
            p.kill()
            p.join()


def launch(gpus, work, uid=None):
    """Run work(rank, uid) in one forked process per GPU of `gpus` and wait for them.

    Returns 0 when every rank returned 0; else the status of the first rank seen to fail
    (rank 0's 130/143 after a Ctrl-C/SIGTERM snapshot), the others then being ended. `uid`
    is the NCCL id shared by the ranks (default: a new caffe.NCCL.new_uid())."""
    if uid is None:
        uid = guard.import_caffe().NCCL.new_uid()
    ctx = multiprocessing.get_context('fork')
    procs = [ctx.Process(target=_rank_main, args=(work, rank, uid), name='rank%d' % rank)
             for rank in range(len(gpus))]

    def forward(signum, frame):  # rank 0 snapshots; the rest follow when it ends
        if procs[0].pid and procs[0].is_alive():
            os.kill(procs[0].pid, signum)
    # installed before the ranks start: a signal arriving meanwhile is passed on too
    old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        for p in procs:
            p.start()
        while True:
            ended = [p for p in procs if p.exitcode is not None]
            failed = [p for p in ended if p.exitcode != 0]
            if failed or len(ended) == len(procs):
                break
            for p in procs:
                p.join(0.2 if p is procs[0] else 0)
        first = failed[0] if failed else procs[0]
        code = first.exitcode
        if code < 0:  # killed by a signal: the shell's convention
            code = 128 - code
        if failed and first is not procs[0]:
            print('error: rank %d (GPU %d) ended with status %d; ending the other ranks'
                  % (procs.index(first), gpus[procs.index(first)], code), file=sys.stderr, flush=True)
        return code
    finally:
        _end(procs)
        for s, h in old.items():
            signal.signal(s, h)
