"""The Python data layers, each alone in a tiny net, on tiny datasets in the real formats."""
import json
import os

import numpy as np
import pytest
import scipy.io
from PIL import Image

import datasets  # tests/datasets.py
import guard
import layers
import models
import project

caffe = guard.import_caffe()

VOC = 'pascal/VOC2011'


def data_net(tmp_path, layer, params, tops, phase='test'):
    """A net whose only layer is `layer` of layers.py with `params` (dict -> JSON, or a
    param_str as is) and top blobs `tops`."""
    param_str = params if isinstance(params, str) else json.dumps(params)
    text = ('layer { name: "data" type: "Python" %s\n'
            '  python_param { module: "layers" layer: "%s" param_str: %s } }\n'
            % (' '.join('top: "%s"' % t for t in tops), layer, json.dumps(param_str)))
    path = tmp_path / ('%s.prototxt' % layer)
    path.write_text(text)
    return caffe.Net(str(path), caffe.TRAIN if phase == 'train' else caffe.TEST)


def expected_image(path, mean):
    rgb = datasets.read_rgb(path).astype(np.float32)
    return (rgb[:, :, ::-1] - np.array(mean, np.float32)).transpose(2, 0, 1)


# ----------------------------------------------------------------------------- VOC / SBD

def test_voc_bgr_mean_shape_and_void_kept(root):
    ids = datasets.make_voc(root, split='seg11valid')
    net = data_net(root, 'VOCSegDataLayer', {'split': 'seg11valid'}, ['data', 'label'])
    for n, idx in enumerate(ids):  # walks the list in order
        net.forward()
        data, label = net.blobs['data'].data, net.blobs['label'].data
        h, w = datasets.SIZES[n % 2]
        assert data.shape == (1, 3, h, w) and label.shape == (1, 1, h, w)
        jpg = root / VOC / 'JPEGImages' / (idx + '.jpg')
        np.testing.assert_allclose(data[0], expected_image(jpg, layers.VOC_MEAN), atol=1e-4)
        # the generator's pixels are R~200, G~110, B~30: channel 0 must be blue
        assert abs(data[0, 0].mean() + layers.VOC_MEAN[0] - 30) < 10
        assert abs(data[0, 2].mean() + layers.VOC_MEAN[2] - 200) < 10
        png = np.array(Image.open(root / VOC / 'SegmentationClass' / (idx + '.png')))
        np.testing.assert_array_equal(label[0, 0], png)
        assert (label[0, 0, 0] == 255).all() and label.max() == 255


def test_voc_val_wraps_around(root):
    ids = datasets.make_voc(root, ids=['a', 'b'], size=(5, 7), split='val')
    net = data_net(root, 'VOCSegDataLayer', {'split': 'val'}, ['data', 'label'])
    first = []
    for _ in range(3):
        net.forward()
        first.append(net.blobs['data'].data.copy())
    np.testing.assert_array_equal(first[0], first[2])
    assert not np.array_equal(first[0], first[1])
    assert net.layers[0].indices == ids


def test_python_dict_syntax_and_absolute_dir(root):
    datasets.make_voc(root, ids=['a'], size=(5, 7), split='val')
    voc = str(root / VOC)
    net = data_net(root, 'VOCSegDataLayer',
                   "{'voc_dir': %r, 'split': 'val', 'mean': (0, 0, 0), 'randomize': False}" % voc,
                   ['data', 'label'])
    net.forward()
    np.testing.assert_allclose(net.blobs['data'].data[0],
                               expected_image(os.path.join(voc, 'JPEGImages', 'a.jpg'), (0, 0, 0)))


def test_sbdd_labels_and_training_draws_are_seeded(root):
    ids = datasets.make_sbdd(root, ids=['i%d' % k for k in range(4)], size=(6, 9), split='train')

    def draws(seed, n=12):
        net = data_net(root, 'SBDDSegDataLayer', {'split': 'train', 'seed': seed},
                       ['data', 'label'], phase='train')
        assert net.layers[0].random  # a training split is randomized by default
        seen = []
        for _ in range(n):
            net.forward()
            label = net.blobs['label'].data[0, 0]
            seen.append(next(i for i in ids if np.array_equal(label, sbd_label(i))))
        return seen

    def sbd_label(i):
        mat = scipy.io.loadmat(str(root / 'sbdd/dataset/cls' / (i + '.mat')))
        return mat['GTcls'][0]['Segmentation'][0]

    a, b = draws(1337), draws(1337)
    assert a == b
    # the same sequence as random.Random(seed).randrange(n), drawn once at setup and
    # again after each forward; with replacement, so repeats happen
    import random
    rng = random.Random(1337)
    assert a == [ids[rng.randrange(len(ids))] for _ in range(12)]
    assert len(set(a)) < len(a)
    assert draws(7) != a


def test_randomize_false_walks_a_training_split_in_order(root):
    datasets.make_sbdd(root, ids=['p', 'q', 'r'], size=(4, 4), split='train')
    net = data_net(root, 'SBDDSegDataLayer', {'split': 'train', 'randomize': False},
                   ['data', 'label'])
    assert not net.layers[0].random and net.layers[0].idx == 0
    net.forward()
    assert net.layers[0].idx == 1


def test_tops_feed_the_fcn_loss(root):
    """data/label as the FCN nets use them: 1x1 score, SoftmaxWithLoss ignoring 255."""
    datasets.make_voc(root, ids=['a', 'b'], split='val')
    L = caffe.layers
    n = caffe.NetSpec()
    n.data, n.label = L.Python(module='layers', layer='VOCSegDataLayer', ntop=2,
                               param_str=json.dumps({'split': 'val'}))
    n.score = L.Convolution(n.data, num_output=21, kernel_size=1)  # zero weights
    n.loss = L.SoftmaxWithLoss(n.score, n.label,
                               loss_param=dict(normalize=False, ignore_label=255))
    path = root / 'loss.prototxt'
    path.write_text(str(n.to_proto()))
    net = caffe.Net(str(path), caffe.TRAIN)
    for h, w in datasets.SIZES:  # the net reshapes to every image
        loss = float(net.forward()['loss'])
        valid = (net.blobs['label'].data != 255).sum()
        assert net.blobs['score'].data.shape == (1, 21, h, w)
        assert 0 < valid < h * w
        np.testing.assert_allclose(loss, valid * np.log(21), rtol=1e-4)  # uniform scores


# ----------------------------------------------------------------------------- NYUD

def test_nyud_all_tops(root):
    ids = datasets.make_nyud(root, split='test')
    tops = ['color', 'hha', 'depth', 'label']
    net = data_net(root, 'NYUDSegDataLayer', {'split': 'test', 'tops': tops}, tops)
    d = root / 'nyud'
    for n, idx in enumerate(ids):
        net.forward()
        h, w = datasets.SIZES[n % 2]
        b = {t: net.blobs[t].data[0] for t in tops}
        assert b['color'].shape == (3, h, w) and b['hha'].shape == (3, h, w)
        assert b['depth'].shape == (1, h, w) and b['label'].shape == (1, h, w)
        png = lambda sub: np.array(Image.open(d / sub / ('img_%s.png' % idx)))
        rgb = png('data/images').astype(np.float32)
        np.testing.assert_allclose(b['color'], (rgb[:, :, ::-1] - layers.NYUD_COLOR_MEAN).transpose(2, 0, 1), atol=1e-4)
        hha = png('data/hha').astype(np.float32)  # not flipped
        np.testing.assert_allclose(b['hha'], (hha - layers.NYUD_HHA_MEAN).transpose(2, 0, 1), atol=1e-4)
        depth = png('data/depth')
        assert depth.dtype == np.uint16 and depth.max() > 255
        np.testing.assert_allclose(b['depth'][0], np.log(depth.astype(np.float64)) - 7.844, atol=1e-4)
        seg = scipy.io.loadmat(str(d / 'segmentation' / ('img_%s.mat' % idx)))['segmentation']
        label = b['label'][0]
        assert (label[seg == 0] == 255).all()  # void wraps to the ignore label
        np.testing.assert_array_equal(label[seg > 0], seg[seg > 0].astype(np.float32) - 1)
        assert label[label != 255].max() <= 39


def test_nyud_tops_order_and_count(root):
    datasets.make_nyud(root, ids=['5001'], size=(4, 6), split='trainval')
    net = data_net(root, 'NYUDSegDataLayer', {'split': 'trainval', 'tops': ['depth', 'color']},
                   ['d', 'c'], phase='train')
    net.forward()
    assert net.blobs['d'].data.shape == (1, 1, 4, 6) and net.blobs['c'].data.shape == (1, 3, 4, 6)
    with pytest.raises(ValueError, match='needs 2 tops.*depth, color'):
        data_net(root, 'NYUDSegDataLayer', {'split': 'trainval', 'tops': ['depth', 'color']}, ['d'])
    with pytest.raises(ValueError, match='tops must be a list'):
        data_net(root, 'NYUDSegDataLayer', {'split': 'trainval', 'tops': ['rgb']}, ['d'])


# ----------------------------------------------------------------------------- SIFT Flow

def test_siftflow_semantic_and_geometric_labels(root):
    ids = datasets.make_siftflow(root, split='test')
    net = data_net(root, 'SIFTFlowSegDataLayer', {'split': 'test'}, ['data', 'sem', 'geo'])
    d = root / 'sift-flow'
    for n, idx in enumerate(ids):
        net.forward()
        h, w = datasets.SIZES[n % 2]
        jpg = d / 'Images' / datasets.SIFTFLOW_SUBDIR / (idx + '.jpg')
        np.testing.assert_allclose(net.blobs['data'].data[0], expected_image(jpg, layers.SIFTFLOW_MEAN), atol=1e-4)
        S = lambda kind: scipy.io.loadmat(str(d / kind / datasets.SIFTFLOW_SUBDIR / (idx + '.mat')))['S']
        sem, geo = net.blobs['sem'].data[0, 0], net.blobs['geo'].data[0, 0]
        assert sem.shape == geo.shape == (h, w)
        s, g = S('SemanticLabels'), S('GeoLabels')
        assert (sem[s == 0] == 255).all()
        np.testing.assert_array_equal(sem[s > 0], s[s > 0] - 1)
        assert (g == -1).any() and (geo[g == -1] == 255).all() and (geo[g == 0] == 255).all()
        np.testing.assert_array_equal(geo[g > 0], g[g > 0] - 1)
        assert set(np.unique(geo)) <= {0, 1, 2, 255}


# ----------------------------------------------------------------------------- PASCAL-Context

def test_context_mapping_known_values(root):
    datasets.make_pascalcontext(root, ids=['x'], size=(3, 3))
    ctx = root / 'pascal-context'
    lut = layers.context_mapping(str(ctx / 'labels.txt'), str(ctx / '59_labels.txt'))
    full = {name: i for i, name in datasets.CONTEXT_FULL_LABELS}
    assert lut[full['aeroplane']] == 1
    assert lut[full['table']] == 11       # diningtable
    assert lut[full['cloth']] == 28       # clothes
    assert lut[full['bedclothes']] == 52  # bedcloth
    assert lut[full['tv monitor']] == 20  # tvmonitor, matched without the space
    assert lut[full['wood']] == 59
    for other in ('accordion', 'air conditioner', 'unknown', 'wool'):
        assert lut[full[other]] == 0
    assert sorted(lut[lut > 0]) == list(range(1, 60))
    assert [layers.CONTEXT_CLASSES[lut[full[n]]] for n in ('table', 'cloth', 'bedclothes')] == \
        ['diningtable', 'clothes', 'bedcloth']
    # a 59-list name the full list lacks is an error naming it
    (ctx / 'bad59.txt').write_text('1: aeroplane\n2: zebra\n')
    with pytest.raises(project.InputError, match='zebra'):
        layers.context_mapping(str(ctx / 'labels.txt'), str(ctx / 'bad59.txt'))


def test_context_layer(root):
    ids = datasets.make_pascalcontext(root, split='val')
    net = data_net(root, 'PASCALContextSegDataLayer', {'split': 'val'}, ['data', 'label'])
    ctx = root / 'pascal-context'
    lut = layers.context_mapping(str(ctx / 'labels.txt'), str(ctx / '59_labels.txt'))
    for idx in ids:
        net.forward()
        full = scipy.io.loadmat(str(ctx / 'trainval' / (idx + '.mat')))['LabelMap']
        np.testing.assert_array_equal(net.blobs['label'].data[0, 0], lut[full])
        jpg = root / 'pascal/VOC2010/JPEGImages' / (idx + '.jpg')
        np.testing.assert_allclose(net.blobs['data'].data[0], expected_image(jpg, layers.CONTEXT_MEAN), atol=1e-4)
    assert net.blobs['label'].data.max() <= 59


# ----------------------------------------------------------------------------- errors

def test_bad_keys_list_the_allowed_ones(root):
    datasets.make_voc(root, ids=['a'], size=(4, 4), split='val')
    with pytest.raises(ValueError, match='unknown.*splt.*allowed keys: batch_size, mean, num_classes, randomize, seed, split, voc_dir'):
        data_net(root, 'VOCSegDataLayer', {'splt': 'val'}, ['data', 'label'])
    with pytest.raises(ValueError, match='missing required.*split'):
        data_net(root, 'VOCSegDataLayer', {}, ['data', 'label'])
    with pytest.raises(ValueError, match='mean must be 3 numbers'):
        data_net(root, 'VOCSegDataLayer', {'split': 'val', 'mean': [1, 2]}, ['data', 'label'])
    with pytest.raises(ValueError, match='needs 2 tops'):
        data_net(root, 'VOCSegDataLayer', {'split': 'val'}, ['data'])


def test_param_str_is_never_evaluated(root, tmp_path):
    marker = tmp_path / 'ran'
    code = "__import__('os').system('touch %s')" % marker
    with pytest.raises(ValueError, match='neither JSON nor a Python literal'):
        data_net(root, 'VOCSegDataLayer', code, ['data', 'label'])
    assert not marker.exists()
    with pytest.raises(ValueError):
        layers.parse_param_str("dict(split='val')")
    assert layers.parse_param_str('{"split": "val", "randomize": false}') == \
        layers.parse_param_str("{'split': 'val', 'randomize': False}")


def test_missing_files_name_the_path(root):
    datasets.make_voc(root, ids=['a', 'b'], size=(4, 4), split='val')
    os.remove(root / VOC / 'JPEGImages' / 'b.jpg')
    net = data_net(root, 'VOCSegDataLayer', {'split': 'val'}, ['data', 'label'])
    net.forward()  # 'a' is fine
    with pytest.raises(FileNotFoundError, match=r'b\.jpg'):
        net.forward()
    with pytest.raises(FileNotFoundError, match=r'seg11valid\.txt.*seg11valid\.py'):
        data_net(root, 'VOCSegDataLayer', {'split': 'seg11valid'}, ['data', 'label'])
    (root / VOC / 'ImageSets/Segmentation/empty.txt').write_text('\n')
    with pytest.raises(project.InputError, match=r'no image ids.*empty\.txt'):
        data_net(root, 'VOCSegDataLayer', {'split': 'empty'}, ['data', 'label'])
    os.remove(root / VOC / 'SegmentationClass' / 'a.png')
    with pytest.raises(FileNotFoundError, match=r'label not found.*a\.png'):
        data_net(root, 'VOCSegDataLayer', {'split': 'val'}, ['data', 'label'])


def test_label_size_mismatch_is_an_error(root):
    datasets.make_sbdd(root, ids=['a'], size=(4, 4), split='train')
    datasets.make_sbdd(root, ids=['a'], size=(5, 4), split=None, seed=1)
    jpg = root / 'sbdd/dataset/img/a.jpg'
    Image.new('RGB', (4, 4)).save(jpg)
    with pytest.raises(project.InputError, match='different sizes'):
        data_net(root, 'SBDDSegDataLayer', {'split': 'train'}, ['data', 'label'])


def test_data_root_passed_as_an_argument(tmp_path, monkeypatch):
    """Python callers pass the data root; $FCN_DATA_ROOT is only how a
    command reaches the layers Caffe instantiates from a prototxt."""
    monkeypatch.setenv('FCN_DATA_ROOT', str(tmp_path / 'elsewhere'))
    voc = datasets.make_voc(tmp_path / 'data', split='seg11valid')
    assert layers.VOCSegDataLayer.ids('seg11valid', root=str(tmp_path / 'data')) == voc
    p = layers.VOCSegDataLayer.parse_params({'split': 'seg11valid'}, root=str(tmp_path / 'data'))
    assert p['voc_dir'] == str(tmp_path / 'data' / VOC)
    assert layers.data_root(str(tmp_path / 'data')) == str(tmp_path / 'data')
    assert layers.data_root() == str(tmp_path / 'elsewhere')


# ----------------------------------------------------------------------------- registry

def test_split_ids_and_class_constants(root):
    assert len(layers.VOC_CLASSES) == 21 and len(layers.NYUD_CLASSES) == 40
    assert len(layers.SIFTFLOW_SEM_CLASSES) == 33 and len(layers.SIFTFLOW_GEO_CLASSES) == 3
    assert len(layers.CONTEXT_CLASSES) == 60 and layers.CONTEXT_CLASSES[0] == 'background'
    assert layers.CONTEXT_CLASSES[:21] == layers.VOC_CLASSES
    assert set(layers.SIFTFLOW_SEM_ABSENT_IN_TEST) <= set(layers.SIFTFLOW_SEM_CLASSES)
    for name in models.BUILTIN_DATASETS:
        assert layers.score_layer(name).__name__.endswith('SegDataLayer')
    voc = datasets.make_voc(root, split='seg11valid')
    assert layers.split_ids('voc') == voc
    nyud = datasets.make_nyud(root, ids=['5001', '5002'], size=(3, 3), split='test')
    assert layers.split_ids('nyud') == nyud
    sbdd = datasets.make_sbdd(root, ids=['s'], size=(3, 3))
    assert layers.split_ids('sbdd', 'train') == sbdd
    other = datasets.make_voc(root / 'elsewhere', ids=['z'], size=(3, 3), split='val')
    assert layers.split_ids('voc', 'val', voc_dir=str(root / 'elsewhere' / VOC)) == other
    with pytest.raises(ValueError, match='unknown dataset'):
        layers.split_ids('coco')
    with pytest.raises(ValueError, match='directory keys: voc_dir'):
        layers.split_ids('voc', 'val', sbdd_dir='x')
    with pytest.raises(FileNotFoundError, match='splits.py'):
        layers.split_ids('siftflow')


# ----------------------------------------------------------------------------- label checks

def assert_refused(root, layer, params, tops, path, *words):
    with pytest.raises(project.InputError) as e:
        data_net(root, layer, params, tops).forward()
    message = str(e.value)
    assert str(path) in message and len(message.splitlines()) == 1, message
    for w in words:
        assert w in message, message


def test_labels_outside_the_classes_name_the_file_and_values(root):
    """A class beyond the dataset's (VOC 21) or any stray value is refused where it is
    read, naming the file and the values; 255 (void) is kept."""
    datasets.make_voc(root, ids=['a'], size=(5, 6), split='val')
    png = root / VOC / 'SegmentationClass' / 'a.png'
    label = np.array(Image.open(png))
    label[2, 2], label[3, 3] = 21, 77
    layers.save_label_png(str(png), label)
    assert_refused(root, 'VOCSegDataLayer', {'split': 'val'}, ['data', 'label'], png,
                   '21, 77', '0..20')
    # NYUDv2 stores classes 1..40 with 0 void: 41 is no class
    datasets.make_nyud(root, ids=['5001'], size=(4, 5), split='test')
    mat = root / 'nyud' / 'segmentation' / 'img_5001.mat'
    seg = scipy.io.loadmat(str(mat))['segmentation']
    seg[1, 1] = 41
    scipy.io.savemat(str(mat), {'segmentation': seg})
    assert_refused(root, 'NYUDSegDataLayer', {'split': 'test', 'tops': ['color', 'label']},
                   ['color', 'label'], mat, '41', '1..40')


@pytest.mark.parametrize('value, words', [(np.nan, ('NaN',)), (2.5, ('fractional', '2.5')),
                                          (-3, ('-3',))])
def test_mat_labels_nan_fractional_negative_refused(root, value, words):
    """.mat labels are not coerced (NaN -> 0, 2.5 -> 2, -3 -> wrapped) but refused."""
    datasets.make_siftflow(root, ids=['coast_a'], size=(4, 5), split='test')
    mat = root / 'sift-flow' / 'SemanticLabels' / datasets.SIFTFLOW_SUBDIR / 'coast_a.mat'
    s = scipy.io.loadmat(str(mat))['S'].astype(np.float64)
    s[1, 2] = value
    scipy.io.savemat(str(mat), {'S': s})
    assert_refused(root, 'SIFTFlowSegDataLayer', {'split': 'test'}, ['data', 'sem', 'geo'],
                   mat, *words)


def test_siftflow_label_stored_as_a_string(root):
    """A .mat variable holding text is a one-line error, not a numpy traceback."""
    datasets.make_siftflow(root, ids=['coast_a'], size=(4, 5), split='test')
    mat = root / 'sift-flow' / 'GeoLabels' / datasets.SIFTFLOW_SUBDIR / 'coast_a.mat'
    scipy.io.savemat(str(mat), {'S': 'sky'})
    assert_refused(root, 'SIFTFlowSegDataLayer', {'split': 'test'}, ['data', 'sem', 'geo'],
                   mat, 'not numbers')


def test_context_ids_outside_labels_txt_refused(root):
    datasets.make_pascalcontext(root, ids=['x'], size=(3, 4), split='val')
    mat = root / 'pascal-context' / 'trainval' / 'x.mat'
    labelmap = scipy.io.loadmat(str(mat))['LabelMap']
    labelmap[0, 0] = 9999
    scipy.io.savemat(str(mat), {'LabelMap': labelmap})
    assert_refused(root, 'PASCALContextSegDataLayer', {'split': 'val'}, ['data', 'label'],
                   mat, '9999')


def test_label_list_not_utf8_names_the_file(root):
    """A 59_labels.txt that does not decode is named (not the net's prototxt)."""
    datasets.make_pascalcontext(root, ids=['x'], size=(3, 4), split='val')
    bad = root / 'pascal-context' / '59_labels.txt'
    bad.write_bytes(b'1: aeroplane\n2: \xff\xfe bicycle\n')
    assert_refused(root, 'PASCALContextSegDataLayer', {'split': 'val'}, ['data', 'label'],
                   bad, 'UTF-8')


TRAIN_SCRIPT = r'''
import json, sys
import guard, layers, project
caffe = guard.import_caffe()
L = caffe.layers
n = caffe.NetSpec()
n.data, n.label = L.Python(module='layers', layer='VOCSegDataLayer', ntop=2,
                           param_str=json.dumps(dict(json.loads(sys.argv[2]), split='val')))
n.score = L.Convolution(n.data, num_output=3, kernel_size=1)
n.loss = L.SoftmaxWithLoss(n.score, n.label, loss_param=dict(normalize=False, ignore_label=255))
open(sys.argv[1], 'w').write(str(n.to_proto()))
try:
    net = caffe.Net(sys.argv[1], caffe.TRAIN)  # loads the first image
    if sys.argv[3] == 'bind':
        print('bound', layers.bind_num_classes(net))
    for _ in range(3):
        net.forward()
        net.backward()
    print('trained')
except project.InputError as e:
    print('error:', e)
'''


@pytest.mark.parametrize('how', ['bind', 'param_str'])
def test_labels_beyond_the_nets_classes_stop_training(root, how):
    """A 3-class net on VOC labels up to 20: Caffe's SoftmaxWithLoss would read outside
    its arrays (segfault, or a loss computed from other memory). The net's class count is
    bound to the data layer (or given as param_str num_classes): an error naming the file.
    Run in a subprocess because without the check Caffe may crash."""
    import subprocess
    import sys
    datasets.make_voc(root, ids=['a', 'b'], size=(6, 7), n_classes=21, split='val')
    params = {} if how == 'bind' else {'num_classes': 3}
    r = subprocess.run([sys.executable, '-c', TRAIN_SCRIPT, str(root / 'n.prototxt'),
                        json.dumps(params), how], capture_output=True, text=True, timeout=120,
                       cwd=project.REPO, env=dict(os.environ, PYTHONPATH=project.REPO))
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr)
    if how == 'bind':
        assert "bound {'label': 3}" in r.stdout
    assert 'error: ' in r.stdout and 'SegmentationClass' in r.stdout, r.stdout
    assert 'are neither a class (0..2)' in r.stdout, r.stdout


# ----------------------------------------------------------------------------- split lists

def _val_list(root, text):
    path = root / VOC / 'ImageSets/Segmentation/val.txt'
    path.write_text(text, encoding='utf-8')
    return path


@pytest.mark.parametrize('bad', ['/etc/passwd', '../SegmentationClass/a', 'x/a', 'a\\b', '.'])
def test_split_ids_that_are_paths_are_refused_naming_the_list_and_line(root, bad):
    """An id becomes file names (and a saved prediction's): a path would reach outside
    the dataset's folders. Refused where the list is read, by every reader of it."""
    datasets.make_voc(root, ids=['a'], size=(4, 4), split='val')
    path = _val_list(root, 'a\n%s\n' % bad)
    with pytest.raises(project.InputError, match=r'val\.txt line 2: .*not a path'):
        layers.split_ids('voc', 'val')
    with pytest.raises(project.InputError, match=r'val\.txt line 2'):
        data_net(root, 'VOCSegDataLayer', {'split': 'val'}, ['data', 'label'])
    with pytest.raises(project.InputError, match=r'line 2'):
        layers.read_split(str(path))


def test_cityscapes_ids_are_city_slash_name_and_no_more(root):
    ids = datasets.make_cityscapes(root, size=(4, 4))
    assert all(i.count('/') == 1 for i in ids)
    assert layers.CityscapesSegDataLayer.ids('val') == ids
    lst = root / 'cityscapes/val.txt'
    for bad in ('../x/y', 'a/b/c', '/abs/x', 'city/..'):
        lst.write_text(ids[0] + '\n' + bad + '\n')
        with pytest.raises(project.InputError, match=r'val\.txt line 2'):
            layers.CityscapesSegDataLayer.ids('val')


def test_split_list_with_a_utf8_bom_reads_its_first_id(root):
    datasets.make_voc(root, ids=['a', 'b'], size=(4, 4), split='val')
    _val_list(root, '\ufeffa\r\nb\r\n')
    assert layers.split_ids('voc', 'val') == ['a', 'b']
    net = data_net(root, 'VOCSegDataLayer', {'split': 'val'}, ['data', 'label'])
    net.forward()  # 'a' is found, not '\ufeffa'


def test_duplicate_split_ids_are_refused_naming_the_list_and_the_id(root):
    datasets.make_voc(root, ids=['a', 'b'], size=(4, 4), split='val')
    _val_list(root, 'a\nb\n\na\n')
    with pytest.raises(project.InputError, match=r"val\.txt line 4: image id 'a' is listed twice "
                                                r"\(first on line 1\)"):
        layers.split_ids('voc', 'val')


def test_wrong_size_label_error_names_the_label_file(root):
    datasets.make_sbdd(root, ids=['a'], size=(4, 4), split='train')
    datasets.make_sbdd(root, ids=['a'], size=(5, 4), split=None, seed=1)
    Image.new('RGB', (4, 4)).save(root / 'sbdd/dataset/img/a.jpg')
    with pytest.raises(project.InputError, match=r'sbdd/dataset/cls/a\.mat.*different sizes'):
        data_net(root, 'SBDDSegDataLayer', {'split': 'train'}, ['data', 'label'])
    # PSPNet's layers: refused before an augmentation would resize one to the other
    ids = datasets.make_ade20k(root, size=(6, 6))
    Image.new('RGB', (5, 6)).save(root / 'ade20k/ADEChallengeData2016/images/validation'
                                  / (ids[0] + '.jpg'))
    for crop in (None, 5):
        with pytest.raises(project.InputError, match=r'annotations/validation/%s\.png: label is 6 x 6 '
                           r'pixels, its image' % ids[0]):
            data_net(root, 'ADE20KSegDataLayer', {'split': 'validation', 'crop': crop,
                                                  'augment': crop is not None},
                     ['data', 'label'])
