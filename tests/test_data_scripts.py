"""The split-deriving scripts under data/, on tiny trees in the real formats."""
import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest

import datasets  # tests/datasets.py
import layers
import project


def load_script(relpath):
    """Import a script of data/ (its folder names are not package names) as a module."""
    path = os.path.join(project.REPO, relpath)
    name = 'script_' + relpath.replace('/', '_').replace('-', '_').replace('.py', '')
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ----------------------------------------------------------------------------- seg11valid

def voc_and_sbd(root):
    val = datasets.make_voc(root, ids=['2008_000001', '2008_000002', '2008_000003', '2008_000004'],
                            size=(3, 3), split='val')
    datasets.make_sbdd(root, ids=['2007_000005', '2008_000003', '2008_000001'], size=(3, 3))
    return val


def test_seg11valid_is_val_minus_sbd_train(root, capsys):
    voc_and_sbd(root)
    seg11valid = load_script('data/pascal/seg11valid.py')
    assert seg11valid.main(['--expect', '2']) == 0
    out = root / 'pascal/VOC2011/ImageSets/Segmentation/seg11valid.txt'
    assert out.read_text() == '2008_000002\n2008_000004\n'  # VOC's order kept
    assert 'VOC val 4 minus 2' in capsys.readouterr().out
    assert layers.split_ids('voc') == ['2008_000002', '2008_000004']
    assert not [f for f in os.listdir(out.parent) if f.endswith('.part')]
    # explicit folders and output path, and --no-check
    other = root / 'x.txt'
    assert seg11valid.main(['--voc-dir', str(root / 'pascal/VOC2011'), '--sbdd-dir',
                            'sbdd/dataset', '--out', str(other), '--no-check']) == 0
    assert other.read_text() == out.read_text()


def test_seg11valid_wrong_count_writes_nothing_and_exits_nonzero(root):
    voc_and_sbd(root)
    script = os.path.join(project.REPO, 'data/pascal/seg11valid.py')
    # run as a command from another folder: the default count 736 does not match
    result = subprocess.run([sys.executable, script], cwd=str(root), capture_output=True,
                            text=True, env=dict(os.environ, FCN_DATA_ROOT=str(root)))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and 'expected 736' in lines[0] and 'nothing written' in lines[0]
    assert not (root / 'pascal/VOC2011/ImageSets/Segmentation/seg11valid.txt').exists()


def test_seg11valid_missing_sbd_list_names_it(root):
    datasets.make_voc(root, ids=['a'], size=(3, 3), split='val')
    seg11valid = load_script('data/pascal/seg11valid.py')
    with pytest.raises(FileNotFoundError, match='sbdd/dataset/train.txt'):
        seg11valid.main(['--no-check'])


def test_seg11valid_out_never_replaces_an_input(root):
    """--out naming VOC's own val.txt would have replaced the list it is derived from."""
    voc_and_sbd(root)
    val = root / 'pascal/VOC2011/ImageSets/Segmentation/val.txt'
    before = val.read_text()
    seg11valid = load_script('data/pascal/seg11valid.py')
    with pytest.raises(project.InputError, match='would replace the input'):
        seg11valid.main(['--out', str(val), '--no-check'])
    assert val.read_text() == before


def test_seg11valid_list_not_utf8_names_it(root):
    """A split list that does not decode is named, not a UnicodeDecodeError."""
    voc_and_sbd(root)
    train = root / 'sbdd/dataset/train.txt'
    train.write_bytes(b'2008_000001\n\xff\xfe\n')
    seg11valid = load_script('data/pascal/seg11valid.py')
    with pytest.raises(project.InputError, match='train.txt: split list is not UTF-8'):
        seg11valid.main(['--no-check'])


# ----------------------------------------------------------------------------- NYUD

def test_nyud_splits_from_gupta_mat(root, capsys):
    splits = load_script('data/nyud/splits.py')
    mat = root / 'nyud/benchmarkData/metadata/nyusplits.mat'
    datasets.make_nyud_splits_mat(mat, train=[5003, 5001], val=[5010], test=[5002, 5004])
    with pytest.raises(project.InputError, match='trainval has 3 images, expected 795'):
        splits.main([])
    assert not (root / 'nyud/trainval.txt').exists()
    assert splits.main(['--expect-trainval', '3', '--expect-test', '2']) == 0
    d = root / 'nyud'
    assert (d / 'trainval.txt').read_text().split() == ['5003', '5001', '5010']
    assert (d / 'test.txt').read_text().split() == ['5002', '5004']
    assert (d / 'train.txt').read_text().split() == ['5003', '5001']
    assert (d / 'val.txt').read_text().split() == ['5010']
    assert layers.split_ids('nyud', 'trainval') == ['5003', '5001', '5010']


def test_nyud_splits_from_nyu_mat_and_overlap(root):
    import numpy as np
    import scipy.io
    splits = load_script('data/nyud/splits.py')
    path = root / 'splits.mat'
    scipy.io.savemat(str(path), {'trainNdxs': np.array([[1], [3]]), 'testNdxs': np.array([[2]])})
    assert splits.main(['--splits-mat', str(path), '--no-check']) == 0
    assert (root / 'nyud/trainval.txt').read_text().split() == ['5001', '5003']
    assert (root / 'nyud/test.txt').read_text().split() == ['5002']
    scipy.io.savemat(str(path), {'trainNdxs': np.array([[1], [2]]), 'testNdxs': np.array([[2]])})
    with pytest.raises(project.InputError, match='share images'):
        splits.main(['--splits-mat', str(path), '--no-check'])
    with pytest.raises(project.InputError, match='no split file'):
        splits.main(['--nyud-dir', str(root / 'empty')])


@pytest.mark.parametrize('values', [np.array(['5001', '5003']),             # char rows
                                    np.array([['5001'], ['5003']], dtype=object),  # cell
                                    np.array([5001.0, np.inf]), np.array([0, 5003])])
def test_nyud_splits_with_text_or_odd_numbers_is_a_one_line_error(root, values):
    import scipy.io
    path = root / 'splits.mat'
    scipy.io.savemat(str(path), {'trainNdxs': values, 'testNdxs': np.array([[2]])})
    r = subprocess.run([sys.executable, os.path.join(project.REPO, 'data/nyud/splits.py'),
                        '--splits-mat', str(path), '--no-check'], capture_output=True, text=True,
                       env=dict(os.environ, FCN_DATA_ROOT=str(root)))
    assert r.returncode == 1 and 'Traceback' not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and "'trainNdxs'" in lines[0], lines
    assert not (root / 'nyud/trainval.txt').exists()


# ----------------------------------------------------------------------------- SIFT Flow

def test_siftflow_splits_leave_out_unannotated(root, capsys):
    ids = ['coast_a1', 'coast_b2', 'forest_c3', 'street_d4', 'street_e5']
    datasets.make_siftflow(root, ids=ids, size=(4, 5), split=None, unannotated=['forest_c3'])
    d = root / 'sift-flow'
    (d / 'TestSet1.txt').write_text(
        'Images\\spatial_envelope_256x256_static_8outdoorcategories\\street_e5.jpg\n'
        'coast_b2.jpg\n')
    splits = load_script('data/sift-flow/splits.py')
    with pytest.raises(project.InputError, match='test has 2 images, expected 200'):
        splits.main([])
    assert splits.main(['--expect-test', '2', '--expect-trainval', '2']) == 0
    assert (d / 'test.txt').read_text().split() == ['street_e5', 'coast_b2']
    assert (d / 'trainval.txt').read_text().split() == ['coast_a1', 'street_d4']
    assert 'unannotated left out: forest_c3' in capsys.readouterr().out
    assert splits.main(['--no-check', '--exclude', 'coast_a1']) == 0
    assert layers.split_ids('siftflow', 'trainval') == ['street_d4']
    (d / 'bad.txt').write_text('nowhere_x9\n')
    with pytest.raises(project.InputError, match='nowhere_x9'):
        splits.main(['--test-list', str(d / 'bad.txt'), '--no-check'])
