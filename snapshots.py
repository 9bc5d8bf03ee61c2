"""A training run's folder OUT: its snapshots, trusted only when complete, and its log.

    snapshot_dir(model_dir)   # MODEL_DIR/snapshot: where a model's solve.py writes
    latest_weights(out)       # the latest snapshot's complete .caffemodel, or None
    write_snapshot(run)       # OUT/train_iter_N.{caffemodel,solverstate,json}, manifest last
    trusted_snapshot(run)     # (iteration, manifest) of the latest one that fits, or None
    prune(run)                # keep the last N and the best by mean IU
    read_log(out) / rewrite_log(out, records) / plot_log(out)   # OUT/log.jsonl, OUT/log.png

A snapshot is three files: the weights and the solver state as Caffe writes them (into
OUT/.staging, renamed into place when complete) and a manifest train_iter_N.json written
last (sizes, iteration, solver type, parameter shapes, the round's partial sums). A
snapshot whose files are missing, cut short or do not parse is Untrusted: skipped on
resume and deleted. No manifest means not complete (a kill or a full disk between the
weights' rename and the manifest): Untrusted too; a damaged manifest (not JSON, binary,
another shape) likewise. One of another net or solver type is an InputError (Caffe
would abort on it). A damaged line of log.jsonl (cut short, binary, not a record) is
dropped when a run resumes, with a note naming the file and line, the damaged file
kept as log.jsonl.damaged: the other records and the run go on.

Files in OUT are never followed through symbolic links: the staging folder and the
lock are checked (safewrite.own_folder, open_own), every write goes through
safewrite.atomic_write or place (a link is refused, never replaced or written through),
and deleting a snapshot unlinks names in OUT, never a link's target. The state names its weights relative to OUT, so a moved folder resumes
from its own files. `run` is trainsetup.Run: out, solver, param, config, round, lead, say.
"""
import contextlib
import glob
import json
import math
import numbers
import os
import re

from matplotlib.figure import Figure

import guard
import jsonfile
import metrics
import netload
import safewrite
from project import InputError


KEEP_SNAPSHOTS = 3


SNAPSHOT_RE = re.compile(r'train_iter_(\d+)\.(caffemodel|solverstate|json)$')


# Adam and AdaDelta keep two history blobs per parameter, the other solvers one.
HISTORY_PER_PARAM = {'Adam': 2, 'AdaDelta': 2}


def snapshot_dir(model_dir):
    """Where a model's solve.py writes its snapshots, log and plot unless --out says."""
    return os.path.join(model_dir, 'snapshot')


def latest_weights(out_dir):
    """The .caffemodel of OUT's latest complete snapshot (a manifest that reads, the size
    it records), or None."""
    for it in reversed(snapshot_iters(out_dir)):
        path = snapshot_path(out_dir, it, 'caffemodel')
        try:
            manifest = read_manifest(out_dir, it)
        except Untrusted:
            continue
        size = os.path.getsize(path) if os.path.isfile(path) else 0
        if size and manifest['caffemodel_bytes'] == size:
            return path
    return None


def solver_type(param):
    return param.type or 'SGD'


def param_shapes(caffe_net):
    """{layer: [blob shape, ...]} of the net's parameters: what a snapshot must fit."""
    return {name: [list(b.data.shape) for b in blobs] for name, blobs in caffe_net.params.items()}


def param_bytes(caffe_net):
    return sum(b.data.nbytes for blobs in caffe_net.params.values() for b in blobs)


@contextlib.contextmanager
def writing(path, protect=()):
    """atomic_write(path) with any OS error (a full disk: ENOSPC) naming `path`."""
    try:
        with safewrite.atomic_write(path, protect=protect) as f:
            yield f
    except OSError as e:
        raise InputError('%s: cannot write: %s' % (path, e.strerror or e))


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


def staging_dir(out_dir):
    """OUT/.staging, where Caffe writes a snapshot before it is checked: created if
    missing, never a symbolic link (safewrite.own_folder: its files are deleted)."""
    return safewrite.own_folder(os.path.join(out_dir, '.staging'))


def clean_staging(out_dir):
    """Delete what OUT/.staging holds (never through a link: the folder is checked, and
    unlink removes a link, not its target)."""
    stage = staging_dir(out_dir)
    for name in os.listdir(stage):
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
    safewrite.check_free_space(out, snapshot_bytes(run), 'snapshot train_iter_%d' % it)
    caffe = guard.import_caffe()
    clean_staging(out)  # nothing (a link planted there) for Caffe to write through
    staged = os.path.join(out, '.staging', 'train_iter_%d' % it)
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
        safewrite.place(staged + '.caffemodel', snapshot_path(out, it, 'caffemodel'))
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


ROUND_KEYS = ('start', 'loss_sum', 'count', 'seconds')


def read_manifest(out_dir, it):
    """Snapshot `it`'s manifest; Untrusted when there is none (the snapshot was cut off
    before its last file: not complete) or it does not parse or has another shape."""
    path = snapshot_path(out_dir, it, 'json')
    if not os.path.isfile(path):
        raise Untrusted('it has no manifest %s: cut off before it was complete' % path)
    try:
        manifest = jsonfile.read_json(path)
    except InputError as e:
        raise Untrusted('manifest %s' % e)
    if manifest.get('iter') != it:
        raise Untrusted('manifest %s is not of iteration %d' % (path, it))
    rnd = manifest.get('round')
    if not (isinstance(rnd, dict) and all(_number(rnd.get(k)) for k in ROUND_KEYS)
            and all(_number(manifest.get(k + '_bytes')) for k in ('caffemodel', 'solverstate'))
            and isinstance(manifest.get('params'), dict)):
        raise Untrusted('manifest %s has not the fields of a manifest (round %s, sizes, params)'
                        % (path, ', '.join(ROUND_KEYS)))
    return manifest


def _number(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


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
    caffe = guard.import_caffe()
    path = snapshot_path(run.out, it, 'solverstate')
    state = netload.read_proto(path, caffe.proto.caffe_pb2.SolverState(), Untrusted,
                              '%s does not parse (%s)')
    shapes = [s for blobs in param_shapes(run.solver.net).values() for s in blobs]
    shapes = shapes * HISTORY_PER_PARAM.get(solver_type(run.param), 1)
    stored = [list(b.shape.dim) for b in state.history]
    if state.iter != it or stored != shapes or any(
            netload.blob_value_problem(b, math.prod(s)) for b, s in zip(state.history, shapes)):
        raise Untrusted('%s is incomplete or not of this net and solver (iteration %d, %d '
                        'history blobs, %d expected)' % (path, state.iter, len(stored), len(shapes)))
    own = os.path.basename(snapshot_path(run.out, it, 'caffemodel'))
    if state.learned_net != own and run.lead:  # an older snapshot naming an absolute path: its own file
        state.learned_net = own
        with writing(path) as f:
            f.write(state.SerializeToString())
    return state


def trusted_snapshot(run):
    """(iteration, manifest) of the latest snapshot that is complete and fits, or
    None when OUT has none. Damaged later ones are reported and deleted."""
    iters, skipped = snapshot_iters(run.out), []
    for it in reversed(iters):
        try:
            manifest = read_manifest(run.out, it)
            check_manifest(run, it, manifest)
            try:
                netload.check_weights(snapshot_path(run.out, it, 'caffemodel'), run.solver.net)
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


def read_log(out_dir, upto=None, damaged=None):
    """Records of OUT/log.jsonl (only iterations <= upto when given). A damaged line (cut
    short by a crash, binary, not JSON, nested too deep, not a record) is skipped; with
    a list `damaged`, its problem (naming the file and line) is appended there."""
    path = os.path.join(out_dir, 'log.jsonl')
    records = []
    if not os.path.isfile(path):
        return records
    with open(path, 'rb') as f:
        lines = f.read().splitlines()
    for n, line in enumerate(lines, 1):
        where = '%s line %d' % (path, n)
        try:
            rec = jsonfile.parse_json(line, where)
            problem = _record_problem(rec)
            if problem:
                raise InputError('%s: %s' % (where, problem))
        except InputError as e:
            if damaged is not None:
                damaged.append(str(e))
            continue
        if upto is None or rec['iter'] <= upto:
            records.append(rec)
    return records


def _record_problem(rec):
    """Why `rec` is not a log record (iter, train_loss, seconds, snapshot, scores {task:
    {metric: value}}), or None."""
    if not (isinstance(rec.get('iter'), int) and not isinstance(rec['iter'], bool)):
        return 'not a log record (no integer "iter")'
    if not (rec.get('train_loss') is None or _number(rec['train_loss'])):
        return '"train_loss" is not a number'
    scores = rec.get('scores')
    if not isinstance(scores, dict) or not all(isinstance(v, dict) for v in scores.values()):
        return '"scores" is not an object of objects'
    for task in scores.values():
        for key in ('mean_iu', 'overall_acc'):
            if not (task.get(key) is None or _number(task[key])):
                return '"scores" holds a %s that is not a number' % key
    return None


def repair_log(out_dir, say):
    """Drop the damaged lines of OUT/log.jsonl (read_log), keeping the file as it was in
    OUT/log.jsonl.damaged and saying which lines went; the other records stay. So a
    damaged log never stops every rerun; the dropped rounds stay unlogged."""
    damaged = []
    records = read_log(out_dir, damaged=damaged)
    if not damaged:
        return
    path = os.path.join(out_dir, 'log.jsonl')
    with open(path, 'rb') as f:
        data = f.read()
    with writing(path + '.damaged') as f:
        f.write(data)
    for problem in damaged[:5]:
        say('note: %s: dropped' % problem)
    say('note: %d damaged line(s) dropped from %s (the file as it was: %s.damaged)'
        % (len(damaged), path, path))
    rewrite_log(out_dir, records)


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
    ax1.plot(its, [float('nan') if r['train_loss'] is None else r['train_loss'] for r in records], 'o-')
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
