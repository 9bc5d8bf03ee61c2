"""Write the SIFT Flow image lists the FCN nets use: test.txt (200) and trainval.txt (2486).

SIFT Flow (Liu, Yuen, Torralba) has 2,688 images. Its standard test split is a list of
200 of them that comes with the dataset; trainval is every other image except the
unannotated ones (the dataset has two, whose semantic label maps hold no label at all).
This script finds those by reading every semantic label file, so the lists are derived
from the data rather than copied.

    python data/sift-flow/splits.py --test-list /d/SiftFlow/TestSet1.txt

--test-list: one test image per line, as a bare id (coast_arnat59), a file name
(coast_arnat59.jpg) or a path (Images/.../coast_arnat59.jpg, / or \\ separators); the
default is TestSet1.txt in --siftflow-dir. Writes {siftflow-dir}/test.txt (in list order)
and trainval.txt (sorted), each in one rename; counts other than 200 / 2486 stop the
script before anything is written (--no-check for tests on tiny data). Relative paths
are taken from $FCN_DATA_ROOT, else <repo>/data.
"""
import argparse
import os
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

import cli  # noqa: E402
import project  # noqa: E402
from layers import SPLIT_SIZES, SIFTFlowSegDataLayer, data_path, read_mat, read_split, \
    write_splits  # noqa: E402

SUBDIR = SIFTFlowSegDataLayer.SUBDIR


def list_entry_id(entry):
    """'Images/x/coast_arnat59.jpg' or 'coast_arnat59.jpg' or 'coast_arnat59' -> 'coast_arnat59'."""
    name = entry.replace('\\', '/').rsplit('/', 1)[-1]
    stem, ext = os.path.splitext(name)
    return stem if ext.lower() in ('.jpg', '.jpeg', '.mat', '.png') else name


def all_ids(siftflow_dir):
    """Ids of every image in Images/<SUBDIR>, sorted."""
    folder = os.path.join(siftflow_dir, 'Images', SUBDIR)
    if not os.path.isdir(folder):
        raise project.InputError('image folder not found: %s' % folder)
    ids = sorted(os.path.splitext(f)[0] for f in os.listdir(folder) if f.lower().endswith('.jpg'))
    if not ids:
        raise project.InputError('no .jpg images in %s' % folder)
    return ids


def is_annotated(siftflow_dir, idx):
    """Whether image `idx` has a semantic label file with at least one labelled pixel."""
    path = os.path.join(siftflow_dir, 'SemanticLabels', SUBDIR, idx + '.mat')
    if not os.path.isfile(path):
        return False
    return bool((np.asarray(read_mat(path, 'S')) > 0).any())


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--siftflow-dir', default='sift-flow',
                        help='the SIFT Flow folder (Images, SemanticLabels, GeoLabels); '
                        'default %(default)s')
    parser.add_argument('--test-list', help='the 200 test images (default: '
                        '{siftflow-dir}/TestSet1.txt)')
    parser.add_argument('--exclude', action='append', default=[], metavar='ID',
                        help='leave this image out of trainval too (repeatable)')
    parser.add_argument('--expect-trainval', type=int,
                        default=SPLIT_SIZES[('siftflow', 'trainval')])
    parser.add_argument('--expect-test', type=int, default=SPLIT_SIZES[('siftflow', 'test')])
    parser.add_argument('--no-check', action='store_true', help='accept any counts')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    d = data_path(args.siftflow_dir)
    test_list = data_path(args.test_list) if args.test_list else os.path.join(d, 'TestSet1.txt')
    test = [list_entry_id(e) for e in read_split(test_list, 'the SIFT Flow test list; '
                                                 'give it with --test-list', parts=None)]
    images = all_ids(d)
    unknown = sorted(set(test) - set(images))
    if unknown:
        raise project.InputError('%s names %d images not in %s/Images/%s, e.g. %s'
                                % (test_list, len(unknown), d, SUBDIR, unknown[0]))
    if len(set(test)) != len(test):
        raise project.InputError('%s lists some images twice' % test_list)
    unannotated = [i for i in images if not is_annotated(d, i)]
    bad_test = sorted(set(unannotated) & set(test))
    if bad_test:
        raise project.InputError('%s: test images without labels: %s'
                                % (test_list, ', '.join(bad_test)))
    dropped = set(test) | set(unannotated) | set(args.exclude)
    trainval = [i for i in images if i not in dropped]
    summary = ('%d images: test %d, trainval %d, unannotated left out: %s'
               % (len(images), len(test), len(trainval), ', '.join(unannotated) or 'none'))
    expect = None if args.no_check else {'test': args.expect_test, 'trainval': args.expect_trainval}
    write_splits(d, {'test': test, 'trainval': trainval}, expect, summary)
    print('wrote %s/{test,trainval}.txt: %s' % (d, summary))
    return 0


if __name__ == '__main__':
    cli.run_cli(main)
