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
"""
import collections
import dataclasses
import os

import numpy as np
from PIL import Image

import common
import infer
from common import InputError

SPLITS = ('train', 'val')
IMAGES, LABELS, LISTS = 'JPEGImages', 'SegmentationClass', os.path.join('ImageSets', 'Segmentation')
# The loss and the scores ignore this label value (net.IGNORE_LABEL).
VOID = 255
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
    """{split: ids} of ImageSets/Segmentation/{train,val}.txt, in file order; a missing,
    unreadable, empty or repeating list is added to `problems`."""
    splits = {}
    for split in SPLITS:
        path = os.path.join(root, LISTS, split + '.txt')
        splits[split] = ids = []
        if not os.path.isfile(path):
            problems.append('%s: split list not found (one image id per line)' % path)
            continue
        try:
            with open(path) as f:
                ids += [line.strip() for line in f if line.strip()]
        except (OSError, UnicodeDecodeError) as e:
            problems.append('%s: not a readable text file (%s)' % (path, e))
            continue
        if not ids:
            problems.append('%s: split list has no image ids' % path)
        repeated = sorted(i for i, n in collections.Counter(ids).items() if n > 1)
        if repeated:
            problems.append('%s: ids listed more than once: %s' % (path, _cut(repeated)))
        splits[split] = list(dict.fromkeys(ids))
    return splits


def _stems(directory, ext):
    """{stem: file name} of the files in `directory` ending in `ext` (case-insensitive)."""
    if not os.path.isdir(directory):
        return {}
    return {os.path.splitext(f)[0]: f for f in sorted(os.listdir(directory))
            if f.lower().endswith(ext) and not f.startswith('.')}


def pair_files(root, splits, problems, warnings):
    """The ids that have both an image and a label, in split order. Ids of a split without
    either file and labels without an image are problems; images in no split without a
    label, and ids in both splits, are warnings."""
    image_dir, label_dir = os.path.join(root, IMAGES), os.path.join(root, LABELS)
    for d in (image_dir, label_dir):
        if not os.path.isdir(d):
            problems.append('%s: folder not found' % d)
    images, labels = _stems(image_dir, '.jpg'), _stems(label_dir, '.png')
    others = {os.path.splitext(f)[0]: f for f in (os.listdir(image_dir) if os.path.isdir(image_dir) else ())
              if not f.lower().endswith('.jpg')}
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
    bar = common.Progress(len(pairs), 'checking', enabled=progress)
    for k, i in enumerate(pairs):
        bar.update(k)
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
    bar.update(len(pairs))
    for k, name in enumerate(classes):
        if pixels['train'][k] == 0 and splits['train']:
            warnings.append('class %d (%s) has no pixels in the training images' % (k, name))
    report = DataReport(root, classes, splits, problems, warnings, pixels)
    if mean and n_pixels:
        report.mean = tuple(float(v) for v in bgr_sum / n_pixels)
    return report
