"""A new model from your own folder of images and labels, in one command.

    python net.py new my-roads --from voc-fcn8s --data /data/roads --classes names.txt
    python net.py new my-roads --from voc-fcn8s --data /data/roads --classes names.txt --check-only
    python net.py new my-roads --from vgg16 --head 8s-atonce --mean computed \\
        --data /data/roads --classes names.txt --rounds 10 --iters 1000
    python my-roads/solve.py            # then train, score and segment it like any model

The data is a folder in PASCAL VOC's layout (the layout VOCSegDataLayer reads):

    JPEGImages/<id>.jpg                  the images
    SegmentationClass/<id>.png           labels: palette or grayscale PNG, pixel value =
                                         class index (0 = the first name of --classes),
                                         255 = void (ignored by the loss and the scores)
    ImageSets/Segmentation/train.txt     the ids trained on, one per line
    ImageSets/Segmentation/val.txt       the ids scored after each round

1. The data is checked once, up front: every problem is named by its file (images
   without labels and the reverse, a label whose size differs from its image, label
   values beyond the class count other than 255, empty splits, ids with no files,
   unreadable files, an empty or duplicated class list). `--check-only` prints the
   report and the pixel count of every class, and makes nothing.
2. The start weights, init.caffemodel: the parent's (--from: a VGG16 FCN's trained or
   released weights, or the cast ImageNet VGG16) through net surgery: the trunk
   transplanted by name, each score layer's outputs copied for the classes the parent
   has by name, the other classes at zero (as the paper starts new score layers), the
   upsamplings bilinear; init-report.txt says what was copied, coerced and left fresh.
3. The model folder (<repo>/NAME, or --out DIR), made whole or not at all, never over
   an existing one: model.json (the registry's facts, models.load reads it: the model is
   found by its name in the repository, by its path anywhere), the prototxts net.fcn
   builds for the user's classes, data folder (recorded, not copied) and mean, the
   solver and schedule of the paper's VOC net of that head, solve.py, classes.txt,
   data-report.txt and the start weights.
"""
import argparse
import dataclasses
import json
import os
import re
import shutil
import sys
import tempfile
import types

import numpy as np
from PIL import Image

import cli
import guard
import infer
import layers
import models
import net
import netload
import project
import safewrite
import surgery
import weights
from project import InputError
from models import VOID

SPLITS = ('train', 'val')
IMAGES, LABELS, LISTS = 'JPEGImages', 'SegmentationClass', os.path.join('ImageSets', 'Segmentation')
# The EXIF tag saying how a camera's picture is turned for display.
EXIF_ORIENTATION = 0x0112
# Beyond this many, a list of files is cut short in the report (with the count).
SHOW = 20


# ---------------------------------------------------------------------------
# 1. The data check.

@dataclasses.dataclass
class DataReport:
    """What check_dataset found in a dataset folder.

    problems: one line each, naming the file; any of them stops the model being made.
    warnings: worth knowing, not in the way (an image in no split, a class never seen).
    pixels: {split: int64 array of len(classes) + 1}, pixels of each class, void last.
    mean: (B, G, R) mean pixel of the training images, 0-255, when it was asked for."""
    root: str
    classes: list
    splits: dict
    problems: list = dataclasses.field(default_factory=list)
    warnings: list = dataclasses.field(default_factory=list)
    pixels: dict = dataclasses.field(default_factory=dict)
    mean: tuple = None

    def lines(self):
        """The report as printed: counts, per-class pixels, warnings, problems."""
        out = ['dataset %s: %s, %d classes' % (self.root, ', '.join(
            '%s %d images' % (s, len(ids)) for s, ids in self.splits.items()), len(self.classes))]
        if self.pixels:
            out += class_table(self.classes, self.pixels)
        if self.mean is not None:
            out.append('mean of the training images (B, G, R): %.3f, %.3f, %.3f' % self.mean)
        out += ['warning: %s' % w for w in self.warnings]
        out += ['problem: %s' % p for p in self.problems]
        out.append('%d problem%s' % (len(self.problems), '' if len(self.problems) == 1 else 's')
                   if self.problems else 'no problems')
        return out


def class_table(classes, pixels):
    """Lines of a table: each class (then void) with its pixels and share in each split."""
    names = list(classes) + ['(void, %d)' % VOID]
    width = max(len(n) for n in names)
    splits = list(pixels)
    out = ['%-*s %s' % (width, 'class', ' '.join('%22s' % s for s in splits))]
    for k, name in enumerate(names):
        cells = []
        for s in splits:
            total = max(1, int(pixels[s].sum()))
            cells.append('%14d %6.2f%%' % (pixels[s][k], 100.0 * pixels[s][k] / total))
        out.append('%-*s %s' % (width, name, ' '.join('%22s' % c for c in cells)))
    return out


def _cut(paths):
    """The first SHOW of `paths`, then how many more."""
    shown = ', '.join(paths[:SHOW])
    return shown + (' ... and %d more' % (len(paths) - SHOW) if len(paths) > SHOW else '')


def read_class_names(path, problems):
    """The class names of `path` (one per line); an empty, unreadable or duplicated list
    is added to `problems`. Returns the names ([] when there are none)."""
    try:
        names = infer.read_classes(path)
    except (InputError, OSError) as e:
        problems.append(str(e) if str(path) in str(e) else '%s: %s' % (path, e))
        return []
    seen, twice = set(), []
    for name in names:
        if name in seen and name not in twice:
            twice.append(name)
        seen.add(name)
    if twice:
        problems.append('%s: class names listed twice: %s' % (path, ', '.join(twice)))
    if len(names) == 1:
        problems.append('%s: one class only; a segmentation needs at least two (e.g. '
                        'background and your class)' % path)
    if len(names) > VOID:
        problems.append('%s: %d classes; at most %d fit, %d is void'
                        % (path, len(names), VOID, VOID))
    return names


def read_splits(root, problems):
    """{split: ids} of ImageSets/Segmentation/{train,val}.txt, in file order, each id once,
    by the data layer's rules (layers.split_entries: ids are names, listed once); a
    missing, unreadable or empty list and every id that is a path or repeats are added
    to `problems`."""
    splits = {}
    for split in SPLITS:
        path = os.path.join(root, LISTS, split + '.txt')
        splits[split] = []
        try:
            splits[split], found = layers.split_entries(path)
        except FileNotFoundError:
            problems.append('%s: split list not found (one image id per line)' % path)
            continue
        except (InputError, OSError) as e:
            problems.append(str(e) if path in str(e) else '%s: %s' % (path, e))
            continue
        problems += found
        if not splits[split] and not found:
            problems.append('%s: split list has no image ids' % path)
    return splits


def _listing(directory):
    """The file names in `directory`, hidden ones left out ([] when it is missing)."""
    return sorted(f for f in os.listdir(directory) if not f.startswith('.')) if os.path.isdir(directory) else []


def _stems(names, ext):
    """{stem: file name} of the `names` ending in `ext`, exactly: the data layer opens
    <id>.jpg and <id>.png, so x.JPG is not x's image."""
    return {n[:-len(ext)]: n for n in names if n.endswith(ext)}


def pair_files(root, splits, problems, warnings):
    """The ids that have both an image and a label, in split order. Ids of a split without
    either file and labels without an image are problems; images in no split without a
    label, and ids in both splits, are warnings."""
    image_dir, label_dir = os.path.join(root, IMAGES), os.path.join(root, LABELS)
    for d in (image_dir, label_dir):
        if not os.path.isdir(d):
            problems.append('%s: folder not found' % d)
    image_names = _listing(image_dir)
    images, labels = _stems(image_names, '.jpg'), _stems(_listing(label_dir), '.png')
    others = {os.path.splitext(n)[0]: n for n in image_names if not n.endswith('.jpg')}
    listed, pairs = set(), []
    for split, ids in splits.items():
        for i in ids:
            missing = []
            if i not in images:
                hint = (' (found %s: the data layer reads <id>.jpg)' % others[i]) if i in others else ''
                missing.append('%s%s' % (os.path.join(image_dir, i + '.jpg'), hint))
            if i not in labels:
                missing.append(os.path.join(label_dir, i + '.png'))
            for path in missing:
                problems.append('%s: not found, but %s is listed in %s.txt' % (path, i, split))
            if not missing and i not in listed:
                pairs.append(i)
            listed.add(i)
    for i in labels:
        if i not in images:
            problems.append('%s: a label without an image (%s)'
                            % (os.path.join(label_dir, labels[i]), os.path.join(image_dir, i + '.jpg')))
    unlabelled = [os.path.join(image_dir, images[i]) for i in images if i not in labels and i not in listed]
    if unlabelled:
        warnings.append('%d image(s) without a label and in no split, not used: %s'
                        % (len(unlabelled), _cut(unlabelled)))
    both = [i for i in splits.get('train', ()) if i in set(splits.get('val', ()))]
    if both:
        warnings.append('%d id(s) in both train.txt and val.txt (scored on what it trained '
                        'on): %s' % (len(both), _cut(both)))
    return pairs


def read_pair(root, i, problems, warnings):
    """(H x W x 3 uint8 RGB image, H x W label of class indices) of id `i`, as the data
    layer reads them (the stored pixels, no EXIF rotation); None after adding what is
    wrong with either file to `problems`."""
    image_path = os.path.join(root, IMAGES, i + '.jpg')
    label_path = os.path.join(root, LABELS, i + '.png')
    image = label = None
    try:
        with Image.open(image_path) as im:
            if im.getexif().get(EXIF_ORIENTATION, 1) != 1:
                warnings.append('%s: EXIF says rotate it for display; the data layer uses the '
                                'stored pixels, so the label must match those' % image_path)
            image = np.asarray(im.convert('RGB'))
    except (OSError, ValueError) as e:  # PIL: UnidentifiedImageError, truncated files
        problems.append('%s: not a readable image (%s)' % (image_path, e))
    try:
        with Image.open(label_path) as im:
            label = np.asarray(im)
    except (OSError, ValueError) as e:
        problems.append('%s: not a readable PNG (%s)' % (label_path, e))
    if label is not None and label.ndim != 2:
        problems.append('%s: has %d channels (%s); a label must be a palette or grayscale PNG '
                        'whose pixel values are class indices'
                        % (label_path, label.shape[2], im.mode))
        label = None
    if label is not None and label.dtype.kind not in 'biu':
        problems.append('%s: its pixels are %s values (image mode %s); a label holds class '
                        'indices, whole numbers 0..%d' % (label_path, label.dtype, im.mode, VOID))
        label = None
    if label is not None and label.size and (label.min() < 0 or label.max() > VOID):
        bad = np.unique(label[(label < 0) | (label > VOID)])
        problems.append('%s: label values %s outside 0..%d (class indices, %d = void)'
                        % (label_path, ', '.join(map(str, bad[:SHOW])), VOID, VOID))
        label = None
    if image is None or label is None:
        return None
    if image.shape[:2] != label.shape:
        problems.append('%s: %d x %d pixels but its image %s is %d x %d'
                        % (label_path, label.shape[1], label.shape[0], image_path,
                           image.shape[1], image.shape[0]))
        return None
    return image, label


def check_dataset(root, classes_path, mean=False, progress=True):
    """Check the VOC-layout dataset in folder `root` against the class list in
    `classes_path`, reading every image and label of train.txt and val.txt once.
    mean: also compute the training images' mean pixel (B, G, R, as the data layers
    subtract it). Returns a DataReport; InputError only when `root` is not a folder."""
    root = os.path.abspath(str(root))
    if not os.path.isdir(root):
        raise InputError('%s: --data is not a folder' % root)
    problems, warnings = [], []
    classes = read_class_names(classes_path, problems)
    splits = read_splits(root, problems)
    pairs = pair_files(root, splits, problems, warnings)
    members = {s: set(ids) for s, ids in splits.items()}
    pixels = {s: np.zeros(len(classes) + 1, np.int64) for s in SPLITS}
    bgr_sum, n_pixels = np.zeros(3), 0
    bar = cli.progress_bar(len(pairs), 'checking', enabled=progress)
    for i in pairs:
        bar.update()
        pair = read_pair(root, i, problems, warnings)
        if pair is None:
            continue
        image, label = pair
        counts = np.bincount(label.ravel(), minlength=VOID + 1)
        if classes:
            beyond = [v for v in np.flatnonzero(counts) if v >= len(classes) and v != VOID]
            if beyond:
                problems.append('%s: label values %s beyond the %d classes (0..%d) and not void '
                                '(%d)' % (os.path.join(root, LABELS, i + '.png'),
                                          ', '.join(map(str, beyond[:SHOW])), len(classes),
                                          len(classes) - 1, VOID))
        for s in SPLITS:
            if i in members[s]:
                pixels[s] += np.append(counts[:len(classes)], counts[VOID])
        if mean and i in members['train']:
            bgr_sum += image.reshape(-1, 3).sum(axis=0, dtype=np.float64)[::-1]
            n_pixels += label.size
    bar.close()
    for k, name in enumerate(classes):
        if pixels['train'][k] == 0 and splits['train']:
            warnings.append('class %d (%s) has no pixels in the training images' % (k, name))
    report = DataReport(root, classes, splits, problems, warnings, pixels)
    if mean and n_pixels:
        report.mean = tuple(float(v) for v in bgr_sum / n_pixels)
    return report


# ---------------------------------------------------------------------------
# 2. What the new model starts from: the parent's weights, through net surgery.

# The parent net is opened with a 1 x 1 input: parameter shapes do not depend on the
# input size (conv1's pad of 100 leaves every head its geometry), and activations stay
# tiny even for the full VGG16.
TINY_INPUT = 1
# The first layer of each VGG16 block, then fc7: their output counts are the widths
# net.py builds with (net.VGG16_WIDTHS).
WIDTH_LAYERS = ('conv1_1', 'conv2_1', 'conv3_1', 'conv4_1', 'conv5_1', 'fc7')


def weights_widths(path):
    """The VGG16 channel widths stored in caffemodel `path`, in net.py's order: the new
    model is built as wide as its parent (the paper's widths for released weights,
    narrow ones for test nets)."""
    caffe = guard.import_caffe()
    param = caffe.proto.caffe_pb2.NetParameter()
    try:
        with open(path, 'rb') as f:
            param.ParseFromString(f.read())
    except OSError as e:
        raise InputError('%s: cannot read the parent weights (%s)' % (path, e.strerror or e))
    except Exception as e:  # protobuf raises DecodeError or RuntimeError by backend
        raise InputError('%s: not a Caffe weights file (%s)' % (path, e))
    shapes = {layer.name: netload._blob_shape(layer.blobs[0])
              for layer in list(param.layer) or list(param.layers) if layer.blobs}
    missing = [name for name in WIDTH_LAYERS if name not in shapes]
    if missing:
        raise InputError('%s: no layer %s: not the weights of a VGG16 FCN'
                         % (path, ', '.join(missing)))
    return tuple(int(shapes[name][0]) for name in WIDTH_LAYERS)


def tiny_net(param):
    """caffe.Net (TEST) of NetParameter `param` with its inputs cut to TINY_INPUT pixels."""
    caffe = guard.import_caffe()
    param = type(param).FromString(param.SerializeToString())
    for layer in param.layer:
        for shape in layer.input_param.shape:
            del shape.dim[2:]
            shape.dim.extend([TINY_INPUT, TINY_INPUT])
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, 'net.prototxt')
        with open(path, 'w') as f:
            f.write(str(param))
        return caffe.Net(path, caffe.TEST)


def layer_kinds(n):
    """{'trunk' | 'score' | 'deconv' | 'fixed': [layer names with parameters]} of caffe.Net
    `n`: the score layers are the 1x1 class scorers (score_fr, score_pool4, score_pool3),
    deconv the upsamplings (bilinear, fixed), fixed the at-once Scale layers."""
    kinds = {'trunk': [], 'score': [], 'deconv': [], 'fixed': []}
    params = n.params
    for name, layer in zip(n._layer_names, n.layers):
        if name not in params:
            continue
        kind = ('deconv' if layer.type == 'Deconvolution' else 'fixed' if layer.type == 'Scale'
                else 'score' if name.startswith('score') else 'trunk')
        kinds[kind].append(name)
    return kinds


def _key(name):
    """A class name for matching: 'TV monitor', 'tvmonitor' and 'tv_monitor' are one."""
    return ''.join(c for c in name.lower() if c.isalnum())


def copy_scores(new, parent, layer, classes, parent_classes, suffix=''):
    """Start score layer `layer` of caffe.Net `new` (outputs `classes`) from layer
    `layer` + `suffix` of `parent` (outputs `parent_classes`): every class of `classes`
    the parent has by name takes the parent's output, the others stay at zero (the
    paper's start for new score layers). Returns the report line."""
    source = layer + suffix
    if source not in parent.params:
        return 'fresh %s: all %d outputs at zero (the parent has no %s)' % (layer, len(classes), source)
    old_blobs, new_blobs = parent.params[source], new.params[layer]
    if list(classes) == list(parent_classes):
        for o, n in zip(old_blobs, new_blobs):
            n.data[...] = o.data
        return 'copied %s: all %d outputs of %s (the same classes)' % (layer, len(classes), source)
    if list(classes[:len(parent_classes)]) == list(parent_classes):
        # the parent's classes first, new ones after: the release's score-layer expansion
        surgery.expand_score(new, layer, parent, source)
        return ('copied %s: outputs 0..%d of %s (the parent\'s classes); fresh at zero: %s'
                % (layer, len(parent_classes) - 1, source, ', '.join(classes[len(parent_classes):])))
    where = {_key(name): j for j, name in enumerate(parent_classes)}
    pairs = [(k, where[_key(name)]) for k, name in enumerate(classes) if _key(name) in where]
    for k, j in pairs:
        for o, n in zip(old_blobs, new_blobs):
            n.data[k] = o.data[j]
    fresh = [name for name in classes if _key(name) not in where]
    if not pairs:
        return 'fresh %s: all %d outputs at zero (no class of the parent by name)' % (layer, len(classes))
    return ('copied %s: %s; fresh at zero: %s'
            % (layer, ', '.join('%s (%s output %d)' % (classes[k], source, j) for k, j in pairs),
               ', '.join(fresh) or 'none'))


@dataclasses.dataclass
class StartReport:
    """What start_weights did: the parent weights, the trunk's transplant
    (surgery.TransplantReport: copied, coerced, dropped) and one line for each score,
    upsampling and fixed layer."""
    weights: str
    trunk: surgery.TransplantReport
    heads: list

    def summary(self):
        return ['starting from %s' % self.weights,
                'trunk: %d parameter blobs copied, %d coerced, %d of the parent\'s left out'
                % (len(self.trunk.copied), len(self.trunk.coerced), len(self.trunk.dropped))] + self.heads

    def lines(self):
        return self.summary() + self.trunk.lines()


def start_weights(new_param, parent_param, parent_weights, classes, parent_classes, out,
                  suffix=''):
    """Make the new model's initial weights: caffe.Net of `new_param` (its deploy net)
    from the parent (deploy NetParameter `parent_param` with `parent_weights`): the trunk
    transplanted by name (surgery.transplant: copied, or coerced where only the shape
    differs), the score layers by class name (copy_scores; the parent's carry `suffix`,
    SIFT Flow's semantic head _sem), the upsamplings bilinear; saved to `out`. Returns a
    StartReport."""
    parent = tiny_net(parent_param)
    netload.check_weights(parent_weights, parent)
    parent.copy_from(str(parent_weights))
    new = tiny_net(new_param)
    kinds, parent_kinds = layer_kinds(new), layer_kinds(parent)
    # transplant reads `.params` only: hand it the parent's trunk alone, since the score
    # layers differ in shape when the class count does.
    trunk = types.SimpleNamespace(params={name: blobs for name, blobs in parent.params.items()
                                          if name in parent_kinds['trunk']})
    report = StartReport(str(parent_weights), surgery.transplant(new, trunk, quiet=True), [])
    done = {dst for _, dst, *_ in report.trunk.copied + report.trunk.coerced}
    missing = [name for name in kinds['trunk'] if name not in done]
    if missing:
        raise InputError('%s: the parent has no %s: its trunk is not the new model\'s'
                         % (parent_weights, ', '.join(missing)))
    at_once = bool(kinds['fixed']) != bool(parent_kinds['fixed'])
    for layer in kinds['score']:
        if at_once and layer != 'score_fr' and layer + suffix in parent.params:
            # the at-once net scores pool4/pool3 scaled by 0.01/0.0001, the staged one not
            report.heads.append('fresh %s: all outputs at zero (the parent scores it at another '
                                'scale: one net is all-at-once, the other staged)' % layer)
        else:
            report.heads.append(copy_scores(new, parent, layer, classes, parent_classes, suffix))
    surgery.interp(new, kinds['deconv'])
    report.heads += ['bilinear %s (fixed)' % name for name in kinds['deconv']]
    report.heads += ['fixed %s: x %g' % (name, new.params[name][0].data.ravel()[0])
                     for name in kinds['fixed']]
    surgery.save_net(new, out)
    return report


# ---------------------------------------------------------------------------
# 3. The model folder: model.json (the registry reads it), the generated prototxts, a
# solve.py like every model's, the start weights and the reports; then the command.

HEAD_CHOICES = ('32s', '16s', '8s', '8s-atonce')
MEANS = ('voc', 'computed')
NAME = re.compile(r'^[A-Za-z0-9][A-Za-z0-9._-]*$')
# The docstring of the new model's solve.py (the rest is every model's: net.SOLVE_PY).
SOLVE_DOC = '''Train {name}: {title}.

    python {folder}/solve.py               # {rounds} rounds x {iters} iterations, CPU
    python {folder}/solve.py --gpu 0       # on a GPU
    python {folder}/solve.py --help        # short runs, other weights, output

Made by `python net.py new`: model.json says what it is; it starts from init.caffemodel
({parent}'s weights through net surgery: init-report.txt). It finds the repository where
it was made; moved or cloned again elsewhere? FCN_REPO=/path/to/repo python solve.py'''


def parent_of(source):
    """(spec, trunk, its first output's classes, the suffix of its score layers) of
    --from: an FCN model of one RGB input (a ModelSpec: its trained or released weights;
    SIFT Flow's semantic head, score_sem, suffix _sem) or an ImageNet classifier (a
    ClassifierSpec: its weights cast to convolutions, no classes)."""
    spec = models.get(source)
    if spec.kind == 'classifier':
        return spec, spec.name, (), ''
    if tuple(spec.inputs) != ('color',):
        raise InputError('--from %s: takes %s; a new model starts from a net of one RGB input'
                         % (source, ' + '.join(spec.inputs)))
    output = spec.outputs[0]
    return spec, spec.trunk, spec.data.label(output.label).classes, output.score[len('score'):]


def recipe(trunk, head):
    """The built-in VOC model of the VGG16 FCN-`head` ('8s-atonce': the all-at-once 8s):
    its head arguments, solver and schedule are the new model's (the paper's learning
    rates for each net's summed loss). The new net is net.fcn on the user's dataset."""
    if trunk != 'vgg16':
        raise InputError('a new model is a VGG16 FCN (net.fcn); %s trunks (FCN-AlexNet) are '
                         'not supported: start from vgg16 or a VGG16 FCN' % trunk)
    at_once = head.endswith('-atonce')
    for spec in models.BUILTIN.values():
        if (spec.dataset == 'voc' and spec.builder == 'voc_fcn' and spec.head == head.split('-')[0]
                and bool(spec.build_kwargs().get('at_once')) == at_once):
            return spec
    raise InputError('--head %s: not one of %s' % (head, ', '.join(HEAD_CHOICES)))


def data_dir_param(root):
    """The data layer's voc_dir for `root`: relative to <repo>/data when inside it (the
    data root the layers resolve it against), else the absolute path. Nothing is copied."""
    inside = os.path.join(project.REPO, 'data')
    rel = os.path.relpath(root, inside)
    return root if rel == os.pardir or rel.startswith(os.pardir + os.sep) else rel


def make_spec(name, folder, report, trunk, head, widths, mean, rounds, iters, parent):
    """The ModelSpec of the new model (its DatasetSpec registered), as model.json gives it
    back: built from the JSON form, so the file and the spec in hand are the same facts."""
    base = recipe(trunk, head)
    voc_dir = data_dir_param(report.root)
    dataset = models.DatasetSpec(
        name, 'your data: %s' % report.root, labels=(models.Labels('label', tuple(report.classes)),),
        inputs=(models.Input('color', 3, tuple(float(m) for m in mean), 'BGR'),),
        splits=tuple(models.Split(s, len(report.splits[s]), 'VOCSegDataLayer', (('voc_dir', voc_dir),))
                     for s in SPLITS),
        train_split='train', score_split='val', readmes=(), mean_param=True,
        paper='checked by net.py new (data-report.txt)')
    args = dict(base.build_kwargs(), widths=list(widths))
    schedule = models.Schedule(rounds or base.schedule.rounds, iters or base.schedule.iters)
    d = dict(name=name, folder=folder, family=name, dataset=name, trunk=trunk, head=base.head,
             builder='fcn', builder_args=args, init='file', parents=[],
             solver=dataclasses.asdict(dataclasses.replace(base.solver, max_iter=schedule.total)),
             schedule=dataclasses.asdict(schedule),
             title='FCN-%s on your %d classes' % (head, len(report.classes)),
             note='made by net.py new from %s' % parent,
             dataset_spec=dataclasses.asdict(dataset))
    return models.from_dict(json.loads(json.dumps(d)), folder)


def parent_start(parent, trunk, path=None):
    """(weights path, deploy NetParameter builder taking widths) of the parent: a
    classifier's cast weights (ilsvrc-nets/) and its fully convolutional trunk, or a
    model's trained weights (its latest snapshot, else the released file) and its deploy
    net. `path` (--parent-weights) replaces the path."""
    if parent.kind == 'classifier':
        path = path or weights.ilsvrc_weights(parent.name)
        return path, lambda widths: surgery.fcn_trunk_param(trunk, widths)
    path = path or weights.trained_weights(parent.name)
    return path, lambda widths: net.build_net(parent, 'deploy', widths=tuple(widths))


def write_folder(folder, files, weights_step):
    """Make the model folder `folder` whole or not at all: {name: text} and the start
    weights (weights_step(path) writes them, returning a StartReport) go into a hidden
    folder beside it, renamed to `folder` once all is written. A folder already there
    is never replaced. Returns the StartReport."""
    if os.path.exists(folder) and (not os.path.isdir(folder) or os.listdir(folder)):
        raise InputError('%s: already exists; pick another name or --out (nothing replaced)' % folder)
    parent_dir = os.path.dirname(folder)
    os.makedirs(parent_dir, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent_dir, prefix='.%s.' % os.path.basename(folder), suffix='.part')
    try:
        for name, text in files.items():
            with open(os.path.join(tmp, name), 'w') as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
        report = weights_step(os.path.join(tmp, models.INIT_FILE))
        with open(os.path.join(tmp, 'init-report.txt'), 'w') as f:
            f.write('\n'.join(report.lines()) + '\n')
        os.chmod(tmp, 0o777 & ~safewrite._umask())  # mkdtemp makes 0700
        if os.path.isdir(folder):
            os.rmdir(folder)  # empty (checked above)
        os.rename(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return report


def folder_files(spec, report, parent_name):
    """{file name: text} of the new model's folder besides its weights: model.json, the
    prototxts (net.py's, from the spec: the user's classes, data folder and mean),
    solve.py, classes.txt and data-report.txt."""
    files = {}
    for file_name, text in net.model_files(spec).items():
        # net.py's header says to regenerate with `python net.py`; these come from model.json
        files[file_name] = ('# %s %s: generated by `python net.py new` (newmodel.py) from model.json\n'
                            % (spec.name, file_name) + text.split('\n', 1)[1])
    files['model.json'] = json.dumps(models.to_dict(spec), indent=1) + '\n'
    inside = not os.path.relpath(spec.folder, project.REPO).startswith(os.pardir)
    doc = SOLVE_DOC.format(
        name=spec.name, title=spec.title, parent=parent_name, rounds=spec.schedule.rounds,
        iters=spec.schedule.iters,
        folder=os.path.relpath(spec.folder, project.REPO) if inside else spec.folder)
    files['solve.py'] = net.solve_py(
        spec, doc, os.path.relpath(project.REPO, spec.folder) if inside else project.REPO)
    files['classes.txt'] = ''.join('%s\n' % c for c in spec.data.classes)
    files['data-report.txt'] = '\n'.join(report.lines()) + '\n'
    return files


def make_model(name, source, data, classes, head=None, mean='voc', rounds=None, iters=None,
               out=None, parent_weights=None, progress=True):
    """Check the data, then make model `name` in folder `out` (default <repo>/NAME) from
    --from `source`; returns (spec, StartReport). InputError, with nothing made, for a
    dataset with problems (the report is printed first)."""
    if not NAME.match(name):
        raise InputError('%r: a model name is letters, digits, ".", "-" and "_"' % name)
    if name in models.MODELS or name in models.CLASSIFIERS or name in models.DATASETS:
        raise InputError('%s: a model or dataset of that name exists; pick another name' % name)
    parent, trunk, parent_classes, suffix = parent_of(source)
    head = head or ('8s-atonce' if parent.kind == 'classifier'
                    else parent.head + ('-atonce' if parent.build_kwargs().get('at_once') else ''))
    base = recipe(trunk, head)  # an impossible head fails before the data is read
    models.check_schedule(models.Schedule(rounds or base.schedule.rounds,
                                          iters or base.schedule.iters), '--rounds / --iters')
    folder = os.path.abspath(out or os.path.join(project.REPO, name))
    start_path, parent_net = parent_start(parent, trunk, parent_weights)
    widths = weights_widths(start_path)
    report = check_dataset(data, classes, mean=mean == 'computed', progress=progress)
    print('\n'.join(report.lines()), flush=True)
    if report.problems:
        raise InputError('%s: %d problem(s) in the dataset (listed above); nothing made'
                         % (report.root, len(report.problems)))
    mean_bgr = report.mean if mean == 'computed' else models.dataset('voc').mean
    spec = make_spec(name, folder, report, trunk, head, widths, mean_bgr, rounds, iters, parent.name)
    files = folder_files(spec, report, parent.name)
    start = write_folder(folder, files, lambda path: start_weights(
        net.build_net(spec, 'deploy'), parent_net(widths), start_path, spec.data.classes,
        parent_classes, path, suffix))
    return spec, start


def main(argv=None):
    p = argparse.ArgumentParser(
        prog='net.py new', description=__doc__.split('\n\n')[0],
        epilog=__doc__[__doc__.index('The data is'):], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('name', help='the new model\'s name; its folder is <repo>/NAME unless --out')
    p.add_argument('--from', dest='source', metavar='MODEL',
                   help='what it starts from: a VGG16 FCN (voc-fcn8s, pascalcontext-fcn32s, a '
                        'model folder, ...: its trained or released weights) or vgg16 (the '
                        'ImageNet net cast to convolutions)')
    p.add_argument('--data', required=True, metavar='DIR', help='the dataset folder (VOC layout, above)')
    p.add_argument('--classes', required=True, metavar='FILE',
                   help='class names, one per line; line k names label value k')
    p.add_argument('--head', choices=HEAD_CHOICES,
                   help='the FCN head (default: the parent\'s; from vgg16 8s-atonce)')
    p.add_argument('--mean', choices=MEANS, default='voc',
                   help='the mean pixel subtracted: VOC\'s (default, what the released nets '
                        'learned with) or computed from the training images')
    p.add_argument('--rounds', type=int, help='scoring rounds (default: the paper\'s for the head)')
    p.add_argument('--iters', type=int, help='iterations per round (default: the paper\'s)')
    p.add_argument('--out', metavar='DIR', help='the model folder to make (default <repo>/NAME)')
    p.add_argument('--parent-weights', metavar='FILE',
                   help='the parent\'s weights (default: its latest snapshot, else its released '
                        'weights; for vgg16 the cast file in ilsvrc-nets/)')
    p.add_argument('--check-only', action='store_true',
                   help='check the data, print the report and the class pixel counts; make nothing')
    args = p.parse_args(argv)
    for flag in ('rounds', 'iters'):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            p.error('--%s must be at least 1' % flag)
    if args.check_only:
        report = check_dataset(args.data, args.classes, mean=args.mean == 'computed',
                               progress=sys.stderr.isatty())
        print('\n'.join(report.lines()))
        if report.problems:
            raise InputError('%s: %d problem(s) in the dataset (listed above)'
                             % (report.root, len(report.problems)))
        return 0
    if not args.source:
        p.error('--from is needed to make a model (or --check-only)')
    spec, start = make_model(args.name, args.source, args.data, args.classes, args.head,
                             args.mean, args.rounds, args.iters, args.out, args.parent_weights,
                             progress=sys.stderr.isatty())
    print('\n'.join(start.summary()))
    folder = os.path.relpath(spec.folder) if not os.path.isabs(args.out or '') else spec.folder
    print('made %s (%s, from %s)\n  train:   python %s/solve.py\n'
          '  score:   python score.py --model %s --weights %s/snapshot/train_iter_N.caffemodel\n'
          '  segment: python infer.py --model %s --weights ... IMAGE'
          % (folder, spec.title, args.source, folder, folder, folder, folder))
    return 0


if __name__ == '__main__':  # run by `python net.py new ...`
    cli.run_cli(main)
