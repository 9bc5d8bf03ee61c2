"""score.py against hostile inputs: a training split (whose layer default is random
draws), more classes than a palette holds, PSPNet annotations of another size than their
image, an --out naming one of the run's inputs. Real Caffe nets on tiny generated
datasets (tests/datasets.py)."""
import json

import numpy as np
import pytest
from PIL import Image

import datasets  # tests/datasets.py
import guard
import project
import score
from test_pspnet_eval import narrow_pspnet

caffe = guard.import_caffe()
L = caffe.layers
IDS = ('a0', 'a1', 'a2', 'a3', 'a4', 'a5')
SIZES = [(9, 11), (12, 7), (10, 10), (8, 13), (11, 9), (7, 12)]  # each image its own size


def label_model(tmp_path, voc_dir, classes=3, split='seg11valid'):
    """A model folder whose val net scores `score` = a 1 x 1 convolution of the label
    itself, so each image's prediction is known; returns (folder, weights). By default
    class c scores 0.5 c x + 0.3 c - c^2 / 2 for label x (labels 0, 1, 2 -> 0, 1, 1)."""
    n = caffe.NetSpec()
    n.data, n.label = L.Python(module='layers', layer='VOCSegDataLayer', ntop=2,
                               param_str=json.dumps({'voc_dir': str(voc_dir), 'split': split}))
    n.score = L.Convolution(n.label, num_output=classes, kernel_size=1)
    n.loss = L.SoftmaxWithLoss(n.score, n.label, loss_param=dict(ignore_label=255))
    n.silence = L.Silence(n.data, ntop=0)
    folder = tmp_path / 'model'
    folder.mkdir()
    (folder / 'val.prototxt').write_text(str(n.to_proto()))
    (folder / 'deploy.prototxt').write_text('# the model\'s deploy net\n')
    net = caffe.Net(str(folder / 'val.prototxt'), caffe.TEST)
    c = np.arange(classes, dtype=np.float32)
    net.params['score'][0].data[:, 0, 0, 0] = 0.5 * c
    net.params['score'][1].data[...] = 0.3 * c - c ** 2 / 2
    weights = str(tmp_path / 'w.caffemodel')
    net.save(weights)
    return folder, weights


def known_prediction(gt):
    c = np.arange(3)
    return (c[:, None, None] * (0.5 * gt + 0.3)[None] - (c ** 2 / 2)[:, None, None]).argmax(0)


@pytest.fixture
def voc(tmp_path):
    root = tmp_path / 'data'
    datasets.make_voc(root, ids=IDS, size=SIZES, n_classes=3, split='train')
    datasets.make_voc(root, ids=IDS, size=SIZES, n_classes=3, split='seg11valid')
    return root / 'pascal' / 'VOC2011'


def test_a_training_split_is_scored_in_order_each_image_once(tmp_path, voc):
    """--split train (its layer's default: random draws with replacement): every image
    is scored once, in the list's order, and each prediction saved under its own id."""
    folder, weights = label_model(tmp_path, voc)
    pred, out = tmp_path / 'pred', tmp_path / 'scores.json'
    assert score.main(['--model', str(folder), '--weights', weights, '--split', 'train',
                       '--save-pred', str(pred), '--out', str(out), '--quiet']) == 0
    record = json.loads(out.read_text())
    assert record['split'] == 'train' and record['images'] == len(IDS)
    pixels = 0
    for idx in IDS:
        gt = np.asarray(Image.open(voc / 'SegmentationClass' / (idx + '.png')))
        np.testing.assert_array_equal(np.asarray(Image.open(pred / (idx + '.png'))),
                                      known_prediction(gt))
        pixels += int((gt != 255).sum())
    assert record['pixels'] == pixels


def test_a_net_of_300_classes_saves_class_299_as_299(tmp_path, voc):
    """--save-pred of a 300-class net: class 299 is saved as 299 (a 16-bit PNG), not cut
    to 8 bits (43)."""
    folder, weights = label_model(tmp_path, voc, classes=300)
    net = caffe.Net(str(folder / 'val.prototxt'), weights, caffe.TEST)
    net.params['score'][1].data[299] = 1000.0
    net.save(weights)
    pred = tmp_path / 'pred'
    assert score.main(['--model', str(folder), '--weights', weights, '--limit', '2',
                       '--save-pred', str(pred), '--quiet']) == 0
    for idx in IDS[:2]:
        saved = Image.open(pred / (idx + '.png'))
        assert saved.mode == 'I;16' and (np.asarray(saved) == 299).all()


def test_out_never_replaces_an_input_of_the_run(tmp_path, voc):
    """--out naming the model's deploy.prototxt (or another prototxt of it), the val net,
    the weights or the split list is refused before scoring, the file unchanged."""
    folder, weights = label_model(tmp_path, voc)
    inputs = [folder / 'deploy.prototxt', folder / 'val.prototxt', weights,
              voc / 'ImageSets' / 'Segmentation' / 'seg11valid.txt']
    for path in inputs:
        before = open(path, 'rb').read()
        with pytest.raises(project.InputError, match='refusing to write'):
            score.main(['--model', str(folder), '--weights', weights, '--out', str(path),
                        '--quiet'])
        assert open(path, 'rb').read() == before, path


def test_pspnet_deploy_is_never_replaced_by_out(tmp_path, monkeypatch):
    monkeypatch.setenv('FCN_DATA_ROOT', str(tmp_path))
    datasets.make_ade20k(tmp_path)
    deploy, weights = narrow_pspnet(tmp_path)
    before = open(deploy, 'rb').read()
    with pytest.raises(project.InputError, match='refusing to write'):
        score.main(['--model', 'pspnet50-ade20k', '--weights', weights, '--deploy', deploy,
                    '--base-size', '60', '--quiet', '--out', deploy])
    assert open(deploy, 'rb').read() == before


def test_pspnet_annotation_of_another_size_is_refused_naming_it(tmp_path, monkeypatch):
    """A sliding-window model's scoring compares a label with its image's prediction: an
    annotation of another size than its image is an error naming the label file."""
    monkeypatch.setenv('FCN_DATA_ROOT', str(tmp_path))
    ids = datasets.make_ade20k(tmp_path)
    label = tmp_path / 'ade20k/ADEChallengeData2016/annotations/validation' / (ids[1] + '.png')
    im = Image.open(label)
    im.resize((im.size[0] + 3, im.size[1]), Image.NEAREST).save(label)
    deploy, weights = narrow_pspnet(tmp_path)
    with pytest.raises(project.InputError) as e:
        score.main(['--model', 'pspnet50-ade20k', '--weights', weights, '--deploy', deploy,
                    '--base-size', '60', '--quiet'])
    assert str(label) in str(e.value) and 'pixels' in str(e.value)


def test_evaluate_walks_a_drawing_layer_in_order(tmp_path, voc):
    """score.evaluate on a net opened by anyone, its layer on a training split: the layer
    is made to walk the list in order from its first id."""
    folder, weights = label_model(tmp_path, voc, split='train')
    net = caffe.Net(str(folder / 'val.prototxt'), weights, caffe.TEST)
    pred = tmp_path / 'pred'
    score.evaluate(net, IDS, save_dir=str(pred), progress=False)
    for idx in IDS:
        gt = np.asarray(Image.open(voc / 'SegmentationClass' / (idx + '.png')))
        np.testing.assert_array_equal(np.asarray(Image.open(pred / (idx + '.png'))),
                                      known_prediction(gt))


def test_a_broken_dataset_image_is_one_line_naming_it(tmp_path, voc):
    """Whatever Pillow raises on a broken file (here ValueError from a PPM header) is an
    InputError naming the file where dataset images are read."""
    import layers
    bad = voc / 'JPEGImages' / (IDS[0] + '.jpg')
    bad.write_bytes(b'P6\n3 x\n255\nabc')
    with pytest.raises(project.InputError, match='%s is not a readable image' % bad):
        layers.read_image(str(bad))
