"""How a training run is set up in one process, for train.py's loop: the device, the
solver, the start weights, the resume, the scoring after each round and the signals.

    with open_run(model, config, rank) as run:   # OUT locked, device set, solver built
        start(run)                               # resume from OUT, or start fresh
        ... train.py steps the solver ...
        log_round(run, run.round, state_name)    # score, log, plot

A fresh start copies the registry's start weights (init_weights: parents, a cast
ImageNet net, bgrd, a converted release, init.caffemodel; weights.py names the files),
sets the Deconvolution layers to bilinear interpolation and finishes a PSPNet; the test
nets' own fixed layers (a val net's zoom the train net lacks) are filled from their
formula either way (fill_test_nets). A resume
restores the solver, the data layers' position and the round's partial sums from OUT's
latest trusted snapshot (snapshots.py), so an interrupted run ends exactly as an
uninterrupted one.
"""
import contextlib
import fcntl
import os
import signal
import sys
import tempfile

from google.protobuf import text_format

import cli
import fixed
import guard
import layers
import models
import netinit
import netload
import parallel
import safewrite
import score
import snapshots
import surgery
import weights
from project import InputError


def _deploy_with_weights(model_name, path):
    return netload.open_net(os.path.join(models.model_dir(model_name), 'deploy.prototxt'),
                           'test', path, partial=True)


def init_weights(spec, solver):
    """Fill the solver's net the way the registry says `spec` starts (spec.init):
    copy: each parent's weights by layer name (none: the net's fillers); transplant: each
    parent into the layers carrying its suffix (NYUD late fusion); bgrd: the cast VGG16 by
    name, then conv1_1_bgrd from VGG's conv1_1 (paper 5, NYUDv2); release: the model's
    own released weights, converted (PSPNet fine-tunes); file: models.INIT_FILE in the
    model's folder (a model made by net.py new)."""
    if spec.init == 'release':
        path = weights.converted_weights(spec)
    elif spec.init == 'file':
        path = weights.init_file_weights(spec)
    if spec.init in ('release', 'file'):
        print('starting from %s' % path, flush=True)
        load_weights(solver.net, path)
    elif not spec.parents:
        print('starting from the net\'s fillers (no parent)', flush=True)
    for p in spec.parents:
        path = weights.parent_weights(p.source)
        if spec.init == 'transplant':
            print('tower %s from %s' % (p.suffix, path), flush=True)
            surgery.transplant(solver.net, _deploy_with_weights(p.source, path), p.suffix)
        else:
            print('starting from %s' % path, flush=True)
            load_weights(solver.net, path)
    if spec.init == 'bgrd':
        print('conv1_1 -> conv1_1_bgrd', flush=True)
        trunk = models.CLASSIFIERS[spec.parents[0].source].trunk_model
        surgery.init_bgrd(solver.net, _deploy_with_weights(trunk, path))


def load_weights(caffe_net, path):
    """Copy `path` into `caffe_net` by layer name (a parent's layers into its child: partial on
    purpose), after checking the shapes (no Caffe abort)."""
    netload.check_weights(path, caffe_net, partial=True)
    caffe_net.copy_from(path)


# What Caffe's solvers know: the SolverRegistry's types, SGDSolver::GetLearningRate's
# policies (those needing stepsize > 0, those needing gamma >= 0), Regularize's types,
# and the old solver_type enum's values (UpgradeSolverAsNeeded turns it into `type`).
SOLVER_TYPES = ('SGD', 'Nesterov', 'AdaGrad', 'RMSProp', 'AdaDelta', 'Adam')
LR_POLICIES = ('fixed', 'step', 'exp', 'inv', 'multistep', 'poly', 'sigmoid')
NEEDS_STEPSIZE = ('step', 'sigmoid')
NEEDS_GAMMA = ('step', 'exp', 'inv', 'multistep', 'sigmoid')
REGULARIZATION = ('L1', 'L2')


def solver_problem(param):
    """What in a SolverParameter Caffe would abort on (a glog CHECK or LOG(FATAL) in
    Solver::Init, the solver's constructor, GetLearningRate or Regularize), naming the
    field, or None. An old `solver_type` enum is turned into `type` as Caffe does."""
    if param.HasField('solver_type'):
        if param.HasField('type'):
            return 'solver_type (old) and type are both set: keep type'
        param.type = SOLVER_TYPES[param.solver_type]
        param.ClearField('solver_type')
    if param.type not in SOLVER_TYPES:
        return 'type %r is not a solver type (known: %s)' % (param.type, ', '.join(SOLVER_TYPES))
    train_nets = sum(param.HasField(f) for f in ('net', 'net_param', 'train_net', 'train_net_param'))
    if train_nets > 1:
        return 'more than one of net, net_param, train_net and train_net_param is set'
    if param.weights:
        return 'weights is set: give start weights with --weights (checked against the net)'
    tests = len(param.test_net) + len(param.test_net_param)
    generic = param.HasField('net') or param.HasField('net_param')
    if len(param.test_iter) < tests or (len(param.test_iter) != tests and not generic):
        return 'test_iter is given %d times for %d test nets: once for each' % (len(param.test_iter), tests)
    instances = max(tests, len(param.test_iter))
    if param.test_state and len(param.test_state) != instances:
        return 'test_state is given %d times for %d test nets' % (len(param.test_state), instances)
    if instances and param.test_interval <= 0:
        return 'test_interval must be positive with a test net (got %d)' % param.test_interval
    if param.average_loss < 1:
        return 'average_loss must be at least 1 (got %d)' % param.average_loss
    policy = param.lr_policy
    if policy not in LR_POLICIES:
        return ('lr_policy %r is unknown (known: %s)' % (policy, ', '.join(LR_POLICIES)) if policy
                else 'lr_policy is not set (one of %s)' % ', '.join(LR_POLICIES))
    if policy in NEEDS_STEPSIZE and param.stepsize <= 0:
        return 'lr_policy "%s" needs a positive stepsize (got %d)' % (policy, param.stepsize)
    if policy in NEEDS_GAMMA and param.gamma < 0:
        return 'lr_policy "%s" needs gamma >= 0 (got %g)' % (policy, param.gamma)
    if param.regularization_type not in REGULARIZATION:
        return 'regularization_type %r is unknown (L1 or L2)' % param.regularization_type
    if param.type in ('AdaGrad', 'RMSProp') and param.momentum:
        return 'momentum must be 0 for the %s solver (got %g)' % (param.type, param.momentum)
    if param.type == 'RMSProp' and not 0 <= param.rms_decay < 1:
        return 'rms_decay must lie in [0, 1) (got %g)' % param.rms_decay
    return None


def read_solver(model_dir):
    """MODEL_DIR/solver.prototxt as a SolverParameter with absolute net paths (checked)."""
    caffe = guard.import_caffe()
    path = os.path.join(model_dir, 'solver.prototxt')
    if not os.path.isfile(path):
        raise InputError('%s: solver prototxt not found' % path)
    param = caffe.proto.caffe_pb2.SolverParameter()
    try:
        with open(path) as f:
            text_format.Merge(f.read(), param)
    except (UnicodeDecodeError, text_format.ParseError) as e:
        raise InputError('%s: not a valid solver prototxt: %s' % (path, e))
    problem = solver_problem(param)
    if problem:
        raise InputError('%s: %s' % (path, problem))
    if not param.train_net:
        raise InputError('%s: no train_net' % path)
    param.train_net = os.path.join(model_dir, param.train_net)
    tests = [os.path.join(model_dir, t) for t in param.test_net]
    del param.test_net[:]
    param.test_net.extend(tests)
    netinit.check_prototxt(param.train_net, 'train')
    for net_path in tests:
        netinit.check_prototxt(net_path, 'test')
    return param


# The solver settings a run used (absolute paths, snapshots off), saved in OUT under a
# name no model folder uses: OUT may be the model's own folder (--out MODEL_DIR), whose
# solver.prototxt, with its relative paths, must stay as it is.
RUN_SOLVER = 'run_solver.prototxt'


def make_solver(param, out_dir=None, model_files=()):
    """A Caffe solver for `param`, its own snapshots off (write_snapshot writes them, in
    binary proto format into OUT/.staging); its settings saved as OUT/run_solver.prototxt
    (RUN_SOLVER), never over one of `model_files` (the model's solver and nets).
    out_dir None (a rank other than 0 of a multi-GPU run): nothing is written in OUT, the
    settings go through a temporary folder."""
    caffe = guard.import_caffe()
    param.snapshot = 0
    param.snapshot_format = caffe.proto.caffe_pb2.SolverParameter.BINARYPROTO
    if out_dir is None:
        with tempfile.TemporaryDirectory() as tmp:
            param.snapshot_prefix = os.path.join(tmp, 'train')
            path = os.path.join(tmp, 'solver.prototxt')
            with open(path, 'w') as f:
                f.write(str(param))
            return caffe.get_solver(path)
    param.snapshot_prefix = os.path.join(snapshots.staging_dir(out_dir), 'train')
    path = os.path.join(out_dir, RUN_SOLVER)
    with snapshots.writing(path, protect=model_files) as f:
        f.write(str(param).encode())
    return caffe.get_solver(path)


def model_files(model_dir, param):
    """The files of a model folder a run reads (its solver.prototxt and the nets it
    names): inputs no output of the run may replace."""
    return [os.path.join(model_dir, 'solver.prototxt'), param.train_net] + list(param.test_net)


def new_round(start):
    return {'start': start, 'loss_sum': 0.0, 'count': 0, 'seconds': 0.0}


def restore(run, it, manifest):
    """Restore solver, weights, data position and the round's partial sums from `it`.
    The state names its weights relative to OUT (checked above), so Caffe reads it with
    OUT as the working directory."""
    state = snapshots.snapshot_path(run.out, it, 'solverstate')
    run.say('resuming from %s' % state)
    cwd = os.getcwd()
    os.chdir(run.out)
    try:
        run.solver.restore(state)
    finally:
        os.chdir(cwd)
    run.round = {k: manifest['round'][k] for k in snapshots.ROUND_KEYS}
    if manifest.get('seed') != run.config.seed and run.lead:
        print('note: the run was seeded %s, now %d: the resumed run will not repeat an '
              'uninterrupted one exactly' % (manifest.get('seed'), run.config.seed), flush=True)
    run.last_snapshot = it
    seek_data(run.solver.net, it * max(1, run.param.iter_size))  # same image stream
    if not run.lead:  # the log is rank 0's
        return
    snapshots.repair_log(run.out, run.say)
    snapshots.rewrite_log(run.out, snapshots.read_log(run.out, upto=it))
    if manifest.get('end_of_round'):
        if not any(r['iter'] == it for r in snapshots.read_log(run.out)):
            print('scoring round %d, which the last run did not finish' % it, flush=True)
            log_round(run, manifest['round'], os.path.basename(state))
        run.round = new_round(it)


def seek_data(caffe_net, forwards):
    """Put the net's layers.py data layers where `forwards` forward passes leave them."""
    for layer in caffe_net.layers:
        if hasattr(layer, 'seek'):
            layer.seek(forwards)


def score_split(run):
    """(dataset, split, ids) scored each round: the registry's dataset and scored split
    of the model, the ids as the test net's data layer read them from the split's list
    (a note when their number is not the registry's size of that split), the first
    --score-limit only. A folder outside the registry: the layer's own dataset and split."""
    found = [l for n in run.solver.test_nets[:1] for l in n.layers
             if isinstance(l, layers.SegDataLayer)]
    if not found:
        return None, None, []
    layer, spec = found[0], run.model.spec
    ids = list(layer.indices)
    if spec is None:
        dataset, split = score.dataset_of(type(layer)), layer.params['split']
    else:
        dataset, split = spec.dataset, spec.data.score_split
        expected = spec.data.split(split).size
        if len(ids) != expected:
            run.say('note: split %s has %d images; the registry expects %d'
                    % (split, len(ids), expected))
    limit = run.config.score_limit
    return dataset, split, ids[:limit] if limit is not None else ids


def score_round(run, save_dir=None):
    """Score the test net (sharing the training weights) on the run's score ids, the
    start of its split, walking it in order, every output of the net in one pass
    (score.scored_outputs: SIFT Flow's two heads, its absent classes excluded); {log key:
    scores dict (with 'loss')}, the key 'seg' for `label`, else the label blob's name."""
    if not run.score_ids:
        return {}
    test_net = run.solver.test_nets[0]
    test_net.share_with(run.solver.net)
    seek_data(test_net, 0)  # every round scores the same images, from the split's start
    outputs, _ = score.scored_outputs(test_net, run.dataset, run.split, run.param.test_net[0], save_dir)
    return {('seg' if ev.gt == 'label' else ev.gt): ev.scores
            for ev in score.evaluate_outputs(test_net, run.score_ids, outputs, progress=True)}


def log_round(run, rnd, snapshot_name):
    """Score, then add the round's record to the log and redraw the plot; the scoring can
    be interrupted (the snapshot is written): a rerun scores the round again."""
    last = run.solver.iter == run.total
    save = os.path.join(run.out, 'pred') if (run.config.save_pred and last) else None
    with run.stop.interruptible():
        results = score_round(run, save)
    record = {'iter': run.solver.iter, 'train_loss': rnd['loss_sum'] / max(1, rnd['count']),
              'seconds': round(rnd['seconds'], 2), 'snapshot': snapshot_name, 'scores': results}
    snapshots.rewrite_log(run.out, snapshots.read_log(run.out) + [record])
    snapshots.plot_log(run.out)
    for key, m in results.items():
        print('>>> iter %d %s: loss %.4g  overall acc %.4f  mean acc %.4f  mean IU %.4f  '
              'fwavacc %.4f' % (run.solver.iter, key, m['loss'], m['overall_acc'],
                                m['mean_acc'], m['mean_iu'], m['fwavacc']), flush=True)
    return record


class Interrupted(BaseException):
    """A signal that stops the run at once (a second one, or one during scoring)."""

    def __init__(self, signum):
        super().__init__(signum)
        self.signum = signum


class Stop(object):
    """Remembers a SIGINT/SIGTERM so the loop can snapshot between iterations; a second
    one, or one while scoring, raises Interrupted at once."""

    def __init__(self):
        self.signum, self.scoring, self.stopping = None, False, False

    def __call__(self, signum, frame):
        if self.stopping:  # already on the way out
            return
        again, self.signum = self.signum is not None, signum
        if again or self.scoring:
            self.stopping = True
            raise Interrupted(signum)
        print('\n%s received: finishing this iteration, then snapshotting'
              % signal.Signals(signum).name, file=sys.stderr, flush=True)

    def exit(self, signum):
        """Exit with status 128 + signum, any further SIGINT/SIGTERM ignored: the
        interpreter puts the default handlers back while it shuts down, and a signal
        then (to any of Caffe's threads) would kill the process (status -2, not 130)."""
        self.stopping = True
        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, signal.SIG_IGN)
        sys.exit(128 + signum)

    @contextlib.contextmanager
    def interruptible(self):
        if self.signum is not None:
            self.stopping = True
            raise Interrupted(self.signum)
        self.scoring = True
        try:
            yield
        finally:
            self.scoring = False


@contextlib.contextmanager
def run_lock(out_dir):
    """Hold OUT/train.lock (flock, released when the process ends however it ends); it
    holds the pid, so a second run names the first; a stale pid is taken over."""
    path = os.path.join(out_dir, 'train.lock')
    fd = safewrite.open_own(path)  # never through a link: the target would be truncated
    try:
        holder = os.read(fd, 32).decode(errors='replace').strip()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise InputError('%s: another training run (pid %s) is using this folder; wait for '
                             'it to finish or pass another --out' % (out_dir, holder or '?'))
        if holder:
            print('note: %s was left by pid %s, which is no longer running: taken over'
                  % (path, holder), flush=True)
        os.ftruncate(fd, 0)
        os.pwrite(fd, b'%d\n' % os.getpid(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)  # ended here (not killed): no stale pid for the next run
    finally:
        os.close(fd)


class Run:
    """A training run in progress in one process: the model, its config, OUT, the solver,
    the scored ids and the current round's sums (round: start, loss_sum, count, seconds).
    rank: this process's place among the GPUs of a multi-GPU run (0 otherwise); only
    rank 0, the lead, writes into OUT (lock, snapshots, log, plot) and prints."""

    def __init__(self, model, config, rank=0):
        self.model, self.config, self.rank = model, config, rank
        self.lead = rank == 0
        self.out = os.path.abspath(config.out)
        self.total = config.rounds * config.iters
        self.stop = Stop()
        self.solver, self.round, self.last_snapshot = None, new_round(0), None

    def last_snapshot_name(self):
        it = self.last_snapshot
        return 'none' if it is None else snapshots.snapshot_path(self.out, it, 'caffemodel')

    def say(self, text):
        if self.lead:
            print(text, flush=True)


def use_devices(gpus, rank):
    """Put this process on its device before the solver is made: the CPU, one GPU, or
    GPU gpus[rank] of a multi-GPU run (parallel.init_rank); returns it in words."""
    if len(gpus) > 1:
        problem = guard.gpu_problem(gpus[rank])  # in the rank's process: CUDA may start here
        if problem:
            raise InputError(problem)
        parallel.init_rank(gpus, rank)
        return 'gpu %d (rank %d of %d)' % (gpus[rank], rank, len(gpus))
    return guard.set_mode(gpus[0] if gpus else None)


@contextlib.contextmanager
def open_run(model, config, rank=0):
    """A Run with OUT locked, the solver built, the signal handlers on (all undone after);
    a rank other than 0 takes no lock and installs no handlers (the launcher passes
    signals to rank 0 and ends the others)."""
    run = Run(model, config, rank)
    cli.use_data_root(config.data_root)  # for the Python data layers Caffe instantiates
    if run.lead:
        os.makedirs(run.out, exist_ok=True)
    with run_lock(run.out) if run.lead else contextlib.nullcontext():
        run.mode = use_devices(config.gpus, rank)
        run.param = read_solver(os.path.abspath(model.dir))
        run.solver = make_solver(run.param, run.out if run.lead else None,
                                 model_files(model.dir, run.param))
        for n in [run.solver.net] + list(run.solver.test_nets):
            layers.bind_num_classes(n)
        run.dataset, run.split, run.score_ids = score_split(run)
        signals = (signal.SIGINT, signal.SIGTERM) if run.lead else ()
        old = {s: signal.signal(s, run.stop) for s in signals}
        try:
            yield run
        finally:
            for s, h in old.items() if not run.stop.stopping else ():  # not on the way out
                signal.signal(s, h)


def start_fresh(run):
    """Delete OUT's snapshots and log (a run starting over), copy the start weights (the
    registry's start, or --weights), then run the model's finish steps (spec.finish: the
    Deconvolution layers set to bilinear; PSPNet's interpolation and BN too). A rank other
    than 0 does nothing: parallel.join gives it rank 0's."""
    if not run.lead:
        return
    spec, path, train_net = run.model.spec, run.config.weights, run.solver.net
    if path:
        print('starting from %s' % path, flush=True)
        load_weights(train_net, path)
    elif spec is not None:
        init_weights(spec, run.solver)
    else:
        print('starting from the net\'s fillers (a folder outside the registry)', flush=True)
    surgery.finish(train_net, spec.finish if spec is not None else models.DEFAULT_FINISH)
    old = snapshots.snapshot_iters(run.out)
    for it in old:  # after the weights are read: --weights may be one of them
        snapshots.remove_snapshot(run.out, it)
    if old:
        print('note: started over: %d old snapshot(s) in %s deleted' % (len(old), run.out), flush=True)
    snapshots.rewrite_log(run.out, [])


def fill_test_nets(run):
    """Fill each test net's fixed formula layers (fixed.formula_layers of the model's finish
    steps) that the train net does not have: a test net shares only the layers named as
    the train net's (score_round), so a val net's own zoom (DeepLabv3's
    logits_interp_x8 at output stride 8, the train net zooming x16) would stay at its
    filler. Returns {test net index: names filled}."""
    spec = run.model.spec
    steps = spec.finish if spec is not None else models.DEFAULT_FINISH
    train, done = set(run.solver.net.params), {}
    for i, (test_net, path) in enumerate(zip(run.solver.test_nets, run.param.test_net)):
        own = fixed.formula_layers(test_net, steps, netinit.read_net_param(path)) - train
        done[i] = fixed.fill(test_net, steps, own)
    return done


def start(run):
    """Resume from OUT's latest good snapshot, or start fresh (every rank resumes from the
    same snapshot: rank 0's files, only read by the others); then the test nets' own
    fixed layers (fill_test_nets)."""
    found = snapshots.trusted_snapshot(run) if run.config.resume else None
    fill_test_nets(run)  # before a resume scores the round the last run did not finish
    if found:
        restore(run, *found)
    else:
        start_fresh(run)
    run.say('%s on %s: iteration %d of %d, scoring %d images every %d iterations, output %s'
            % (run.model.name, run.mode, run.solver.iter, run.total, len(run.score_ids),
               run.config.iters, run.out))


def join_ranks(run, uid):
    """A multi-GPU run: rank 0's weights to every rank and the gradient all-reduce hooked
    in (parallel.join; the returned NCCL object must stay alive), then each rank's share
    of the training images from the solver's iteration on. None for a single process."""
    if uid is None:
        return None
    nccl = parallel.join(run.solver, uid)
    parallel.interleave(run.solver.net, run.rank, len(run.config.gpus),
                        run.solver.iter * max(1, run.param.iter_size))
    return nccl
