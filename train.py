"""The one solving loop behind every model directory's solve.py.

    python voc-fcn32s/solve.py                     # the paper's recipe, CPU
    python voc-fcn32s/solve.py --gpu 0             # on GPU 0
    python voc-fcn8s/solve.py --rounds 2 --iters 50 --score-limit 20   # a short run
    python voc-fcn8s/solve.py --weights my.caffemodel --data-root /datasets

The flow is the paper's (FCN-SPEC section 3): build the solver from the model
directory's solver.prototxt -> copy the parent net's weights by layer name -> set every
Deconvolution layer to bilinear interpolation (surgery.interp) -> loop { step(N);
score the validation split }. Training images are drawn at random with replacement by
the data layer (seed 1337); scoring walks the split in order.

What this loop adds around Caffe:
- snapshots (.caffemodel + .solverstate) at the end of each round, written atomically
  into OUT (default MODEL_DIR/snapshot); a run resumes from the latest one;
- a machine-readable log OUT/log.jsonl (one JSON object per scoring round: iteration,
  mean training loss, seconds, metrics per task) and a plot OUT/log.png;
- a NaN or infinite loss stops the run with a message; Ctrl-C or SIGTERM snapshots and
  exits cleanly (status 130 / 143).
"""
import argparse
import glob
import json
import math
import os
import re
import signal
import sys
import time

import common
from common import InputError

def schedule(model_name):
    """(rounds, iterations per round) of a model in net.MODELS (FCN-SPEC section 3: each
    round ends with scoring; the solver's max_iter is not what stops training)."""
    import net
    m = net.MODELS.get(model_name)
    return (m['rounds'], m['iters']) if m else (25, 4000)


# --- solver and snapshots -------------------------------------------------------------------

def read_solver(model_dir):
    """MODEL_DIR/solver.prototxt as a SolverParameter with absolute net paths (checked)."""
    from google.protobuf import text_format
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
    for net_path in [param.train_net] + tests:
        common.check_prototxt(net_path)
    return param


def make_solver(param, out_dir):
    """A Caffe solver for `param`, its own snapshots off: snapshot() below writes them."""
    caffe = common.import_caffe()
    param.snapshot = 0
    param.snapshot_prefix = os.path.join(out_dir, '.staging', 'train')
    os.makedirs(os.path.join(out_dir, '.staging'), exist_ok=True)
    path = os.path.join(out_dir, 'solver.prototxt')
    with common.atomic_write(path, 'w') as f:
        f.write(str(param))
    return caffe.get_solver(path)


def snapshot(solver, out_dir):
    """Write OUT/train_iter_N.{caffemodel,solverstate} atomically; returns the state's path.

    Caffe writes both files in place, so it writes them into OUT/.staging and they are
    renamed into OUT when complete: the weights first, then the state (which names the
    weights file, so its `learned_net` is pointed at the final path)."""
    caffe = common.import_caffe()
    solver.snapshot()
    stage = os.path.join(out_dir, '.staging')
    name = 'train_iter_%d' % solver.iter
    model = os.path.join(out_dir, name + '.caffemodel')
    os.replace(os.path.join(stage, name + '.caffemodel'), model)
    state = caffe.proto.caffe_pb2.SolverState()
    staged_state = os.path.join(stage, name + '.solverstate')
    with open(staged_state, 'rb') as f:
        state.ParseFromString(f.read())
    state.learned_net = model
    path = os.path.join(out_dir, name + '.solverstate')
    with common.atomic_write(path) as f:
        f.write(state.SerializeToString())
    os.unlink(staged_state)
    return path


def latest_state(out_dir):
    """The .solverstate of the highest iteration in OUT whose weights exist, or None."""
    best = None
    for path in glob.glob(os.path.join(out_dir, 'train_iter_*.solverstate')):
        m = re.search(r'train_iter_(\d+)\.solverstate$', path)
        if m and os.path.isfile(path[:-len('.solverstate')] + '.caffemodel'):
            if best is None or int(m.group(1)) > best[0]:
                best = (int(m.group(1)), path)
    return best[1] if best else None


def trained_weights(model_name):
    """Weights of a trained model for a child to start from: the latest snapshot in
    MODEL/snapshot/, else the released caffemodel in MODEL/ (see weights.py)."""
    model_dir = os.path.join(common.REPO, model_name)
    state = latest_state(os.path.join(model_dir, 'snapshot'))
    if state:
        return state[:-len('.solverstate')] + '.caffemodel'
    import weights
    try:
        released = weights.weights_path(model_name)  # where weights.py puts it
    except InputError:  # the release never had this model
        released = None
    if released and os.path.isfile(released):
        return released
    raise InputError('%s: no trained weights (no snapshot/ and no released .caffemodel); '
                     'train it with `python %s/solve.py` or fetch them with '
                     '`python weights.py %s`' % (model_dir, model_name, model_name))


def ilsvrc_weights(arch):
    """ilsvrc-nets/<arch>-fcn.caffemodel: the ImageNet classifier cast to convolutions."""
    path = os.path.join(common.REPO, 'ilsvrc-nets', '%s-fcn.caffemodel' % arch)
    if not os.path.isfile(path):
        raise InputError('%s: not found; make it with `python weights.py %s` (downloads the '
                         'Model Zoo classifier) then `python surgery.py cast --arch %s`'
                         % (path, arch, arch))
    return path


def _deploy_with_weights(model_name, weights):
    return common.open_net(os.path.join(common.REPO, model_name, 'deploy.prototxt'), 'test', weights)


def init_color_d(solver):
    """NYUD color-d: VGG16 (cast) by name, then conv1_1_bgrd from VGG's conv1_1 (FCN-SPEC 2)."""
    import surgery
    weights = ilsvrc_weights('vgg16')
    print('starting from %s (conv1_1 -> conv1_1_bgrd)' % weights, flush=True)
    load_weights(solver.net, weights)
    vgg = _deploy_with_weights('voc-fcn32s', weights)
    surgery.init_bgrd(solver.net, vgg)


def init_color_hha(solver):
    """NYUD color-HHA: the trained color and HHA nets transplanted into suffixed towers."""
    import surgery
    for model, suffix in (('nyud-fcn32s-color', 'color'), ('nyud-fcn32s-hha', 'hha')):
        weights = trained_weights(model)
        print('tower %s from %s' % (suffix, weights), flush=True)
        surgery.transplant(solver.net, _deploy_with_weights(model, weights), suffix)


def load_weights(net, weights):
    """Copy `weights` into `net` by layer name, after checking the shapes (no Caffe abort)."""
    common.check_weights(weights, net)
    net.copy_from(weights)


# --- scoring and the log ----------------------------------------------------------------------

def seek_data(net, forwards):
    """Put the net's layers.py data layers where `forwards` forward passes leave them."""
    for layer in net.layers:
        if hasattr(layer, 'seek'):
            layer.seek(forwards)


def score_round(solver, dataset, split, test_net, ids, save_dir=None):
    """Score the test net (sharing the training weights) on the images `ids`, the start of
    its split, walking it in order, every output of the net in one pass (score.model_tasks:
    SIFT Flow's two heads, its absent classes excluded); {task: scores dict (score.scores,
    with 'loss')}, task 'seg' for `label`, else the label blob's name ('sem', 'geo')."""
    import score
    net = solver.test_nets[0]
    net.share_with(solver.net)
    seek_data(net, 0)  # every round scores the same images, from the split's start
    tasks, _ = score.model_tasks(net, dataset, split, test_net, save_dir)
    return {('seg' if ev.gt == 'label' else ev.gt): ev.scores
            for ev in score.evaluate_tasks(net, ids, tasks, progress=True)}


def append_log(out_dir, record):
    """Add one round's record to OUT/log.jsonl (NaN per-class values become null)."""
    import metrics
    path = os.path.join(out_dir, 'log.jsonl')
    with open(path, 'a') as f:
        f.write(json.dumps(metrics.jsonable(record), allow_nan=False) + '\n')
        f.flush()
        os.fsync(f.fileno())


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
    with common.atomic_write(os.path.join(out_dir, 'log.jsonl'), 'w') as f:
        for rec in records:
            f.write(json.dumps(rec) + '\n')


def plot_log(out_dir):
    """OUT/log.png: training loss and mean IU per scoring round."""
    records = read_log(out_dir)
    if not records:
        return None
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    its = [r['iter'] for r in records]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(its, [r['train_loss'] for r in records], 'o-')
    ax1.set_xlabel('iteration')
    ax1.set_ylabel('mean training loss (sum over pixels)')
    ax1.set_title('training loss')
    for name in records[-1]['scores']:
        ax2.plot(its, [r['scores'].get(name, {}).get('mean_iu', float('nan')) for r in records],
                 'o-', label='%s mean IU' % name)
        ax2.plot(its, [r['scores'].get(name, {}).get('overall_acc', float('nan')) for r in records],
                 's--', label='%s pixel acc.' % name)
    ax2.set_xlabel('iteration')
    ax2.set_ylim(0, 1)
    ax2.set_title('validation')
    ax2.legend(loc='lower right', fontsize=8)
    fig.tight_layout()
    path = os.path.join(out_dir, 'log.png')
    with common.atomic_write(path) as f:
        fig.savefig(f, format='png', dpi=80)
    plt.close(fig)
    return path


# --- the loop -------------------------------------------------------------------------------

class Stop(object):
    """Remembers a SIGINT/SIGTERM so the loop can snapshot between iterations."""

    def __init__(self):
        self.signum = None

    def __call__(self, signum, frame):
        if self.signum is not None:  # a second Ctrl-C: give up at once
            raise KeyboardInterrupt
        self.signum = signum
        print('\n%s received: finishing this iteration, then snapshotting'
              % signal.Signals(signum).name, file=sys.stderr, flush=True)


def parse_args(model_name, argv):
    rounds, iters = schedule(model_name)
    p = argparse.ArgumentParser(
        prog='%s/solve.py' % model_name,
        description='Train %s the paper\'s way: %d rounds x %d iterations, scoring after each.'
                    % (model_name, rounds, iters))
    p.add_argument('--gpu', type=int, default=None, help='GPU id (default: CPU)')
    p.add_argument('--weights', default=None,
                   help='weights to start from (default: the parent net, see solve.py)')
    p.add_argument('--rounds', type=int, default=rounds, help='scoring rounds (default %(default)s)')
    p.add_argument('--iters', type=int, default=iters, help='iterations per round (default %(default)s)')
    p.add_argument('--score-limit', type=int, default=None,
                   help='score only the first N images of the split (default: all)')
    p.add_argument('--data-root', default=None,
                   help='datasets root (default: $FCN_DATA_ROOT or <repo>/data)')
    p.add_argument('--out', default=None, help='snapshots, log and plot (default: MODEL_DIR/snapshot)')
    p.add_argument('--no-resume', action='store_true', help='start over even if snapshots exist')
    p.add_argument('--save-pred', action='store_true',
                   help='write the last round\'s predictions as palette PNGs under OUT/pred')
    args = p.parse_args(argv)
    for flag in ('rounds', 'iters'):
        if getattr(args, flag) < 1:
            p.error('--%s must be at least 1' % flag)
    return args


def solve(model_dir, argv=None, parent=None, init=None):
    """Train the model in `model_dir`. `parent()` returns the default weights path to start
    from; `init(solver)` replaces copying them (for nets built from several parents).
    Returns the list of log records. Exits the process on SIGINT/SIGTERM (after a snapshot)."""
    model_dir = os.path.abspath(model_dir)
    name = os.path.basename(model_dir)
    args = parse_args(name, argv)
    if args.data_root:
        if not os.path.isdir(args.data_root):
            raise InputError('%s: --data-root is not a directory' % args.data_root)
        os.environ['FCN_DATA_ROOT'] = os.path.abspath(args.data_root)
    out_dir = os.path.abspath(args.out or os.path.join(model_dir, 'snapshot'))
    os.makedirs(out_dir, exist_ok=True)
    mode = common.set_mode(args.gpu)
    import surgery

    param = read_solver(model_dir)
    score_ids, dataset, split = [], None, None
    if param.test_net:  # the scoring split, as its data layer walks it
        import score
        cls, split, score_ids = score.net_split_ids(common.read_net_param(param.test_net[0]),
                                                  param.test_net[0])
        dataset = score.dataset_of(cls)
        expected = int(param.test_iter[0]) if param.test_iter else len(score_ids)
        if len(score_ids) != expected:
            print('note: split %s has %d images; the solver expects %d (test_iter)'
                  % (split, len(score_ids), expected), flush=True)
    if args.score_limit is not None:
        score_ids = score_ids[:args.score_limit]
    n_score = len(score_ids)
    state = None if args.no_resume else latest_state(out_dir)
    weights = args.weights
    if not state and not weights and parent is not None and init is None:
        weights = parent()
    if weights and not os.path.isfile(weights):
        raise InputError('%s: weights file not found' % weights)

    solver = make_solver(param, out_dir)
    deconvs = surgery.deconv_layers(solver.net)
    if state:
        print('resuming from %s' % state, flush=True)
        solver.restore(state)
        seek_data(solver.net, solver.iter * max(1, param.iter_size))  # same image stream
        rewrite_log(out_dir, read_log(out_dir, upto=solver.iter))
    else:
        if weights:
            print('starting from %s' % weights, flush=True)
            load_weights(solver.net, weights)
        elif init is not None:
            init(solver)
        else:
            print('starting from zero weights (no parent given)', flush=True)
        surgery.interp(solver.net, deconvs)  # bilinear upsampling, fixed (lr_mult 0)
        if os.path.exists(os.path.join(out_dir, 'log.jsonl')):
            rewrite_log(out_dir, [])
    total = args.rounds * args.iters
    print('%s on %s: iteration %d of %d, scoring %d images every %d iterations, output %s'
          % (name, mode, solver.iter, total, n_score, args.iters, out_dir), flush=True)

    stop = Stop()
    old = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    display = max(1, int(param.display or 20))
    try:
        losses, t0, t_print = [], time.time(), time.time()
        while solver.iter < total:
            solver.step(1)
            loss = sum(float(solver.net.blobs[o].data.sum()) for o in solver.net.outputs
                       if o.startswith('loss'))
            if not math.isfinite(loss):
                prev = latest_state(out_dir)
                raise InputError('loss became %s at iteration %d: training diverged (check the '
                                 'learning rate and the weights it started from); last good snapshot: %s'
                                 % (loss, solver.iter, prev or 'none'))
            losses.append(loss)
            if solver.iter % display == 0:
                now = time.time()
                print('iter %d  loss %.4g  (%.3f s/iter)'
                      % (solver.iter, sum(losses[-display:]) / len(losses[-display:]),
                         (now - t_print) / display), flush=True)
                t_print = now
            if stop.signum is not None:
                path = snapshot(solver, out_dir)
                print('stopped at iteration %d; snapshot %s; run again to resume'
                      % (solver.iter, path), file=sys.stderr, flush=True)
                sys.exit(128 + stop.signum)
            if solver.iter % args.iters == 0 or solver.iter == total:
                path = snapshot(solver, out_dir)
                last = solver.iter == total
                results = score_round(solver, dataset, split, param.test_net[0], score_ids,
                                      os.path.join(out_dir, 'pred') if (args.save_pred and last) else None) \
                    if n_score else {}
                record = {'iter': solver.iter, 'train_loss': sum(losses) / max(1, len(losses)),
                          'seconds': round(time.time() - t0, 2), 'snapshot': os.path.basename(path),
                          'scores': results}
                append_log(out_dir, record)
                plot_log(out_dir)
                for task, m in results.items():
                    print('>>> iter %d %s: loss %.4g  overall acc %.4f  mean acc %.4f  mean IU %.4f  '
                          'fwavacc %.4f' % (solver.iter, task, m['loss'], m['overall_acc'],
                                            m['mean_acc'], m['mean_iu'], m['fwavacc']), flush=True)
                losses, t0 = [], time.time()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    print('done: %s (log %s, plot %s)' % (out_dir, os.path.join(out_dir, 'log.jsonl'),
                                          os.path.join(out_dir, 'log.png')), flush=True)
    return read_log(out_dir)


def main(solve_file, parent=None, init=None, argv=None):
    """Entry point of a model directory's solve.py."""
    common.run_cli(lambda a: solve(os.path.dirname(os.path.abspath(solve_file)), a,
                                   parent=parent, init=init) and 0, argv)
