"""Images per second of score.py's evaluation here (one process) and on a local Ray cluster
with 1 and 2 workers (cluster.py), on a generated VOC-format dataset and a voc-fcn32s net
of reduced widths with random weights (nothing downloaded).

    .venv/bin/python tools/cluster_bench.py                       # 48 images of 240 x 320
    .venv/bin/python tools/cluster_bench.py --images 100 --size 375x500 --widths 64 128 256 512 512 4096

The rate counts the images only: the cluster's start and each worker's net opening are
timed apart ("start"). Every run's confusion matrix and loss are checked equal to the
local run's. One thread per worker (--threads-per-worker 1), so 2 workers use both cores
of a 2-core machine; the local run uses the BLAS's own threads (both cores too).
"""
import argparse
import os
import sys
import tempfile
import time
from types import SimpleNamespace

import numpy as np
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
import cli  # noqa: E402
import cluster  # noqa: E402
import guard  # noqa: E402
import layers  # noqa: E402
import net  # noqa: E402
import score  # noqa: E402


def make_data(root, n, size, seed=0):
    """n VOC-format images (JPEG) and 3-class labels (palette PNG) under root/pascal/VOC2011,
    with the seg11valid list; returns the ids."""
    voc = os.path.join(root, 'pascal', 'VOC2011')
    for sub in ('JPEGImages', 'SegmentationClass', 'ImageSets/Segmentation'):
        os.makedirs(os.path.join(voc, sub), exist_ok=True)
    rng = np.random.RandomState(seed)
    ids = ['2007_%06d' % i for i in range(n)]
    h, w = size
    for idx in ids:
        image = rng.randint(0, 256, (h, w, 3)).astype(np.uint8)
        Image.fromarray(image).save(os.path.join(voc, 'JPEGImages', idx + '.jpg'))
        label = rng.randint(0, 3, (h, w)).astype(np.uint8)
        label[0] = 255
        layers.save_label_png(os.path.join(voc, 'SegmentationClass', idx + '.png'), label)
    with open(os.path.join(voc, 'ImageSets', 'Segmentation', 'seg11valid.txt'), 'w') as f:
        f.write(''.join(i + '\n' for i in ids))
    return ids


def random_weights(deploy, path):
    caffe = guard.import_caffe()
    n = caffe.Net(deploy, caffe.TEST)
    rng = np.random.RandomState(0)
    for blobs in n.params.values():
        for b in blobs:
            b.data[...] = rng.normal(0, 0.1, b.data.shape)
    n.save(path)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--images', type=int, default=48)
    parser.add_argument('--size', default='240x320', help='HxW of the images')
    parser.add_argument('--widths', type=int, nargs=6, default=[8, 16, 32, 32, 32, 64],
                        metavar='C', help='net.py widths: conv blocks 1-5, fc6/fc7')
    parser.add_argument('--workers', type=int, nargs='+', default=[1, 2])
    args = parser.parse_args(argv)
    size = tuple(int(v) for v in args.size.split('x'))
    with tempfile.TemporaryDirectory() as tmp:
        mdir = os.path.join(tmp, 'voc-fcn32s')
        net.write_model_dir(mdir, 'voc-fcn32s', widths=tuple(args.widths))
        weights = os.path.join(tmp, 'w.caffemodel')
        random_weights(os.path.join(mdir, 'deploy.prototxt'), weights)
        root = os.path.join(tmp, 'data')
        ids = make_data(root, args.images, size)
        cli.use_data_root(root)
        val = os.path.join(mdir, 'val.prototxt')
        caffe_net, _, split, _ = score.open_val_net(val, weights, None, root)
        outputs, _ = score.scored_outputs(caffe_net, 'voc', split, val)
        print('%d images of %dx%d, voc-fcn32s widths %s, %s'
              % (len(ids), size[0], size[1], ' '.join(map(str, args.widths)), cli.cpu_name()))
        t0 = time.perf_counter()
        want = score.evaluate_outputs(caffe_net, ids, outputs, progress=False)
        local = len(ids) / (time.perf_counter() - t0)
        print('local (one process):     %6.2f images/s' % local)
        for n in args.workers:
            opts = SimpleNamespace(ray='local', workers=n, threads_per_worker=1,
                                   gpus_per_worker=0, data_root=root)
            t0 = time.perf_counter()
            with cluster.Pool(opts, cluster.Job(
                    score.open_val_net, (val, weights, split, root), score.scores_at,
                    (outputs,), {'data root': root}, root)) as pool:
                t1 = time.perf_counter()
                got = dict(pool.imap(list(enumerate(ids))))
                rate = len(ids) / (time.perf_counter() - t1)
            ev = score.evaluate_outputs(caffe_net, ids, outputs, False, (got[i] for i in range(len(ids))))
            same = all(np.array_equal(a.hist, b.hist) and a.loss == b.loss
                       for a, b in zip(want, ev))
            print('ray, %d worker%s:          %6.2f images/s  (start %.1f s; %s the local '
                  'scores)' % (n, ' ' if n == 1 else 's', rate, t1 - t0,
                               'equal to' if same else 'DIFFERENT from'))
    return 0


if __name__ == '__main__':
    sys.exit(main())
