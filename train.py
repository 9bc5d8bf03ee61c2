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
  process holding it; a lock left by a process that is gone is taken over;
- snapshots OUT/train_iter_N.{caffemodel,solverstate} at the end of each round, on
  Ctrl-C / SIGTERM and before stopping on a bad training file, each completed by a
  manifest train_iter_N.json written last (sizes, iteration, solver type, parameter
  shapes, the round's partial loss). Free space is checked before Caffe writes. A run
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
import contextlib
import ctypes
import dataclasses
import fcntl
import glob
import json
import math
import os
import re
import signal
import sys
import tempfile
import time
from typing import Optional, Tuple

from google.protobuf import text_format
from matplotlib.figure import Figure

import common
import layers
import metrics
import models
import parallel
import score
import surgery
import weights
from common import InputError

KEEP_SNAPSHOTS = 3
SNAPSHOT_RE = re.compile(r'train_iter_(\d+)\.(caffemodel|solverstate|json)$')
# Adam and AdaDelta keep two history blobs per parameter, the other solvers one.
HISTORY_PER_PARAM = {'Adam': 2, 'AdaDelta': 2}


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
    keep_snapshots: Optional[int] = KEEP_SNAPSHOTS
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


# --- where start weights come from -----------------------------------------------------------

def snapshot_dir(model_dir):
    """Where a model's solve.py writes its snapshots, log and plot unless --out says."""
    return os.path.join(model_dir, 'snapshot')


def trained_weights(model_name):
    """Weights of a trained model for a child to start from: the latest good snapshot in
    its folder's snapshot/ (models.model_dir: a user's model may live anywhere), else the
    released caffemodel in the folder (see weights.py)."""
    model_dir = models.model_dir(model_name)
    path = latest_weights(snapshot_dir(model_dir))
    if path:
        return path
    try:
        released = weights.weights_path(model_name)  # where weights.py puts it
    except InputError:  # the release never had this model
        released = None
    if released and os.path.isfile(released):
        return released
    raise InputError('%s: no trained weights (no snapshot/ and no released .caffemodel); '
                     'train it with `python %s` or fetch them with `python weights.py %s`'
                     % (model_dir, os.path.join(model_dir, 'solve.py'), model_name))


def parent_weights(source):
    """The weights file of a Parent's source: a classifier's cast weights or a model's
    trained ones."""
    return ilsvrc_weights(source) if source in models.CLASSIFIERS else trained_weights(source)


def pspnet_stock_path(model_dir, model_name):
    """Where surgery.py pspnet-convert puts a PSPNet's released weights converted for
    this Caffe: <model_dir>/<release name>-stock.caffemodel."""
    return os.path.join(model_dir, models.get(model_name).weights.stock_file)


def pspnet_weights(model_name):
    """The released weights of PSPNet `model_name`, converted, to fine-tune from."""
    path = pspnet_stock_path(models.model_dir(model_name), model_name)
    if not os.path.isfile(path):
        raise InputError('%s: not found; get and convert the released weights (python '
                         'weights.py %s && python surgery.py pspnet-convert --model %s), or '
                         'start from a deep-stem ResNet converted to this Caffe with --weights '
                         'FILE' % (path, model_name, model_name))
    return path


def latest_weights(out_dir):
    """The .caffemodel of OUT's latest snapshot whose weights are complete (the size its
    manifest records; non-empty for one without a manifest), or None."""
    for it in reversed(snapshot_iters(out_dir)):
        path = snapshot_path(out_dir, it, 'caffemodel')
        try:
            manifest = read_manifest(out_dir, it)
        except Untrusted:
            continue
        size = os.path.getsize(path) if os.path.isfile(path) else 0
        if size and (manifest is None or manifest.get('caffemodel_bytes') == size):
            return path
    return None


def latest_state(out_dir):
    """The .solverstate beside latest_weights(OUT), or None (reproduce.py's question)."""
    path = latest_weights(out_dir)
    return path[:-len('.caffemodel')] + '.solverstate' if path else None


def ilsvrc_weights(arch):
    """ilsvrc-nets/<arch>-fcn.caffemodel: the ImageNet classifier cast to convolutions."""
    path = os.path.join(common.REPO, 'ilsvrc-nets', '%s-fcn.caffemodel' % arch)
    if not os.path.isfile(path):
        raise InputError('%s: not found; make it with `python weights.py %s` (downloads the '
                         'Model Zoo classifier) then `python surgery.py cast --arch %s`'
                         % (path, arch, arch))
    return path


def _deploy_with_weights(model_name, path):
    return common.open_net(os.path.join(models.model_dir(model_name), 'deploy.prototxt'),
                           'test', path, partial=True)


def init_weights(spec, solver):
    """Fill the solver's net the way the registry says `spec` starts (spec.init):
    copy: each parent's weights by layer name (none: the net's fillers); transplant: each
    parent into the layers carrying its suffix (NYUD late fusion); bgrd: the cast VGG16 by
    name, then conv1_1_bgrd from VGG's conv1_1 (paper 5, NYUDv2); release: the model's
    own released weights, converted (PSPNet fine-tunes); file: models.INIT_FILE in the
    model's folder (a model made by net.py new)."""
    if spec.init == 'release':
        path = pspnet_weights(spec.name)
    elif spec.init == 'file':
        path = os.path.join(models.model_dir(spec), models.INIT_FILE)
        if not os.path.isfile(path):
            raise InputError('%s: not found; make the model again with `python net.py new`'
                             % path)
    if spec.init in ('release', 'file'):
        print('starting from %s' % path, flush=True)
        load_weights(solver.net, path)
    elif not spec.parents:
        print('starting from the net\'s fillers (no parent)', flush=True)
    for p in spec.parents:
        path = parent_weights(p.source)
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


def load_weights(net_, path):
    """Copy `path` into `net_` by layer name (a parent's layers into its child: partial on
    purpose), after checking the shapes (no Caffe abort)."""
    common.check_weights(path, net_, partial=True)
    net_.copy_from(path)


# --- the solver -------------------------------------------------------------------------------

def read_solver(model_dir):
    """MODEL_DIR/solver.prototxt as a SolverParameter with absolute net paths (checked)."""
    caffe = common.import_caffe()
    path = os.path.join(model_dir, 'solver.prototxt')
    if not os.path.isfile(path):
        raise InputError('%s: solver prototxt not found' % path)
    param = caffe.proto.caffe_pb2.SolverParameter()
    try:
        with open(path) as f:
            text_format.Merge(f.read(), param)
    except (UnicodeDecodeError, text_format.ParseError) as e:
        raise InputError('%s: not a valid solver prototxt: %s' % (path, e))
    if not param.train_net:
        raise InputError('%s: no train_net' % path)
    param.train_net = os.path.join(model_dir, param.train_net)
    tests = [os.path.join(model_dir, t) for t in param.test_net]
    del param.test_net[:]
    param.test_net.extend(tests)
    common.check_prototxt(param.train_net, 'train')
    for net_path in tests:
        common.check_prototxt(net_path, 'test')
    return param


def make_solver(param, out_dir=None):
    """A Caffe solver for `param`, its own snapshots off (write_snapshot writes them, in
    binary proto format into OUT/.staging); its settings saved as OUT/solver.prototxt.
    out_dir None (a rank other than 0 of a multi-GPU run): nothing is written in OUT, the
    settings go through a temporary folder."""
    caffe = common.import_caffe()
    param.snapshot = 0
    param.snapshot_format = caffe.proto.caffe_pb2.SolverParameter.BINARYPROTO
    if out_dir is None:
        with tempfile.TemporaryDirectory() as tmp:
            param.snapshot_prefix = os.path.join(tmp, 'train')
            path = os.path.join(tmp, 'solver.prototxt')
            with open(path, 'w') as f:
                f.write(str(param))
            return caffe.get_solver(path)
    param.snapshot_prefix = os.path.join(out_dir, '.staging', 'train')
    os.makedirs(os.path.join(out_dir, '.staging'), exist_ok=True)
    path = os.path.join(out_dir, 'solver.prototxt')
    with writing(path) as f:
        f.write(str(param).encode())
    return caffe.get_solver(path)


def solver_type(param):
    return param.type or 'SGD'


def param_shapes(net_):
    """{layer: [blob shape, ...]} of the net's parameters: what a snapshot must fit."""
    return {name: [list(b.data.shape) for b in blobs] for name, blobs in net_.params.items()}


def param_bytes(net_):
    return sum(b.data.nbytes for blobs in net_.params.values() for b in blobs)


def iteration_seed(seed, iteration):
    """Caffe's random seed for `iteration` of a run seeded `seed` (unsigned 32 bits)."""
    return (seed * 1000003 + iteration) % 2 ** 32


@contextlib.contextmanager
def writing(path):
    """atomic_write(path) with any OS error (a full disk: ENOSPC) naming `path`."""
    try:
        with common.atomic_write(path) as f:
            yield f
    except OSError as e:
        raise InputError('%s: cannot write: %s' % (path, e.strerror or e))


# --- snapshots -------------------------------------------------------------------------------

def snapshot_path(out_dir, it, ext):
    return os.path.join(out_dir, 'train_iter_%d.%s' % (it, ext))


def snapshot_iters(out_dir):
    """Iterations of every snapshot file (weights, state or manifest) in OUT, ascending."""
    found = set()
    for path in glob.glob(os.path.join(glob.escape(out_dir), 'train_iter_*')):
        m = SNAPSHOT_RE.search(os.path.basename(path))
        if m:
            found.add(int(m.group(1)))
    return sorted(found)


def remove_snapshot(out_dir, it):
    """Delete snapshot `it` (the manifest first, so a half-deleted one is never trusted)."""
    for ext in ('json', 'caffemodel', 'solverstate'):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(snapshot_path(out_dir, it, ext))


def clean_staging(out_dir):
    stage = os.path.join(out_dir, '.staging')
    for name in os.listdir(stage) if os.path.isdir(stage) else ():
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(stage, name))


def snapshot_bytes(run):
    """Disk space a snapshot needs at its peak: weights and state as Caffe writes them,
    the state again as it is rewritten, and a margin (protobuf overhead, the log)."""
    w = param_bytes(run.solver.net)
    state = w * HISTORY_PER_PARAM.get(solver_type(run.param), 1)
    return w + 2 * state + w // 10 + 16 * 2 ** 20


def write_snapshot(run, end_of_round=False):
    """Write OUT/train_iter_N.{caffemodel,solverstate,json} for the solver's iteration;
    returns the weights path. Caffe writes into OUT/.staging (after a free-space check:
    Caffe aborts on a full disk); the files get their final names when complete, the
    manifest last. On any failure the staging files go and the earlier snapshots stay."""
    out, it = run.out, run.solver.iter
    common.check_free_space(out, snapshot_bytes(run), 'snapshot train_iter_%d' % it)
    caffe = common.import_caffe()
    stage = os.path.join(out, '.staging')
    staged = os.path.join(stage, 'train_iter_%d' % it)
    try:
        run.solver.snapshot()
        state = caffe.proto.caffe_pb2.SolverState()
        with open(staged + '.solverstate', 'rb') as f:
            state.ParseFromString(f.read())
        state.learned_net = os.path.basename(snapshot_path(out, it, 'caffemodel'))  # relative to OUT
        with contextlib.suppress(FileNotFoundError):  # an older snapshot of this iteration
            os.unlink(snapshot_path(out, it, 'json'))
        with writing(snapshot_path(out, it, 'solverstate')) as f:
            f.write(state.SerializeToString())
        os.replace(staged + '.caffemodel', snapshot_path(out, it, 'caffemodel'))
        manifest = {'iter': it, 'solver_type': solver_type(run.param), 'seed': run.config.seed,
                    'caffemodel_bytes': os.path.getsize(snapshot_path(out, it, 'caffemodel')),
                    'solverstate_bytes': os.path.getsize(snapshot_path(out, it, 'solverstate')),
                    'params': param_shapes(run.solver.net), 'end_of_round': end_of_round,
                    'round': run.round}
        with writing(snapshot_path(out, it, 'json')) as f:
            f.write(json.dumps(manifest, indent=1).encode())
    finally:
        clean_staging(out)
    run.last_snapshot = it
    return snapshot_path(out, it, 'caffemodel')


class Untrusted(Exception):
    """A snapshot whose files are missing, incomplete or do not parse: skipped."""


def read_manifest(out_dir, it):
    """Snapshot `it`'s manifest (None when it has none: written before manifests, or cut
    off before its last file); Untrusted when it does not parse."""
    path = snapshot_path(out_dir, it, 'json')
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            manifest = json.load(f)
    except (ValueError, OSError) as e:
        raise Untrusted('manifest %s unreadable (%s)' % (path, e))
    if not isinstance(manifest, dict) or manifest.get('iter') != it or 'round' not in manifest:
        raise Untrusted('manifest %s is not of iteration %d' % (path, it))
    return manifest


def check_manifest(run, it, manifest):
    """Untrusted unless the files have the sizes the manifest recorded; InputError when
    the snapshot is complete but of another solver type or net (Caffe would abort)."""
    for ext in ('caffemodel', 'solverstate'):
        path = snapshot_path(run.out, it, ext)
        size = os.path.getsize(path) if os.path.isfile(path) else None
        if size != manifest.get(ext + '_bytes'):
            raise Untrusted('%s has %s bytes, its manifest says %s'
                            % (path, size, manifest.get(ext + '_bytes')))
    redo = ('; --no-resume starts over (deleting the snapshots and the log) or pass '
            'another --out')
    if manifest.get('solver_type') != solver_type(run.param):
        raise InputError('%s: written by a %s solver, solver.prototxt now says %s%s'
                         % (snapshot_path(run.out, it, 'json'), manifest.get('solver_type'),
                            solver_type(run.param), redo))
    if manifest.get('params') != param_shapes(run.solver.net):
        raise InputError('%s: written for a net with other parameter shapes than %s%s'
                         % (snapshot_path(run.out, it, 'json'), run.param.train_net, redo))


def check_state(run, it):
    """The parsed SolverState of snapshot `it`, Untrusted unless it parses, holds
    iteration `it` and one history blob of each parameter's shape per history slot."""
    caffe = common.import_caffe()
    path = snapshot_path(run.out, it, 'solverstate')
    state = common.read_proto(path, caffe.proto.caffe_pb2.SolverState(), Untrusted,
                              '%s does not parse (%s)')
    shapes = [s for blobs in param_shapes(run.solver.net).values() for s in blobs]
    shapes = shapes * HISTORY_PER_PARAM.get(solver_type(run.param), 1)
    stored = [list(b.shape.dim) for b in state.history]
    if state.iter != it or stored != shapes or any(
            len(b.data) != math.prod(s) for b, s in zip(state.history, shapes)):
        raise Untrusted('%s is incomplete or not of this net and solver (iteration %d, %d '
                        'history blobs, %d expected)' % (path, state.iter, len(stored), len(shapes)))
    own = os.path.basename(snapshot_path(run.out, it, 'caffemodel'))
    if state.learned_net != own and run.lead:  # an older snapshot naming an absolute path: its own file
        state.learned_net = own
        with writing(path) as f:
            f.write(state.SerializeToString())
    return state


def trusted_snapshot(run):
    """(iteration, manifest or None) of the latest snapshot that is complete and fits, or
    None when OUT has none. Damaged later ones are reported and deleted."""
    iters, skipped = snapshot_iters(run.out), []
    for it in reversed(iters):
        try:
            manifest = read_manifest(run.out, it)
            if manifest is not None:
                check_manifest(run, it, manifest)
            try:
                common.check_weights(snapshot_path(run.out, it, 'caffemodel'), run.solver.net)
            except InputError as e:
                raise Untrusted(str(e))
            check_state(run, it)
        except Untrusted as e:
            run.say('note: snapshot train_iter_%d is not usable: %s' % (it, e))
            skipped.append(it)
            continue
        for bad in skipped if run.lead else ():
            remove_snapshot(run.out, bad)
        if skipped and run.lead:
            print('note: resuming from the previous good snapshot, train_iter_%d' % it, flush=True)
        return it, manifest
    if iters:
        raise InputError('%s: no usable snapshot among %d (see the notes above); --no-resume '
                         'starts over (deleting them)' % (run.out, len(iters)))
    return None


def restore(run, it, manifest):
    """Restore solver, weights, data position and the round's partial sums from `it`.
    The state names its weights relative to OUT (checked above), so Caffe reads it with
    OUT as the working directory."""
    state = snapshot_path(run.out, it, 'solverstate')
    run.say('resuming from %s' % state)
    cwd = os.getcwd()
    os.chdir(run.out)
    try:
        run.solver.restore(state)
    finally:
        os.chdir(cwd)
    if manifest is not None:
        run.round = dict(manifest['round'])
        if manifest.get('seed') != run.config.seed and run.lead:
            print('note: the run was seeded %s, now %d: the resumed run will not repeat an '
                  'uninterrupted one exactly' % (manifest.get('seed'), run.config.seed), flush=True)
    else:  # a snapshot from before manifests: the round's loss starts here
        run.round = new_round(it)
    run.last_snapshot = it
    seek_data(run.solver.net, it * max(1, run.param.iter_size))  # same image stream
    if not run.lead:  # the log is rank 0's
        return
    rewrite_log(run.out, read_log(run.out, upto=it))
    if manifest is not None and manifest.get('end_of_round'):
        if not any(r['iter'] == it for r in read_log(run.out)):
            print('scoring round %d, which the last run did not finish' % it, flush=True)
            log_round(run, manifest['round'], os.path.basename(state))
        run.round = new_round(it)


def prune(run):
    """Delete all but the last `keep_snapshots` snapshots and the best by mean IU."""
    keep = run.config.keep_snapshots
    iters = snapshot_iters(run.out)
    if keep is None or len(iters) <= keep:
        return
    kept = set(iters[-keep:])
    best = max(read_log(run.out), key=mean_iu, default=None)
    if best is not None and mean_iu(best) >= 0:
        kept.add(best['iter'])
    for it in iters:
        if it not in kept:
            remove_snapshot(run.out, it)


def mean_iu(record):
    """The record's first task's mean IU ('seg', or SIFT Flow's 'sem'); -1 when none."""
    scores = record.get('scores') or {}
    for task in ('seg', 'sem'):
        if task in scores and scores[task].get('mean_iu') is not None:
            return scores[task]['mean_iu']
    return -1


# --- scoring and the log ----------------------------------------------------------------------

def seek_data(net_, forwards):
    """Put the net's layers.py data layers where `forwards` forward passes leave them."""
    for layer in net_.layers:
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
    (score.model_tasks: SIFT Flow's two heads, its absent classes excluded); {task:
    scores dict (with 'loss')}, task 'seg' for `label`, else the label blob's name."""
    if not run.score_ids:
        return {}
    net_ = run.solver.test_nets[0]
    net_.share_with(run.solver.net)
    seek_data(net_, 0)  # every round scores the same images, from the split's start
    tasks, _ = score.model_tasks(net_, run.dataset, run.split, run.param.test_net[0], save_dir)
    return {('seg' if ev.gt == 'label' else ev.gt): ev.scores
            for ev in score.evaluate_tasks(net_, run.score_ids, tasks, progress=True)}


def read_log(out_dir, upto=None):
    """Records of OUT/log.jsonl (only iterations <= upto when given)."""
    path = os.path.join(out_dir, 'log.jsonl')
    records = []
    if os.path.isfile(path):
        with open(path) as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue  # a line cut short by a crash
                if upto is None or rec['iter'] <= upto:
                    records.append(rec)
    return records


def rewrite_log(out_dir, records):
    """OUT/log.jsonl holding `records` (NaN per-class values as null), atomically."""
    text = ''.join(json.dumps(metrics.jsonable(r), allow_nan=False) + '\n' for r in records)
    with writing(os.path.join(out_dir, 'log.jsonl')) as f:
        f.write(text.encode())


def plot_log(out_dir):
    """OUT/log.png: training loss and mean IU per scoring round."""
    records = read_log(out_dir)
    if not records:
        return None
    its = [r['iter'] for r in records]
    fig = Figure(figsize=(10, 4))
    ax1, ax2 = fig.subplots(1, 2)
    ax1.plot(its, [r['train_loss'] for r in records], 'o-')
    ax1.set_xlabel('iteration')
    ax1.set_ylabel('mean training loss (sum over pixels)')
    ax1.set_title('training loss')
    for name in records[-1]['scores']:
        for key, style, what in (('mean_iu', 'o-', 'mean IU'), ('overall_acc', 's--', 'pixel acc.')):
            ax2.plot(its, [(r['scores'].get(name) or {}).get(key) or float('nan') for r in records],
                     style, label='%s %s' % (name, what))
    ax2.set_xlabel('iteration')
    ax2.set_ylim(0, 1)
    ax2.set_title('validation')
    if records[-1]['scores']:
        ax2.legend(loc='lower right', fontsize=8)
    fig.tight_layout()
    path = os.path.join(out_dir, 'log.png')
    with writing(path) as f:
        fig.savefig(f, format='png', dpi=80)
    return path


def log_round(run, rnd, snapshot_name):
    """Score, then add the round's record to the log and redraw the plot; the scoring can
    be interrupted (the snapshot is written): a rerun scores the round again."""
    last = run.solver.iter == run.total
    save = os.path.join(run.out, 'pred') if (run.config.save_pred and last) else None
    with run.stop.interruptible():
        results = score_round(run, save)
    record = {'iter': run.solver.iter, 'train_loss': rnd['loss_sum'] / max(1, rnd['count']),
              'seconds': round(rnd['seconds'], 2), 'snapshot': snapshot_name, 'scores': results}
    rewrite_log(run.out, read_log(run.out) + [record])
    plot_log(run.out)
    for task, m in results.items():
        print('>>> iter %d %s: loss %.4g  overall acc %.4f  mean acc %.4f  mean IU %.4f  '
              'fwavacc %.4f' % (run.solver.iter, task, m['loss'], m['overall_acc'],
                                m['mean_acc'], m['mean_iu'], m['fwavacc']), flush=True)
    return record


# --- signals, the lock ------------------------------------------------------------------------

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
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
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


def keep_forever(obj):
    """Never free `obj`. After a NaN loss Caffe's heap is already damaged: max pooling's
    backward pass writes one value before its gradient buffer when a window holds only
    NaN (its argmax stays -1), so freeing the solver would abort the process with
    `double free or corruption`; the process ends without ever freeing it."""
    ctypes.pythonapi.Py_IncRef(ctypes.py_object(obj))


# --- the run: open, start, rounds ------------------------------------------------------------

def new_round(start):
    return {'start': start, 'loss_sum': 0.0, 'count': 0, 'seconds': 0.0}


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
        return 'none' if it is None else snapshot_path(self.out, it, 'caffemodel')

    def say(self, text):
        if self.lead:
            print(text, flush=True)


def use_devices(gpus, rank):
    """Put this process on its device before the solver is made: the CPU, one GPU, or
    GPU gpus[rank] of a multi-GPU run (parallel.init_rank); returns it in words."""
    if len(gpus) > 1:
        problem = common.gpu_problem(gpus[rank])  # in the rank's process: CUDA may start here
        if problem:
            raise InputError(problem)
        parallel.init_rank(gpus, rank)
        return 'gpu %d (rank %d of %d)' % (gpus[rank], rank, len(gpus))
    return common.set_mode(gpus[0] if gpus else None)


@contextlib.contextmanager
def open_run(model, config, rank=0):
    """A Run with OUT locked, the solver built, the signal handlers on (all undone after);
    a rank other than 0 takes no lock and installs no handlers (the launcher passes
    signals to rank 0 and ends the others)."""
    run = Run(model, config, rank)
    if config.data_root:  # read by the Python data layers Caffe instantiates
        os.environ['FCN_DATA_ROOT'] = os.path.abspath(config.data_root)
    if run.lead:
        os.makedirs(run.out, exist_ok=True)
    with run_lock(run.out) if run.lead else contextlib.nullcontext():
        run.mode = use_devices(config.gpus, rank)
        run.param = read_solver(os.path.abspath(model.dir))
        run.solver = make_solver(run.param, run.out if run.lead else None)
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
    spec, path, net_ = run.model.spec, run.config.weights, run.solver.net
    if path:
        print('starting from %s' % path, flush=True)
        load_weights(net_, path)
    elif spec is not None:
        init_weights(spec, run.solver)
    else:
        print('starting from the net\'s fillers (a folder outside the registry)', flush=True)
    surgery.finish(net_, spec.finish if spec is not None else models.DEFAULT_FINISH)
    old = snapshot_iters(run.out)
    for it in old:  # after the weights are read: --weights may be one of them
        remove_snapshot(run.out, it)
    if old:
        print('note: started over: %d old snapshot(s) in %s deleted' % (len(old), run.out), flush=True)
    rewrite_log(run.out, [])


def start(run):
    """Resume from OUT's latest good snapshot, or start fresh (every rank resumes from the
    same snapshot: rank 0's files, only read by the others)."""
    found = trusted_snapshot(run) if run.config.resume else None
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


def step(run):
    """One iteration, Caffe reseeded first; returns its loss (the sum of the loss tops).
    Every rank checks its own loss."""
    caffe = common.import_caffe()
    solver = run.solver
    caffe.set_random_seed(iteration_seed(run.config.seed, solver.iter))
    try:
        solver.step(1)
    except (InputError, ValueError, OSError) as e:  # a data layer's bad file
        if run.lead and solver.iter > (run.last_snapshot or 0) and solver.iter > run.round['start']:
            path = write_snapshot(run)
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
        if run.stop.signum is not None:  # only rank 0 has the handlers
            path = write_snapshot(run)
            print('stopped at iteration %d; snapshot %s; run again to resume'
                  % (solver.iter, path), file=sys.stderr, flush=True)
            run.stop.exit(run.stop.signum)
        if solver.iter % run.config.iters == 0:
            return


def end_round(run):
    """Snapshot (marked end of round), score, log, plot, prune (rank 0); start the next
    round."""
    if run.lead:
        path = write_snapshot(run, end_of_round=True)
        log_round(run, run.round, os.path.basename(path)[:-len('.caffemodel')] + '.solverstate')
        prune(run)
    run.round = new_round(run.solver.iter)


def train_rank(model, config, rank=0, uid=None):
    """The run in one process: a single one (uid None), or rank `rank` of a multi-GPU run
    joined to the others through NCCL id `uid`. Returns 0; exits the process on
    SIGINT/SIGTERM (after a snapshot: status 128 + signal)."""
    with open_run(model, config, rank) as run:
        try:
            start(run)
            nccl = join_ranks(run, uid)  # noqa: F841 (kept alive while stepping)
            while run.solver.iter < run.total:
                train_round(run)
                end_round(run)
        except Interrupted as e:
            print('stopped at once (%s); the last snapshot %s is kept; run again to resume'
                  % (signal.Signals(e.signum).name, run.last_snapshot_name()),
                  file=sys.stderr, flush=True)
            run.stop.exit(e.signum)
    run.say('done: %s (log %s, plot %s)' % (run.out, os.path.join(run.out, 'log.jsonl'),
                                            os.path.join(run.out, 'log.png')))
    return 0


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
    return read_log(os.path.abspath(config.out))


# --- the commands -----------------------------------------------------------------------------

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
    if model is None:
        p = argparse.ArgumentParser(
            prog='train.py', formatter_class=argparse.RawDescriptionHelpFormatter,
            description=__doc__.split('\n\n')[0] + ' It is run as a model folder\'s '
                        'solve.py:\n\n' + __doc__.split('\n\n')[1],
            epilog='models (each trained by its folder\'s solve.py, with the flags above):\n  '
                   + '\n  '.join(models.names()))
        schedule = None
    else:
        schedule = model.spec.schedule if model.spec else None
        p = argparse.ArgumentParser(
            prog=os.path.join(model.dir, 'solve.py'),
            description='Train %s the paper\'s way: %s, scoring after each round.'
                        % (model.name, '%d rounds x %d iterations' % (schedule.rounds, schedule.iters)
                           if schedule else 'give --rounds and --iters (not a registered model)'))
    p.add_argument('--gpu', type=parallel.gpu_ids, default=[], metavar='ID[,ID...]',
                   help='GPU id, or ids 0,1,... for data-parallel training over NCCL, one '
                        'process per GPU (parallel.py) (default: CPU)')
    p.add_argument('--weights', default=None,
                   help='weights to start from (default: the registry\'s start, see solve.py)')
    for flag, value, what in (('--rounds', schedule and schedule.rounds, 'scoring rounds'),
                              ('--iters', schedule and schedule.iters, 'iterations per round')):
        p.add_argument(flag, type=int, default=value, required=model is not None and not value,
                       help=what + (' (default %(default)s)' if value else ''))
    p.add_argument('--score-limit', type=int, default=None,
                   help='score only the first N images of the split (default: all)')
    p.add_argument('--data-root', default=None,
                   help='datasets root (default: $FCN_DATA_ROOT or <repo>/data)')
    p.add_argument('--out', default=None, help='snapshots, log and plot (default: MODEL_DIR/snapshot)')
    p.add_argument('--no-resume', action='store_true',
                   help='start over: delete the snapshots and log already in OUT')
    p.add_argument('--seed', type=int, default=1337,
                   help='seeds Caffe\'s random numbers (Dropout) at every iteration (default %(default)s)')
    p.add_argument('--keep-snapshots', type=_keep, default=KEEP_SNAPSHOTS, metavar='N|all',
                   help='keep the last N snapshots and the best by mean IU (default %(default)s)')
    p.add_argument('--save-pred', action='store_true',
                   help='write the last round\'s predictions as palette PNGs under OUT/pred')
    return p


def run_config(model, args):
    """The RunConfig of parsed solve.py flags."""
    return RunConfig(rounds=args.rounds, iters=args.iters, score_limit=args.score_limit,
                     weights=args.weights, data_root=args.data_root, gpus=tuple(args.gpu),
                     out=args.out or snapshot_dir(model.dir),
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
    common.run_cli(run, argv)


if __name__ == '__main__':
    main()
