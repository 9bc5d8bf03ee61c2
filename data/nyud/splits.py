"""Write the NYUDv2 image lists the FCN nets use: trainval.txt (795) and test.txt (654).

The FCN NYUD nets train on `trainval` and score on `test`, the standard NYUDv2 split
that Gupta et al. use. The lists come from one of two files:

- Gupta et al.'s `nyusplits.mat` (in their data.tgz, benchmarkData/metadata/): variables
  `train` (381), `val` (414), `test` (654), optionally `trainval`, holding image numbers
  5001..6449 as used in the file names img_5001.png ... img_6449.png. train.txt and
  val.txt are written too.
- the NYU Depth V2 site's `splits.mat`: `trainNdxs` (795) and `testNdxs` (654), 1-based
  indices of the 1449 labelled images; image number = 5000 + index.

    python data/nyud/splits.py                     # looks for nyusplits.mat under data/nyud
    python data/nyud/splits.py --splits-mat /d/benchmarkData/metadata/nyusplits.mat

Lists are written into --nyud-dir (default data/nyud, relative paths from $FCN_DATA_ROOT
else <repo>/data), each in one rename. Counts other than 795 / 654 stop the script
before anything is written (--no-check to allow them, for tests on tiny data).
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
from layers import SPLIT_SIZES, data_path, load_mat, write_splits  # noqa: E402

# Where nyusplits.mat lies once Gupta et al.'s data.tgz is unpacked in the NYUD folder.
CANDIDATES = ('benchmarkData/metadata/nyusplits.mat',
              'data/benchmarkData/metadata/nyusplits.mat',
              'nyusplits.mat', 'splits.mat')


def _numbers(mat, key, path):
    """The image numbers of variable `key`: whole, positive, finite numbers. Text (a char
    or cell array) and anything else are an InputError naming the file and the variable;
    text is refused rather than parsed, since both known files store numbers."""
    values = mat[key].ravel()
    if values.dtype.kind not in 'biuf':
        raise project.InputError('%s: %r holds %s values, not image numbers'
                                % (path, key, 'text' if values.dtype.kind in 'USO' else values.dtype))
    if (values.size == 0 or not np.isfinite(values).all() or (values != np.round(values)).any()
            or (values < 1).any()):
        raise project.InputError('%s: %r is not a list of image numbers' % (path, key))
    return [int(v) for v in values]


def read_splits(path):
    """{list name: [image id, ...]} from Gupta's nyusplits.mat or NYU's splits.mat."""
    mat = load_mat(path, what='split file')
    if 'trainNdxs' in mat and 'testNdxs' in mat:  # NYU's own file: indices 1..1449
        return {'trainval': [str(5000 + n) for n in _numbers(mat, 'trainNdxs', path)],
                'test': [str(5000 + n) for n in _numbers(mat, 'testNdxs', path)]}
    if not all(k in mat for k in ('train', 'val', 'test')):
        raise project.InputError('%s has neither train/val/test (Gupta et al.) nor '
                                'trainNdxs/testNdxs (NYU) variables' % path)
    lists = {k: [str(n) for n in _numbers(mat, k, path)] for k in ('train', 'val', 'test')}
    lists['trainval'] = ([str(n) for n in _numbers(mat, 'trainval', path)] if 'trainval' in mat
                         else lists['train'] + lists['val'])
    if set(lists['trainval']) != set(lists['train']) | set(lists['val']):
        raise project.InputError('%s: trainval is not train + val' % path)
    return lists


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--nyud-dir', default='nyud',
                        help='the NYUD folder the lists go into; default %(default)s')
    parser.add_argument('--splits-mat', help='nyusplits.mat (Gupta et al.) or splits.mat '
                        '(NYU); default: the first of %s found in --nyud-dir'
                        % ', '.join(CANDIDATES))
    parser.add_argument('--expect-trainval', type=int, default=SPLIT_SIZES[('nyud', 'trainval')])
    parser.add_argument('--expect-test', type=int, default=SPLIT_SIZES[('nyud', 'test')])
    parser.add_argument('--no-check', action='store_true', help='accept any counts')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    nyud_dir = data_path(args.nyud_dir)
    if args.splits_mat:
        path = data_path(args.splits_mat)
    else:
        found = [os.path.join(nyud_dir, c) for c in CANDIDATES
                 if os.path.isfile(os.path.join(nyud_dir, c))]
        if not found:
            raise project.InputError('no split file (%s) in %s; give --splits-mat (see '
                                    'data/nyud/README.md)' % (', '.join(CANDIDATES), nyud_dir))
        path = found[0]
    lists = read_splits(path)
    if set(lists['trainval']) & set(lists['test']):
        raise project.InputError('%s: trainval and test share images' % path)
    counts = {k: len(v) for k, v in lists.items()}
    expect = None if args.no_check else {'trainval': args.expect_trainval, 'test': args.expect_test}
    write_splits(nyud_dir, lists, expect, 'from %s' % path)
    print('wrote %s in %s from %s' % (', '.join('%s.txt (%d)' % (k, counts[k]) for k in sorted(counts)),
                                       nyud_dir, path))
    return 0


if __name__ == '__main__':
    cli.run_cli(main)
