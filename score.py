"""Segmentation scores: the confusion matrix and the four FCN metrics.

rows = ground truth, columns = prediction, pixels whose label is outside [0, C) (255,
void) ignored; summed over a split:

    hist = bincount(C * gt + pred, minlength=C^2).reshape(C, C)
    overall accuracy = sum(diag) / sum(hist)
    mean accuracy    = nanmean(diag / row sums)
    per-class IU     = diag / (row sums + column sums - diag)   (NaN: class absent from both)
    mean IU          = nanmean(per-class IU)
    fwavacc          = sum over classes with freq > 0 of freq * IU, freq = row sums / total

Pieces (as in the original release's score.py, plus a torchvision-style matrix):
- `fast_hist(a, b, n)`, `scores(hist, exclude=())`, `ConfusionMatrix(n)` (update /
  compute / format);
- `evaluate(net, ids, ...)`: forward a test net once per image id, accumulate the matrix
  and the mean loss, optionally save the predictions as palette PNGs;
- `seg_tests(solver, save_format, dataset, layer, gt)`: the training loop's call, which
  shares the solver's weights into its test net and prints the original's
  `>>> <time> Iteration N ...` lines.

Command: score a caffemodel on a split with the model directory's val.prototxt:

    .venv/bin/python score.py --model voc-fcn8s --weights voc-fcn8s/fcn8s-heavy-pascal.caffemodel
    .venv/bin/python score.py --model voc-fcn8s --weights W --split seg11valid \\
        --data-root /datasets --limit 50 --out results.json --save-pred out/voc-fcn8s-pred
    .venv/bin/python score.py --model siftflow-fcn16s \\
        --weights siftflow-fcn16s/siftflow-fcn16s-heavy.caffemodel     # scores sem and geo

--data-root is the folder holding the datasets' folders (pascal/VOC2011, sift-flow, ...;
default $FCN_DATA_ROOT, else <repo>/data). --model is a model directory of the repository
(or a path to one); other relative paths are taken from the current directory. The JSON
(--out) holds model, weights, split, images, the first task's overall_acc, mean_acc,
mean_iu, fwavacc, loss, per_class_iu / per_class_acc ({class: value}, null where
undefined) and excluded classes, and every task's under "tasks" (SIFT Flow: score_sem,
score_geo). SIFT Flow's cow, desert and moon (absent from its test split) are left out
of the semantic class averages when scoring that split.
"""
import argparse
import datetime
import json
import math
import os
import sys
import tempfile

import numpy as np

import common
from common import Progress  # noqa: F401  (score.Progress, as before)


# ----------------------------------------------------------------------------- metrics

def fast_hist(a, b, n):
    """n x n confusion counts (int64) of ground truth `a` (rows) vs prediction `b`
    (columns), both any shape with the same number of elements; entries of `a` outside
    [0, n) (e.g. 255, void) are ignored. A prediction outside [0, n) is a ValueError."""
    a = np.asarray(a).ravel()
    b = np.asarray(b).ravel()
    if a.size != b.size:
        raise ValueError('fast_hist: %d labels but %d predictions' % (a.size, b.size))
    k = (a >= 0) & (a < n)
    a, b = a[k].astype(np.int64), b[k].astype(np.int64)
    if b.size and (b.min() < 0 or b.max() >= n):
        raise ValueError('fast_hist: prediction outside [0, %d)' % n)
    return np.bincount(n * a + b, minlength=n ** 2).reshape(n, n)


def _nanmean(x):
    x = np.asarray(x, np.float64)
    x = x[~np.isnan(x)]
    return float(x.mean()) if x.size else float('nan')


def scores(hist, exclude=()):
    """The metrics of confusion matrix `hist` (C x C) as a dict of floats:

    overall_acc, mean_acc, mean_iu, fwavacc, per_class_acc (list of C), per_class_iu
    (list of C), excluded (sorted list of class indices), pixels (int, counted pixels).

    Per-class values are NaN where undefined (acc: class absent from the ground truth;
    IU: absent from both ground truth and prediction) and are left out of the means.
    `exclude`: class indices whose per-class values are set to NaN and left out of the
    means and of fwavacc (SIFT Flow: classes that never occur in the test split); their
    pixels stay in the matrix, so a pixel wrongly predicted as one still counts as an
    error of its true class, and overall accuracy is unchanged.
    """
    hist = np.asarray(hist, np.float64)
    if hist.ndim != 2 or hist.shape[0] != hist.shape[1]:
        raise ValueError('scores: hist must be C x C, got shape %s' % (hist.shape,))
    n = hist.shape[0]
    exclude = sorted({int(c) for c in (exclude or ())})
    if any(c < 0 or c >= n for c in exclude):
        raise ValueError('scores: excluded classes %s outside [0, %d)' % (exclude, n))
    diag, rows, cols, total = np.diag(hist), hist.sum(1), hist.sum(0), hist.sum()
    with np.errstate(divide='ignore', invalid='ignore'):
        overall = diag.sum() / total if total else float('nan')
        acc = diag / rows
        iu = diag / (rows + cols - diag)
        freq = rows / total if total else np.zeros(n)
    acc[exclude] = np.nan
    iu[exclude] = np.nan
    keep = (freq > 0) & ~np.isnan(iu)
    return {
        'overall_acc': float(overall),
        'mean_acc': _nanmean(acc),
        'mean_iu': _nanmean(iu),
        'fwavacc': float((freq[keep] * iu[keep]).sum()),
        'per_class_acc': [float(v) for v in acc],
        'per_class_iu': [float(v) for v in iu],
        'excluded': exclude,
        'pixels': int(total),
    }


def jsonable(obj):
    """`obj` with every float NaN / inf replaced by None (JSON null), recursively."""
    if isinstance(obj, dict):
        return {k: jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _pct(v):
    return '%6.2f' % (100 * v) if v == v else '     -'


class ConfusionMatrix:
    """Accumulates the confusion matrix of a split, image by image.

        cm = ConfusionMatrix(21)
        for gt, pred in ...:            # H x W arrays: labels (255 = void), predictions
            cm.update(gt, pred)
        cm.compute()                    # -> scores(cm.hist, cm.exclude)
        print(cm.format(VOC_CLASSES))   # per-class table
    """

    def __init__(self, num_classes, exclude=()):
        if int(num_classes) < 1:
            raise ValueError('ConfusionMatrix: num_classes must be >= 1')
        self.num_classes = int(num_classes)
        self.exclude = sorted({int(c) for c in (exclude or ())})
        self.reset()

    def reset(self):
        self.hist = np.zeros((self.num_classes, self.num_classes), np.int64)
        self.images = 0

    def update(self, gt, pred):
        """Add one image: `gt` labels and `pred` class indices, same number of elements."""
        self.hist += fast_hist(gt, pred, self.num_classes)
        self.images += 1

    def compute(self):
        """scores(self.hist, self.exclude) plus 'images' (how many updates)."""
        s = scores(self.hist, self.exclude)
        s['images'] = self.images
        return s

    def format(self, class_names=None):
        """A printable table: per class accuracy and IU (%), then the four metrics.
        '-' marks an undefined value; excluded classes say so."""
        names = list(class_names) if class_names is not None else [
            str(i) for i in range(self.num_classes)]
        if len(names) != self.num_classes:
            raise ValueError('format: %d class names for %d classes'
                             % (len(names), self.num_classes))
        s = self.compute()
        width = max(12, max(len(n) for n in names) + 1)
        lines = ['%-*s %6s %6s %12s' % (width, 'class', 'acc', 'IU', 'gt pixels')]
        for i, name in enumerate(names):
            note = '  (excluded)' if i in s['excluded'] else ''
            lines.append('%-*s %s %s %12d%s' % (width, name, _pct(s['per_class_acc'][i]),
                                                _pct(s['per_class_iu'][i]),
                                                int(self.hist[i].sum()), note))
        lines.append('%-*s %s %s' % (width, 'mean', _pct(s['mean_acc']), _pct(s['mean_iu'])))
        lines.append('overall accuracy %s   mean accuracy %s   mean IU %s   fwavacc %s   '
                     '(%d images)' % (_pct(s['overall_acc']).strip(), _pct(s['mean_acc']).strip(),
                                      _pct(s['mean_iu']).strip(), _pct(s['fwavacc']).strip(),
                                      self.images))
        return '\n'.join(lines)

    def __str__(self):
        return self.format()


# ----------------------------------------------------------------------------- nets

def loss_blob(net, layer='score', gt='label'):
    """The top of the loss layer comparing `layer` with `gt` (e.g. 'loss' for
    score/label, 'loss_geo' for score_geo/geo); else 'loss' if the net has that blob
    and only one loss; else None."""
    for name, bottoms in net.bottom_names.items():
        if list(bottoms) == [layer, gt]:
            tops = net.top_names[name]
            if tops:
                return tops[0]
    if 'loss' in net.blobs and gt in ('label', 'sem'):
        return 'loss'
    return None


class Evaluation(tuple):
    """What `evaluate` returns: unpacks as (hist, mean_loss); also has .hist, .loss,
    .scores (the `scores()` dict with 'images' and 'loss' added), .images, .layer, .gt."""

    def __new__(cls, hist, loss, scores_, images, layer='score', gt='label'):
        self = super().__new__(cls, (hist, loss))
        self.hist, self.loss, self.scores, self.images = hist, loss, scores_, images
        self.layer, self.gt = layer, gt
        return self


class Task:
    """One score blob to evaluate against one label blob (see `evaluate`)."""

    def __init__(self, layer='score', gt='label', num_classes=None, exclude=None,
                 save_dir=None, loss='auto'):
        self.layer, self.gt, self.num_classes = layer, gt, num_classes
        self.exclude, self.save_dir, self.loss = exclude, save_dir, loss


def evaluate_tasks(net, ids, tasks, progress=True):
    """Like `evaluate`, for several `Task`s in one pass over the images (SIFT Flow's
    score_sem/sem and score_geo/geo). Returns a list of `Evaluation`s, one per task."""
    ids = [str(i) for i in ids]
    state = []
    for t in tasks:
        for blob in (t.layer, t.gt):
            if blob not in net.blobs:
                raise ValueError('evaluate: the net has no blob %r (blobs: %s)'
                                 % (blob, ', '.join(net.blobs)))
        n_cl = int(t.num_classes or net.blobs[t.layer].channels)
        loss = loss_blob(net, t.layer, t.gt) if t.loss == 'auto' else t.loss
        if loss is not None and loss not in net.blobs:
            raise ValueError('evaluate: the net has no loss blob %r' % loss)
        if t.save_dir:
            os.makedirs(t.save_dir, exist_ok=True)
        state.append((t, ConfusionMatrix(n_cl, t.exclude), loss, [0.0]))
    label = 'scoring ' + ', '.join(t.layer for t in tasks)
    bar = Progress(len(ids), label, enabled=progress)
    try:
        for done, idx in enumerate(ids, 1):
            net.forward()
            for t, cm, loss, total in state:
                pred = net.blobs[t.layer].data[0].argmax(0)
                cm.update(net.blobs[t.gt].data[0, 0], pred)
                if t.save_dir:
                    common.save_label_png(os.path.join(t.save_dir, idx + '.png'), pred)
                if loss:
                    total[0] += float(net.blobs[loss].data.flat[0])
            bar.update(done)
    finally:
        bar.close()
    results = []
    for t, cm, loss, total in state:
        mean_loss = total[0] / len(ids) if (loss and ids) else None
        s = cm.compute()
        s['loss'] = mean_loss
        results.append(Evaluation(cm.hist, mean_loss, s, len(ids), t.layer, t.gt))
    return results


def evaluate(net, ids, layer='score', gt='label', num_classes=None, save_dir=None,
             progress=True, exclude=None, loss='auto'):
    """Forward `net` once per image id in `ids` (its data layer walks the same split in
    the same order) and score blob `layer` (1 x C x H x W; prediction = argmax over C)
    against blob `gt` (1 x 1 x H x W, 255 = void).

    num_classes: C, default the channels of `layer`. save_dir: when given, each
    prediction is written as the palette PNG `<save_dir>/<id>.png` (the folder is
    created if needed; files are replaced). progress: a progress line on stderr.
    exclude: class indices left out of the per-class means (see `scores`).
    loss: the loss blob to average, 'auto' (see `loss_blob`) or None.

    Returns an `Evaluation`: unpacks as (hist C x C int64, mean loss or None), with
    .scores the metrics dict.
    """
    task = Task(layer, gt, num_classes, exclude, save_dir, loss)
    return evaluate_tasks(net, ids, [task], progress)[0]


def compute_hist(net, save_dir, dataset, layer='score', gt='label', num_classes=None,
                 progress=False, exclude=None):
    """The original's call: (hist, mean loss) of `net` over the ids in `dataset`."""
    return evaluate(net, dataset, layer, gt, num_classes=num_classes, save_dir=save_dir,
                    progress=progress, exclude=exclude)


def print_scores(iteration, s, stream=None):
    """The original's `>>> <timestamp> Iteration N <metric> <value>` lines."""
    stream = stream or sys.stdout
    for key, label in (('loss', 'loss'), ('overall_acc', 'overall accuracy'),
                       ('mean_acc', 'mean accuracy'), ('mean_iu', 'mean IU'),
                       ('fwavacc', 'fwavacc')):
        if key == 'loss' and s.get('loss') is None:
            continue
        print('>>>', datetime.datetime.now(), 'Iteration', iteration, label, s[key],
              file=stream, flush=True)


def do_seg_tests(net, iteration, save_format, dataset, layer='score', gt='label',
                 num_classes=None, exclude=None, progress=False):
    """Score `net` on the ids in `dataset`, print the original's metric lines for
    `iteration`. save_format: None (no PNGs) or a folder pattern formatted with the
    iteration, e.g. '/tmp/seg/iter{}' -> predictions in /tmp/seg/iter4000/<id>.png.
    Returns the `Evaluation` ((hist, loss), .scores)."""
    save_dir = save_format.format(iteration) if save_format else None
    ev = evaluate(net, dataset, layer, gt, num_classes=num_classes, save_dir=save_dir,
                  progress=progress, exclude=exclude)
    ev.scores['iteration'] = iteration
    print_scores(iteration, ev.scores)
    return ev


def seg_evaluate(solver, save_format, dataset, layer='score', gt='label', num_classes=None,
                 exclude=None, progress=False):
    """`solver.test_nets[0]` shares `solver.net`'s weights, is scored on `dataset` (image
    ids) and the metric lines are printed. Returns the `Evaluation`: (hist, loss) and
    .scores (metrics dict with 'loss', 'iteration', 'images')."""
    if not solver.test_nets:
        raise ValueError('seg_tests: the solver has no test net (solver test_net / test_iter)')
    print('>>>', datetime.datetime.now(), 'Begin seg tests', flush=True)
    net = solver.test_nets[0]
    net.share_with(solver.net)
    return do_seg_tests(net, solver.iter, save_format, dataset, layer, gt,
                        num_classes=num_classes, exclude=exclude, progress=progress)


def seg_tests(solver, save_format, dataset, layer='score', gt='label', **kwargs):
    """The original's training-loop call (same arguments); returns the C x C hist.
    Use `seg_evaluate` for the metrics dict as well."""
    return seg_evaluate(solver, save_format, dataset, layer, gt, **kwargs).hist


# ----------------------------------------------------------------------------- command

# (score blob, label blob) pairs the command scores when the net has them
TASKS = (('score', 'label'), ('score_sem', 'sem'), ('score_geo', 'geo'))


def model_dir(model):
    """<repo>/<model> when that is a directory, else `model` as a path."""
    in_repo = os.path.join(common.REPO, model)
    path = in_repo if os.path.isdir(in_repo) else os.path.abspath(model)
    if not os.path.isdir(path):
        known = sorted(d for d in os.listdir(common.REPO)
                       if os.path.isfile(os.path.join(common.REPO, d, 'caffemodel-url')))
        raise common.InputError('%s: no such model directory (models: %s)'
                                % (model, ', '.join(known)))
    return path


def data_layer(param, layers):
    """(LayerParameter, data layer class) of the net's layers.py Python layer."""
    for layer in param.layer:
        if layer.type == 'Python' and layer.python_param.module == 'layers':
            cls = getattr(layers, layer.python_param.layer, None)
            if cls is None or not hasattr(cls, 'ids'):
                raise common.InputError('data layer %r: layers.py has no data layer class %r'
                                        % (layer.name, layer.python_param.layer))
            return layer, cls
    raise common.InputError('the net has no layers.py data layer (Python layer, module "layers")')


def net_split_ids(param, path, split=None):
    """(data layer class, split, image ids in walking order) of the layers.py data layer in
    NetParameter `param` (read from `path`); `split` replaces the net's split in `param`."""
    import layers
    layer, cls = data_layer(param, layers)
    try:
        p = layers.parse_param_str(layer.python_param.param_str)
        if split:
            p['split'] = split
            layer.python_param.param_str = json.dumps(p)
        return cls, p.get('split'), cls.ids(p.get('split'), **{k: p[k] for k in cls.DIRS if k in p})
    except ValueError as e:
        raise common.InputError('%s: %s' % (path, e))


def open_val_net(val, weights, split=None):
    """(net, data layer class, split, ids) for scoring `weights` with the val prototxt `val`,
    its layers.py data layer switched to `split` when given. Inputs are checked first."""
    param = common.read_net_param(val)
    cls, split, ids = net_split_ids(param, val, split)
    with tempfile.TemporaryDirectory() as tmp:
        proto = os.path.join(tmp, 'val.prototxt')
        with open(proto, 'w') as f:
            f.write(str(param))
        try:
            net = common.open_net(proto, 'test', weights)
        except ValueError as e:  # a data layer's complaint about its param_str
            raise common.InputError('%s: %s' % (val, e))
    return net, cls, split, ids


def dataset_of(cls):
    """The layers.DATASETS name whose data layer is `cls` (None for others)."""
    import layers
    return {d['layer']: name for name, d in layers.DATASETS.items()}.get(cls)


def model_tasks(net, dataset, split, val, save_pred=None):
    """([Task], [class names]) of every score/label pair the net has (TASKS); predictions
    go to save_pred (save_pred/<label>/ when there are several tasks)."""
    tasks, names = [], []
    multi = sum(1 for s, g in TASKS if s in net.blobs and g in net.blobs) > 1
    for score_blob, gt in TASKS:
        if score_blob not in net.blobs or gt not in net.blobs:
            continue
        n_cl = net.blobs[score_blob].channels
        classes, exclude = class_info(dataset, gt, split, n_cl)
        save = None
        if save_pred:
            save = os.path.join(save_pred, gt) if multi else save_pred
        tasks.append(Task(score_blob, gt, n_cl, exclude, save))
        names.append(classes)
    if not tasks:
        raise common.InputError('%s: no score/label blob pair among %s'
                                % (val, ', '.join('%s/%s' % t for t in TASKS)))
    return tasks, names


def per_class(values, names):
    return {name: v for name, v in zip(names, values)}


def task_json(ev, names):
    s = ev.scores
    out = {k: s[k] for k in ('overall_acc', 'mean_acc', 'mean_iu', 'fwavacc')}
    out.update(layer=ev.layer, label=ev.gt, loss=s['loss'], images=s['images'],
               pixels=s['pixels'], excluded=[names[i] for i in s['excluded']],
               per_class_iu=per_class(s['per_class_iu'], names),
               per_class_acc=per_class(s['per_class_acc'], names))
    return out


def class_info(dataset, gt='label', split=None, num_classes=None):
    """(class names, excluded class indices) for scoring label blob `gt` of `dataset`
    ('voc', 'nyud', 'siftflow', 'pascalcontext'; see layers.DATASETS) on `split`.

    SIFT Flow's semantic classes absent from its test split (cow, desert, moon) are
    excluded when `split` is the scored split ('test'; None means that one too). Names
    are '0', '1', ... when the dataset is unknown or has another number of classes than
    `num_classes`. E.g. class_info('siftflow', 'sem', 'test') -> (33 names, [8, 10, 15]).
    """
    import layers
    info = layers.DATASETS.get(dataset, {})
    classes = list(info.get('geo_classes' if gt == 'geo' else 'classes', ()))
    if num_classes is not None and len(classes) != num_classes:
        classes = [str(i) for i in range(num_classes)]
    exclude = []
    if gt != 'geo' and (split is None or split == info.get('split')):
        exclude = [classes.index(c) for c in info.get('absent_in_test', ()) if c in classes]
    return classes, exclude


def main(argv=None):
    parser = argparse.ArgumentParser(
        description='Score a caffemodel on a split with its model directory\'s val.prototxt.',
        epilog=__doc__[__doc__.index('Command:'):], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--model', required=True, help='model directory, e.g. voc-fcn8s')
    parser.add_argument('--weights', required=True, help='caffemodel to score')
    parser.add_argument('--split', help="split list to score (default: the val.prototxt's)")
    parser.add_argument('--data-root', help='dataset root (sets FCN_DATA_ROOT; default <repo>/data)')
    parser.add_argument('--limit', type=int, help='score only the first N images of the split')
    parser.add_argument('--out', help='write the scores here as JSON')
    parser.add_argument('--save-pred', metavar='DIR',
                        help='save predictions as palette PNGs DIR/<id>.png (multi-task: DIR/<label>/)')
    parser.add_argument('--gpu', type=int, help='GPU id (default: CPU)')
    parser.add_argument('--quiet', action='store_true', help='no progress line')
    args = parser.parse_args(argv)

    mdir = model_dir(args.model)
    val = os.path.join(mdir, 'val.prototxt')
    if not os.path.isfile(val):
        raise common.InputError('%s: not found (the model directory has no val net; '
                                'generate the nets with net.py)' % val)
    if not os.path.isfile(args.weights):
        raise common.InputError('%s: weights file not found' % args.weights)
    if args.limit is not None and args.limit < 1:
        raise common.InputError('--limit must be >= 1, got %d' % args.limit)
    if args.data_root:
        if not os.path.isdir(args.data_root):
            raise common.InputError('--data-root %s: no such directory' % args.data_root)
        os.environ['FCN_DATA_ROOT'] = os.path.abspath(args.data_root)
    common.set_mode(args.gpu)
    import layers

    net, cls, split, ids = open_val_net(val, args.weights, args.split)
    if args.limit:
        ids = ids[:args.limit]
    dataset = dataset_of(cls)
    tasks, names = model_tasks(net, dataset, split, val, args.save_pred)

    print('%s: scoring %s on %s %s (%d images)' % (args.model, args.weights, dataset or cls.__name__,
                                                    split, len(ids)), flush=True)
    try:
        results = evaluate_tasks(net, ids, tasks, progress=not args.quiet)
    except ValueError as e:  # e.g. a malformed dataset file met during the walk
        raise common.InputError(str(e))

    per_task = {}
    for ev, classes in zip(results, names):
        cm = ConfusionMatrix(len(classes), ev.scores['excluded'])
        cm.hist, cm.images = ev.hist, ev.images
        print('\n%s vs %s' % (ev.layer, ev.gt))
        print(cm.format(classes))
        if ev.scores['excluded']:
            print('excluded from the class averages: %s'
                  % ', '.join(classes[i] for i in ev.scores['excluded']))
        per_task[ev.layer] = task_json(ev, classes)
    # the first task's metrics at the top level, every task's under 'tasks'
    record = dict(model=args.model, weights=os.path.abspath(args.weights), prototxt=val,
                  dataset=dataset, split=split, images=len(ids), data_root=layers.data_root(),
                  date=datetime.datetime.now().isoformat(timespec='seconds'))
    record.update(per_task[results[0].layer])
    record.update(images=len(ids), tasks=per_task)
    if args.out:
        with common.atomic_write(args.out, 'w') as f:
            json.dump(jsonable(record), f, indent=1, allow_nan=False)
            f.write('\n')
        print('wrote %s' % args.out)
    return 0


if __name__ == '__main__':
    common.run_cli(main)
