"""Segmentation metrics: the confusion matrix and the four FCN scores (no Caffe needed).

rows = ground truth, columns = prediction, summed over a split (FCN paper, section 5
"Metrics"; the release's score.py computes the same):

    hist = bincount(C * gt + pred, minlength=C^2).reshape(C, C)
    overall accuracy = sum(diag) / sum(hist)
    mean accuracy    = nanmean(diag / row sums)
    per-class IU     = diag / (row sums + column sums - diag)   (NaN: class absent from both)
    mean IU          = nanmean(per-class IU)
    fwavacc          = sum over classes with freq > 0 of freq * IU, freq = row sums / total

Pieces:
- `fast_hist(a, b, n)`: the release's matrix of one image (labels outside [0, n) ignored);
- `scores(hist, exclude=())`: the metrics of a matrix as a dict;
- `ConfusionMatrix(n)`: update / compute / format, as torchvision's segmentation
  references accumulate theirs, but strict about labels: 255 (void) is counted as void,
  any other label outside [0, n) is a ValueError naming the values (never dropped
  silently, as a wrong class count would be);
- `jsonable(obj)` / `write_json(path, obj)`: NaN as null, written atomically and
  completely.

    import metrics
    cm = metrics.ConfusionMatrix(21)
    cm.update(gt, pred)               # H x W labels (255 = void), H x W predictions
    print(cm.format(class_names))     # per-class table and the four scores
    metrics.write_json('scores.json', cm.compute())
"""
import json
import math

import numpy as np

import models
import safewrite

VOID = models.VOID  # the ignore label of every dataset (Caffe's loss_param ignore_label)


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


def _pct(v):
    return '%6.2f' % (100 * v) if v == v else '     -'


def bad_values(values, limit=5):
    """'3, 7, 300' (the first `limit` distinct values, then '...'): for error messages."""
    distinct = np.unique(np.asarray(values).ravel())
    text = ', '.join('%g' % v for v in distinct[:limit])
    return text + (', ...' if distinct.size > limit else '')


class ConfusionMatrix:
    """Accumulates the confusion matrix of a split, image by image.

        cm = ConfusionMatrix(21)
        for gt, pred in ...:            # H x W arrays: labels (255 = void), predictions
            cm.update(gt, pred)
        cm.compute()                    # -> scores(cm.hist, cm.exclude) + images, void
        print(cm.format(VOC_CLASSES))   # per-class table

    `update` refuses a label outside 0..C-1 that is not 255 (void): a dataset whose labels
    do not fit the net's classes is an error, not pixels silently left out.
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
        self.void = 0  # pixels labelled 255, not scored

    def update(self, gt, pred):
        """Add one image: `gt` labels (0..C-1, 255 = void) and `pred` class indices, the
        same number of elements. ValueError naming the values for any other label."""
        gt = np.asarray(gt)
        void = gt == VOID
        bad = ~void & ~((gt >= 0) & (gt < self.num_classes))
        if bad.any():
            raise ValueError('label values %s outside 0..%d and %d (void): the labels do '
                             'not fit the %d classes' % (bad_values(gt[bad]), self.num_classes - 1,
                                                         VOID, self.num_classes))
        self.hist += fast_hist(gt, pred, self.num_classes)
        self.void += int(void.sum())
        self.images += 1

    def merge(self, other):
        """Add the images counted by ConfusionMatrix `other` (same classes): integer sums,
        so merging per-image matrices in any order gives the same matrix."""
        if other.num_classes != self.num_classes:
            raise ValueError('merge: %d classes into %d' % (other.num_classes, self.num_classes))
        self.hist += other.hist
        self.void += other.void
        self.images += other.images

    def compute(self):
        """scores(self.hist, self.exclude) plus 'images' (how many updates) and
        'void_pixels'."""
        s = scores(self.hist, self.exclude)
        s['images'] = self.images
        s['void_pixels'] = self.void
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


# ----------------------------------------------------------------------------- JSON

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


def write_json(path, obj):
    """Write `obj` (NaN -> null) to `path` as indented JSON, atomically; a short write
    (a full disk) is an OSError naming `path`, and `path` keeps its old content."""
    text = json.dumps(jsonable(obj), indent=1, allow_nan=False) + '\n'
    with safewrite.atomic_write(path, 'w') as f:
        f.write(text)
    return path
