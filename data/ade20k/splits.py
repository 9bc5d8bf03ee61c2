"""Write the ADE20K image lists PSPNet's data layer reads: training.txt and validation.txt.

The SceneParsing benchmark's ADEChallengeData2016 (20,210 training and 2,000 validation
images, 150 classes) has no list files: a split is every image in images/<split>/ that
has its annotation in annotations/<split>/. This script derives the lists from the tree.

    python data/ade20k/splits.py                    # data/ade20k/ADEChallengeData2016
    python data/ade20k/splits.py --ade20k-dir /datasets/ADEChallengeData2016

Writes {ade20k-dir}/training.txt and validation.txt (ids such as ADE_train_00000001,
sorted), each in one rename. An image without its annotation, or counts other than
20210 / 2000, stop the script before anything is written (--no-check accepts any counts,
for tests on tiny data). Relative paths are taken from $FCN_DATA_ROOT, else <repo>/data.
"""
import argparse
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

import cli  # noqa: E402
import project  # noqa: E402
from layers import SPLIT_SIZES, ADE20KSegDataLayer, data_path, write_splits  # noqa: E402

SPLITS = ('training', 'validation')


def split_ids(ade_dir, split):
    """Ids of the images of `split` (images/<split>/*.jpg), sorted; InputError naming the
    folder when it is missing or empty, or an image whose annotation PNG is missing."""
    folder = os.path.join(ade_dir, 'images', split)
    if not os.path.isdir(folder):
        raise project.InputError('image folder not found: %s (see data/ade20k/README.md)' % folder)
    ids = sorted(os.path.splitext(f)[0] for f in os.listdir(folder) if f.endswith('.jpg'))
    if not ids:
        raise project.InputError('no .jpg images in %s' % folder)
    for idx in ids:
        png = os.path.join(ade_dir, 'annotations', split, idx + '.png')
        if not os.path.isfile(png):
            raise project.InputError('%s: annotation missing for %s.jpg' % (png, idx))
    return ids


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--ade20k-dir', default=ADE20KSegDataLayer.PARAMS['ade20k_dir'],
                        help='the ADEChallengeData2016 folder (default %(default)s)')
    parser.add_argument('--no-check', action='store_true', help='accept any counts')
    args = parser.parse_args(argv)
    d = data_path(args.ade20k_dir)
    lists = {split: split_ids(d, split) for split in SPLITS}
    summary = ', '.join('%s %d' % (s, len(ids)) for s, ids in lists.items())
    expect = None if args.no_check else {s: SPLIT_SIZES[('ade20k', s)] for s in lists}
    write_splits(d, lists, expect, summary)
    print('wrote %s/{%s}.txt: %s' % (d, ','.join(SPLITS), summary))
    return 0


if __name__ == '__main__':
    cli.run_cli(main)
