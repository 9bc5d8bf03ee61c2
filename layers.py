"""Caffe Python data layers that feed FCN one whole image (and its labels) per forward,
or a batch of equal-size crops (`batch_size`).

Net files name this module as `module: "layers"` with one of these `layer:` classes:

    VOCSegDataLayer             PASCAL VOC 2011/2012 segmentation (validation, test)
    SBDDSegDataLayer            SBD, the training set of the VOC models
    NYUDSegDataLayer            NYUDv2 in Gupta et al.'s format (color / depth / HHA)
    SIFTFlowSegDataLayer        SIFT Flow, semantic and geometric labels
    PASCALContextSegDataLayer   PASCAL-Context, the 59-class task plus background
    ADE20KSegDataLayer          ADE20K SceneParsing (150 classes), for PSPNet
    CityscapesSegDataLayer      Cityscapes fine, the 19 trainIds, for PSPNet
    VOC2012PSPSegDataLayer      PASCAL VOC 2012, for PSPNet
    VOC12AugSegDataLayer        PASCAL VOC 2012 + SBD (train_aug), for DeepLab v2

The three PSPNet layers (on `PSPSegDataLayer`) subtract PSPNet's mean and, for training,
augment and crop the paper's way (`psp_augment`): their tops are crop x crop.

All of them share one base class, `SegDataLayer`, which parses and checks `param_str`,
picks the next image id and fills the tops; a subclass only says where its files are and
how to turn them into arrays. Every top is reshaped on every forward to the size of the
image at hand (batch of one, 1 x C x H x W), because FCN takes images of any size; with
`batch_size` N the tops are N x C x H x W, for layers whose examples share one size.

param_str
---------
A dict, written as JSON (`{"split": "seg11valid"}`) or as a Python literal
(`{'split': 'seg11valid'}`, the original release's syntax). It is parsed with
`json.loads` / `ast.literal_eval`, never `eval`: a net file cannot run code. Keys common
to every layer:

    split       required; the image list {split}.txt (see each class for where)
    seed        default 1337; seeds this layer's own random.Random
    randomize   default: true for training splits (names starting with "train"),
                false otherwise
    num_classes default: the dataset's; the classes a label may name, as an integer
                (one label top) or {"top": count} (SIFT Flow's sem / geo). The solving
                loop and score.py set it from the net instead (`bind_num_classes`).
    batch_size  default 1; N: each forward stacks the next N examples of the stream
                (below), so the tops are N x C x H x W. Only for examples of one size
                (fixed crops: the PSPNet / DeepLab layers with `crop`); two sizes in one
                batch are an InputError naming the layer and both sizes. Caffe's
                BatchNorm normalises over one forward's batch, which is why DeepLabv3's
                stage 1 needs it (docs/deeplabv3.md).

plus the per-dataset keys documented on each class (directories, and `mean` where the
dataset allows one). An unknown or missing key is a ValueError naming the allowed keys.

Directories are relative to the data root, $FCN_DATA_ROOT if set, else <repo>/data
(see `data_root()`); absolute paths are used as they are. Nothing depends on the
current directory.

Order of images
---------------
Training splits (randomize true) draw an id uniformly at random, with replacement,
from random.Random(seed).randrange(len(ids)): once at setup and again after every
forward. This is the same sequence the original release got from random.seed(seed) and
random.randint(0, n - 1), but the generator belongs to the layer, so two data layers in
one process do not disturb each other. Other splits walk the list in order from the
first id and wrap around, so scoring N images after N forwards sees each exactly once.
A forward of batch_size N takes the next N ids of that same stream (N draws, or N ids in
order), so batch N with iter_size 1 sees the images batch 1 with iter_size N sees, in the
same order; `seek(forwards)` counts N ids per forward.

Errors
------
Python exceptions raised here come out of caffe.Net(...) and net.forward() as the same
Python exceptions (pycaffe re-raises them), never as a Caffe abort: a missing file is a
FileNotFoundError naming the path, a malformed file or an empty split list is a
project.InputError naming the file, a bad param_str or wrong number of tops a ValueError.
Labels are checked where they are read (`read_labels`): a value that is neither one of
the classes nor void, NaN, a fraction or text is an InputError naming the file and the
values, since Caffe's loss would read outside its arrays on it (a crash, or a loss
computed from other memory) and scoring would leave the pixels out.

Without Caffe
-------------
Scoring code that only needs the image ids of a split uses `split_ids(dataset, split,
**dirs)` (the class names: models.py); nothing is instantiated.
"""
import ast
import os
import random

import numpy as np
import scipy.io
import scipy.ndimage
from PIL import Image

import guard
import jsonfile
import models
import project
import safewrite
from metrics import VOID, bad_values

caffe = guard.import_caffe()


# --------------------------------------------------------------------------------------
# Class names in model output order, means and split sizes: the registry's (models.py,
# docs/data.md); only the file-format details are written here.

_D = models.DATASETS
VOC_CLASSES = _D['voc'].classes
NYUD_CLASSES = _D['nyud'].classes
SIFTFLOW_SEM_CLASSES = _D['siftflow'].label('sem').classes
SIFTFLOW_GEO_CLASSES = _D['siftflow'].label('geo').classes
# Semantic classes that never occur in the SIFT Flow test split: the paper's scores
# leave them out of the class averages.
SIFTFLOW_SEM_ABSENT_IN_TEST = _D['siftflow'].label('sem').excluded
# Background, then the 59 classes with the names of the 59-class list (59_labels.txt).
CONTEXT_CLASSES = _D['pascalcontext'].classes

# Where the 59-class list and the full PASCAL-Context list spell a class differently.
CONTEXT_RENAMED = {'diningtable': 'table', 'bedcloth': 'bedclothes', 'clothes': 'cloth'}

# Means, (B, G, R) unless noted, subtracted after the switch to BGR.
VOC_MEAN = _D['voc'].mean
NYUD_COLOR_MEAN = _D['nyud'].mean
NYUD_HHA_MEAN = _D['nyud'].input('hha').mean      # HHA channel order, as stored
NYUD_LOG_DEPTH_MEAN = _D['nyud'].input('depth').mean[0]  # mean of log(depth png value)
SIFTFLOW_MEAN = _D['siftflow'].mean
CONTEXT_MEAN = _D['pascalcontext'].mean

# Sizes of the splits the papers use, to check a derived list against: (dataset, split)
# -> images; SBD's train split is the VOC models' training set.
SPLIT_SIZES = {(d.name, s.name): s.size for d in _D.values() for s in d.splits}
SPLIT_SIZES[('sbdd', 'train')] = SPLIT_SIZES[('voc', 'train')]


def _splits(layer):
    return [s for d in _D.values() for s in d.splits if s.layer == layer]


def _dirs(layer):
    """Data layer class `layer`'s directory defaults (param_str key -> folder relative to
    the data root), from the registry's splits it reads."""
    return {k: v for s in _splits(layer) for k, v in s.dirs}


def _hints(layer):
    """{split: what to run} for the splits `layer` reads whose list a script derives."""
    return {s.name: 'derive it with %s' % s.made_by for s in _splits(layer) if s.made_by}


# --------------------------------------------------------------------------------------
# Paths and small readers

def data_root(root=None):
    """The folder dataset paths are relative to: `root` when given (the commands pass
    their --data-root), else $FCN_DATA_ROOT if set (how a command reaches the layers Caffe
    instantiates from a prototxt), else <repo>/data."""
    root = root or os.environ.get('FCN_DATA_ROOT')
    return os.path.abspath(os.path.expanduser(root)) if root else os.path.join(project.REPO, 'data')


def data_path(path, root=None):
    """`path` resolved against the data root (data_root(root)); an absolute path is
    returned unchanged."""
    path = os.path.expanduser(str(path))
    return path if os.path.isabs(path) else os.path.join(data_root(root), path)


def check_id(idx, parts=1):
    """None when `idx` is an image id: a name of `parts` or fewer '/'-separated parts
    (Cityscapes' <city>/<name> has 2), else why not. Ids become file names (the image,
    the label, a saved prediction), so an absolute id, '..', '.', an empty part, a
    backslash or a NUL would reach outside the dataset's folders (or the output folder)."""
    pieces = idx.split('/')
    if len(pieces) > parts:
        return 'an id is a name, not a path (%s)' % (
            "at most one '/': <folder>/<name>" if parts == 2 else "no '/'")
    for piece in pieces:
        if piece in ('', '.', '..') or '\\' in piece or '\0' in piece:
            return "an id is a name, not a path (no leading '/', '..', '.', '\\' or empty part)"
    return None


def split_entries(path, parts=1):
    """(ids, problems) of split file `path`: the ids one per line in file order, blank
    lines skipped, a UTF-8 byte order mark (as some editors write) dropped, each id once;
    problems: one line each naming the file and line, for an id that is not a name
    (check_id with `parts`; parts None: any entry, for lists of file paths such as SIFT
    Flow's TestSet1.txt) or that repeats (left out of ids). The data check
    (newmodel.py) reports them all; read_split refuses the first. FileNotFoundError /
    InputError when the file is missing or not UTF-8 text."""
    if not os.path.isfile(path):
        raise FileNotFoundError('split list not found: %s' % path)
    try:
        with open(path, encoding='utf-8-sig') as f:
            lines = [(n, line.strip()) for n, line in enumerate(f, 1) if line.strip()]
    except UnicodeDecodeError as e:
        raise project.InputError('%s: split list is not UTF-8 text (%s)' % (path, e.reason))
    first, problems = {}, []
    for n, idx in lines:
        why = check_id(idx, parts) if parts else None
        if why:
            problems.append('%s line %d: %r: %s' % (path, n, idx, why))
        elif idx in first:
            problems.append('%s line %d: image id %r is listed twice (first on line %d)'
                            % (path, n, idx, first[idx]))
        else:
            first[idx] = n
    return list(first), problems


def read_split(path, hint='', parts=1):
    """The image ids listed in split file `path` (split_entries), refused at its first
    problem: ids become file names (the image, the label, a saved prediction), so a path
    could read or overwrite files outside the dataset's folders, and a repeated id would
    be trained or scored twice. A missing file is a FileNotFoundError and an empty one
    an InputError, both naming `path`; `hint` (e.g. which script derives the list) is
    added to the message."""
    hint = ' (%s)' % hint if hint else ''
    if not os.path.isfile(path):
        raise FileNotFoundError('split list not found: %s%s' % (path, hint))
    ids, problems = split_entries(path, parts)
    if problems:
        raise project.InputError(problems[0])
    if not ids:
        raise project.InputError('split list has no image ids: %s%s' % (path, hint))
    return ids


def write_list(out, ids, name, expect, summary, hint, protect=()):
    """Write split list `name` (`ids`, one a line) to `out` in one rename, never over one of
    `protect` (the lists it was derived from), then print `summary`; first, unless
    `expect` is None, check its count: another is an InputError naming the list, the
    `summary` and the `hint` (what to check), and nothing is written."""
    if expect is not None and len(ids) != expect:
        raise project.InputError('%s would have %s, expected %d: %s nothing written'
                                 % (name, summary, expect, hint))
    with safewrite.atomic_write(out, 'w', protect=protect) as f:
        f.write(''.join(i + '\n' for i in ids))
    print('wrote %s: %s' % (out, summary))


def write_splits(folder, lists, expect=None, context=''):
    """Write each list of `lists` ({name: [image id, ...]}) to folder/<name>.txt, one id a
    line (as read_split reads it), each in one rename; first, unless `expect` is None,
    check each count of `expect` ({name: images}): one that differs is an InputError
    (`context` added in parentheses, e.g. the counts of every list) and nothing is written."""
    context = ' (%s)' % context if context else ''
    for name, want in (expect or {}).items():
        if len(lists[name]) != want:
            raise project.InputError('%s has %d images, expected %d%s; nothing written'
                                    % (name, len(lists[name]), want, context))
    for name, ids in lists.items():
        with safewrite.atomic_write(os.path.join(folder, name + '.txt'), 'w') as f:
            f.write(''.join(i + '\n' for i in ids))


def _need(path, what):
    if not os.path.isfile(path):
        raise FileNotFoundError('%s not found: %s' % (what, path))
    return path


def read_image(path, what='image', rgb=True):
    """The pixels of image file `path`: H x W x 3 uint8 RGB when `rgb` (a grayscale or
    CMYK photo is converted), else as stored (palette indices for a palette PNG, uint16
    for a 16-bit PNG)."""
    _need(path, what)
    try:
        with Image.open(path) as im:
            if rgb and im.mode != 'RGB':
                im = im.convert('RGB')
            return np.array(im)
    except project.InputError:
        raise
    except Exception as e:  # Pillow raises many types on a broken file (OSError, SyntaxError,
        # ValueError, struct.error, DecompressionBombError, ...): one line naming it
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise project.InputError('%s is not a readable %s: %s' % (path, what, reason))


def load_mat(path, what='label'):
    """All variables of MATLAB file `path` as scipy.io.loadmat gives them."""
    _need(path, what)
    try:
        return scipy.io.loadmat(path)
    except Exception as e:  # scipy raises several types for a file that is not a .mat
        raise project.InputError('%s is not a readable .mat file: %s' % (path, e))


def read_mat(path, key, what='label'):
    """Variable `key` of MATLAB file `path` (InputError naming the file when absent)."""
    mat = load_mat(path, what)
    if key not in mat:
        names = sorted(k for k in mat if not k.startswith('__'))
        raise project.InputError('%s has no variable %r (has: %s)' % (path, key, ', '.join(names)))
    return mat[key]


def read_labels(values, path, num_classes, first=0, void=(VOID,)):
    """Label values as stored in file `path` -> uint8 class indices, 1 x ... as given:
    value `first` + k is class k (k < num_classes), the `void` values become 255.

    Anything else is an InputError naming the file and the values: a label that is not
    a number (e.g. a .mat variable stored as a string), NaN, a fraction, or neither a
    class nor void. Caffe's loss would read outside its arrays (a crash, or a silently
    wrong loss) and scoring would drop the pixels, so the file is refused where it is
    read. E.g. NYUDv2 and SIFT Flow store classes 1..C with 0 unlabeled: first=1, void=(0,)."""
    values = np.asarray(values)
    if values.dtype.kind not in 'biuf':
        raise project.InputError('%s: labels are %s values, not numbers' % (path, values.dtype))
    if values.dtype.kind == 'f':
        if np.isnan(values).any():
            raise project.InputError('%s: %d label values are NaN' % (path, np.isnan(values).sum()))
        frac = np.isfinite(values) & (values != np.floor(values))
        if frac.any():
            raise project.InputError('%s: fractional label values %s (labels are class numbers)'
                                    % (path, bad_values(values[frac])))
    is_void = np.isin(values, void)
    is_class = (values >= first) & (values < first + num_classes)
    if not (is_void | is_class).all():
        raise project.InputError('%s: label values %s are neither a class (%d..%d) nor void%s'
                                % (path, bad_values(values[~(is_void | is_class)]), first,
                                   first + num_classes - 1,
                                   ' (%s)' % ', '.join(map(str, void)) if void else ''))
    classes = values[is_class] - first
    if classes.size and classes.max() >= VOID:  # uint8 would wrap it (or make it void)
        raise project.InputError('%s: label values up to %d name class %d, but labels are 8-bit '
                                 'here: classes 0..%d, %d is void' % (path, classes.max() + first,
                                                                     classes.max(), VOID - 1, VOID))
    out = np.full(values.shape, VOID, np.uint8)
    out[is_class] = classes.astype(np.uint8)
    return out


def to_caffe_image(rgb, mean):
    """H x W x 3 RGB array -> 3 x H x W float32, BGR, minus `mean` given as (B, G, R)."""
    bgr = np.asarray(rgb, dtype=np.float32)[:, :, ::-1]
    bgr = bgr - np.asarray(mean, dtype=np.float32)
    return np.ascontiguousarray(bgr.transpose((2, 0, 1)))


# --------------------------------------------------------------------------------------
# param_str

REQUIRED = object()  # marks a key without a default


def parse_param_str(text):
    """The dict written in `text` (JSON or a Python literal; '' means {}). Never evaluates code."""
    if isinstance(text, dict):
        return dict(text)
    text = (text or '').strip()
    if not text:
        return {}
    try:
        value = jsonfile.parse_json(text, 'param_str', kind=None)
    except project.InputError:
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            raise ValueError('param_str is neither JSON nor a Python literal dict: %r' % text)
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise ValueError('param_str must be a dict with string keys, got: %r' % text)
    return value


def _check_str(key, value):
    if not isinstance(value, str) or not value:
        raise ValueError('%s must be a non-empty string, got %r' % (key, value))
    return value


def _check_split(key, value):
    _check_str(key, value)
    if '/' in value or '\\' in value:
        raise ValueError('%s is a list name, not a path: %r' % (key, value))
    return value


def _check_mean(key, value):
    if (not isinstance(value, (list, tuple)) or len(value) != 3
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
        raise ValueError('%s must be 3 numbers (B, G, R), got %r' % (key, value))
    return np.array(value, dtype=np.float32)


def _check_seed(key, value):
    if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
        raise ValueError('%s must be an integer, got %r' % (key, value))
    return value


def _check_num_classes(key, value):
    counts = value if isinstance(value, dict) else {None: value}
    if value is not None and not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1
                                     for v in counts.values()):
        raise ValueError('%s must be a class count >= 1 (or {"top": count}), got %r'
                         % (key, value))
    return value


def _check_batch(key, value):
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError('%s must be a whole number of examples >= 1, got %r' % (key, value))
    return value


def _check_bool(key, value):
    if value is not None and not isinstance(value, bool):
        raise ValueError('%s must be true or false, got %r' % (key, value))
    return value


# --------------------------------------------------------------------------------------
# The base layer

class SegDataLayer(caffe.Layer):
    """Base of the data layers: batch_size image ids per forward (default one), every top
    N x C x H x W.

    A subclass declares
      PARAMS       its own param_str keys -> default (REQUIRED for none);
      DIRS         which of those keys are directories (resolved against the data root);
      TOPS         the names of its tops, in order;
      split_path   classmethod: the split list for parsed params `p`;
      LABELS       its label tops -> the dataset's class count;
      load(id)     the arrays for one id, one per top, without the batch axis:
                   images float32 C x H x W, labels uint8 1 x H x W read through
                   `self.labels` (range-checked against the class count).
    Everything else (parsing, order of ids, reshape, forward) lives here.
    """

    COMMON = {'split': REQUIRED, 'seed': models.SEED, 'randomize': None, 'num_classes': None,
              'batch_size': 1}
    CHECKS = {'split': _check_split, 'seed': _check_seed, 'randomize': _check_bool,
              'mean': _check_mean, 'num_classes': _check_num_classes,
              'batch_size': _check_batch}
    PARAMS = {}
    DIRS = ()
    TOPS = ('data', 'label')
    LABELS = {}  # label top -> number of classes of the dataset (values 0..C-1, 255 void)
    SPLIT_HINTS = {}  # split name -> how to make its list, added to "not found" errors
    ID_PARTS = 1  # '/'-separated parts an image id may have (read_split, check_id)

    # -- what a subclass provides ----------------------------------------------------

    @classmethod
    def split_path(cls, p):
        raise NotImplementedError

    def load(self, idx):
        raise NotImplementedError

    def top_names(self):
        return list(self.TOPS)

    def labels(self, top, values, path, first=0, void=(VOID,)):
        """`read_labels` of label top `top` against its class count: the net's (param_str
        num_classes, or `bind_num_classes`), else the dataset's (LABELS). The file is
        remembered (label_files) so that a size error can name it."""
        self.label_files[top] = path
        return read_labels(values, path, self.num_classes[top], first, void)

    def _class_counts(self):
        counts = dict(self.LABELS)
        given = self.params.get('num_classes')
        if isinstance(given, dict):
            unknown = sorted(set(given) - set(counts))
            if unknown:
                raise ValueError('%s: num_classes names %s, not a label top (%s)'
                                 % (type(self).__name__, ', '.join(unknown), ', '.join(counts)))
            counts.update(given)
        elif given is not None:
            if len(counts) != 1:
                raise ValueError('%s: num_classes must be {"top": count} for its label tops %s'
                                 % (type(self).__name__, ', '.join(counts)))
            counts = {top: given for top in counts}
        return counts

    # -- parameters -----------------------------------------------------------------

    @classmethod
    def allowed_keys(cls):
        return sorted(set(cls.COMMON) | set(cls.PARAMS))

    @classmethod
    def parse_params(cls, param_str, check_required=True, root=None):
        """Checked parameters from `param_str` (text or dict): defaults filled in,
        directories resolved to absolute paths (against data_root(root)), `mean` as a
        float32 array, and `randomize` decided from the split name when not given."""
        given = parse_param_str(param_str)
        allowed = cls.allowed_keys()
        unknown = sorted(set(given) - set(allowed))
        if unknown:
            raise ValueError('%s: unknown param_str key(s) %s; allowed keys: %s'
                             % (cls.__name__, ', '.join(unknown), ', '.join(allowed)))
        defaults = dict(cls.COMMON, **cls.PARAMS)
        missing = sorted(k for k, v in defaults.items() if v is REQUIRED and k not in given)
        if missing and check_required:
            raise ValueError('%s: param_str is missing required key(s) %s; allowed keys: %s'
                             % (cls.__name__, ', '.join(missing), ', '.join(allowed)))
        p = {}
        for key, default in defaults.items():
            value = given.get(key, default)
            if value is REQUIRED:
                continue
            check = cls.CHECKS.get(key, _check_str if key in cls.DIRS else None)
            try:
                p[key] = check(key, value) if check else value
            except ValueError as e:
                raise ValueError('%s: %s' % (cls.__name__, e))
        for key in cls.DIRS:
            p[key] = data_path(p[key], root)
        if p.get('randomize') is None and 'split' in p:
            p['randomize'] = p['split'].startswith('train')
        return p

    @classmethod
    def ids(cls, split, root=None, **dirs):
        """The image ids of `split`, read with this layer's rules (directories relative to
        data_root(root)); no Caffe net needed."""
        bad = sorted(set(dirs) - set(cls.DIRS))
        if bad:
            raise ValueError('%s: %s not a directory key; directory keys: %s'
                             % (cls.__name__, ', '.join(bad), ', '.join(cls.DIRS)))
        p = cls.parse_params(dict(dirs, split=split), check_required=False, root=root)
        return read_split(cls.split_path(p), cls.SPLIT_HINTS.get(split, ''), cls.ID_PARTS)

    # -- Caffe's calls --------------------------------------------------------------

    def setup(self, bottom, top):
        self.params = self.parse_params(self.param_str)
        self.num_classes = self._class_counts()
        names = self.top_names()
        if len(top) != len(names):
            raise ValueError('%s needs %d tops (%s), the net gives it %d'
                             % (type(self).__name__, len(names), ', '.join(names), len(top)))
        if len(bottom) != 0:
            raise ValueError('%s is a data layer: it takes no bottoms' % type(self).__name__)
        split = self.params['split']
        self.indices = read_split(self.split_path(self.params), self.SPLIT_HINTS.get(split, ''),
                                  self.ID_PARTS)
        self.random = self.params['randomize']
        self.batch = self.params['batch_size']
        self.share = (0, 1)  # (rank, count): which draws of the stream are this layer's
        self.seek(0)
        self.label_files = {}  # label top -> the file it was read from (load, via labels)

    # The stream: `positions` are the list positions of this forward's batch_size examples,
    # `forwards` the forwards done, `example_number` the number in the stream of the
    # example being loaded (forwards * batch_size + its slot in the batch), on which
    # PSPSegDataLayer keys its augmentation: the same for batch N as for N forwards of 1.

    @property
    def idx(self):
        """The list position of the first example of the coming forward."""
        return self.positions[0]

    @idx.setter
    def idx(self, position):  # walking from `position` (walk_in_order, tests)
        self.positions = [(position + j) % len(self.indices) for j in range(self.batch)]

    def _draws(self, skip):
        """Skip `skip` draws of the random stream, then draw this forward's positions."""
        for _ in range(skip):
            self.rng.randrange(len(self.indices))
        self.positions = [self.rng.randrange(len(self.indices)) for _ in range(self.batch)]

    def reshape(self, bottom, top):
        # Caffe calls reshape before every forward (and once at setup): load the examples
        # at the current positions, unless they are the ones already loaded.
        if self.loaded is None or self.loaded[0] != tuple(self.positions):
            examples = []
            for slot, position in enumerate(self.positions):
                self.example_number = self.forwards * self.batch + slot
                examples.append(self._load_one(self.indices[position]))
            first = examples[0]
            for ex in examples[1:]:
                if [a.shape for a in ex[1]] != [a.shape for a in first[1]]:
                    raise project.InputError(
                        '%s: %s: batch_size %d needs examples of one size, but image %s is %s '
                        'and image %s is %s' % (ex[2] or ex[0], type(self).__name__, self.batch,
                                                first[0], _size(first[1]), ex[0], _size(ex[1])))
            self.loaded = (tuple(self.positions),
                           [np.stack(tops) for tops in zip(*(ex[1] for ex in examples))])
        for i, array in enumerate(self.loaded[1]):  # (top is indexable, not iterable)
            top[i].reshape(*array.shape)

    def _load_one(self, idx):
        """(idx, the arrays of `idx` (load), its label files) after checking that its tops
        have one size."""
        self.label_files = {}
        arrays = self.load(idx)
        files = ', '.join(self.label_files[t] for t in self.top_names() if t in self.label_files)
        if len(set(a.shape[1:] for a in arrays)) != 1:
            raise project.InputError('%s: %s: image %s has tops of different sizes %s'
                                    % (files or idx, type(self).__name__, idx,
                                       [a.shape for a in arrays]))
        return idx, arrays, files

    def forward(self, bottom, top):
        for i, array in enumerate(self.loaded[1]):
            top[i].data[...] = array
        self.forwards += 1
        # Next ids: fresh draws when training (the other ranks' skipped), else the next
        # ones in the list.
        if self.random:
            self._draws((self.share[1] - 1) * self.batch)
        else:
            self.idx = self.positions[-1] + 1

    def backward(self, top, propagate_down, bottom):
        pass  # data layers have nothing to propagate to

    # -- the solving loop's calls (pycaffe's net.layers[i] is this object) -----------

    def seek(self, forwards):
        """Put the layer where it would be after `forwards` forward passes from setup
        (batch_size ids each): the same ids and, when training, the same random stream (so
        a resumed run draws the images an uninterrupted one would have drawn)."""
        self.forwards, self.loaded = forwards, None
        if self.random:
            self.rng = random.Random(self.params['seed'])
            rank, count = self.share
            self._draws((forwards * count + rank) * self.batch)
        else:
            self.idx = forwards * self.batch

    def share_stream(self, rank, count):
        """Take the batches rank, rank + count, rank + 2 count, ... of the random stream
        (batch_size draws each), so that `count` processes training together (parallel.py)
        see different images and, all together, the images one process would draw. Call
        seek() after it."""
        self.share = (rank, count)


def _size(arrays):
    """'H x W' of an example's tops (C x H x W arrays of one size)."""
    return '%d x %d' % arrays[0].shape[1:]


def walk_in_order(net):
    """Make every layers.py data layer of caffe.Net `net` walk its list in order, one
    image per forward, without augmentation: what scoring needs whatever the layer's
    split or param_str (a training split draws at random with replacement). A layer that
    was drawing starts again from its first id. Returns how many layers were changed."""
    changed = 0
    for layer in net.layers:
        if isinstance(layer, SegDataLayer) and (layer.random or layer.params.get('augment')):
            layer.random = layer.params['randomize'] = False
            if 'augment' in layer.params:
                layer.params['augment'] = False
            layer.idx, layer.loaded = 0, None
            changed += 1
    return changed


def bind_num_classes(net):
    """Give the layers.py data layers of caffe.Net `net` the net's class count for each
    label top: the channels of the score blob a loss (or accuracy) layer compares it with
    (score/label, score_sem/sem, ...). A label at or beyond that count would make Caffe's
    loss read outside its arrays; with this it is an error naming the file. Takes effect
    from the next forward (the example loaded at setup is read again). Returns
    {label top: classes} of what was bound."""
    counts = {}
    for name, layer in zip(net._layer_names, net.layers):
        bottoms = list(net.bottom_names[name])
        if layer.type in ('SoftmaxWithLoss', 'Accuracy') and len(bottoms) >= 2:
            counts[bottoms[1]] = net.blobs[bottoms[0]].channels
    bound = {}
    for name, layer in zip(net._layer_names, net.layers):
        if layer.type == 'Python' and isinstance(layer, SegDataLayer):
            for top in net.top_names[name]:
                if top in counts and top in layer.num_classes:
                    layer.num_classes[top] = bound[top] = counts[top]
            layer.loaded = None
    return bound


# --------------------------------------------------------------------------------------
# PASCAL VOC and SBD

class VOCSegDataLayer(SegDataLayer):
    """PASCAL VOC segmentation: tops `data` (3 x H x W, BGR, mean subtracted, float32)
    and `label` (1 x H x W, class 0-20, 255 = void, as stored in the palette PNG).

    Keys: voc_dir (default "pascal/VOC2011"), split, mean (B, G, R; default VOC_MEAN),
    seed, randomize. Files: {voc_dir}/JPEGImages/{id}.jpg,
    {voc_dir}/SegmentationClass/{id}.png, list {voc_dir}/ImageSets/Segmentation/{split}.txt.
    """
    PARAMS = dict(_dirs('VOCSegDataLayer'), mean=VOC_MEAN)
    DIRS = ('voc_dir',)
    LABELS = {'label': len(VOC_CLASSES)}
    SPLIT_HINTS = _hints('VOCSegDataLayer')

    @classmethod
    def split_path(cls, p):
        return os.path.join(p['voc_dir'], 'ImageSets', 'Segmentation', p['split'] + '.txt')

    def load(self, idx):
        d = self.params['voc_dir']
        image = to_caffe_image(read_image(os.path.join(d, 'JPEGImages', idx + '.jpg')),
                               self.params['mean'])
        path = os.path.join(d, 'SegmentationClass', idx + '.png')
        # A palette PNG's pixel values are the class indices; read them without
        # converting the palette to colours.
        label = read_image(path, what='label', rgb=False)
        if label.ndim != 2:
            raise project.InputError('%s: expected a palette (one channel) label PNG, got '
                                    'shape %s' % (path, label.shape))
        return [image, self.labels('label', label, path)[np.newaxis]]


class SBDDSegDataLayer(SegDataLayer):
    """SBD (Hariharan et al.), the VOC models' training set: tops `data` (3 x H x W,
    BGR, mean subtracted, float32) and `label` (1 x H x W, class 0-20, uint8 as stored).

    Keys: sbdd_dir (default "sbdd/dataset"), split, mean (default VOC_MEAN), seed,
    randomize. Files: {sbdd_dir}/img/{id}.jpg, {sbdd_dir}/cls/{id}.mat (MATLAB struct
    GTcls, field Segmentation), list {sbdd_dir}/{split}.txt.
    """
    PARAMS = dict(_dirs('SBDDSegDataLayer'), mean=VOC_MEAN)
    DIRS = ('sbdd_dir',)
    LABELS = {'label': len(VOC_CLASSES)}

    @classmethod
    def split_path(cls, p):
        return os.path.join(p['sbdd_dir'], p['split'] + '.txt')

    def load(self, idx):
        d = self.params['sbdd_dir']
        image = to_caffe_image(read_image(os.path.join(d, 'img', idx + '.jpg')),
                               self.params['mean'])
        path = os.path.join(d, 'cls', idx + '.mat')
        return [image, self.labels('label', read_sbd_label(path), path)[np.newaxis]]


def read_sbd_label(path):
    """The class map of an SBD cls/<id>.mat file (struct GTcls, field Segmentation), as
    stored; InputError naming `path` when the field is missing."""
    gt = read_mat(path, 'GTcls')
    try:
        return gt[0]['Segmentation'][0]
    except (IndexError, KeyError, ValueError) as e:
        raise project.InputError('%s: GTcls has no Segmentation field (%s)' % (path, e))


# --------------------------------------------------------------------------------------
# NYUDv2

NYUD_TOP_KINDS = ('color', 'depth', 'hha', 'label')


def _check_nyud_tops(key, value):
    if (not isinstance(value, (list, tuple)) or not value
            or not all(isinstance(v, str) and v in NYUD_TOP_KINDS for v in value)
            or len(set(value)) != len(value)):
        raise ValueError('%s must be a list of distinct names from %s, got %r'
                         % (key, ', '.join(NYUD_TOP_KINDS), value))
    return list(value)

class NYUDSegDataLayer(SegDataLayer):
    """NYUDv2 in Gupta et al.'s format; the tops are the names listed in `tops`, in order:

      color  3 x H x W float32, BGR minus NYUD_COLOR_MEAN
      hha    3 x H x W float32, HHA in stored channel order (not flipped) minus NYUD_HHA_MEAN
      depth  1 x H x W float32, log(depth PNG value, in mm) - 7.844
      label  1 x H x W uint8, uint8(v) - 1 wrapping: class 0-39, void (0 in the file) -> 255

    Keys: nyud_dir (default "nyud"), split, tops (required), seed, randomize. Files:
    {nyud_dir}/data/images/img_{id}.png, data/depth/img_{id}.png (16-bit),
    data/hha/img_{id}.png, segmentation/img_{id}.mat (variable `segmentation`), list
    {nyud_dir}/{split}.txt (trainval and test come from data/nyud/splits.py).
    """
    PARAMS = dict(_dirs('NYUDSegDataLayer'), tops=REQUIRED)
    DIRS = ('nyud_dir',)
    LABELS = {'label': len(NYUD_CLASSES)}
    SPLIT_HINTS = _hints('NYUDSegDataLayer')

    CHECKS = dict(SegDataLayer.CHECKS, tops=_check_nyud_tops)

    @classmethod
    def split_path(cls, p):
        return os.path.join(p['nyud_dir'], p['split'] + '.txt')

    def top_names(self):
        return self.params['tops']

    def load(self, idx):
        return [getattr(self, 'load_' + kind)(idx) for kind in self.params['tops']]

    def _file(self, sub, idx, ext='png'):
        return os.path.join(self.params['nyud_dir'], sub, 'img_%s.%s' % (idx, ext))

    def load_color(self, idx):
        return to_caffe_image(read_image(self._file('data/images', idx)), NYUD_COLOR_MEAN)

    def load_hha(self, idx):
        path = self._file('data/hha', idx)
        hha = read_image(path, what='HHA image', rgb=False)
        if hha.ndim != 3 or hha.shape[2] != 3:
            raise project.InputError('%s: HHA image must have 3 channels, got shape %s'
                                    % (path, hha.shape))
        hha = hha.astype(np.float32) - np.array(NYUD_HHA_MEAN, dtype=np.float32)
        return np.ascontiguousarray(hha.transpose((2, 0, 1)))

    def load_depth(self, idx):
        path = self._file('data/depth', idx)
        depth = read_image(path, what='depth image', rgb=False).astype(np.float32)
        if depth.ndim != 2:
            raise project.InputError('%s: depth must be one channel, got shape %s'
                                    % (path, depth.shape))
        # Gupta et al.'s depth is filled in, so 0 does not occur; a stray 0 would make
        # log give -inf and poison the net, so it is read as 1 (log 0).
        depth = np.log(np.maximum(depth, 1)) - np.float32(NYUD_LOG_DEPTH_MEAN)
        return depth[np.newaxis].astype(np.float32)

    def load_label(self, idx):
        path = self._file('segmentation', idx, 'mat')
        # Classes 1-40 in the file become 0-39; void 0 becomes 255, the ignore label.
        return self.labels('label', read_mat(path, 'segmentation'), path, 1, (0,))[np.newaxis]


# --------------------------------------------------------------------------------------
# SIFT Flow

class SIFTFlowSegDataLayer(SegDataLayer):
    """SIFT Flow: tops `data` (3 x H x W, BGR minus mean, float32), `sem` (1 x H x W,
    semantic class 0-32, 255 = unlabeled) and `geo` (1 x H x W, geometric class 0-2,
    255 = unlabeled), both uint8.

    Keys: siftflow_dir (default "sift-flow"), split, mean (default SIFTFLOW_MEAN), seed,
    randomize. Files under {siftflow_dir}: Images/<D>/{id}.jpg, SemanticLabels/<D>/{id}.mat
    and GeoLabels/<D>/{id}.mat (variable `S`), D = spatial_envelope_256x256_static_8outdoor
    categories; list {siftflow_dir}/{split}.txt (from data/sift-flow/splits.py).
    """
    PARAMS = dict(_dirs('SIFTFlowSegDataLayer'), mean=SIFTFLOW_MEAN)
    DIRS = ('siftflow_dir',)
    TOPS = ('data', 'sem', 'geo')
    LABELS = {'sem': len(SIFTFLOW_SEM_CLASSES), 'geo': len(SIFTFLOW_GEO_CLASSES)}
    SUBDIR = 'spatial_envelope_256x256_static_8outdoorcategories'
    SPLIT_HINTS = _hints('SIFTFlowSegDataLayer')

    @classmethod
    def split_path(cls, p):
        return os.path.join(p['siftflow_dir'], p['split'] + '.txt')

    def _file(self, kind, idx, ext):
        return os.path.join(self.params['siftflow_dir'], kind, self.SUBDIR, idx + ext)

    def load(self, idx):
        image = to_caffe_image(read_image(self._file('Images', idx, '.jpg')),
                               self.params['mean'])
        # Classes start at 1 in the files: shifted to 0-based, unlabeled 0 becomes 255;
        # the geometric labels mark some unlabeled pixels -1, others 0.
        path = self._file('SemanticLabels', idx, '.mat')
        sem = self.labels('sem', read_mat(path, 'S'), path, 1, (0,))
        path = self._file('GeoLabels', idx, '.mat')
        geo = self.labels('geo', read_mat(path, 'S'), path, 1, (0, -1))
        return [image, sem[np.newaxis], geo[np.newaxis]]


# --------------------------------------------------------------------------------------
# PASCAL-Context

def read_label_list(path):
    """[(id, name), ...] from a PASCAL-Context label list (lines `id: name`), file order."""
    _need(path, 'label list')
    entries = []
    try:
        with open(path, encoding='utf-8') as f:
            lines = f.read().splitlines()
    except UnicodeDecodeError as e:
        raise project.InputError('%s: label list is not UTF-8 text (%s)' % (path, e.reason))
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        number, _, name = line.partition(':')
        if not number.strip().isdigit() or not name.strip():
            raise project.InputError('%s line %d: expected "id: name", got %r' % (path, n, line))
        entries.append((int(number), name.strip()))
    if not entries:
        raise project.InputError('label list is empty: %s' % path)
    return entries


def context_mapping(labels_txt, labels59_txt):
    """Lookup table from PASCAL-Context's full label ids to the 59-class task.

    Returns a uint8 array `lut` with lut[full id] = k + 1 for the k-th class (file order)
    of the 59-class list and 0 (background) for every other id. Names are matched with
    spaces removed, and the three classes the 59-class list spells differently
    (diningtable, bedcloth, clothes) are looked up as table, bedclothes, cloth. An entry
    `0: background` in the 59-class list, if present, is skipped.
    """
    full = {}
    for number, name in read_label_list(labels_txt):
        full.setdefault(name.replace(' ', ''), number)
    task = [name.replace(' ', '') for number, name in read_label_list(labels59_txt)
            if not (number == 0 and name.strip() == 'background')]
    lut = np.zeros(max(full.values()) + 1, dtype=np.uint8)
    for k, name in enumerate(task):
        key = CONTEXT_RENAMED.get(name, name)
        if key not in full:
            raise project.InputError('%s: class %r (%r) is not in %s'
                                    % (labels59_txt, name, key, labels_txt))
        lut[full[key]] = k + 1
    return lut


class PASCALContextSegDataLayer(SegDataLayer):
    """PASCAL-Context, 59-class task: tops `data` (3 x H x W, BGR minus mean, float32) and
    `label` (1 x H x W uint8: class k of the 59 -> k + 1, everything else 0 = background;
    no void label).

    Keys: voc_dir (default "pascal/VOC2010"), context_dir (default "pascal-context"),
    split, mean (default CONTEXT_MEAN), seed, randomize. Files: {voc_dir}/JPEGImages/
    {id}.jpg, list {voc_dir}/ImageSets/Main/{split}.txt, labels {context_dir}/trainval/
    {id}.mat (variable `LabelMap`, ids of {context_dir}/labels.txt), mapped through
    `context_mapping` with {context_dir}/59_labels.txt.
    """
    PARAMS = dict(_dirs('PASCALContextSegDataLayer'), mean=CONTEXT_MEAN)
    DIRS = ('voc_dir', 'context_dir')
    LABELS = {'label': len(CONTEXT_CLASSES)}

    @classmethod
    def split_path(cls, p):
        return os.path.join(p['voc_dir'], 'ImageSets', 'Main', p['split'] + '.txt')

    def setup(self, bottom, top):
        super().setup(bottom, top)
        d = self.params['context_dir']
        self.lut = context_mapping(os.path.join(d, 'labels.txt'),
                                   os.path.join(d, '59_labels.txt'))

    def load(self, idx):
        image = to_caffe_image(
            read_image(os.path.join(self.params['voc_dir'], 'JPEGImages', idx + '.jpg')),
            self.params['mean'])
        path = os.path.join(self.params['context_dir'], 'trainval', idx + '.mat')
        # ids of labels.txt (0 unlabeled), then the task's classes; no void label
        full = read_labels(read_mat(path, 'LabelMap'), path, len(self.lut), void=())
        label = self.labels('label', self.lut[full], path)
        return [image, label[np.newaxis]]


# --------------------------------------------------------------------------------------
# PSPNet's datasets (Zhao et al., CVPR 2017): ADE20K, Cityscapes, PASCAL VOC 2012
#
# PSPNet's preprocessing (the release's): RGB 0-255 minus the mean R 123.68, G 116.779,
# B 103.939, then BGR order, no division by a standard deviation. Written (B, G, R) here
# like every mean of this module, since the layers subtract after the switch to BGR.
PSP_MEAN = models.PSP_MEAN

ADE20K_CLASSES = models.DATASETS['ade20k'].classes

# The benchmark's colour for each of the 150 classes (its color150 table), R G B.
ADE20K_PALETTE = (
    (120, 120, 120), (180, 120, 120), (6, 230, 230), (80, 50, 50), (4, 200, 3),
    (120, 120, 80), (140, 140, 140), (204, 5, 255), (230, 230, 230), (4, 250, 7),
    (224, 5, 255), (235, 255, 7), (150, 5, 61), (120, 120, 70), (8, 255, 51),
    (255, 6, 82), (143, 255, 140), (204, 255, 4), (255, 51, 7), (204, 70, 3),
    (0, 102, 200), (61, 230, 250), (255, 6, 51), (11, 102, 255), (255, 7, 71),
    (255, 9, 224), (9, 7, 230), (220, 220, 220), (255, 9, 92), (112, 9, 255),
    (8, 255, 214), (7, 255, 224), (255, 184, 6), (10, 255, 71), (255, 41, 10),
    (7, 255, 255), (224, 255, 8), (102, 8, 255), (255, 61, 6), (255, 194, 7),
    (255, 122, 8), (0, 255, 20), (255, 8, 41), (255, 5, 153), (6, 51, 255),
    (235, 12, 255), (160, 150, 20), (0, 163, 255), (140, 140, 140), (250, 10, 15),
    (20, 255, 0), (31, 255, 0), (255, 31, 0), (255, 224, 0), (153, 255, 0),
    (0, 0, 255), (255, 71, 0), (0, 235, 255), (0, 173, 255), (31, 0, 255),
    (11, 200, 200), (255, 82, 0), (0, 255, 245), (0, 61, 255), (0, 255, 112),
    (0, 255, 133), (255, 0, 0), (255, 163, 0), (255, 102, 0), (194, 255, 0),
    (0, 143, 255), (51, 255, 0), (0, 82, 255), (0, 255, 41), (0, 255, 173),
    (10, 0, 255), (173, 255, 0), (0, 255, 153), (255, 92, 0), (255, 0, 255),
    (255, 0, 245), (255, 0, 102), (255, 173, 0), (255, 0, 20), (255, 184, 184),
    (0, 31, 255), (0, 255, 61), (0, 71, 255), (255, 0, 204), (0, 255, 194),
    (0, 255, 82), (0, 10, 255), (0, 112, 255), (51, 0, 255), (0, 194, 255),
    (0, 122, 255), (0, 255, 163), (255, 153, 0), (0, 255, 10), (255, 112, 0),
    (143, 255, 0), (82, 0, 255), (163, 255, 0), (255, 235, 0), (8, 184, 170),
    (133, 0, 255), (0, 255, 92), (184, 0, 255), (255, 0, 31), (0, 184, 255),
    (0, 214, 255), (255, 0, 112), (92, 255, 0), (0, 224, 255), (112, 224, 255),
    (70, 184, 160), (163, 0, 255), (153, 0, 255), (71, 255, 0), (255, 0, 163),
    (255, 204, 0), (255, 0, 143), (0, 255, 235), (133, 255, 0), (255, 0, 235),
    (245, 0, 255), (255, 0, 122), (255, 245, 0), (10, 190, 212), (214, 255, 0),
    (0, 204, 255), (20, 0, 255), (255, 255, 0), (0, 153, 255), (0, 41, 255),
    (0, 255, 204), (41, 0, 255), (41, 255, 0), (173, 0, 255), (0, 245, 255),
    (71, 0, 255), (122, 0, 255), (0, 255, 184), (0, 92, 255), (184, 255, 0),
    (0, 133, 255), (255, 214, 0), (25, 194, 194), (102, 255, 0), (92, 0, 255))

# Cityscapes' label definition (its labels.py): (labelId, name, trainId, colour R G B).
# The 19 evaluated classes have trainIds 0..18; every other label is 255 (ignored).
# 'license plate' has labelId -1, which a uint8 labelIds PNG holds as 255.
CITYSCAPES_LABELS = (
    (0, 'unlabeled', 255, (0, 0, 0)), (1, 'ego vehicle', 255, (0, 0, 0)),
    (2, 'rectification border', 255, (0, 0, 0)), (3, 'out of roi', 255, (0, 0, 0)),
    (4, 'static', 255, (0, 0, 0)), (5, 'dynamic', 255, (111, 74, 0)),
    (6, 'ground', 255, (81, 0, 81)), (7, 'road', 0, (128, 64, 128)),
    (8, 'sidewalk', 1, (244, 35, 232)), (9, 'parking', 255, (250, 170, 160)),
    (10, 'rail track', 255, (230, 150, 140)), (11, 'building', 2, (70, 70, 70)),
    (12, 'wall', 3, (102, 102, 156)), (13, 'fence', 4, (190, 153, 153)),
    (14, 'guard rail', 255, (180, 165, 180)), (15, 'bridge', 255, (150, 100, 100)),
    (16, 'tunnel', 255, (150, 120, 90)), (17, 'pole', 5, (153, 153, 153)),
    (18, 'polegroup', 255, (153, 153, 153)), (19, 'traffic light', 6, (250, 170, 30)),
    (20, 'traffic sign', 7, (220, 220, 0)), (21, 'vegetation', 8, (107, 142, 35)),
    (22, 'terrain', 9, (152, 251, 152)), (23, 'sky', 10, (70, 130, 180)),
    (24, 'person', 11, (220, 20, 60)), (25, 'rider', 12, (255, 0, 0)),
    (26, 'car', 13, (0, 0, 142)), (27, 'truck', 14, (0, 0, 70)),
    (28, 'bus', 15, (0, 60, 100)), (29, 'caravan', 255, (0, 0, 90)),
    (30, 'trailer', 255, (0, 0, 110)), (31, 'train', 16, (0, 80, 100)),
    (32, 'motorcycle', 17, (0, 0, 230)), (33, 'bicycle', 18, (119, 11, 32)),
    (-1, 'license plate', 255, (0, 0, 142)))

_CITYSCAPES_TRAIN = sorted((t, name, colour) for _, name, t, colour in CITYSCAPES_LABELS
                           if t != 255)
CITYSCAPES_CLASSES = tuple(name for _, name, _ in _CITYSCAPES_TRAIN)
CITYSCAPES_PALETTE = tuple(colour for _, _, colour in _CITYSCAPES_TRAIN)


def cityscapes_train_ids():
    """uint8 lookup table of 256: labelIds PNG value -> trainId (255 for ignored labels,
    and for values Cityscapes does not define, which `CityscapesSegDataLayer` refuses)."""
    lut = np.full(256, 255, dtype=np.uint8)
    for label_id, _, train_id, _ in CITYSCAPES_LABELS:
        lut[label_id % 256] = train_id
    return lut


def read_label_png(path):
    """H x W values of a one-channel label PNG as stored (palette indices or gray levels,
    never converted to colours); InputError naming `path` for anything else."""
    label = read_image(path, what='label', rgb=False)
    if label.ndim != 2:
        raise project.InputError('%s: expected a one-channel (palette or gray) label PNG, '
                                'got shape %s' % (path, label.shape))
    return label


def resize_bilinear(image, size):
    """H x W x C float32 -> size[0] x size[1] x C, bilinear per channel (Pillow's, which
    averages over the footprint when shrinking, as MATLAB's imresize of the release's
    evaluation does)."""
    h, w = int(size[0]), int(size[1])
    if image.shape[:2] == (h, w):
        return np.asarray(image, np.float32)
    out = np.empty((h, w, image.shape[2]), np.float32)
    for c in range(image.shape[2]):
        channel = Image.fromarray(np.ascontiguousarray(image[:, :, c], np.float32), mode='F')
        out[:, :, c] = np.asarray(channel.resize((w, h), Image.BILINEAR))
    return out


def resize_nearest(label, size):
    """H x W uint8 label map -> size[0] x size[1], nearest neighbour."""
    h, w = int(size[0]), int(size[1])
    if label.shape == (h, w):
        return label
    return np.asarray(Image.fromarray(label).resize((w, h), Image.NEAREST))


def scaled_size(shape, long_side):
    """(h, w) of an image of `shape` (H, W, ...) resized so its longer side is
    `long_side`, aspect kept, each side rounded and at least 1."""
    h, w = shape[:2]
    s = float(long_side) / max(h, w)
    return max(1, int(round(h * s))), max(1, int(round(w * s)))


def pad_to(image, label, size):
    """Pad H x W x 3 `image` with 0 (the mean, once it is subtracted) and H x W `label`
    with 255 (void) at the bottom and right, to at least size = (h, w)."""
    ph, pw = max(size[0] - label.shape[0], 0), max(size[1] - label.shape[1], 0)
    if ph or pw:
        image = np.pad(image, ((0, ph), (0, pw), (0, 0)), constant_values=0)
        label = np.pad(label, ((0, ph), (0, pw)), constant_values=255)
    return image, label


# The Gaussian blur of PSPNet's training augmentation, applied to half of the images:
# a 5 x 5 kernel of sigma 1.1 (the sigma OpenCV derives for a 5 x 5 kernel), as the
# authors' later PyTorch re-implementation (semseg) blurs; the paper only says "Gaussian
# blur" and no training code came with the Caffe release (UNCONFIRMED for the Caffe runs).
BLUR_SIGMA, BLUR_RADIUS, BLUR_P = 1.1, 2, 0.5


def mirror_pad_crop(image, label, rng, crop, mirror=True):
    """The last steps of the training augmentations (psp_augment, deeplab_augment): a
    mirror with probability 1/2 (when `mirror`), padding to crop x crop (pad_to: the
    image with 0 after the mean, the label with 255), then a random crop x crop window;
    draws from `rng` in that order. Returns (crop x crop x 3 float32, crop x crop)."""
    if mirror and rng.random() < 0.5:
        image, label = image[:, ::-1], label[:, ::-1]
    image, label = pad_to(image, label, (crop, crop))
    y = rng.integers(0, label.shape[0] - crop + 1)
    x = rng.integers(0, label.shape[1] - crop + 1)
    return (np.ascontiguousarray(image[y:y + crop, x:x + crop], np.float32),
            np.ascontiguousarray(label[y:y + crop, x:x + crop]))


def psp_augment(image, label, rng, crop, scale=(0.5, 2.0), rotate=10.0, blur=True,
                mirror=True):
    """One training example the PSPNet paper's way (section 5.1): random resize by a factor
    in `scale`, rotation by an angle in [-rotate, rotate] degrees, Gaussian blur (half the
    time), horizontal mirror (half the time), then a random crop x crop window, padded
    with the mean (image) and 255 (label) where the image is smaller. This order is the
    authors' semseg re-implementation's.

    image: H x W x 3 float32, mean subtracted (0 is the mean colour); label: H x W uint8;
    rng: a numpy Generator (all randomness comes from it). Returns (crop x crop x 3
    float32, crop x crop uint8). Rotation zeroes (image) / voids (label) the corners it
    brings in; the label is resized and rotated by nearest neighbour."""
    size = scaled_size(label.shape, max(label.shape) * rng.uniform(*scale))
    image, label = resize_bilinear(image, size), resize_nearest(label, size)
    if rotate:
        angle = rng.uniform(-rotate, rotate)
        image = scipy.ndimage.rotate(image, angle, axes=(1, 0), reshape=False, order=1,
                                     mode='constant', cval=0.0)
        label = scipy.ndimage.rotate(label, angle, axes=(1, 0), reshape=False, order=0,
                                     mode='constant', cval=255)
    if blur and rng.random() < BLUR_P:
        image = scipy.ndimage.gaussian_filter(image, (BLUR_SIGMA, BLUR_SIGMA, 0),
                                              truncate=BLUR_RADIUS / BLUR_SIGMA)
    return mirror_pad_crop(image, label, rng, crop, mirror)


def fit_crop(image, label, crop):
    """The fixed-size view a PSPNet val net scores during training: resized so the longer
    side is `crop` (image bilinear, label nearest), padded bottom/right with the mean and
    255 to crop x crop. (The release's evaluation, predict.py, slides full-size
    crops instead; this is only the training loop's quick look.)"""
    size = scaled_size(label.shape, crop)
    return pad_to(resize_bilinear(image, size), resize_nearest(label, size), (crop, crop))


def _check_crop(key, value):
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise ValueError('%s must be a positive number of pixels or null, got %r' % (key, value))
    return value


def _check_scale(key, value):
    if (not isinstance(value, (list, tuple)) or len(value) != 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
            or not 0 < value[0] <= value[1]):
        raise ValueError('%s must be [low, high] with 0 < low <= high, got %r' % (key, value))
    return (float(value[0]), float(value[1]))


def _check_angle(key, value):
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value <= 180:
        raise ValueError('%s must be a number of degrees in 0..180, got %r' % (key, value))
    return float(value)


class PSPSegDataLayer(SegDataLayer):
    """Base of PSPNet's data layers: tops `data` (3 x H x W float32, BGR minus PSP_MEAN)
    and `label` (1 x H x W uint8, class 0..C-1, 255 = void).

    Keys besides the common ones and a subclass's directories:
      crop     null (default): the whole image, as stored; N: every top N x N -- with
               `augment` psp_augment's random crop, else fit_crop's resized, padded view
      augment  default: randomize (true for training splits); needs `crop`
      scale    [0.5, 2.0], rotate (degrees) 10, blur true, mirror true: psp_augment's
               ranges (the Cityscapes layer defaults to rotate 0, blur false, as the
               paper augments Cityscapes only by mirror, resize and crop)
      mean     (B, G, R), default PSP_MEAN

    The augmentation of the k-th example of the stream (k-th forward at batch_size 1;
    slot j of forward f is example f * batch_size + j) draws from numpy's
    default_rng([seed, k]), so a run is the same for a seed, batch N equals N forwards of
    batch 1 stacked, and `seek` (resume) restores it exactly. A subclass
    provides `read_example(p, idx)` -> (H x W x 3 uint8 RGB, H x W uint8 label), which
    the evaluation (predict.py, via score.py) reads too; its labels pass `read_labels`
    against `num_classes` (default: the dataset's, LABELS; the layer gives the net's).
    """
    AUGMENT = {'crop': None, 'augment': None, 'scale': [0.5, 2.0], 'rotate': 10,
               'blur': True, 'mirror': True, 'mean': PSP_MEAN}
    CHECKS = dict(SegDataLayer.CHECKS, crop=_check_crop, augment=_check_bool,
                  scale=_check_scale, rotate=_check_angle, blur=_check_bool,
                  mirror=_check_bool)

    @classmethod
    def parse_params(cls, param_str, check_required=True, root=None):
        p = super().parse_params(param_str, check_required, root)
        if p.get('augment') is None:  # training splits augment when they crop
            p['augment'] = bool(p.get('randomize')) and p.get('crop') is not None
        if p['augment'] and not p.get('crop'):
            raise ValueError('%s: augment needs a crop size (param_str "crop": 473)'
                             % cls.__name__)
        return p

    LABELS = {'label': None}  # a subclass gives its dataset's class count

    @classmethod
    def read_example(cls, p, idx, num_classes=None):
        raise NotImplementedError

    @classmethod
    def label_path(cls, p, idx):
        """The label file of image `idx` (read_example reads it)."""
        raise NotImplementedError

    @classmethod
    def example(cls, p, idx, num_classes=None):
        """read_example, checked: an InputError naming the label file when the label is not
        the size of its image (scoring would compare pixels that do not correspond;
        augmenting would resize one to the other)."""
        rgb, label = cls.read_example(p, idx, num_classes)
        if rgb.shape[:2] != label.shape:
            raise project.InputError('%s: label is %d x %d pixels, its image %s is %d x %d'
                                     % (cls.label_path(p, idx), label.shape[1], label.shape[0],
                                        idx, rgb.shape[1], rgb.shape[0]))
        return rgb, label

    def load(self, idx):
        p = self.params
        self.label_files['label'] = self.label_path(p, idx)
        rgb, label = self.example(p, idx, self.num_classes['label'])
        image = rgb[:, :, ::-1].astype(np.float32) - p['mean']  # H x W x 3, BGR
        if p['augment']:
            rng = np.random.default_rng([p['seed'], self.example_number])
            image, label = self.augment(image, label, rng)
        elif p['crop']:
            image, label = self.fit(image, label, idx)
        return [np.ascontiguousarray(image.transpose((2, 0, 1)), np.float32),
                np.ascontiguousarray(label)[np.newaxis]]

    def augment(self, image, label, rng):
        """One training example from `image` (H x W x 3 float32, mean subtracted) and
        `label`, all randomness from `rng`: psp_augment with this layer's ranges."""
        p = self.params
        return psp_augment(image, label, rng, p['crop'], p['scale'], p['rotate'], p['blur'],
                           p['mirror'])

    def fit(self, image, label, idx):
        """The crop x crop view of a scored image `idx`: fit_crop."""
        return fit_crop(image, label, self.params['crop'])

    def forward(self, bottom, top):
        super().forward(bottom, top)
        if self.params['augment']:
            self.loaded = None  # a fresh augmentation next time, even of the same image


class ADE20KSegDataLayer(PSPSegDataLayer):
    """ADE20K, the SceneParsing benchmark's ADEChallengeData2016: label value 0 (other
    objects, not evaluated) -> 255, 1..150 -> class 0..149 (ADE20K_CLASSES).

    Keys: ade20k_dir (default "ade20k/ADEChallengeData2016"), split (training,
    validation), and PSPSegDataLayer's. Files: {ade20k_dir}/images/{split}/{id}.jpg,
    {ade20k_dir}/annotations/{split}/{id}.png (8-bit gray), list
    {ade20k_dir}/{split}.txt (from data/ade20k/splits.py).
    """
    PARAMS = dict(PSPSegDataLayer.AUGMENT, **_dirs('ADE20KSegDataLayer'))
    DIRS = ('ade20k_dir',)
    SPLIT_HINTS = _hints('ADE20KSegDataLayer')

    @classmethod
    def split_path(cls, p):
        return os.path.join(p['ade20k_dir'], p['split'] + '.txt')

    LABELS = {'label': len(ADE20K_CLASSES)}

    @classmethod
    def label_path(cls, p, idx):
        return os.path.join(p['ade20k_dir'], 'annotations', p['split'], idx + '.png')

    @classmethod
    def read_example(cls, p, idx, num_classes=None):
        d, split = p['ade20k_dir'], p['split']
        rgb = read_image(os.path.join(d, 'images', split, idx + '.jpg'))
        path = cls.label_path(p, idx)
        return rgb, read_labels(read_label_png(path), path,
                                num_classes or cls.LABELS['label'], first=1, void=(0,))


class CityscapesSegDataLayer(PSPSegDataLayer):
    """Cityscapes, fine annotations: labelIds -> the 19 trainIds (CITYSCAPES_CLASSES),
    every other label 255.

    Keys: cityscapes_dir (default "cityscapes"), split (train, val, test), and
    PSPSegDataLayer's (rotate 0 and blur false by default). Ids are <city>/<city>_<seq>_
    <frame>; files {cityscapes_dir}/leftImg8bit/{split}/{id}_leftImg8bit.png,
    {cityscapes_dir}/gtFine/{split}/{id}_gtFine_labelIds.png, list
    {cityscapes_dir}/{split}.txt (from data/cityscapes/splits.py).
    """
    PARAMS = dict(PSPSegDataLayer.AUGMENT, rotate=0, blur=False, **_dirs('CityscapesSegDataLayer'))
    DIRS = ('cityscapes_dir',)
    SPLIT_HINTS = _hints('CityscapesSegDataLayer')
    ID_PARTS = 2  # <city>/<name>
    LABELS = {'label': len(CITYSCAPES_CLASSES)}
    TRAIN_IDS = cityscapes_train_ids()
    DEFINED = np.zeros(256, bool)
    DEFINED[[label_id % 256 for label_id, _, _, _ in CITYSCAPES_LABELS]] = True

    @classmethod
    def split_path(cls, p):
        return os.path.join(p['cityscapes_dir'], p['split'] + '.txt')

    @classmethod
    def label_path(cls, p, idx):
        return os.path.join(p['cityscapes_dir'], 'gtFine', p['split'], idx + '_gtFine_labelIds.png')

    @classmethod
    def read_example(cls, p, idx, num_classes=None):
        d, split = p['cityscapes_dir'], p['split']
        rgb = read_image(os.path.join(d, 'leftImg8bit', split, idx + '_leftImg8bit.png'))
        path = cls.label_path(p, idx)
        label = read_label_png(path)
        if label.dtype != np.uint8:
            raise project.InputError('%s: a labelIds PNG is 8-bit, this one is %s'
                                    % (path, label.dtype))
        bad = label[~cls.DEFINED[label]]
        if bad.size:
            raise project.InputError('%s: label values %s are not Cityscapes labelIds'
                                    % (path, bad_values(bad)))
        return rgb, read_labels(cls.TRAIN_IDS[label], path, num_classes or cls.LABELS['label'])


class VOC2012PSPSegDataLayer(PSPSegDataLayer):
    """PASCAL VOC 2012 for PSPNet: labels as stored (class 0-20, 255 = void).

    Keys: voc_dir (default "pascal/VOC2012"), label_dir (default "SegmentationClass";
    "SegmentationClassAug" for the SBD-augmented training set), split (train, val,
    trainval, or a list of your own such as train_aug), and PSPSegDataLayer's. Files:
    {voc_dir}/JPEGImages/{id}.jpg, {voc_dir}/{label_dir}/{id}.png (palette or gray),
    list {voc_dir}/ImageSets/Segmentation/{split}.txt.
    """
    PARAMS = dict(PSPSegDataLayer.AUGMENT, label_dir='SegmentationClass',
                  **_dirs('VOC2012PSPSegDataLayer'))
    DIRS = ('voc_dir',)
    CHECKS = dict(PSPSegDataLayer.CHECKS, label_dir=_check_split)
    LABELS = {'label': len(VOC_CLASSES)}

    @classmethod
    def split_path(cls, p):
        return os.path.join(p['voc_dir'], 'ImageSets', 'Segmentation', p['split'] + '.txt')

    @classmethod
    def label_path(cls, p, idx):
        return os.path.join(p['voc_dir'], p['label_dir'], idx + '.png')

    @classmethod
    def read_example(cls, p, idx, num_classes=None):
        d = p['voc_dir']
        rgb = read_image(os.path.join(d, 'JPEGImages', idx + '.jpg'))
        path = cls.label_path(p, idx)
        return rgb, read_labels(read_label_png(path), path, num_classes or cls.LABELS['label'])


# --------------------------------------------------------------------------------------
# DeepLab v2's VOC 2012 + SBD (train_aug), on the same base

DEEPLAB_MEAN = _D['voc12aug'].mean
DEEPLAB_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5)  # the release's training scales


def _check_scales(key, value):
    if (not isinstance(value, (list, tuple)) or not value
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0
                       for v in value)):
        raise ValueError('%s must be a non-empty list of positive factors, got %r' % (key, value))
    return tuple(float(v) for v in value)


def deeplab_augment(image, label, rng, crop, scales=DEEPLAB_SCALES, mirror=True):
    """One training example DeepLab v2's way (TPAMI 2017 section 4.1 and its release's
    data layer; the exact rounding UNCONFIRMED): resize by a factor drawn from `scales`
    (each side rounded; image bilinear, label nearest), mirror half the time, pad
    bottom/right with the mean (0 here) and 255 to at least crop x crop, then a random
    crop x crop window. image: H x W x 3 float32, mean subtracted; label: H x W uint8;
    rng: a numpy Generator (all randomness comes from it). Returns (crop x crop x 3
    float32, crop x crop uint8)."""
    s = scales[int(rng.integers(len(scales)))]
    h, w = label.shape
    size = (max(1, int(round(h * s))), max(1, int(round(w * s))))
    image, label = resize_bilinear(image, size), resize_nearest(label, size)
    return mirror_pad_crop(image, label, rng, crop, mirror)


class VOC12AugSegDataLayer(PSPSegDataLayer):
    """PASCAL VOC 2012 with SBD's extra labels, DeepLab v2's way: tops `data` (3 x H x W
    float32, BGR minus DEEPLAB_MEAN) and `label` (1 x H x W uint8, 0-20, 255 = void).

    Keys: voc_dir (default "pascal/VOC2012"), sbdd_dir (default "sbdd/dataset"),
    label_dir (default "SegmentationClass"), split (train_aug, val, or a list of your
    own), crop (train 321, test 513: the nets set it), augment (default: randomize),
    scales [0.5, 0.75, 1, 1.25, 1.5], mirror true, mean, seed, randomize.
    Files: {voc_dir}/JPEGImages/{id}.jpg; the label {voc_dir}/{label_dir}/{id}.png where
    it exists, else SBD's {sbdd_dir}/cls/{id}.mat (which of the two the release's
    SegmentationClassAug took where both exist is UNCONFIRMED; label_dir
    "SegmentationClassAug" reads that folder instead); list
    {voc_dir}/ImageSets/Segmentation/{split}.txt (train_aug: data/pascal/train_aug.py).

    Training (augment): deeplab_augment. Scoring (crop, no augment): the image padded
    bottom/right with the mean and the label with 255 to crop x crop, never resized
    (the release's test: every VOC image is at most 500 a side, the nets take 513); a
    larger image is an InputError, not a net that fails to fit.
    """
    PARAMS = dict(crop=None, augment=None, scales=list(DEEPLAB_SCALES), mirror=True,
                  mean=DEEPLAB_MEAN, label_dir='SegmentationClass',
                  **_dirs('VOC12AugSegDataLayer'))
    DIRS = ('voc_dir', 'sbdd_dir')
    CHECKS = dict(PSPSegDataLayer.CHECKS, scales=_check_scales, label_dir=_check_split)
    LABELS = {'label': len(VOC_CLASSES)}
    SPLIT_HINTS = _hints('VOC12AugSegDataLayer')

    @classmethod
    def split_path(cls, p):
        return os.path.join(p['voc_dir'], 'ImageSets', 'Segmentation', p['split'] + '.txt')

    @classmethod
    def label_path(cls, p, idx):
        png = os.path.join(p['voc_dir'], p['label_dir'], idx + '.png')
        return png if os.path.isfile(png) else os.path.join(p['sbdd_dir'], 'cls', idx + '.mat')

    @classmethod
    def read_example(cls, p, idx, num_classes=None):
        rgb = read_image(os.path.join(p['voc_dir'], 'JPEGImages', idx + '.jpg'))
        path = cls.label_path(p, idx)
        values = read_sbd_label(path) if path.endswith('.mat') else read_label_png(path)
        return rgb, read_labels(values, path, num_classes or cls.LABELS['label'])

    def augment(self, image, label, rng):
        p = self.params
        return deeplab_augment(image, label, rng, p['crop'], p['scales'], p['mirror'])

    def fit(self, image, label, idx):
        crop = self.params['crop']
        if max(label.shape) > crop:
            raise project.InputError('%s: image %s is %d x %d, larger than the net\'s %d x %d '
                                    'input (the release pads, never shrinks)'
                                    % (self.label_files.get('label', idx), idx, label.shape[1],
                                       label.shape[0], crop, crop))
        return pad_to(image, label, (crop, crop))


# --------------------------------------------------------------------------------------
# Label images: palettes and palette PNGs (every dataset's colours over the VOC colour map)

def label_palette(palette=None, n=256):
    """n x 3 uint8 (n >= 256): `palette` (K x 3 RGB colours of classes 0..K-1) over the VOC
    colour map, which gives every other index (void 255 included) its colour."""
    out = voc_palette(max(256, int(n)))
    if palette is not None:
        palette = np.asarray(palette, np.uint8).reshape(-1, 3)[:len(out)]
        out[:len(palette)] = palette
    return out


PALETTE_CLASSES = 256  # what one palette PNG can hold: indices 0..255


def voc_palette(n=256):
    """The PASCAL VOC colour map: n x 3 uint8, class k's RGB colour in row k.

    Each class index's bits are spread over the high bits of R, G and B in turn, so the
    first classes get well separated colours; index 255 (void) is the usual cream colour."""
    palette = np.zeros((n, 3), np.uint8)
    for k in range(n):
        c, r, g, b = k, 0, 0, 0
        for shift in range(7, -1, -1):
            r |= ((c >> 0) & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        palette[k] = (r, g, b)
    return palette


def save_label_png(path, label, protect=(), palette=None, num_classes=None):
    """Write an H x W array of class indices as a PNG, atomically, never over one of
    `protect` (see check_not_input).

    Up to 256 classes (`num_classes`, default: the largest index + 1): a palette PNG of
    the indices; palette: the dataset's colours, K x 3 RGB for classes 0..K-1 (ADE20K's,
    Cityscapes'), the VOC colour map for the rest and by default. More classes than a
    palette holds: a 16-bit grayscale PNG of the indices (0..65535), so class 299 stays
    299 (cast to 8 bits it would read as class 43); readers get the index either way
    (np.asarray(Image.open(path)))."""
    label = np.asarray(label)
    if label.ndim != 2:
        raise ValueError('label must be H x W, got shape %s' % (label.shape,))
    top = int(label.max()) if label.size else 0
    if label.size and (int(label.min()) < 0 or top > 65535):
        raise ValueError('%s: class indices must be 0..65535, got %d..%d'
                         % (path, int(label.min()), top))
    if max(num_classes or 0, top + 1) > PALETTE_CLASSES:
        img = Image.fromarray(label.astype(np.uint16))  # mode I;16
    else:
        img = Image.fromarray(label.astype(np.uint8), mode='P')
        img.putpalette(label_palette(palette).ravel().tolist())
    with safewrite.atomic_write(path, protect=protect) as f:
        img.save(f, format='PNG')


# --------------------------------------------------------------------------------------
# Palettes and the scored splits' layers, by dataset name

# The colours (R, G, B) per class of PSPNet's datasets (the others: the VOC palette, voc_palette).
PALETTES = {'ade20k': ADE20K_PALETTE, 'cityscapes': CITYSCAPES_PALETTE}


def score_layer(dataset):
    """The data layer class reading the scored split of built-in `dataset` (models.py)."""
    d = models.dataset(dataset)
    return globals()[d.split(d.score_split).layer]


# split_ids knows each built-in dataset's scored split and the VOC models' training set.
_SPLIT_LAYERS = dict({name: score_layer(name) for name in models.BUILTIN_DATASETS},
                     sbdd=SBDDSegDataLayer)


def split_ids(dataset, split=None, **dirs):
    """Image ids of `split` of `dataset` ('voc', 'sbdd', 'nyud', 'siftflow',
    'pascalcontext'), in the order the layer walks them; `split` defaults to the scored
    split of its DatasetSpec and `dirs` are the layer's directory keys (e.g. voc_dir=...)."""
    if dataset not in _SPLIT_LAYERS:
        raise ValueError('unknown dataset %r; known: %s' % (dataset, ', '.join(sorted(_SPLIT_LAYERS))))
    if split is None:
        if dataset not in models.BUILTIN_DATASETS:
            raise ValueError('dataset %r has no default split; give one' % dataset)
        split = models.dataset(dataset).score_split
    return _SPLIT_LAYERS[dataset].ids(split, **dirs)


def check_layer(class_name, param_str, ntop):
    """What setup() would refuse, checked without reading any data (netinit.check_net
    calls it for every `module: "layers"` Python layer of a prototxt): ValueError unless
    `param_str` parses for data layer `class_name` and it is given `ntop` tops."""
    cls = globals().get(class_name)
    if not (isinstance(cls, type) and issubclass(cls, SegDataLayer)):
        return  # not a data layer: nothing to check beyond the class existing
    p = cls.parse_params(param_str)
    names = p['tops'] if 'tops' in cls.PARAMS else list(cls.TOPS)  # as top_names() gives them
    if ntop != len(names):
        raise ValueError('%s needs %d tops (%s), the net gives it %d'
                         % (class_name, len(names), ', '.join(names), ntop))
