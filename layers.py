"""Caffe Python data layers that feed FCN one whole image (and its labels) per forward.

Net files name this module as `module: "layers"` with one of these `layer:` classes:

    VOCSegDataLayer             PASCAL VOC 2011/2012 segmentation (validation, test)
    SBDDSegDataLayer            SBD, the training set of the VOC models
    NYUDSegDataLayer            NYUDv2 in Gupta et al.'s format (color / depth / HHA)
    SIFTFlowSegDataLayer        SIFT Flow, semantic and geometric labels
    PASCALContextSegDataLayer   PASCAL-Context, the 59-class task plus background

All of them share one base class, `SegDataLayer`, which parses and checks `param_str`,
picks the next image id and fills the tops; a subclass only says where its files are and
how to turn them into arrays. Every top is reshaped on every forward to the size of the
image at hand (batch of one, 1 x C x H x W), because FCN takes images of any size.

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

Errors
------
Python exceptions raised here come out of caffe.Net(...) and net.forward() as the same
Python exceptions (pycaffe re-raises them), never as a Caffe abort: a missing file is a
FileNotFoundError naming the path, a malformed file or an empty split list is a
common.InputError naming the file, a bad param_str or wrong number of tops a ValueError.

Without Caffe
-------------
Scoring code that only needs the class names or the image ids of a split uses
`DATASETS` and `split_ids(dataset, split, **dirs)`; nothing is instantiated.
"""
import ast
import json
import os
import random

import numpy as np
import scipy.io
from PIL import Image

import common
from metrics import VOID, bad_values

caffe = common.import_caffe()


# --------------------------------------------------------------------------------------
# Class names in model output order (FCN-SPEC section 4)

VOC_CLASSES = (
    'background', 'aeroplane', 'bicycle', 'bird', 'boat', 'bottle', 'bus', 'car', 'cat',
    'chair', 'cow', 'diningtable', 'dog', 'horse', 'motorbike', 'person', 'pottedplant',
    'sheep', 'sofa', 'train', 'tvmonitor')

NYUD_CLASSES = (
    'wall', 'floor', 'cabinet', 'bed', 'chair', 'sofa', 'table', 'door', 'window',
    'bookshelf', 'picture', 'counter', 'blinds', 'desk', 'shelves', 'curtain', 'dresser',
    'pillow', 'mirror', 'floor-mat', 'clothes', 'ceiling', 'books', 'refrigerator',
    'television', 'paper', 'towel', 'shower-curtain', 'box', 'whiteboard', 'person',
    'night-stand', 'toilet', 'sink', 'lamp', 'bathtub', 'bag', 'otherstructure',
    'otherfurniture', 'otherprop')

SIFTFLOW_SEM_CLASSES = (
    'awning', 'balcony', 'bird', 'boat', 'bridge', 'building', 'bus', 'car', 'cow',
    'crosswalk', 'desert', 'door', 'fence', 'field', 'grass', 'moon', 'mountain', 'person',
    'plant', 'pole', 'river', 'road', 'rock', 'sand', 'sea', 'sidewalk', 'sign', 'sky',
    'staircase', 'streetlight', 'sun', 'tree', 'window')

SIFTFLOW_GEO_CLASSES = ('sky', 'horizontal', 'vertical')

# Semantic classes that never occur in the SIFT Flow test split: the paper's scores
# leave them out of the class averages.
SIFTFLOW_SEM_ABSENT_IN_TEST = ('cow', 'desert', 'moon')

# Background, then the 59 classes with the names of the 59-class list (59_labels.txt).
CONTEXT_CLASSES = VOC_CLASSES + (
    'bag', 'bed', 'bench', 'book', 'building', 'cabinet', 'ceiling', 'clothes', 'computer',
    'cup', 'door', 'fence', 'floor', 'flower', 'food', 'grass', 'ground', 'keyboard',
    'light', 'mountain', 'mouse', 'curtain', 'platform', 'sign', 'plate', 'road', 'rock',
    'shelves', 'sidewalk', 'sky', 'snow', 'bedcloth', 'track', 'tree', 'truck', 'wall',
    'water', 'window', 'wood')

# Where the 59-class list and the full PASCAL-Context list spell a class differently.
CONTEXT_RENAMED = {'diningtable': 'table', 'bedcloth': 'bedclothes', 'clothes': 'cloth'}

# Means, (B, G, R) unless noted, subtracted after the switch to BGR.
VOC_MEAN = (104.00699, 116.66877, 122.67892)
NYUD_COLOR_MEAN = (116.190, 97.203, 92.318)
NYUD_HHA_MEAN = (132.431, 94.076, 118.477)   # HHA channel order, as stored
NYUD_LOG_DEPTH_MEAN = 7.844                  # mean of log(depth png value)
SIFTFLOW_MEAN = (114.578, 115.294, 108.353)
CONTEXT_MEAN = (104.007, 116.669, 122.679)

# Sizes of the splits the paper uses, to check a derived list against.
SPLIT_SIZES = {
    ('sbdd', 'train'): 8498, ('voc', 'seg11valid'): 736,
    ('nyud', 'trainval'): 795, ('nyud', 'test'): 654,
    ('siftflow', 'trainval'): 2486, ('siftflow', 'test'): 200,
    ('pascalcontext', 'val'): 5105,
}


# --------------------------------------------------------------------------------------
# Paths and small readers

def data_root():
    """The folder dataset paths are relative to: $FCN_DATA_ROOT if set, else <repo>/data."""
    root = os.environ.get('FCN_DATA_ROOT')
    return os.path.abspath(os.path.expanduser(root)) if root else os.path.join(common.REPO, 'data')


def data_path(path):
    """`path` resolved against the data root (an absolute path is returned unchanged)."""
    path = os.path.expanduser(str(path))
    return path if os.path.isabs(path) else os.path.join(data_root(), path)


def read_split(path, hint=''):
    """The image ids listed in split file `path`, one per line, blank lines skipped.

    A missing file is a FileNotFoundError and an empty one an InputError, both naming
    `path`; `hint` (e.g. which script derives the list) is added to the message."""
    hint = ' (%s)' % hint if hint else ''
    if not os.path.isfile(path):
        raise FileNotFoundError('split list not found: %s%s' % (path, hint))
    try:
        with open(path, encoding='utf-8') as f:
            ids = [line.strip() for line in f if line.strip()]
    except UnicodeDecodeError as e:
        raise common.InputError('%s: split list is not UTF-8 text (%s)' % (path, e.reason))
    if not ids:
        raise common.InputError('split list has no image ids: %s%s' % (path, hint))
    return ids


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
    except OSError as e:  # PIL's UnidentifiedImageError and truncated files are OSErrors
        raise common.InputError('%s is not a readable %s: %s' % (path, what, e))


def load_mat(path, what='label'):
    """All variables of MATLAB file `path` as scipy.io.loadmat gives them."""
    _need(path, what)
    try:
        return scipy.io.loadmat(path)
    except Exception as e:  # scipy raises several types for a file that is not a .mat
        raise common.InputError('%s is not a readable .mat file: %s' % (path, e))


def read_mat(path, key, what='label'):
    """Variable `key` of MATLAB file `path` (InputError naming the file when absent)."""
    mat = load_mat(path, what)
    if key not in mat:
        names = sorted(k for k in mat if not k.startswith('__'))
        raise common.InputError('%s has no variable %r (has: %s)' % (path, key, ', '.join(names)))
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
        raise common.InputError('%s: labels are %s values, not numbers' % (path, values.dtype))
    if values.dtype.kind == 'f':
        if np.isnan(values).any():
            raise common.InputError('%s: %d label values are NaN' % (path, np.isnan(values).sum()))
        frac = np.isfinite(values) & (values != np.floor(values))
        if frac.any():
            raise common.InputError('%s: fractional label values %s (labels are class numbers)'
                                    % (path, bad_values(values[frac])))
    is_void = np.isin(values, void)
    is_class = (values >= first) & (values < first + num_classes)
    if not (is_void | is_class).all():
        raise common.InputError('%s: label values %s are neither a class (%d..%d) nor void%s'
                                % (path, bad_values(values[~(is_void | is_class)]), first,
                                   first + num_classes - 1,
                                   ' (%s)' % ', '.join(map(str, void)) if void else ''))
    out = np.full(values.shape, VOID, np.uint8)
    out[is_class] = (values[is_class] - first).astype(np.uint8)
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
        value = json.loads(text)
    except ValueError:
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


def _check_bool(key, value):
    if value is not None and not isinstance(value, bool):
        raise ValueError('%s must be true or false, got %r' % (key, value))
    return value


# --------------------------------------------------------------------------------------
# The base layer

class SegDataLayer(caffe.Layer):
    """Base of the data layers: one image id per forward, every top 1 x C x H x W.

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

    COMMON = {'split': REQUIRED, 'seed': 1337, 'randomize': None, 'num_classes': None}
    CHECKS = {'split': _check_split, 'seed': _check_seed, 'randomize': _check_bool,
              'mean': _check_mean, 'num_classes': _check_num_classes}
    PARAMS = {}
    DIRS = ()
    TOPS = ('data', 'label')
    LABELS = {}  # label top -> number of classes of the dataset (values 0..C-1, 255 void)
    SPLIT_HINTS = {}  # split name -> how to make its list, added to "not found" errors

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
        num_classes, or `bind_num_classes`), else the dataset's (LABELS)."""
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
    def parse_params(cls, param_str, check_required=True):
        """Checked parameters from `param_str` (text or dict): defaults filled in,
        directories resolved to absolute paths, `mean` as a float32 array, and
        `randomize` decided from the split name when not given."""
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
            p[key] = data_path(p[key])
        if p.get('randomize') is None and 'split' in p:
            p['randomize'] = p['split'].startswith('train')
        return p

    @classmethod
    def ids(cls, split, **dirs):
        """The image ids of `split`, read with this layer's rules; no Caffe net needed."""
        bad = sorted(set(dirs) - set(cls.DIRS))
        if bad:
            raise ValueError('%s: %s not a directory key; directory keys: %s'
                             % (cls.__name__, ', '.join(bad), ', '.join(cls.DIRS)))
        p = cls.parse_params(dict(dirs, split=split), check_required=False)
        return read_split(cls.split_path(p), cls.SPLIT_HINTS.get(split, ''))

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
        self.indices = read_split(self.split_path(self.params), self.SPLIT_HINTS.get(split, ''))
        self.random = self.params['randomize']
        self.rng = random.Random(self.params['seed'])
        self.idx = self.rng.randrange(len(self.indices)) if self.random else 0
        self.loaded = None  # (position in the list, arrays) of the example in the tops

    def reshape(self, bottom, top):
        # Caffe calls reshape before every forward (and once at setup): load the example
        # at the current position, unless it is the one already loaded.
        if self.loaded is None or self.loaded[0] != self.idx:
            idx = self.indices[self.idx]
            arrays = self.load(idx)
            sizes = set(a.shape[1:] for a in arrays)
            if len(sizes) != 1:
                raise common.InputError('%s: image %s has tops of different sizes %s'
                                        % (type(self).__name__, idx,
                                           [a.shape for a in arrays]))
            self.loaded = (self.idx, arrays)
        for i, array in enumerate(self.loaded[1]):  # (top is indexable, not iterable)
            top[i].reshape(1, *array.shape)

    def forward(self, bottom, top):
        for i, array in enumerate(self.loaded[1]):
            top[i].data[...] = array
        # Next id: a fresh draw when training, else the next one in the list.
        if self.random:
            self.idx = self.rng.randrange(len(self.indices))
        else:
            self.idx = (self.idx + 1) % len(self.indices)

    def backward(self, top, propagate_down, bottom):
        pass  # data layers have nothing to propagate to

    # -- the solving loop's calls (pycaffe's net.layers[i] is this object) -----------

    def seek(self, forwards):
        """Put the layer where it would be after `forwards` forward passes from setup: the
        same id and, when training, the same random stream (so a resumed run draws the
        images an uninterrupted one would have drawn)."""
        if self.random:
            self.rng = random.Random(self.params['seed'])
            for _ in range(forwards + 1):
                self.idx = self.rng.randrange(len(self.indices))
        else:
            self.idx = forwards % len(self.indices)

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
    PARAMS = {'voc_dir': 'pascal/VOC2011', 'mean': VOC_MEAN}
    DIRS = ('voc_dir',)
    LABELS = {'label': len(VOC_CLASSES)}
    SPLIT_HINTS = {'seg11valid': 'derive it with data/pascal/seg11valid.py'}

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
            raise common.InputError('%s: expected a palette (one channel) label PNG, got '
                                    'shape %s' % (path, label.shape))
        return [image, self.labels('label', label, path)[np.newaxis]]


class SBDDSegDataLayer(SegDataLayer):
    """SBD (Hariharan et al.), the VOC models' training set: tops `data` (3 x H x W,
    BGR, mean subtracted, float32) and `label` (1 x H x W, class 0-20, uint8 as stored).

    Keys: sbdd_dir (default "sbdd/dataset"), split, mean (default VOC_MEAN), seed,
    randomize. Files: {sbdd_dir}/img/{id}.jpg, {sbdd_dir}/cls/{id}.mat (MATLAB struct
    GTcls, field Segmentation), list {sbdd_dir}/{split}.txt.
    """
    PARAMS = {'sbdd_dir': 'sbdd/dataset', 'mean': VOC_MEAN}
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
        gt = read_mat(path, 'GTcls')
        try:
            label = gt[0]['Segmentation'][0]
        except (IndexError, KeyError, ValueError) as e:
            raise common.InputError('%s: GTcls has no Segmentation field (%s)' % (path, e))
        return [image, self.labels('label', label, path)[np.newaxis]]


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
    PARAMS = {'nyud_dir': 'nyud', 'tops': REQUIRED}
    DIRS = ('nyud_dir',)
    LABELS = {'label': len(NYUD_CLASSES)}
    SPLIT_HINTS = {'trainval': 'derive it with data/nyud/splits.py',
                   'test': 'derive it with data/nyud/splits.py'}

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
            raise common.InputError('%s: HHA image must have 3 channels, got shape %s'
                                    % (path, hha.shape))
        hha = hha.astype(np.float32) - np.array(NYUD_HHA_MEAN, dtype=np.float32)
        return np.ascontiguousarray(hha.transpose((2, 0, 1)))

    def load_depth(self, idx):
        path = self._file('data/depth', idx)
        depth = read_image(path, what='depth image', rgb=False).astype(np.float32)
        if depth.ndim != 2:
            raise common.InputError('%s: depth must be one channel, got shape %s'
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
    PARAMS = {'siftflow_dir': 'sift-flow', 'mean': SIFTFLOW_MEAN}
    DIRS = ('siftflow_dir',)
    TOPS = ('data', 'sem', 'geo')
    LABELS = {'sem': len(SIFTFLOW_SEM_CLASSES), 'geo': len(SIFTFLOW_GEO_CLASSES)}
    SUBDIR = 'spatial_envelope_256x256_static_8outdoorcategories'
    SPLIT_HINTS = {'trainval': 'derive it with data/sift-flow/splits.py',
                   'test': 'derive it with data/sift-flow/splits.py'}

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
        raise common.InputError('%s: label list is not UTF-8 text (%s)' % (path, e.reason))
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        number, _, name = line.partition(':')
        if not number.strip().isdigit() or not name.strip():
            raise common.InputError('%s line %d: expected "id: name", got %r' % (path, n, line))
        entries.append((int(number), name.strip()))
    if not entries:
        raise common.InputError('label list is empty: %s' % path)
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
            raise common.InputError('%s: class %r (%r) is not in %s'
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
    PARAMS = {'voc_dir': 'pascal/VOC2010', 'context_dir': 'pascal-context',
              'mean': CONTEXT_MEAN}
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
# Registry for scoring code

DATASETS = {
    # name: the layer that reads it, the class names of its output, the split scored
    'voc': {'layer': VOCSegDataLayer, 'classes': VOC_CLASSES, 'split': 'seg11valid'},
    'nyud': {'layer': NYUDSegDataLayer, 'classes': NYUD_CLASSES, 'split': 'test'},
    'siftflow': {'layer': SIFTFlowSegDataLayer, 'classes': SIFTFLOW_SEM_CLASSES,
                 'geo_classes': SIFTFLOW_GEO_CLASSES,
                 'absent_in_test': SIFTFLOW_SEM_ABSENT_IN_TEST, 'split': 'test'},
    'pascalcontext': {'layer': PASCALContextSegDataLayer, 'classes': CONTEXT_CLASSES,
                      'split': 'val'},
}

# split_ids also knows the VOC models' training set.
_SPLIT_LAYERS = dict({name: d['layer'] for name, d in DATASETS.items()},
                     sbdd=SBDDSegDataLayer)


def split_ids(dataset, split=None, **dirs):
    """Image ids of `split` of `dataset` ('voc', 'sbdd', 'nyud', 'siftflow',
    'pascalcontext'), in the order the layer walks them; `split` defaults to the scored
    split of DATASETS and `dirs` are the layer's directory keys (e.g. voc_dir=...)."""
    if dataset not in _SPLIT_LAYERS:
        raise ValueError('unknown dataset %r; known: %s' % (dataset, ', '.join(sorted(_SPLIT_LAYERS))))
    if split is None:
        if dataset not in DATASETS:
            raise ValueError('dataset %r has no default split; give one' % dataset)
        split = DATASETS[dataset]['split']
    return _SPLIT_LAYERS[dataset].ids(split, **dirs)
