"""The whole system on a fresh machine, with nothing downloaded: `make demo`.

    python demo.py                  # 2-4 minutes on 2 CPU cores
    python demo.py --seed 3 --out /tmp/demo
    python demo.py --rounds 2 --iters 100    # shorter (mean IU may then miss 0.5)

1. Generates a small dataset in PASCAL VOC's on-disk format (JPEGImages/*.jpg,
   SegmentationClass/*.png palette PNGs with a void border of 255 around each object,
   ImageSets/Segmentation/{train,val}.txt): textured shapes of four classes (disc,
   square, triangle, ring) on varied backgrounds, images of different sizes.
2. Writes a narrow FCN-8s for it through net.py, the same builder as the paper's
   voc-fcn8s, with its VOCSegDataLayer pointed at the generated data.
3. Trains it from scratch through the project's solving loop (train.py): snapshots,
   log.jsonl and log.png, scoring the held-out split after each round.
4. Scores the held-out images (mean IU must reach 0.5) and runs infer.py on some of
   them: predictions (palette PNG) and overlays.

Two things differ from the paper's recipe, because the paper fine-tunes an ImageNet
VGG16 and this trains a tiny net from nothing: the convolutions get MSRA random
initialisation (the paper's nets have no fillers, they start from copied weights) and
the solver is Adam (the paper's SGD with lr 1e-10 and momentum 0.99 assumes a trained
trunk). Everything else -- layers, crops, bilinear upsampling, the unnormalized loss
with ignore label 255, data layer, scoring -- is the paper's path.

Deterministic for a seed (same data, same initialisation, same image order).
"""
import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np
from google.protobuf import text_format
from PIL import Image
from scipy import ndimage

import cli
import guard
import layers
import net
import safewrite
import train
from project import REPO, InputError

CLASSES = ['background', 'disc', 'square', 'triangle', 'ring']
WIDTHS = (8, 16, 24, 32, 32, 64)  # conv1..conv5, fc6/fc7 (the paper's: 64 ... 4096)


# --- 1. the dataset --------------------------------------------------------------------------

def _background(rng, h, w):
    """H x W x 3 float: a smooth colour gradient, plus stripes or blotches sometimes, plus noise."""
    yy, xx = np.mgrid[0:h, 0:w] / float(max(h, w))
    c0, c1 = rng.uniform(40, 215, 3), rng.uniform(40, 215, 3)
    angle = rng.uniform(0, np.pi)
    t = (np.cos(angle) * xx + np.sin(angle) * yy)
    t = (t - t.min()) / max(t.max() - t.min(), 1e-6)
    img = c0 * (1 - t[..., None]) + c1 * t[..., None]
    kind = rng.randint(3)
    if kind == 1:  # soft stripes
        img += 25 * np.sin(2 * np.pi * (xx * rng.uniform(3, 9) + yy * rng.uniform(-4, 4)))[..., None]
    elif kind == 2:  # blotches
        for _ in range(4):
            cy, cx, r = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.1, 0.3)
            img += (rng.uniform(-40, 40, 3) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / r ** 2)[..., None])
    return img + rng.normal(0, 8, img.shape)


def _shape_mask(cls, rng, h, w):
    """Boolean H x W mask of one object of class `cls` at a random place and size."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    r = rng.uniform(0.14, 0.3) * min(h, w)
    cy, cx = rng.uniform(r, h - r), rng.uniform(r, w - r)
    dy, dx = yy - cy, xx - cx
    if cls == 1:  # disc
        return dy ** 2 + dx ** 2 <= r ** 2
    if cls == 2:  # square, rotated
        a = rng.uniform(0, np.pi / 2)
        u, v = np.cos(a) * dx + np.sin(a) * dy, -np.sin(a) * dx + np.cos(a) * dy
        return (np.abs(u) <= 0.8 * r) & (np.abs(v) <= 0.8 * r)
    if cls == 3:  # triangle, pointing up
        return (dy <= 0.7 * r) & (dy >= -r + 1.7 * np.abs(dx))
    d = np.sqrt(dy ** 2 + dx ** 2)  # ring
    return (d <= r) & (d >= 0.55 * r)


def _texture(cls, rng, h, w):
    """H x W x 3 float texture of class `cls`: colour family plus a pattern."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    jitter = rng.uniform(-25, 25, 3)
    if cls == 1:  # warm, horizontal stripes
        base = np.array([220, 90, 40]) + jitter
        pattern = 30 * np.sign(np.sin(yy / rng.uniform(2, 3.5)))
    elif cls == 2:  # blue checkerboard
        base = np.array([50, 90, 210]) + jitter
        s = rng.uniform(3, 5)
        pattern = 35 * (((yy // s) + (xx // s)) % 2 * 2 - 1)
    elif cls == 3:  # green, speckled
        base = np.array([60, 190, 70]) + jitter
        pattern = rng.normal(0, 30, (h, w))
    else:  # purple, diagonal stripes
        base = np.array([170, 60, 190]) + jitter
        pattern = 30 * np.sin((xx + yy) / rng.uniform(1.5, 2.5))
    return base[None, None, :] + pattern[..., None]


def make_image(rng):
    """(RGB uint8 H x W x 3, label uint8 H x W with 255 on object borders)."""
    h, w = rng.randint(72, 113), rng.randint(72, 113)
    img = _background(rng, h, w)
    label = np.zeros((h, w), np.uint8)
    for _ in range(rng.randint(1, 4)):
        cls = rng.randint(1, len(CLASSES))
        mask = _shape_mask(cls, rng, h, w)
        img[mask] = _texture(cls, rng, h, w)[mask]
        label[mask] = cls
    # VOC marks object boundaries as void (255): a one-pixel band around each object.
    edges = np.zeros_like(label, bool)
    for cls in range(1, len(CLASSES)):
        m = label == cls
        if m.any():
            edges |= ndimage.binary_dilation(m) & ~ndimage.binary_erosion(m)
    label[edges] = 255
    return np.clip(img, 0, 255).astype(np.uint8), label


def make_dataset(voc_dir, n_train, n_val, seed):
    """Write a VOC-format dataset under voc_dir; returns (train ids, val ids)."""
    rng = np.random.RandomState(seed)
    for sub in ('JPEGImages', 'SegmentationClass', os.path.join('ImageSets', 'Segmentation')):
        os.makedirs(os.path.join(voc_dir, sub), exist_ok=True)
    splits = {'train': ['train_%04d' % i for i in range(n_train)],
              'val': ['val_%04d' % i for i in range(n_val)]}
    for split, ids in splits.items():
        for i in ids:
            img, label = make_image(rng)
            with safewrite.atomic_write(os.path.join(voc_dir, 'JPEGImages', i + '.jpg')) as f:
                Image.fromarray(img).save(f, format='JPEG', quality=92)
            layers.save_label_png(os.path.join(voc_dir, 'SegmentationClass', i + '.png'), label)
        with safewrite.atomic_write(os.path.join(voc_dir, 'ImageSets', 'Segmentation', split + '.txt'), 'w') as f:
            f.write('\n'.join(ids) + '\n')
    return splits['train'], splits['val']


# --- 2. the model directory ------------------------------------------------------------------

def write_model(model_dir, voc_dir, n_val, seed, base_lr):
    """A narrow FCN-8s model directory (train/val/deploy/solver) for the generated data."""
    caffe = guard.import_caffe()
    os.makedirs(model_dir, exist_ok=True)
    data = {split: ('VOCSegDataLayer', {'voc_dir': voc_dir, 'split': split, 'seed': seed})
            for split in ('train', 'val')}
    for split in ('train', 'val', 'deploy'):
        proto = net.voc_fcn('8s', split, num_classes=len(CLASSES), widths=WIDTHS,
                            **({'data_layer': data[split][0], 'data_params': data[split][1]}
                               if split in data else {}))
        for layer in proto.layer:  # from scratch: random convolutions (see docstring)
            if layer.type == 'Convolution':
                layer.convolution_param.weight_filler.type = 'msra'
        with safewrite.atomic_write(os.path.join(model_dir, split + '.prototxt'), 'w') as f:
            f.write('# demo: narrow FCN-8s written by demo.py through net.voc_fcn\n' + str(proto))
    solver = caffe.proto.caffe_pb2.SolverParameter()
    text_format.Merge(net.model_solver('voc-fcn8s', test_iter=n_val), solver)
    solver.type = 'Adam'
    solver.base_lr = base_lr
    solver.momentum = 0.9
    solver.momentum2 = 0.999
    solver.random_seed = seed
    solver.ClearField('snapshot')
    with safewrite.atomic_write(os.path.join(model_dir, 'solver.prototxt'), 'w') as f:
        f.write('# demo: Adam from scratch (see demo.py); the paper\'s solvers are in the model dirs\n'
                + str(solver))


# --- the run -----------------------------------------------------------------------------------

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--out', default=os.path.join(REPO, 'out', 'demo'), help='output folder (default: out/demo)')
    p.add_argument('--seed', type=int, default=1337)
    p.add_argument('--train-images', type=int, default=200)
    p.add_argument('--val-images', type=int, default=30)
    p.add_argument('--rounds', type=int, default=4)
    p.add_argument('--iters', type=int, default=250, help='iterations per round')
    p.add_argument('--lr', type=float, default=1e-3, help='Adam learning rate')
    p.add_argument('--min-iu', type=float, default=0.5, help='fail below this held-out mean IU')
    args = p.parse_args(argv)
    # Checked here, before anything is generated: each is a one-line usage error.
    for flag, value in (('--train-images', args.train_images), ('--val-images', args.val_images),
                        ('--rounds', args.rounds), ('--iters', args.iters)):
        if value < 1:
            p.error('%s must be at least 1, got %d' % (flag, value))
    if not args.lr > 0:
        p.error('--lr must be positive, got %r' % args.lr)
    out = os.path.abspath(args.out)
    t_start = time.time()

    voc_dir = os.path.join(out, 'data', 'VOCdemo')
    print('1/4 generating %d training and %d held-out images in VOC format: %s'
          % (args.train_images, args.val_images, voc_dir), flush=True)
    _, val_ids = make_dataset(voc_dir, args.train_images, args.val_images, args.seed)

    model_dir = os.path.join(out, 'model')
    print('2/4 writing a narrow FCN-8s (widths %s) through net.py: %s' % (WIDTHS, model_dir), flush=True)
    write_model(model_dir, voc_dir, args.val_images, args.seed, args.lr)

    train_dir = os.path.join(out, 'train')
    print('3/4 training from scratch, %d rounds x %d iterations, scoring the held-out split '
          'each round' % (args.rounds, args.iters), flush=True)
    records = train.solve(train.Model(model_dir),
                          train.RunConfig(rounds=args.rounds, iters=args.iters, out=train_dir,
                                          resume=False, seed=args.seed, save_pred=True))
    final = records[-1]
    seg = final['scores']['seg']
    print('\nheld-out per-class IU: %s' % ', '.join(
        '%s %.3f' % (c, iu) for c, iu in zip(CLASSES, seg['per_class_iu'])), flush=True)

    print('4/4 infer.py on held-out images', flush=True)
    infer_dir = os.path.join(out, 'infer')
    weights = os.path.join(train_dir, final['snapshot'].replace('.solverstate', '.caffemodel'))
    classes_file = os.path.join(model_dir, 'classes.txt')
    with safewrite.atomic_write(classes_file, 'w') as f:
        f.write('\n'.join(CLASSES) + '\n')
    images = [os.path.join(voc_dir, 'JPEGImages', i + '.jpg') for i in val_ids[:6]]
    cmd = [sys.executable, os.path.join(REPO, 'infer.py')] + images + [
        '--model', 'voc-fcn8s', '--deploy', os.path.join(model_dir, 'deploy.prototxt'),
        '--weights', weights, '--classes', classes_file, '--out', infer_dir]
    rc = subprocess.call(cmd)
    if rc != 0:
        raise InputError('infer.py failed (exit %d)' % rc)

    summary = {'mean_iu': seg['mean_iu'], 'overall_acc': seg['overall_acc'],
               'mean_acc': seg['mean_acc'], 'fwavacc': seg['fwavacc'],
               'per_class_iu': dict(zip(CLASSES, seg['per_class_iu'])),
               'iterations': final['iter'], 'seconds': round(time.time() - t_start, 1),
               'seed': args.seed, 'weights': weights}
    with safewrite.atomic_write(os.path.join(out, 'summary.json'), 'w') as f:
        json.dump(summary, f, indent=1)
    print('\nheld-out mean IU %.3f (pixel accuracy %.3f) after %d iterations, %.0f s in all'
          % (seg['mean_iu'], seg['overall_acc'], final['iter'], summary['seconds']))
    print('results in %s:\n  infer/        predictions (*.png) and overlays (*-overlay.jpg)\n'
          '  train/log.png the training plot (log.jsonl beside it)\n'
          '  train/pred/   held-out predictions of the last round\n'
          '  summary.json  the numbers above' % out)
    if not seg['mean_iu'] >= args.min_iu:
        raise InputError('held-out mean IU %.3f is below %.2f: the demo did not learn well '
                         'enough' % (seg['mean_iu'], args.min_iu))
    return 0


if __name__ == '__main__':
    cli.run_cli(main)
