"""Derive seg11valid, the VOC validation list of the FCN paper, from the datasets.

seg11valid = PASCAL VOC2011 ImageSets/Segmentation/val.txt minus every image of SBD's
train.txt. The VOC models train on SBD train, which contains part of VOC2011 val; scoring
on those images would score on training data. The list keeps VOC's order and must hold
736 images (CVPR 2015 Table 2, footnote 7; docs/data.md); any other count means the wrong folders were given, and
nothing is written.

    python data/pascal/seg11valid.py                  # data/pascal/VOC2011, data/sbdd/dataset
    python data/pascal/seg11valid.py --voc-dir /d/VOC2011 --sbdd-dir /d/benchmark_RELEASE/dataset

Writes {voc-dir}/ImageSets/Segmentation/seg11valid.txt (in one rename, so an interrupted
run leaves no half list). Relative paths are taken from the data root ($FCN_DATA_ROOT,
else <repo>/data), never from the current directory.
"""
import argparse
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

import cli  # noqa: E402
from layers import SPLIT_SIZES, data_path, read_split, write_list  # noqa: E402


def derive(val_ids, train_ids):
    """The ids of `val_ids` not in `train_ids`, in `val_ids` order."""
    train = set(train_ids)
    return [i for i in val_ids if i not in train]


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--voc-dir', default='pascal/VOC2011',
                        help='the VOC2011 folder (JPEGImages, ImageSets, ...); default %(default)s')
    parser.add_argument('--sbdd-dir', default='sbdd/dataset',
                        help="SBD's dataset folder (img, cls, train.txt); default %(default)s")
    parser.add_argument('--out', help='where to write the list; default '
                        '{voc-dir}/ImageSets/Segmentation/seg11valid.txt')
    check = parser.add_mutually_exclusive_group()
    check.add_argument('--expect', type=int, default=SPLIT_SIZES[('voc', 'seg11valid')],
                       help='the count the list must have (default %(default)s)')
    check.add_argument('--no-check', action='store_true', help='write whatever count comes out')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    voc_dir, sbdd_dir = data_path(args.voc_dir), data_path(args.sbdd_dir)
    inputs = (os.path.join(voc_dir, 'ImageSets', 'Segmentation', 'val.txt'),
              os.path.join(sbdd_dir, 'train.txt'))
    val = read_split(inputs[0], 'the VOC2011 segmentation val list')
    train = read_split(inputs[1], 'the SBD train list')
    valid = derive(val, train)
    summary = ('%d ids = VOC val %d minus %d also in SBD train'
               % (len(valid), len(val), len(val) - len(valid)))
    out = data_path(args.out) if args.out else os.path.join(
        voc_dir, 'ImageSets', 'Segmentation', 'seg11valid.txt')
    write_list(out, valid, 'seg11valid', None if args.no_check else args.expect, summary,
               'are --voc-dir (%s) VOC2011 and --sbdd-dir (%s) SBD\'s dataset folder?'
               % (voc_dir, sbdd_dir), protect=inputs)  # --out val.txt: refused
    return 0


if __name__ == '__main__':
    cli.run_cli(main)
