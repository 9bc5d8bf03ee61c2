"""Derive train_aug, DeepLab v2's VOC 2012 training list, from the datasets.

train_aug = VOC 2012 ImageSets/Segmentation/train.txt + SBD's train.txt and val.txt,
less every image of VOC 2012's val.txt (which is scored), each id once, sorted. It must
hold 10582 images (the count DeepLab v2 trains on, TPAMI 2017 section 4.1; docs/deeplab.md);
any other count means the wrong folders were given, and nothing is written.

    python data/pascal/train_aug.py              # data/pascal/VOC2012, data/sbdd/dataset
    python data/pascal/train_aug.py --voc-dir /d/VOC2012 --sbdd-dir /d/benchmark_RELEASE/dataset

Writes {voc-dir}/ImageSets/Segmentation/train_aug.txt (in one rename). Relative paths
are taken from the data root ($FCN_DATA_ROOT, else <repo>/data).
"""
import argparse
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

import cli  # noqa: E402
from layers import SPLIT_SIZES, data_path, read_split, write_list  # noqa: E402


def derive(voc_train, sbd_train, sbd_val, voc_val):
    """Sorted ids of the three training lists, each once, less those of `voc_val`."""
    held_out = set(voc_val)
    return sorted((set(voc_train) | set(sbd_train) | set(sbd_val)) - held_out)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--voc-dir', default='pascal/VOC2012',
                        help='the VOC2012 folder (JPEGImages, ImageSets, ...); default %(default)s')
    parser.add_argument('--sbdd-dir', default='sbdd/dataset',
                        help="SBD's dataset folder (img, cls, train.txt, val.txt); default %(default)s")
    parser.add_argument('--out', help='where to write the list; default '
                        '{voc-dir}/ImageSets/Segmentation/train_aug.txt')
    check = parser.add_mutually_exclusive_group()
    check.add_argument('--expect', type=int, default=SPLIT_SIZES[('voc12aug', 'train_aug')],
                       help='the count the list must have (default %(default)s)')
    check.add_argument('--no-check', action='store_true', help='write whatever count comes out')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    voc_dir, sbdd_dir = data_path(args.voc_dir), data_path(args.sbdd_dir)
    seg = os.path.join(voc_dir, 'ImageSets', 'Segmentation')
    inputs = (os.path.join(seg, 'train.txt'), os.path.join(sbdd_dir, 'train.txt'),
              os.path.join(sbdd_dir, 'val.txt'), os.path.join(seg, 'val.txt'))
    lists = [read_split(path, what) for path, what in zip(inputs, (
        'the VOC2012 segmentation train list', 'the SBD train list', 'the SBD val list',
        'the VOC2012 segmentation val list'))]
    ids = derive(*lists)
    summary = '%d ids (VOC train %d, SBD train %d and val %d, less VOC val %d)' % (
        (len(ids),) + tuple(len(x) for x in lists))
    out = data_path(args.out) if args.out else os.path.join(seg, 'train_aug.txt')
    write_list(out, ids, 'train_aug', None if args.no_check else args.expect, summary,
               'are --voc-dir (%s) VOC2012 and --sbdd-dir (%s) SBD\'s dataset folder?'
               % (voc_dir, sbdd_dir), protect=inputs)
    return 0


if __name__ == '__main__':
    cli.run_cli(main)
