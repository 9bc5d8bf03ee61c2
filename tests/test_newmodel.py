"""newmodel.py: the dataset check and `net.py new` on tiny generated datasets.

    .venv/bin/python -m pytest tests/test_newmodel.py -q
"""
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import layers
import models
import net
import netinit
import netload
import newmodel
import project
import surgery
from datasets import OWN_CLASSES, OWN_TRAIN, OWN_VAL, make_own, random_weights, read_rgb

REPO = project.REPO
PY = sys.executable


# the models and datasets a test registers (models.get of a new folder) are forgotten after it
pytestmark = pytest.mark.usefixtures('registry')


def label_values(root, ids):
    values = []
    for i in ids:
        with Image.open(os.path.join(str(root), 'SegmentationClass', i + '.png')) as im:
            values.append(np.array(im).ravel())
    return np.concatenate(values)


# ----------------------------------------------------------------------------- the check

@pytest.mark.parametrize('grayscale', [False, True])
def test_check_clean_dataset_counts_pixels_and_mean(tmp_path, grayscale):
    classes = make_own(tmp_path, grayscale=grayscale)
    report = newmodel.check_dataset(tmp_path, classes, mean=True, progress=False)
    assert report.problems == []
    assert report.classes == list(OWN_CLASSES)
    assert report.splits == {'train': list(OWN_TRAIN), 'val': list(OWN_VAL)}
    for split, ids in (('train', OWN_TRAIN), ('val', OWN_VAL)):
        counts = np.bincount(label_values(tmp_path, ids), minlength=256)
        np.testing.assert_array_equal(report.pixels[split],
                                      list(counts[:len(OWN_CLASSES)]) + [counts[255]])
    rgb = np.concatenate([read_rgb(os.path.join(str(tmp_path), 'JPEGImages', i + '.jpg'))
                          .reshape(-1, 3) for i in OWN_TRAIN])
    np.testing.assert_allclose(report.mean, rgb.mean(axis=0)[::-1], rtol=1e-9)  # B, G, R
    text = '\n'.join(report.lines())
    assert 'no problems' in text and '(void, 255)' in text and 'road' in text


def test_check_names_every_problem_by_file(tmp_path):
    classes = make_own(tmp_path)
    root = str(tmp_path)
    img = lambda i: os.path.join(root, 'JPEGImages', i + '.jpg')
    lab = lambda i: os.path.join(root, 'SegmentationClass', i + '.png')
    with open(os.path.join(root, 'ImageSets', 'Segmentation', 'train.txt'), 'a') as f:
        f.write('ghost\nroad_01\n')                                # no files; listed twice
    open(os.path.join(root, 'ImageSets', 'Segmentation', 'val.txt'), 'w').close()  # empty
    Image.fromarray(np.zeros((5, 5), np.uint8), mode='L').save(lab('orphan'))  # no image
    Image.fromarray(np.zeros((5, 5, 3), np.uint8)).save(img('spare'))  # warning only
    with open(img('road_01'), 'r+b') as f:                            # truncated JPEG
        f.truncate(40)
    Image.fromarray(np.zeros((3, 4), np.uint8), mode='L').save(lab('road_02'))   # wrong size
    h, w = np.array(Image.open(lab('road_03'))).shape
    bad = np.zeros((h, w), np.uint8)
    bad[0, 0], bad[1, 1] = 7, 255                                     # 7 >= 5 classes
    layers.save_label_png(lab('road_03'), bad)
    with open(classes, 'a') as f:
        f.write('car\n')                                              # listed twice

    report = newmodel.check_dataset(root, classes, progress=False)
    problems = '\n'.join(report.problems)
    expected = [
        (img('ghost'), 'not found'), (lab('ghost'), 'not found'),
        ('train.txt', "'road_01' is listed twice"),
        ('val.txt', 'no image ids'),
        (lab('orphan'), 'a label without an image'),
        (img('road_01'), 'not a readable image'),
        (lab('road_02'), '4 x 3 pixels but its image'),
        (lab('road_03'), 'label values 7 beyond the 6 classes'),
        (classes, 'listed twice: car'),
    ]
    for path, what in expected:
        assert any(path in p and what in p for p in report.problems), (path, what, problems)
    assert len(report.problems) == len(expected), problems
    assert any(img('spare') in w for w in report.warnings)


def test_check_rgb_labels_and_missing_folders(tmp_path):
    classes = make_own(tmp_path)
    label = os.path.join(str(tmp_path), 'SegmentationClass', OWN_TRAIN[0] + '.png')
    with Image.open(label) as im:
        im.convert('RGB').save(label)  # a colour-coded label: the layer needs indices
    image = os.path.join(str(tmp_path), 'JPEGImages', OWN_TRAIN[1])
    os.rename(image + '.jpg', image + '.JPG')  # the layer opens <id>.jpg, exactly
    report = newmodel.check_dataset(tmp_path, classes, progress=False)
    assert [p for p in report.problems if label in p and '3 channels' in p]
    assert [p for p in report.problems if p.startswith(image + '.jpg (found %s.JPG' % OWN_TRAIN[1])]
    empty = tmp_path / 'empty'
    empty.mkdir()
    open(empty / 'names.txt', 'w').close()
    report = newmodel.check_dataset(empty, empty / 'names.txt', progress=False)
    for what in ('JPEGImages: folder not found', 'SegmentationClass: folder not found',
                 'train.txt: split list not found', 'val.txt: split list not found',
                 'names.txt: no class names'):
        assert any(what in p for p in report.problems), (what, report.problems)


# ----------------------------------------------------------------------------- the start weights

WIDTHS = (4, 4, 8, 8, 8, 16)  # a narrow VGG16: conv1..conv5, fc6/fc7


@pytest.fixture(scope='module')
def parent(tmp_path_factory):
    """A narrow voc-fcn8s with random weights: (caffemodel path, caffe.Net holding them)."""
    tmp = tmp_path_factory.mktemp('parent')
    deploy = tmp / 'deploy.prototxt'
    deploy.write_text(str(net.build_net('voc-fcn8s', 'deploy', widths=WIDTHS)))
    path = random_weights(deploy, tmp / 'narrow-fcn8s.caffemodel', seed=3)
    return path, netload.open_net(deploy, 'test', path)


def start(parent, head, classes, tmp_path):
    """(StartReport, caffe.Net of the new deploy net with its start weights) of a narrow
    FCN-`head` for `classes` started from `parent`."""
    param = net.voc_fcn(head.split('-')[0], 'deploy', num_classes=len(classes), widths=WIDTHS,
                        at_once=head.endswith('-atonce'))
    out = str(tmp_path / 'init.caffemodel')
    report = newmodel.start_weights(param, net.build_net('voc-fcn8s', 'deploy', widths=WIDTHS),
                                    parent[0], list(classes), models.VOC_CLASSES, out)
    deploy = tmp_path / 'new.prototxt'
    deploy.write_text(str(param))
    return report, netload.open_net(deploy, 'test', out)


def test_weights_widths_read_from_the_parent(parent):
    assert newmodel.weights_widths(parent[0]) == WIDTHS


def test_start_copies_trunk_and_classes_by_name(parent, tmp_path):
    classes = ['background', 'road', 'Car', 'person', 'tv monitor']  # 0, new, 7, 15, 20
    report, new = start(parent, '8s', classes, tmp_path)
    old = parent[1]
    for layer in ('conv1_1', 'conv3_2', 'conv5_3', 'fc6', 'fc7'):
        for a, b in zip(new.params[layer], old.params[layer]):
            np.testing.assert_array_equal(a.data, b.data)
    for layer in ('score_fr', 'score_pool4', 'score_pool3'):
        for blob_new, blob_old in zip(new.params[layer], old.params[layer]):
            for k, j in ((0, 0), (2, 7), (3, 15), (4, 20)):
                np.testing.assert_array_equal(blob_new.data[k], blob_old.data[j])
            assert not blob_new.data[1].any()  # road: new, at zero as the paper starts them
    up = new.params['upscore8'][0].data
    np.testing.assert_allclose(up[1, 1], surgery.upsample_filt(16))
    assert not up[0, 1].any()
    text = '\n'.join(report.lines())
    assert 'Car (score_fr output 7)' in text and 'fresh at zero: road' in text
    assert 'copying conv1_1[0]' in text and 'trunk: 30 parameter blobs copied' in text


def test_start_expands_when_the_parent_classes_come_first(parent, tmp_path):
    classes = list(models.VOC_CLASSES) + ['road']
    report, new = start(parent, '16s', classes, tmp_path)
    for layer in ('score_fr', 'score_pool4'):
        w_new, w_old = new.params[layer][0].data, parent[1].params[layer][0].data
        np.testing.assert_array_equal(w_new[:21], w_old)
        assert not w_new[21].any()
    assert 'score_pool3' not in new.params
    assert any('outputs 0..20 of score_fr (the parent\'s classes); fresh at zero: road' in line
               for line in report.heads)


def test_start_at_once_from_staged_leaves_skips_fresh(parent, tmp_path):
    report, new = start(parent, '8s-atonce', models.VOC_CLASSES, tmp_path)
    np.testing.assert_array_equal(new.params['score_fr'][0].data, parent[1].params['score_fr'][0].data)
    assert not new.params['score_pool4'][0].data.any() and not new.params['score_pool3'][0].data.any()
    assert new.params['scale_pool4'][0].data.ravel()[0] == pytest.approx(0.01)
    assert any('another scale' in line for line in report.heads)


def test_start_from_sift_flow_reads_its_semantic_head(tmp_path):
    deploy = tmp_path / 'siftflow.prototxt'
    deploy.write_text(str(net.build_net('siftflow-fcn16s', 'deploy', widths=WIDTHS)))
    weights = random_weights(deploy, tmp_path / 'siftflow.caffemodel')
    old = netload.open_net(deploy, 'test', weights)
    spec, _, classes, suffix = newmodel.parent_of('siftflow-fcn16s')
    assert suffix == '_sem' and classes[27] == 'sky'
    param = net.voc_fcn('16s', 'deploy', num_classes=2, widths=WIDTHS)
    report = newmodel.start_weights(param, net.build_net(spec, 'deploy', widths=WIDTHS), weights,
                                    ['background', 'sky'], classes, str(tmp_path / 'init.caffemodel'),
                                    suffix)
    (tmp_path / 'new.prototxt').write_text(str(param))
    new = netload.open_net(tmp_path / 'new.prototxt', 'test', str(tmp_path / 'init.caffemodel'))
    for layer in ('score_fr', 'score_pool4'):
        np.testing.assert_array_equal(new.params[layer][0].data[1], old.params[layer + '_sem'][0].data[27])
        assert not new.params[layer][0].data[0].any()
    assert 'sky (score_fr_sem output 27)' in '\n'.join(report.heads)


# ----------------------------------------------------------------------------- the command

def run(*args):
    return subprocess.run([PY] + [str(a) for a in args], capture_output=True, text=True,
                          cwd=str(REPO), timeout=300)


def new(name, data, classes, *flags):
    return run(os.path.join(REPO, 'net.py'), 'new', name, '--data', data, '--classes', classes, *flags)


def test_new_model_end_to_end(parent, tmp_path):
    """net.py new from a narrow parent, then solve.py, score.py and infer.py on it."""
    data = tmp_path / 'roads'
    classes = make_own(data, classes=('background', 'road', 'car'))
    folder = tmp_path / 'models' / 'my-roads'
    r = new('my-roads', data, classes, '--from', 'voc-fcn8s', '--parent-weights', parent[0],
            '--out', folder, '--head', '16s', '--rounds', '1', '--iters', '2')
    assert r.returncode == 0, r.stderr
    assert 'copied score_fr: background (score_fr output 0), car (score_fr output 7); fresh at zero: road' in r.stdout
    assert sorted(os.listdir(folder)) == sorted(
        ['model.json', 'train.prototxt', 'val.prototxt', 'deploy.prototxt', 'solver.prototxt',
         'solve.py', 'classes.txt', 'init.caffemodel', 'init-report.txt', 'data-report.txt'])
    spec = models.get(str(folder))  # the registry finds it by its folder
    assert (spec.name, spec.head, spec.schedule.total) == ('my-roads', '16s', 2)
    assert spec.data.classes == ('background', 'road', 'car')
    assert spec.data.split('train').dirs == (('voc_dir', str(data)),)  # data not copied
    val = netinit.read_net_param(folder / 'val.prototxt')
    assert '"voc_dir": "%s"' % data in val.layer[0].python_param.param_str
    assert net.build_net(spec, 'deploy').layer[-1].name == 'score'
    assert (spec.init, spec.parent_text()) == ('file', 'init.caffemodel in its folder')
    image = data / 'JPEGImages' / (OWN_VAL[0] + '.jpg')
    r = run(os.path.join(REPO, 'infer.py'), image, '--model', folder, '--out', tmp_path / 'none')
    assert r.returncode == 1 and r.stderr.strip() == (
        'error: my-roads: not trained yet (no good snapshot in %s); train it with `python %s` '
        'or pass --weights FILE' % (folder / 'snapshot', folder / 'solve.py')), r.stderr

    r = run(folder / 'solve.py', '--rounds', '1', '--iters', '2')
    assert r.returncode == 0, r.stdout + r.stderr
    assert 'starting from %s' % (folder / 'init.caffemodel') in r.stdout
    snap = folder / 'snapshot' / 'train_iter_2.caffemodel'
    r = run(os.path.join(REPO, 'score.py'), '--model', folder, '--weights', snap,
            '--out', tmp_path / 'scores.json')
    assert r.returncode == 0, r.stderr
    assert '(2 images)' in r.stdout
    r = run(os.path.join(REPO, 'infer.py'), image, '--model', folder, '--weights', snap,
            '--out', tmp_path / 'seg')
    assert r.returncode == 0, r.stderr
    shares = r.stdout.strip().rsplit(': ', 1)[1]  # e.g. "road 100.0%": model.json's names
    assert shares.split()[0] in ('background', 'road', 'car'), r.stdout
    with Image.open(tmp_path / 'seg' / (OWN_VAL[0] + '.png')) as im:
        assert im.size == Image.open(image).size and np.array(im).max() < 3
        given = np.array(im)
    # without --weights: the model's latest good snapshot (the release never had it)
    r = run(os.path.join(REPO, 'infer.py'), image, '--model', folder, '--out', tmp_path / 'own')
    assert r.returncode == 0, r.stderr
    with Image.open(tmp_path / 'own' / (OWN_VAL[0] + '.png')) as im:
        assert (np.array(im) == given).all()


def test_new_from_the_cast_vgg16_computed_mean(tmp_path):
    deploy = tmp_path / 'trunk.prototxt'
    deploy.write_text(str(surgery.fcn_trunk_param('vgg16', WIDTHS)))
    cast = random_weights(deploy, tmp_path / 'vgg16-fcn.caffemodel')
    classes = make_own(tmp_path / 'data')
    folder = tmp_path / 'cast'
    r = new('cast', tmp_path / 'data', classes, '--from', 'vgg16', '--parent-weights', cast,
            '--out', folder, '--mean', 'computed')
    assert r.returncode == 0, r.stderr
    assert 'fresh score_pool3: all 5 outputs at zero (the parent has no score_pool3)' in r.stdout
    spec = models.get(str(folder))
    report = newmodel.check_dataset(tmp_path / 'data', classes, mean=True, progress=False)
    assert spec.data.mean == pytest.approx(report.mean)
    assert spec.build_kwargs()['at_once'] and spec.schedule == models.get('voc-fcn8s-atonce').schedule


def test_new_refuses_without_making_anything(parent, tmp_path):
    classes = make_own(tmp_path / 'data')
    label = tmp_path / 'data' / 'SegmentationClass' / (OWN_TRAIN[1] + '.png')
    Image.fromarray(np.zeros((3, 4), np.uint8), mode='L').save(label)
    folder = tmp_path / 'bad'
    r = new('bad', tmp_path / 'data', classes, '--from', 'voc-fcn8s', '--parent-weights',
            parent[0], '--out', folder)
    assert r.returncode == 1 and 'Traceback' not in r.stderr
    assert 'problem: %s: 4 x 3 pixels' % label in r.stdout
    assert r.stderr.strip().splitlines()[-1].endswith('1 problem(s) in the dataset (listed above); nothing made')
    assert not folder.exists() and not [p for p in os.listdir(tmp_path) if p.startswith('.bad')]
    r = new('bad', tmp_path / 'data', classes, '--check-only')
    assert r.returncode == 1 and 'problem: %s' % label in r.stdout and not folder.exists()

    folder.mkdir()
    (folder / 'notes.txt').write_text('mine')
    classes = make_own(tmp_path / 'good')
    r = new('bad', tmp_path / 'good', classes, '--from', 'voc-fcn8s', '--parent-weights',
            parent[0], '--out', folder)
    assert r.returncode == 1 and 'already exists' in r.stderr and os.listdir(folder) == ['notes.txt']
    for flags, message in ((['--from', 'nope'], "unknown model 'nope'"),
                           (['--from', 'voc-fcn-alexnet'], 'not supported'),
                           (['--from', 'nyud-fcn32s-color-hha'], 'one RGB input')):
        r = new('other', tmp_path / 'good', classes, *flags)
        assert r.returncode == 1 and message in r.stderr, r.stderr
    r = new('voc-fcn8s', tmp_path / 'good', classes, '--from', 'voc-fcn8s')
    assert r.returncode == 1 and 'exists; pick another name' in r.stderr


def test_data_inside_the_repository_is_recorded_relative_to_its_data_root():
    assert newmodel.data_dir_param(os.path.join(REPO, 'data', 'roads')) == 'roads'
    assert newmodel.data_dir_param('/elsewhere/roads') == '/elsewhere/roads'


# ----------------------------------------------------------------------------- hostile inputs

def test_blank_line_inside_the_class_list_is_refused_naming_the_line(tmp_path):
    """Skipping it shifted every later name onto the next class: refused by the data
    check and by infer's reader alike (a BOM and blank lines at the end are fine)."""
    import infer
    classes = make_own(tmp_path)
    names = list(OWN_CLASSES)
    with open(classes, 'w', encoding='utf-8') as f:
        f.write('\ufeff' + '\n'.join(names[:2]) + '\n\n' + '\n'.join(names[2:]) + '\n')
    with pytest.raises(project.InputError, match=r'classes\.txt line 3: blank'):
        infer.read_classes(classes)
    report = newmodel.check_dataset(tmp_path, classes, progress=False)
    assert any(classes in p and 'line 3: blank' in p for p in report.problems), report.problems
    with open(classes, 'w', encoding='utf-8') as f:
        f.write('\ufeff' + '\n'.join(names) + '\n\n\n')
    assert infer.read_classes(classes) == names
    assert newmodel.check_dataset(tmp_path, classes, progress=False).problems == []


def test_split_lists_with_paths_duplicates_and_a_bom(tmp_path):
    """The data check reads the lists by the data layer's rules (layers.split_entries)."""
    classes = make_own(tmp_path)
    lists = tmp_path / 'ImageSets' / 'Segmentation'
    train = (lists / 'train.txt').read_text().split()
    (lists / 'train.txt').write_text('\ufeff' + '\n'.join(train) + '\n', encoding='utf-8')
    assert newmodel.check_dataset(tmp_path, classes, progress=False).problems == []
    (lists / 'train.txt').write_text('\n'.join(train + ['../../etc/x', '/abs', train[0]]) + '\n')
    problems = newmodel.check_dataset(tmp_path, classes, progress=False).problems
    n = len(train)
    for line, what in ((n + 1, 'not a path'), (n + 2, 'not a path'), (n + 3, 'listed twice')):
        assert any('train.txt line %d: ' % line in p and what in p for p in problems), problems
    assert len(problems) == 3, problems


@pytest.mark.parametrize('kind', ['float-tiff', 'negative', 'int32-huge'])
def test_check_float_or_negative_label_is_a_problem_not_a_traceback(tmp_path, kind):
    classes = make_own(tmp_path)
    label = os.path.join(str(tmp_path), 'SegmentationClass', OWN_TRAIN[0] + '.png')
    h, w = np.array(Image.open(label)).shape
    if kind == 'float-tiff':  # a float TIFF under the label's name (PIL reads by content)
        Image.fromarray(np.full((h, w), 1.5, np.float32), mode='F').save(label, format='TIFF')
    else:
        values = np.zeros((h, w), np.int32)
        values[0, 0] = -3 if kind == 'negative' else 2 ** 31 - 1
        Image.fromarray(values, mode='I').save(label, format='TIFF')
    report = newmodel.check_dataset(tmp_path, classes, progress=False)
    want = 'float32 values' if kind == 'float-tiff' else 'outside 0..255'
    assert [p for p in report.problems if label in p and want in p], report.problems
    r = run(os.path.join(REPO, 'net.py'), 'new', 'x', '--data', tmp_path, '--classes', classes,
            '--check-only')
    assert r.returncode == 1 and 'Traceback' not in r.stderr and label in r.stdout, r.stderr


def test_iterations_beyond_caffes_int32_are_refused_before_anything_is_made(parent, tmp_path):
    classes = make_own(tmp_path / 'data')
    for flags in (['--iters', str(10 ** 20)], ['--rounds', '3', '--iters', str(2 ** 30)]):
        r = new('big', tmp_path / 'data', classes, '--from', 'voc-fcn8s', '--parent-weights',
                parent[0], '--out', tmp_path / 'big', *flags)
        assert r.returncode == 1 and 'Traceback' not in r.stderr, r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and '--iters' in lines[0] and '2147483647' in lines[0], lines
        assert not (tmp_path / 'big').exists()


def test_solve_py_finds_a_moved_repository(tmp_path):
    """A model made outside the repository records its path; after a move or a fresh
    clone elsewhere, $FCN_REPO (or a clone above the folder) is used instead, and with
    neither the error is one line saying what to set."""
    folder = tmp_path / 'mine'
    folder.mkdir()
    (folder / 'solve.py').write_text(net.solve_py(None, 'Train mine.', str(tmp_path / 'moved-away')))
    env = {k: v for k, v in os.environ.items() if k != 'FCN_REPO'}
    r = subprocess.run([PY, str(folder / 'solve.py'), '--help'], capture_output=True, text=True,
                       env=env, cwd='/', timeout=120)
    assert r.returncode == 1 and 'Traceback' not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and 'set FCN_REPO' in lines[0] and 'moved-away' in lines[0], lines
    r = subprocess.run([PY, str(folder / 'solve.py'), '--help'], capture_output=True, text=True,
                       env=dict(env, FCN_REPO=REPO), cwd='/', timeout=120)
    assert r.returncode == 0 and 'usage' in r.stdout, r.stderr
