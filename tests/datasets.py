"""Tiny datasets in the real on-disk formats, for tests (no download needed).

Each `make_*` writes a handful of small images of odd sizes under `root` (the data root;
point the layers at it with FCN_DATA_ROOT=root or pass absolute dirs) and returns the
list of image ids it wrote. Pixels and labels are random but fixed by `seed`, so a test
can read the files back to know what a layer must produce. Every function can be called
again on the same root to add images or another split list.

    make_voc(root, ids=VOC_IDS, size=SIZES, n_classes=21, split='seg11valid',
             voc_dir='pascal/VOC2011', seed=0)
        {voc_dir}/JPEGImages/{id}.jpg, SegmentationClass/{id}.png (palette PNG, values
        0..n_classes-1 plus a 255 void border), ImageSets/Segmentation/{split}.txt.
    make_sbdd(root, ids=SBDD_IDS, size=SIZES, n_classes=21, split='train',
              sbdd_dir='sbdd/dataset', seed=0)
        {sbdd_dir}/img/{id}.jpg, cls/{id}.mat (struct GTcls with Segmentation,
        Boundaries, CategoriesPresent), {split}.txt. No void pixels, as in SBD.
    make_nyud(root, ids=NYUD_IDS, size=SIZES, n_classes=40, split='test',
              nyud_dir='nyud', seed=0)
        {nyud_dir}/data/images/img_{id}.png (RGB), data/depth/img_{id}.png (16-bit, mm),
        data/hha/img_{id}.png (3 channels), segmentation/img_{id}.mat ('segmentation',
        0 = void, 1..n_classes), {split}.txt.
    make_nyud_splits_mat(path, train, val, test)
        Gupta et al.'s nyusplits.mat: variables train, val, test, trainval (numbers).
    make_siftflow(root, ids=SIFTFLOW_IDS, size=SIZES, split='test',
                  siftflow_dir='sift-flow', unannotated=(), seed=0)
        Images/<D>/{id}.jpg, SemanticLabels/<D>/{id}.mat and GeoLabels/<D>/{id}.mat
        (variable 'S': semantic 0 = unlabeled, 1..33; geometric -1 and 0 unlabeled,
        1..3), {split}.txt; ids in `unannotated` get all-zero semantic labels.
    make_pascalcontext(root, ids=CONTEXT_IDS, size=SIZES, split='val',
                       voc_dir='pascal/VOC2010', context_dir='pascal-context', seed=0)
        {voc_dir}/JPEGImages/{id}.jpg, ImageSets/Main/{split}.txt,
        {context_dir}/trainval/{id}.mat ('LabelMap', ids of the full list),
        labels.txt (CONTEXT_FULL_LABELS) and 59_labels.txt (the 59-class names).

    make_ade20k(root, ids=ADE20K_IDS, size=SIZES, split='validation',
                ade20k_dir='ade20k/ADEChallengeData2016', seed=0, write_list=True, paint=None)
        {ade20k_dir}/images/{split}/{id}.jpg, annotations/{split}/{id}.png (8-bit gray,
        0 = other, 1..150), list {ade20k_dir}/{split}.txt (unless write_list is false).
        paint {label value: (R, G, B)}: labels from its keys, each pixel painted its
        label's colour plus noise (a dataset a net can learn).
    make_cityscapes(root, ids=CITYSCAPES_IDS, size=SIZES, split='val',
                    cityscapes_dir='cityscapes', seed=0, write_list=True)
        leftImg8bit/{split}/{id}_leftImg8bit.png (RGB), gtFine/{split}/{id}_gtFine_labelIds.png
        (8-bit gray, every Cityscapes labelId, 255 = license plate) beside the
        _gtFine_color.png a real tree has; ids are <city>/<city>_<seq>_<frame>; list
        {cityscapes_dir}/{split}.txt.
    PASCAL VOC 2012 is make_voc(root, voc_dir='pascal/VOC2012', split='val').

    make_own(root, train=OWN_TRAIN, val=OWN_VAL, classes=OWN_CLASSES, size=SIZES,
             grayscale=False, seed=0)
        A user's own dataset for `net.py new`: the VOC layout directly under root
        (JPEGImages/, SegmentationClass/ palette PNGs, or grayscale ones, values
        0..len(classes)-1 plus a 255 border, ImageSets/Segmentation/{train,val}.txt) and
        root/classes.txt; returns that file's path.

`size` is one (H, W) or a list of them used in turn over the ids. `split=None` writes
no list. Helpers: `read_rgb(path)` gives a written JPEG's decoded pixels (JPEG is lossy,
so compare against these, not against what was encoded); `random_weights(deploy, path,
seed)` saves a caffemodel for a deploy prototxt with N(0, 0.3) parameters.
"""
import contextlib
import http.server
import os
import threading

import numpy as np
import scipy.io
import scipy.sparse
from PIL import Image

import guard
import layers

SIZES = [(37, 53), (41, 29)]
VOC_IDS = ('2007_000032', '2007_000039', '2007_000063')
SBDD_IDS = ('2008_000002', '2008_000003', '2008_000007')
NYUD_IDS = ('5001', '5003', '5004')
SIFTFLOW_IDS = ('coast_arnat59', 'street_par177', 'forest_for15')
CONTEXT_IDS = ('2008_000002', '2008_000003', '2008_000007')
ADE20K_IDS = ('ADE_val_00000001', 'ADE_val_00000002', 'ADE_val_00000003')
CITYSCAPES_IDS = ('frankfurt/frankfurt_000000_000294', 'frankfurt/frankfurt_000000_000576',
                  'lindau/lindau_000000_000019')
SIFTFLOW_SUBDIR = 'spatial_envelope_256x256_static_8outdoorcategories'

# The 59-class list as PASCAL-Context ships it (ids 1..59, its own spellings).
CONTEXT_59_NAMES = (
    'aeroplane', 'bicycle', 'bird', 'boat', 'bottle', 'bus', 'car', 'cat', 'chair', 'cow',
    'diningtable', 'dog', 'horse', 'motorbike', 'person', 'pottedplant', 'sheep', 'sofa',
    'train', 'tvmonitor', 'bag', 'bed', 'bench', 'book', 'building', 'cabinet', 'ceiling',
    'clothes', 'computer', 'cup', 'door', 'fence', 'floor', 'flower', 'food', 'grass',
    'ground', 'keyboard', 'light', 'mountain', 'mouse', 'curtain', 'platform', 'sign',
    'plate', 'road', 'rock', 'shelves', 'sidewalk', 'sky', 'snow', 'bedcloth', 'track',
    'tree', 'truck', 'wall', 'water', 'window', 'wood')

# A small stand-in for the full list: every 59-class name in its full-list spelling
# (table, bedclothes, cloth), one with a space to exercise space-insensitive matching
# ("tv monitor"), and classes outside the task. Alphabetical, ids 1..N, like the real one.
_FULL_NAMES = sorted(
    set(CONTEXT_59_NAMES) - {'diningtable', 'bedcloth', 'clothes', 'tvmonitor'}
    | {'table', 'bedclothes', 'cloth', 'tv monitor', 'accordion', 'air conditioner',
       'unknown', 'wool'})
CONTEXT_FULL_LABELS = tuple((i + 1, name) for i, name in enumerate(_FULL_NAMES))


def _sizes(size, n):
    sizes = [size] if isinstance(size[0], int) else list(size)
    return [tuple(sizes[i % len(sizes)]) for i in range(n)]


def _rng(seed, idx):
    return np.random.RandomState((seed * 7919 + sum(map(ord, str(idx))) * 31 + len(str(idx))) % 2**31)


def _photo(rng, h, w):
    """An H x W x 3 uint8 RGB image: smooth, distinct channel levels plus a little noise,
    so a channel swap or a missing mean is far larger than JPEG error."""
    base = np.array([200, 110, 30], np.float32)  # R, G, B
    ramp = np.linspace(-20, 20, w, dtype=np.float32)[np.newaxis, :, np.newaxis]
    img = base + ramp + rng.uniform(-5, 5, (h, w, 3)).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def _blocks(rng, h, w, values):
    """An H x W label map of a few rectangular regions, each one of `values`."""
    label = np.full((h, w), rng.choice(values), dtype=np.int64)
    for _ in range(4):
        y, x = rng.randint(0, h), rng.randint(0, w)
        label[y:y + rng.randint(1, h + 1), x:x + rng.randint(1, w + 1)] = rng.choice(values)
    return label


def _save(path, img):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(img).save(path)


def _savemat(path, mdict):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    scipy.io.savemat(path, mdict)


def _write_list(path, ids):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'w') as f:
        f.write(''.join('%s\n' % i for i in ids))


def read_rgb(path):
    """The decoded H x W x 3 uint8 RGB pixels of an image file."""
    with Image.open(path) as im:
        return np.array(im.convert('RGB'))


def make_voc(root, ids=VOC_IDS, size=SIZES, n_classes=21, split='seg11valid',
             voc_dir='pascal/VOC2011', seed=0):
    d = os.path.join(str(root), voc_dir)
    ids = list(ids)
    for idx, (h, w) in zip(ids, _sizes(size, len(ids))):
        rng = _rng(seed, idx)
        _save(os.path.join(d, 'JPEGImages', idx + '.jpg'), _photo(rng, h, w))
        label = _blocks(rng, h, w, np.arange(n_classes))
        label[0, :] = label[:, 0] = 255  # void outline, as VOC draws around objects
        layers.save_label_png(os.path.join(d, 'SegmentationClass', idx + '.png'), label)
    if split:
        _write_list(os.path.join(d, 'ImageSets', 'Segmentation', split + '.txt'), ids)
    return ids


OWN_TRAIN = ('road_01', 'road_02', 'road_03')
OWN_VAL = ('road_04', 'road_05')
OWN_CLASSES = ('background', 'road', 'car', 'person', 'sign')


def make_own(root, train=OWN_TRAIN, val=OWN_VAL, classes=OWN_CLASSES, size=SIZES,
             grayscale=False, seed=0):
    root = str(root)
    for split, ids in (('train', train), ('val', val)):
        make_voc(root, ids, size, len(classes), split, voc_dir='', seed=seed)
        if grayscale:  # the same values, stored as an 8-bit grayscale PNG
            for idx in ids:
                path = os.path.join(root, 'SegmentationClass', idx + '.png')
                with Image.open(path) as im:
                    values = np.array(im)
                Image.fromarray(values, mode='L').save(path)
    path = os.path.join(root, 'classes.txt')
    with open(path, 'w') as f:
        f.write(''.join('%s\n' % name for name in classes))
    return path


def make_sbdd(root, ids=SBDD_IDS, size=SIZES, n_classes=21, split='train',
              sbdd_dir='sbdd/dataset', seed=0):
    d = os.path.join(str(root), sbdd_dir)
    ids = list(ids)
    for idx, (h, w) in zip(ids, _sizes(size, len(ids))):
        rng = _rng(seed, idx)
        _save(os.path.join(d, 'img', idx + '.jpg'), _photo(rng, h, w))
        seg = _blocks(rng, h, w, np.arange(n_classes)).astype(np.uint8)
        present = np.unique(seg[seg > 0]).astype(np.uint8).reshape(-1, 1)
        boundaries = np.empty((n_classes - 1, 1), dtype=object)
        for k in range(n_classes - 1):
            boundaries[k, 0] = scipy.sparse.csc_matrix((h, w), dtype=bool)
        _savemat(os.path.join(d, 'cls', idx + '.mat'),
                 {'GTcls': {'Segmentation': seg, 'Boundaries': boundaries,
                            'CategoriesPresent': present}})
    if split:
        _write_list(os.path.join(d, split + '.txt'), ids)
    return ids


def make_nyud(root, ids=NYUD_IDS, size=SIZES, n_classes=40, split='test',
              nyud_dir='nyud', seed=0):
    d = os.path.join(str(root), nyud_dir)
    ids = list(ids)
    for idx, (h, w) in zip(ids, _sizes(size, len(ids))):
        rng = _rng(seed, idx)
        name = 'img_%s' % idx
        _save(os.path.join(d, 'data', 'images', name + '.png'), _photo(rng, h, w))
        depth = rng.randint(500, 10000, (h, w)).astype(np.uint16)  # millimetres
        _save(os.path.join(d, 'data', 'depth', name + '.png'), depth)
        hha = rng.randint(0, 256, (h, w, 3)).astype(np.uint8)
        _save(os.path.join(d, 'data', 'hha', name + '.png'), hha)
        seg = _blocks(rng, h, w, np.arange(n_classes + 1)).astype(np.uint8)
        seg[0, 0] = 0  # at least one void pixel
        _savemat(os.path.join(d, 'segmentation', name + '.mat'), {'segmentation': seg})
    if split:
        _write_list(os.path.join(d, split + '.txt'), ids)
    return ids


def make_nyud_splits_mat(path, train, val, test):
    """Write Gupta et al.'s split file: column vectors of image numbers (5001..6449)."""
    col = lambda ids: np.array([float(i) for i in ids]).reshape(-1, 1)
    _savemat(str(path), {'train': col(train), 'val': col(val), 'test': col(test),
                         'trainval': col(list(train) + list(val))})
    return str(path)


def make_siftflow(root, ids=SIFTFLOW_IDS, size=SIZES, split='test',
                  siftflow_dir='sift-flow', unannotated=(), seed=0):
    d = os.path.join(str(root), siftflow_dir)
    ids = list(ids)
    for idx, (h, w) in zip(ids, _sizes(size, len(ids))):
        rng = _rng(seed, idx)
        _save(os.path.join(d, 'Images', SIFTFLOW_SUBDIR, idx + '.jpg'), _photo(rng, h, w))
        sem = _blocks(rng, h, w, np.arange(34)).astype(np.float64)  # 0 unlabeled, 1..33
        sem[0, 0] = 0
        if idx in unannotated:
            sem[:] = 0
        geo = _blocks(rng, h, w, np.arange(-1, 4)).astype(np.float64)  # -1, 0 unlabeled
        geo[0, 0], geo[0, 1] = -1, 0
        _savemat(os.path.join(d, 'SemanticLabels', SIFTFLOW_SUBDIR, idx + '.mat'), {'S': sem})
        _savemat(os.path.join(d, 'GeoLabels', SIFTFLOW_SUBDIR, idx + '.mat'), {'S': geo})
    if split:
        _write_list(os.path.join(d, split + '.txt'), ids)
    return ids


def make_pascalcontext(root, ids=CONTEXT_IDS, size=SIZES, split='val',
                       voc_dir='pascal/VOC2010', context_dir='pascal-context', seed=0):
    voc = os.path.join(str(root), voc_dir)
    ctx = os.path.join(str(root), context_dir)
    ids = list(ids)
    os.makedirs(ctx, exist_ok=True)
    with open(os.path.join(ctx, 'labels.txt'), 'w') as f:
        f.write(''.join('%d: %s\n' % entry for entry in CONTEXT_FULL_LABELS))
    with open(os.path.join(ctx, '59_labels.txt'), 'w') as f:
        f.write(''.join('%d: %s\n' % (k + 1, n) for k, n in enumerate(CONTEXT_59_NAMES)))
    full_ids = np.array([i for i, _ in CONTEXT_FULL_LABELS])
    for idx, (h, w) in zip(ids, _sizes(size, len(ids))):
        rng = _rng(seed, idx)
        _save(os.path.join(voc, 'JPEGImages', idx + '.jpg'), _photo(rng, h, w))
        labelmap = _blocks(rng, h, w, full_ids).astype(np.uint16)
        _savemat(os.path.join(ctx, 'trainval', idx + '.mat'), {'LabelMap': labelmap})
    if split:
        _write_list(os.path.join(voc, 'ImageSets', 'Main', split + '.txt'), ids)
    return ids


def make_ade20k(root, ids=ADE20K_IDS, size=SIZES, split='validation',
                ade20k_dir='ade20k/ADEChallengeData2016', seed=0, write_list=True, paint=None):
    d = os.path.join(str(root), ade20k_dir)
    ids = list(ids)
    for idx, (h, w) in zip(ids, _sizes(size, len(ids))):
        rng = _rng(seed, idx)
        if paint:  # labels from paint's keys, each pixel its label's colour: learnable
            label = _blocks(rng, h, w, np.array(sorted(paint))).astype(np.uint8)
            colours = np.array([paint.get(v, (0, 0, 0)) for v in range(256)], np.float32)
            image = colours[label] + rng.uniform(-20, 20, (h, w, 3))
            image = np.clip(image, 0, 255).astype(np.uint8)
        else:
            image = _photo(rng, h, w)
            label = _blocks(rng, h, w, np.arange(151)).astype(np.uint8)
            label[0, 0], label[-1, -1] = 0, 150  # "other" (not evaluated) and the last class
        _save(os.path.join(d, 'images', split, idx + '.jpg'), image)
        _save(os.path.join(d, 'annotations', split, idx + '.png'), label)
    if write_list:
        _write_list(os.path.join(d, split + '.txt'), ids)
    return ids


def make_cityscapes(root, ids=CITYSCAPES_IDS, size=SIZES, split='val',
                    cityscapes_dir='cityscapes', seed=0, write_list=True):
    d = os.path.join(str(root), cityscapes_dir)
    ids = list(ids)
    label_ids = np.array(list(range(34)) + [255])  # 255: license plate (labelId -1)
    for idx, (h, w) in zip(ids, _sizes(size, len(ids))):
        rng = _rng(seed, idx)
        _save(os.path.join(d, 'leftImg8bit', split, idx + '_leftImg8bit.png'),
              _photo(rng, h, w))
        label = _blocks(rng, h, w, label_ids).astype(np.uint8)
        n = min(w, len(label_ids))
        label[0, :n] = label_ids[:n]  # (nearly) every labelId somewhere
        gt = os.path.join(d, 'gtFine', split, idx + '_gtFine_')
        _save(gt + 'labelIds.png', label)
        _save(gt + 'color.png', rng.randint(0, 256, (h, w, 3)).astype(np.uint8))
    if write_list:
        _write_list(os.path.join(d, split + '.txt'), ids)
    return ids


def random_weights(deploy, path, seed=0):
    """Save a caffemodel (making its folder) for the net of `deploy` (a prototxt path) with
    every parameter drawn from N(0, 0.3); returns the path."""
    caffe = guard.import_caffe()
    net = caffe.Net(str(deploy), caffe.TEST)
    rng = np.random.RandomState(seed)
    for blobs in net.params.values():
        for b in blobs:
            b.data[...] = rng.normal(0, 0.3, b.data.shape)
    os.makedirs(os.path.dirname(os.path.abspath(str(path))), exist_ok=True)
    net.save(str(path))
    return str(path)


@contextlib.contextmanager
def http_server(handler):
    """Serve `handler` (an http.server.BaseHTTPRequestHandler class) on 127.0.0.1 from a
    thread; yields its base URL ('http://127.0.0.1:PORT'); shut down on exit."""
    httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
    httpd.timeout = 5
    thread = threading.Thread(target=httpd.serve_forever, kwargs={'poll_interval': 0.05},
                              daemon=True)
    thread.start()
    try:
        yield 'http://127.0.0.1:%d' % httpd.server_address[1]
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)
