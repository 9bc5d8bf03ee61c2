"""Write the Cityscapes image lists PSPNet's data layer reads: train.txt, val.txt, test.txt.

Cityscapes (fine annotations: 2,975 train, 500 val, 1,525 test images of 50 cities) has
no list files: a split is every leftImg8bit/<split>/<city>/*_leftImg8bit.png with its
gtFine/<split>/<city>/*_gtFine_labelIds.png. This script derives the lists from the tree.

    python data/cityscapes/splits.py                # data/cityscapes
    python data/cityscapes/splits.py --cityscapes-dir /datasets/cityscapes

Writes {cityscapes-dir}/<split>.txt for train and val (and test when its images are
there), ids <city>/<city>_<seq>_<frame>, sorted, each in one rename. An image without its
labelIds PNG, or counts other than 2975 / 500 / 1525, stop the script before anything is
written (--no-check accepts any counts, for tests on tiny data). Relative paths are taken
from $FCN_DATA_ROOT, else <repo>/data.
"""
import argparse
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

import cli  # noqa: E402
import project  # noqa: E402
from layers import SPLIT_SIZES, CityscapesSegDataLayer, data_path, write_splits  # noqa: E402

SPLITS = ('train', 'val', 'test')
IMAGE, LABEL = '_leftImg8bit.png', '_gtFine_labelIds.png'


def split_ids(d, split):
    """Ids <city>/<stem> of `split`, sorted; None when leftImg8bit/<split> is absent.
    InputError naming the file when an image has no labelIds PNG, or the split is empty."""
    folder = os.path.join(d, 'leftImg8bit', split)
    if not os.path.isdir(folder):
        return None
    ids = []
    for city in sorted(os.listdir(folder)):
        if os.path.isdir(os.path.join(folder, city)):
            ids += ['%s/%s' % (city, f[:-len(IMAGE)])
                    for f in sorted(os.listdir(os.path.join(folder, city))) if f.endswith(IMAGE)]
    if not ids:
        raise project.InputError('no *%s images in %s' % (IMAGE, folder))
    for idx in ids:
        label = os.path.join(d, 'gtFine', split, idx + LABEL)
        if not os.path.isfile(label):
            raise project.InputError('%s: labelIds PNG missing for %s%s' % (label, idx, IMAGE))
    return ids


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--cityscapes-dir', default=CityscapesSegDataLayer.PARAMS['cityscapes_dir'],
                        help='the folder holding leftImg8bit/ and gtFine/ (default %(default)s)')
    parser.add_argument('--no-check', action='store_true', help='accept any counts')
    args = parser.parse_args(argv)
    d = data_path(args.cityscapes_dir)
    lists = {split: split_ids(d, split) for split in SPLITS}
    for split in ('train', 'val'):
        if lists[split] is None:
            raise project.InputError('image folder not found: %s (see data/cityscapes/README.md)'
                                    % os.path.join(d, 'leftImg8bit', split))
    lists = {s: ids for s, ids in lists.items() if ids is not None}
    summary = ', '.join('%s %d' % (s, len(ids)) for s, ids in lists.items())
    expect = None if args.no_check else {s: SPLIT_SIZES[('cityscapes', s)] for s in lists}
    write_splits(d, lists, expect, summary)
    print('wrote %s/{%s}.txt: %s' % (d, ','.join(lists), summary))
    return 0


if __name__ == '__main__':
    cli.run_cli(main)
