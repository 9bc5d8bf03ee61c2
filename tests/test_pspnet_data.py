"""PSPNet's data layers (ADE20K, Cityscapes, VOC 2012) and their list scripts, on tiny
datasets in the real formats; the training augmentation's geometry and determinism."""
import os

import numpy as np
import pytest
from PIL import Image

import datasets  # tests/datasets.py
import layers
import project
from test_data_scripts import load_script
from test_layers import data_net, expected_image

ADE = 'ade20k/ADEChallengeData2016'
# PSPNet's mean as the paper's release gives it, in RGB
MEAN_RGB = (123.68, 116.779, 103.939)


def test_psp_mean_is_the_release_rgb_mean_in_bgr_order():
    assert layers.PSP_MEAN == MEAN_RGB[::-1]


# ----------------------------------------------------------------------------- ADE20K

def test_ade20k_whole_images_labels_shifted_void_255(root):
    ids = datasets.make_ade20k(root)
    net = data_net(root, 'ADE20KSegDataLayer', {'split': 'validation'}, ['data', 'label'])
    for n, idx in enumerate(ids):
        net.forward()
        data, label = net.blobs['data'].data[0], net.blobs['label'].data[0, 0]
        assert data.shape == (3,) + datasets.SIZES[n % 2]
        jpg = root / ADE / 'images/validation' / (idx + '.jpg')
        np.testing.assert_allclose(data, expected_image(jpg, MEAN_RGB[::-1]), atol=1e-4)
        png = np.array(Image.open(root / ADE / 'annotations/validation' / (idx + '.png')))
        want = np.where(png == 0, 255, png.astype(int) - 1)
        np.testing.assert_array_equal(label, want)
        assert label[0, 0] == 255 and label[-1, -1] == 149


def test_ade20k_label_beyond_150_is_an_error_naming_the_file(root):
    datasets.make_ade20k(root, ids=['ADE_val_00000009'])
    png = root / ADE / 'annotations/validation/ADE_val_00000009.png'
    label = np.array(Image.open(png))
    label[3, 3] = 151
    Image.fromarray(label).save(png)
    with pytest.raises(project.InputError, match='ADE_val_00000009.png.*151'):
        data_net(root, 'ADE20KSegDataLayer', {'split': 'validation'}, ['data', 'label'])


# ----------------------------------------------------------------------------- Cityscapes

# Cityscapes' definition, a few entries typed here independently of layers.py
TRAIN_IDS = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10,
             24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}


def test_cityscapes_label_ids_to_the_19_train_ids(root):
    ids = datasets.make_cityscapes(root)
    net = data_net(root, 'CityscapesSegDataLayer', {'split': 'val'}, ['data', 'label'])
    for n, idx in enumerate(ids):
        net.forward()
        png = root / 'cityscapes/leftImg8bit/val' / (idx + '_leftImg8bit.png')
        np.testing.assert_allclose(net.blobs['data'].data[0],
                                   expected_image(png, MEAN_RGB[::-1]), atol=1e-4)
        label_ids = np.array(Image.open(root / 'cityscapes/gtFine/val' /
                                        (idx + '_gtFine_labelIds.png')))
        want = np.vectorize(lambda v: TRAIN_IDS.get(int(v), 255))(label_ids)
        np.testing.assert_array_equal(net.blobs['label'].data[0, 0], want)
    assert layers.CITYSCAPES_CLASSES[0] == 'road' and layers.CITYSCAPES_CLASSES[-1] == 'bicycle'
    assert len(layers.CITYSCAPES_CLASSES) == len(layers.CITYSCAPES_PALETTE) == 19
    lut = layers.cityscapes_train_ids()
    assert {i: int(lut[i]) for i in range(256) if lut[i] != 255} == TRAIN_IDS


def test_cityscapes_undefined_label_id_is_an_error(root):
    idx = 'lindau/lindau_000000_000019'
    datasets.make_cityscapes(root, ids=[idx])
    png = root / 'cityscapes/gtFine/val' / (idx + '_gtFine_labelIds.png')
    label = np.array(Image.open(png))
    label[2, 2] = 40
    Image.fromarray(label).save(png)
    with pytest.raises(project.InputError, match='labelIds.png.*40'):
        data_net(root, 'CityscapesSegDataLayer', {'split': 'val'}, ['data', 'label'])


# ----------------------------------------------------------------------------- VOC 2012

def test_voc2012_psp_mean_and_labels_as_stored(root):
    ids = datasets.make_voc(root, voc_dir='pascal/VOC2012', split='val')
    net = data_net(root, 'VOC2012PSPSegDataLayer', {'split': 'val'}, ['data', 'label'])
    assert layers.split_ids('voc2012') == ids
    net.forward()
    jpg = root / 'pascal/VOC2012/JPEGImages' / (ids[0] + '.jpg')
    np.testing.assert_allclose(net.blobs['data'].data[0], expected_image(jpg, MEAN_RGB[::-1]),
                               atol=1e-4)
    png = np.array(Image.open(root / 'pascal/VOC2012/SegmentationClass' / (ids[0] + '.png')))
    np.testing.assert_array_equal(net.blobs['label'].data[0, 0], png)


# ----------------------------------------------------------------------------- augmentation

def train_net(root, seed=1, crop=33, **extra):
    params = dict({'split': 'training', 'crop': crop, 'seed': seed}, **extra)
    return data_net(root, 'ADE20KSegDataLayer', params, ['data', 'label'], 'train')


def draws(net, n):
    out = []
    for _ in range(n):
        net.forward()
        out.append((net.blobs['data'].data.copy(), net.blobs['label'].data.copy()))
    return out


def test_training_crops_are_deterministic_for_a_seed_and_resume_exactly(root):
    datasets.make_ade20k(root, split='training', size=[(37, 53), (41, 29), (20, 25)])
    a, b = draws(train_net(root), 6), draws(train_net(root), 6)
    for (da, la), (db, lb) in zip(a, b):
        assert da.shape == (1, 3, 33, 33) and la.shape == (1, 1, 33, 33)
        np.testing.assert_array_equal(da, db)
        np.testing.assert_array_equal(la, lb)
    other = draws(train_net(root, seed=2), 6)
    assert any(not np.array_equal(x[0], y[0]) for x, y in zip(a, other))
    # two draws of one image differ (a fresh augmentation each forward)
    assert len({d.tobytes() for d, _ in a}) == 6
    resumed = train_net(root)
    resumed.layers[0].seek(4)
    for (d, l), (dr, lr) in zip(a[4:], draws(resumed, 2)):
        np.testing.assert_array_equal(d, dr)
        np.testing.assert_array_equal(l, lr)


def test_each_forward_augments_afresh_even_the_same_image(root):
    datasets.make_ade20k(root, ids=['ADE_train_00000001'], split='training')
    (d1, l1), (d2, l2) = draws(train_net(root), 2)
    assert not np.array_equal(d1, d2)


def test_augment_identity_when_every_range_is_empty():
    rng = np.random.default_rng(0)
    image = rng.normal(size=(12, 9, 3)).astype(np.float32)
    label = rng.integers(0, 5, (12, 9)).astype(np.uint8)
    out, lab = layers.psp_augment(image, label, rng, 12, scale=(1, 1), rotate=0, blur=False,
                                  mirror=False)
    # padded to 12 x 12 with the mean (0) and void; only the x offset 0 fits the image...
    np.testing.assert_array_equal(out[:, :9], image)
    np.testing.assert_array_equal(lab[:, :9], label)
    assert (out[:, 9:] == 0).all() and (lab[:, 9:] == 255).all()


def halves(h=40, w=60):
    """An image whose left half is 50 (class 1), right half 0 (class 0)."""
    image = np.zeros((h, w, 3), np.float32)
    image[:, :w // 2] = 50
    return image, (image[:, :, 0] > 0).astype(np.uint8)


def augment_many(n, seed, **kwargs):
    rng = np.random.default_rng(seed)
    image, label = halves()
    return [layers.psp_augment(image, label, rng, 60, **kwargs) for _ in range(n)]


def test_augment_mirrors_half_the_images():
    outs = augment_many(40, 1, scale=(1, 1), rotate=0, blur=False)
    mirrored = sum(int(lab[0, 0] == 0) for _, lab in outs)  # class 1 moved to the right
    assert 8 < mirrored < 32
    for out, lab in outs:  # the image moves with its label
        assert ((out[:40, :, 0] > 0) == (lab[:40] == 1)).all()


def test_augment_blurs_half_the_images_with_a_5x5_kernel():
    outs = augment_many(40, 2, scale=(1, 1), rotate=0, mirror=False)
    edge = [out[:40, :, 0] for out, _ in outs]
    blurred = [e for e in edge if not np.isin(e, [0, 50]).all()]
    assert 8 < len(blurred) < 32
    for e in blurred:  # a 5 x 5 kernel reaches 2 pixels across the edge at x = 30, no more
        assert np.isin(e[:, :28], [50]).all() and np.isin(e[:, 32:], [0]).all()


def test_augment_resizes_within_the_scale_range():
    rows = [int((lab != 255).any(axis=1).sum())
            for _, lab in augment_many(60, 3, rotate=0, blur=False, mirror=False)]
    # 40 rows scaled by 0.5 .. 2: 20 .. 80 rows, the crop keeps at most 60
    assert min(rows) >= 20 and max(rows) == 60
    assert min(rows) < 30 and sum(r < 40 for r in rows) > 10


def boundary_tilt(lab):
    """Horizontal shift of the class 1 / class 0 boundary between rows 10 and 30."""
    cols = [np.flatnonzero(lab[y] == 0)[0] for y in (10, 30)]
    return abs(int(cols[1]) - int(cols[0]))


def test_augment_rotates_within_the_angle_range_and_voids_the_corners():
    outs = augment_many(40, 4, scale=(1, 1), blur=False, mirror=False, rotate=10)
    tilts = [boundary_tilt(lab) for _, lab in outs]
    assert max(tilts) <= 20 * np.tan(np.radians(10)) + 1.5 and max(tilts) >= 2
    assert all(lab[0, 0] == 255 and out[0, 0, 0] == 0 for out, lab in outs if boundary_tilt(lab))
    wide = [boundary_tilt(lab) for _, lab in augment_many(40, 4, scale=(1, 1), blur=False,
                                                          mirror=False, rotate=40)]
    assert max(wide) > 20 * np.tan(np.radians(10)) + 1.5


def test_fit_crop_for_the_val_net_is_resized_and_padded(root):
    datasets.make_ade20k(root, size=(20, 40))
    net = data_net(root, 'ADE20KSegDataLayer', {'split': 'validation', 'crop': 30},
                   ['data', 'label'])
    net.forward()
    data, label = net.blobs['data'].data[0], net.blobs['label'].data[0, 0]
    assert data.shape == (3, 30, 30)
    assert (label[15:] == 255).all() and (data[:, 15:] == 0).all()
    assert (label[:15] != 255).mean() > 0.9


def test_bad_augmentation_params_are_value_errors(root):
    datasets.make_ade20k(root, split='training')
    with pytest.raises(ValueError, match='augment needs a crop'):
        data_net(root, 'ADE20KSegDataLayer', {'split': 'training', 'augment': True},
                 ['data', 'label'], 'train')
    with pytest.raises(ValueError, match='scale must be'):
        train_net(root, scale=[2, 1])
    with pytest.raises(ValueError, match='crop must be'):
        train_net(root, crop=0)


# ----------------------------------------------------------------------------- list scripts

def test_ade20k_splits_script(root):
    train = ['ADE_train_00000002', 'ADE_train_00000001']
    datasets.make_ade20k(root, ids=train, split='training', write_list=False)
    script = load_script('data/ade20k/splits.py')
    with pytest.raises(project.InputError, match='images/validation'):
        script.main(['--no-check'])
    datasets.make_ade20k(root, ids=['ADE_val_00000001'], write_list=False)
    with pytest.raises(project.InputError, match='expected 20210 .*nothing written'):
        script.main([])
    assert not (root / ADE / 'training.txt').exists()
    assert script.main(['--no-check']) == 0
    assert (root / ADE / 'training.txt').read_text() == 'ADE_train_00000001\nADE_train_00000002\n'
    assert layers.split_ids('ade20k') == ['ADE_val_00000001']
    os.remove(root / ADE / 'annotations/validation/ADE_val_00000001.png')
    with pytest.raises(project.InputError, match='annotation missing'):
        script.main(['--no-check'])


def test_cityscapes_splits_script(root):
    datasets.make_cityscapes(root, write_list=False)
    script = load_script('data/cityscapes/splits.py')
    with pytest.raises(project.InputError, match='leftImg8bit/train'):
        script.main(['--no-check'])
    datasets.make_cityscapes(root, ids=['aachen/aachen_000001_000019'], split='train',
                             size=(5, 7), write_list=False)
    with pytest.raises(project.InputError, match='expected 2975 .*nothing written'):
        script.main([])
    assert script.main(['--no-check']) == 0
    assert (root / 'cityscapes/train.txt').read_text() == 'aachen/aachen_000001_000019\n'
    assert layers.split_ids('cityscapes') == sorted(datasets.CITYSCAPES_IDS)
    assert not (root / 'cityscapes/test.txt').exists()
    os.remove(root / 'cityscapes/gtFine/train/aachen/aachen_000001_000019_gtFine_labelIds.png')
    with pytest.raises(project.InputError, match='labelIds PNG missing'):
        script.main(['--no-check'])


# ----------------------------------------------------------------------------- batch_size

def forwards(net, n):
    """The tops of `n` forwards, one (data, label) pair of arrays each."""
    return [(d.copy(), l.copy()) for d, l in draws(net, n)]


def test_batch_n_is_n_forwards_of_one_stacked_same_images_same_augmentation(root):
    datasets.make_ade20k(root, split='training', size=[(37, 53), (41, 29), (20, 25)])
    one = forwards(train_net(root), 6)
    batched = forwards(train_net(root, batch_size=3), 2)
    for f, (data, label) in enumerate(batched):
        assert data.shape == (3, 3, 33, 33) and label.shape == (3, 1, 33, 33)
        for j in range(3):
            np.testing.assert_array_equal(data[j], one[3 * f + j][0][0])
            np.testing.assert_array_equal(label[j], one[3 * f + j][1][0])
    assert len({d.tobytes() for d, _ in one}) == 6  # the comparison is not of equal crops
    # the ids: batch N takes N consecutive draws of batch 1's stream
    a, b = train_net(root), train_net(root, batch_size=3)
    ids, batched_ids = [], []
    for _ in range(6):
        ids.append(a.layers[0].positions[0])
        a.forward()
    for _ in range(2):
        batched_ids += b.layers[0].positions
        b.forward()
    assert batched_ids == ids and len(set(ids)) > 1


def test_batch_n_resumes_exactly_mid_run(root):
    datasets.make_ade20k(root, split='training', size=[(37, 53), (41, 29), (20, 25)])
    run = forwards(train_net(root, batch_size=2), 5)
    resumed = train_net(root, batch_size=2)
    resumed.layers[0].seek(3)  # 3 forwards = 6 examples done
    for (d, l), (dr, lr) in zip(run[3:], forwards(resumed, 2)):
        np.testing.assert_array_equal(d, dr)
        np.testing.assert_array_equal(l, lr)
    # a walking (non-random) split: N ids in order per forward, wrapping
    val = data_net(root, 'ADE20KSegDataLayer', {'split': 'training', 'randomize': False,
                                                'crop': 33, 'batch_size': 2}, ['data', 'label'])
    layer = val.layers[0]
    assert layer.positions == [0, 1]
    val.forward()
    assert layer.positions == [2, 0]
    layer.seek(4)  # 8 examples: 8 % 3 = 2
    assert layer.positions == [2, 0]


def test_batch_of_examples_of_different_sizes_is_one_line_naming_layer_and_sizes(root):
    datasets.make_ade20k(root, size=[(37, 53), (41, 29)])  # whole images, no crop
    with pytest.raises(project.InputError, match=r'^\S*ADE_val_\d+\.png: ADE20KSegDataLayer: '
                       r'batch_size 2 needs examples of one size, but image \S+ is 37 x 53 and '
                       r'image \S+ is 41 x 29$'):
        data_net(root, 'ADE20KSegDataLayer', {'split': 'validation', 'batch_size': 2},
                 ['data', 'label'])
    with pytest.raises(ValueError, match='batch_size must be a whole number of examples >= 1'):
        data_net(root, 'ADE20KSegDataLayer', {'split': 'validation', 'batch_size': 0},
                 ['data', 'label'])
    one = data_net(root, 'ADE20KSegDataLayer', {'split': 'validation', 'batch_size': 1},
                   ['data', 'label'])  # batch 1: any sizes, as before
    one.forward()
    one.forward()
    assert one.blobs['data'].data.shape == (1, 3, 41, 29)
