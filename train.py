"""The one solving loop behind every model directory's solve.py.

    python voc-fcn32s/solve.py                     # the paper's recipe, CPU
    python voc-fcn32s/solve.py --gpu 0             # on GPU 0
    python voc-fcn32s/solve.py --gpu 0,1,2,3       # data parallel, one process per GPU
    python voc-fcn8s/solve.py --rounds 2 --iters 50 --score-limit 20   # a short run
    python voc-fcn8s/solve.py --weights my.caffemodel --data-root /datasets
    python voc-fcn8s/solve.py --no-resume --keep-snapshots all

From Python: train.solve(train.Model.of(model_dir), train.RunConfig(rounds=2, iters=50,
out='/tmp/run')). The model's registry spec (models.py) says how it starts (its parents,
a cast ImageNet net, NYUD color-d's bgrd init, PSPNet's converted release and finish,
a new model's init.caffemodel), its schedule and its scored split.

The flow is the paper's (section 4.3 and the release's solve.py): build the solver from
the model directory's solver.prototxt -> copy the parent net's weights by layer name ->
set every Deconvolution layer to bilinear interpolation (surgery.interp) -> loop
{ step(N); score the validation split }. Training images are drawn at random with
replacement by the data layer (seed 1337); scoring walks the split in order.

What this loop adds around Caffe:
- one run per output folder OUT (default MODEL_DIR/snapshot): OUT/train.lock names the
  process holding it; a lock left by a process that is gone is taken over; the run's
  solver settings go to OUT/run_solver.prototxt, so OUT may be the model folder itself
  (its own solver.prototxt is never rewritten); no file in OUT is followed through a
  symbolic link (the lock, .staging, snapshots, log, plot: refused, never written
  through);
- snapshots OUT/train_iter_N.{caffemodel,solverstate} at the end of each round, on
  Ctrl-C / SIGTERM and before stopping on a bad training file, each completed by a
  manifest train_iter_N.json written last (sizes, iteration, solver type, parameter
  shapes, the round's partial loss): one without it is incomplete, never trusted. A
  signal in a round's last iteration marks its snapshot as the round's end, so the
  rerun scores and logs that round. Free space (bytes and inodes) is checked before
  Caffe writes. A run
  resumes from the latest snapshot whose files are complete and parse and that fits the
  net and the solver; a damaged one is skipped (and said so); one of another net or
  solver type is an error. The state names its weights relative to OUT, so a moved or
  copied folder resumes from its own files. The last 3 snapshots and the best by mean
  IU are kept (--keep-snapshots N or all);
- exact resume: Caffe's random generator (Dropout) is reseeded at every iteration from
  --seed and the iteration, the data layers are put back where they were and the
  round's loss sum is carried over, so an interrupted run ends with the same weights
  and log as an uninterrupted one;
- a machine-readable log OUT/log.jsonl (one JSON object per scoring round: iteration,
  mean training loss, seconds, metrics per task) and a plot OUT/log.png; a round whose
  scoring was interrupted is scored when the run resumes;
- a NaN or infinite loss stops the run with a message; Ctrl-C or SIGTERM snapshots and
  exits (status 130 / 143); a second one while scoring or training gives up at once
  (the last snapshot stays good);
- several GPUs (--gpu 0,1,...): one process per GPU (parallel.py); rank 0 alone writes
  OUT and prints, every rank steps and checks its loss.
"""
import argparse
import ctypes
import dataclasses
import math
import os
import signal
import sys
import time
from typing import Optional, Tuple

import cli
import guard
import models
import parallel
import snapshots
import trainsetup
from project import InputError


def model_spec(model_dir):
    """The registry's ModelSpec of the model in `model_dir` (a built-in model's folder, or
    one holding model.json: models.get), or None for another folder (a test's narrow net)."""
    try:
        return models.get(os.path.abspath(model_dir))
    except InputError:
        if os.path.isfile(os.path.join(model_dir, models.SPEC_FILE)):
            raise  # a model.json that does not load: its error
        return None


@dataclasses.dataclass(frozen=True)
class Model:
    """A model folder (solver.prototxt, train/val/deploy prototxts) and its registry spec
    (models.py), which says how it starts (spec.init, spec.parents), how long it trains
    (spec.schedule) and which split is scored. spec None: a folder outside the registry,
    started from its nets' fillers (or --weights), its length given by --rounds/--iters."""
    dir: str
    spec: Optional[models.ModelSpec] = None

    @classmethod
    def of(cls, model_dir):
        return cls(os.path.abspath(model_dir), model_spec(model_dir))

    @property
    def name(self):
        return self.spec.name if self.spec else os.path.basename(os.path.abspath(self.dir))


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """One training run. rounds x iters iterations, scoring after each round; out: the
    output folder; score_limit: score only the first N images; weights: start from these
    instead of the parent; resume: from OUT's latest good snapshot (False deletes OUT's
    snapshots and log); seed: Caffe's per-iteration random seed (Dropout);
    keep_snapshots: how many recent snapshots to keep (None: all); data_root: the
    datasets' root (the data layers' relative paths); gpus: GPU ids (empty: CPU; several:
    one process per GPU, Caffe's NCCL data parallelism, parallel.py)."""
    rounds: int
    iters: int
    out: str
    score_limit: Optional[int] = None
    weights: Optional[str] = None
    data_root: Optional[str] = None
    gpus: Tuple[int, ...] = ()
    resume: bool = True
    seed: int = 1337
    keep_snapshots: Optional[int] = snapshots.KEEP_SNAPSHOTS
    save_pred: bool = False

    def __post_init__(self):
        for flag, value, least in (('rounds', self.rounds, 1), ('iters', self.iters, 1),
                                   ('score-limit', self.score_limit, 0),
                                   ('keep-snapshots', self.keep_snapshots, 1)):
            if value is not None and value < least:
                raise InputError('--%s must be at least %d (got %d)' % (flag, least, value))
        if self.data_root and not os.path.isdir(self.data_root):
            raise InputError('%s: --data-root is not a directory' % self.data_root)
        if self.weights and not os.path.isfile(self.weights):
            raise InputError('%s: weights file not found' % self.weights)


# --- the loop -----------------------------------------------------------------------------

def solve(model, config):
    """Train `model` (a Model) as `config` (a RunConfig) says; returns the log records.
    With several GPUs, one process per GPU (parallel.launch; this one never touches
    CUDA) and a rank's non-zero status ends this one with it."""
    gpus = config.gpus
    if len(gpus) > 1:
        parallel.check_gpus(gpus)  # no CUDA, no NCCL, a missing GPU: one line
        code = parallel.launch(gpus, lambda rank, uid: train_rank(model, config, rank, uid))
        if code:
            sys.exit(code)
    else:
        train_rank(model, config)
    return snapshots.read_log(os.path.abspath(config.out))


def train_rank(model, config, rank=0, uid=None):
    """The run in one process: a single one (uid None), or rank `rank` of a multi-GPU run
    joined to the others through NCCL id `uid`. Returns 0; exits the process on
    SIGINT/SIGTERM (after a snapshot: status 128 + signal)."""
    with trainsetup.open_run(model, config, rank) as run:
        try:
            trainsetup.start(run)
            nccl = trainsetup.join_ranks(run, uid)  # noqa: F841 (kept alive while stepping)
            while run.solver.iter < run.total:
                train_round(run)
                end_round(run)
        except trainsetup.Interrupted as e:
            print('stopped at once (%s); the last snapshot %s is kept; run again to resume'
                  % (signal.Signals(e.signum).name, run.last_snapshot_name()),
                  file=sys.stderr, flush=True)
            run.stop.exit(e.signum)
    run.say('done: %s (log %s, plot %s)' % (run.out, os.path.join(run.out, 'log.jsonl'),
                                            os.path.join(run.out, 'log.png')))
    return 0


def train_round(run):
    """Step to the end of the round (or of the run); on a signal, snapshot and exit."""
    solver, display = run.solver, max(1, int(run.param.display or 20))
    recent, t_print = [], time.time()
    while solver.iter < run.total:
        t0 = time.time()
        loss = step(run)
        rnd = run.round
        rnd['loss_sum'] += loss
        rnd['count'] += 1
        rnd['seconds'] += time.time() - t0
        recent = (recent + [loss])[-display:]
        if solver.iter % display == 0:
            run.say('iter %d  loss %.4g  (%.3f s/iter)' % (solver.iter, sum(recent) / len(recent),
                                                          (time.time() - t_print) / display))
            t_print = time.time()
        round_done = solver.iter % run.config.iters == 0 or solver.iter >= run.total
        if run.stop.signum is not None:  # only rank 0 has the handlers
            # In a round's last iteration the snapshot is the round's end: the rerun
            # scores and logs that round (trainsetup.restore) before the next begins.
            path = snapshots.write_snapshot(run, end_of_round=round_done)
            print('stopped at iteration %d; snapshot %s; run again to resume'
                  % (solver.iter, path), file=sys.stderr, flush=True)
            run.stop.exit(run.stop.signum)
        if round_done:
            return


def step(run):
    """One iteration, Caffe reseeded first; returns its loss (the sum of the loss tops).
    Every rank checks its own loss."""
    caffe = guard.import_caffe()
    solver = run.solver
    caffe.set_random_seed(iteration_seed(run.config.seed, solver.iter))
    try:
        solver.step(1)
    except (InputError, ValueError, OSError) as e:  # a data layer's bad file
        if run.lead and solver.iter > (run.last_snapshot or 0) and solver.iter > run.round['start']:
            path = snapshots.write_snapshot(run)
            raise InputError('%s (snapshot %s written at iteration %d: fix it and run again '
                             'to resume)' % (e, path, solver.iter))
        raise
    loss = sum(float(solver.net.blobs[o].data.sum()) for o in solver.net.outputs
               if o.startswith('loss'))
    if not math.isfinite(loss):
        keep_forever(solver)
        raise InputError('loss became %s at iteration %d: training diverged (check the learning '
                         'rate and the weights it started from); last good snapshot: %s'
                         % (loss, solver.iter, run.last_snapshot_name()))
    return loss


def end_round(run):
    """Snapshot (marked end of round), score, log, plot, prune (rank 0); start the next
    round."""
    if run.lead:
        path = snapshots.write_snapshot(run, end_of_round=True)
        trainsetup.log_round(run, run.round, os.path.basename(path)[:-len('.caffemodel')] + '.solverstate')
        snapshots.prune(run)
    run.round = trainsetup.new_round(run.solver.iter)


def iteration_seed(seed, iteration):
    """Caffe's random seed for `iteration` of a run seeded `seed` (unsigned 32 bits)."""
    return (seed * 1000003 + iteration) % 2 ** 32


def keep_forever(obj):
    """Never free `obj`. After a NaN loss Caffe's heap is already damaged: max pooling's
    backward pass writes one value before its gradient buffer when a window holds only
    NaN (its argmax stays -1), so freeing the solver would abort the process with
    `double free or corruption`; the process ends without ever freeing it."""
    ctypes.pythonapi.Py_IncRef(ctypes.py_object(obj))


# --- the commands -------------------------------------------------------------------------

def _keep(text):
    if text == 'all':
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError('a number or "all", not %r' % text)


def parser(model=None):
    """The flags of a model's solve.py (model a Model; None: of `python train.py`). The
    defaults of --rounds and --iters are the registry's schedule; a folder outside the
    registry must give them."""
    flags = [cli.gpu_flag(several=True), cli.data_root_flag()]
    if model is None:
        p = argparse.ArgumentParser(
            prog='train.py', parents=flags, formatter_class=argparse.RawDescriptionHelpFormatter,
            description=__doc__.split('\n\n')[0] + ' It is run as a model folder\'s '
                        'solve.py:\n\n' + __doc__.split('\n\n')[1],
            epilog='models (each trained by its folder\'s solve.py, with the flags above):\n  '
                   + '\n  '.join(models.names()))
        schedule = None
    else:
        schedule = model.spec.schedule if model.spec else None
        p = argparse.ArgumentParser(
            prog=os.path.join(model.dir, 'solve.py'), parents=flags,
            description='Train %s the paper\'s way: %s, scoring after each round.'
                        % (model.name, '%d rounds x %d iterations' % (schedule.rounds, schedule.iters)
                           if schedule else 'give --rounds and --iters (not a registered model)'))
    p.add_argument('--weights', default=None,
                   help='weights to start from (default: the registry\'s start, see solve.py)')
    for flag, value, what in (('--rounds', schedule and schedule.rounds, 'scoring rounds'),
                              ('--iters', schedule and schedule.iters, 'iterations per round')):
        p.add_argument(flag, type=int, default=value, required=model is not None and not value,
                       help=what + (' (default %(default)s)' if value else ''))
    p.add_argument('--score-limit', type=int, default=None,
                   help='score only the first N images of the split (default: all)')
    p.add_argument('--out', default=None, help='snapshots, log and plot (default: MODEL_DIR/snapshot)')
    p.add_argument('--no-resume', action='store_true',
                   help='start over: delete the snapshots and log already in OUT')
    p.add_argument('--seed', type=int, default=1337,
                   help='seeds Caffe\'s random numbers (Dropout) at every iteration (default %(default)s)')
    p.add_argument('--keep-snapshots', type=_keep, default=snapshots.KEEP_SNAPSHOTS, metavar='N|all',
                   help='keep the last N snapshots and the best by mean IU (default %(default)s)')
    p.add_argument('--save-pred', action='store_true',
                   help='write the last round\'s predictions as palette PNGs under OUT/pred')
    return p


def run_config(model, args):
    """The RunConfig of parsed solve.py flags."""
    return RunConfig(rounds=args.rounds, iters=args.iters, score_limit=args.score_limit,
                     weights=args.weights, data_root=args.data_root, gpus=tuple(args.gpu),
                     out=args.out or snapshots.snapshot_dir(model.dir),
                     resume=not args.no_resume, seed=args.seed,
                     keep_snapshots=args.keep_snapshots, save_pred=args.save_pred)


def main(solve_file=None, argv=None):
    """Entry point of a model folder's solve.py, `train.main(__file__)`: the model is the
    folder's (models.py says the rest). Without solve_file, `python train.py`, which says
    what it is."""
    def run(argv):
        if solve_file is None:
            p = parser()
            p.parse_args(argv)
            p.print_help(sys.stderr)
            return 2
        model = Model.of(os.path.dirname(os.path.abspath(solve_file)))
        solve(model, run_config(model, parser(model).parse_args(argv)))
        return 0
    cli.run_cli(run, argv)


if __name__ == '__main__':
    main()
