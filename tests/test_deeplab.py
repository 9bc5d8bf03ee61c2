"""DeepLab v2 (net.deeplab_v2, registry entry deeplabv2-voc12): the full-size nets' shapes
and names, a narrow net against an independent float64 implementation of the release's
formulas, the stock Interp replacements at every size used, released-layout caffemodels,
the VOC 2012 + SBD data layer, training through the solving loop and the evaluation
through score.py / reproduce.py / infer.py."""
import dataclasses
import json
import math
import os

import numpy as np
import pytest
from PIL import Image

import datasets  # tests/datasets.py
import guard
import infer
import layers
import metrics
import models
import net
import netinit
import netload
import predict
import project
import score
import surgery
import train

caffe = guard.import_caffe()
L, P = caffe.layers, caffe.params
SPEC = models.get('deeplabv2-voc12')
NARROW = (4, 4, 4, 2, 2, 4, 4, 4, 4, 4)  # stem, (unused x2), stages 2-5, (unused x3)
BLOCKS = (1, 1, 1, 1)
CROP = 65  # logits 9 / 7 / 5: the structure of 513 (65 / 49 / 33) in small
VOC12 = 'pascal/VOC2012'


def narrow(split, crop=CROP, **kwargs):
    return net.deeplab_v2(split, crop=crop, train_crop=crop, widths=NARROW, blocks=BLOCKS,
                          **kwargs)


def write(path, param):
    with open(path, 'w') as f:
        f.write(str(param))
    return str(path)


# ----------------------------------------------------------------------------- full-size nets

def with_inputs(param, side):
    """`param` with its Python data layer replaced by Input tops data 1 x 3 x side x side
    and label 1 x 1 x side x side (the shapes the layer gives), for a shape check."""
    out = caffe.proto.caffe_pb2.NetParameter()
    out.CopyFrom(param)
    for l in out.layer:
        if l.type == 'Python':
            l.type = 'Input'
            l.ClearField('python_param')
            l.input_param.shape.add(dim=[1, 3, side, side])
            l.input_param.shape.add(dim=[1, 1, side, side])
    return out


def test_full_size_shapes_match_the_release():
    shapes = netinit.check_net(net.build_net(SPEC, 'deploy'), 'deploy', probe=False)
    want = {'data': 513, 'data_res075': 385, 'data_res05': 257, 'conv1': 257, 'pool1': 129,
            'res3a': 65, 'res5c': 65, 'res5c_res075': 49, 'res5c_res05': 33,
            'fc1_voc12': 65, 'fc1_voc12_res075': 49, 'fc1_voc12_res05': 33,
            'fc1_voc12_res075_interp': 65, 'fc1_voc12_res05_interp': 65, 'fc_fusion': 65,
            'fc1_interp': 513}
    assert {b: shapes[b][2] for b in want} == want
    assert shapes['fc1_interp'] == (1, 21, 513, 513) and shapes['res5c'][1] == 2048
    shapes = netinit.check_net(with_inputs(net.build_net(SPEC, 'train'), 321), 'train',
                               phase='train', probe=False)
    want = {'data': 321, 'data_res075': 241, 'data_res05': 161, 'fc1_voc12': 41,
            'fc1_voc12_res075': 31, 'fc1_voc12_res05': 21, 'fc_fusion': 41,
            'label_shrink': 41, 'label_shrink_21': 21}
    assert {b: shapes[b][2] for b in want} == want


def layer(param, name):
    return next(l for l in param.layer if l.name == name)


def test_full_size_names_strides_dilations_and_sharing():
    param = net.build_net(SPEC, 'deploy')
    names = [l.name for l in param.layer]
    blocks = [n for n in names if n.startswith('res') and layer(param, n).type == 'Eltwise'
              and not n.endswith(('_res075', '_res05'))]
    assert blocks == (['res2a', 'res2b', 'res2c', 'res3a'] + ['res3b%d' % i for i in (1, 2, 3)]
                      + ['res4a'] + ['res4b%d' % i for i in range(1, 23)] + ['res5a', 'res5b', 'res5c'])
    c = layer(param, 'conv1').convolution_param
    assert (c.kernel_size, c.stride, c.pad, c.bias_term) == ([7], [2], [3], False)
    assert layer(param, 'bn_conv1').type == 'BatchNorm' and layer(param, 'scale_conv1').type == 'Scale'
    p = layer(param, 'pool1').pooling_param
    assert (p.kernel_size, p.stride, p.pad, p.pool) == (3, 2, 1, P.Pooling.MAX)
    for name, stride in (('res3a_branch1', 2), ('res3a_branch2a', 2), ('res3a_branch2b', 1),
                         ('res4a_branch1', 1), ('res4a_branch2a', 1)):
        assert list(layer(param, name).convolution_param.stride) == [stride], name
    for name, d in (('res3b3_branch2b', []), ('res4b22_branch2b', [2]), ('res5c_branch2b', [4])):
        conv = layer(param, name).convolution_param
        assert list(conv.dilation) == d and conv.pad == (d or [1])
    for i, rate in enumerate((6, 12, 18, 24)):
        conv = layer(param, 'fc1_voc12_c%d' % i)
        assert (conv.convolution_param.num_output, conv.convolution_param.bias_term) == (21, True)
        assert list(conv.convolution_param.dilation) == [rate] == list(conv.convolution_param.pad)
        assert [s.name for s in conv.param] == ['fc1_voc12_c%d_w' % i, 'fc1_voc12_c%d_b' % i]
        assert [(s.lr_mult, s.decay_mult) for s in conv.param] == [(10, 1), (20, 0)]
    assert layer(param, 'fc1_voc12').eltwise_param.operation == P.Eltwise.SUM
    assert layer(param, 'fc_fusion').eltwise_param.operation == P.Eltwise.MAX
    # the branches share every parameter by name, BN and Scale frozen
    for suffix in ('', '_res075', '_res05'):
        assert [s.name for s in layer(param, 'conv1' + suffix).param] == ['conv1_0']
        assert [s.name for s in layer(param, 'bn_conv1' + suffix).param] == [
            'bn_conv1_0', 'bn_conv1_1', 'bn_conv1_2']
        assert {s.lr_mult for s in layer(param, 'scale2a_branch2a' + suffix).param} == {0}
    learnable = [l.name for l in param.layer if l.param and l.type != 'Deconvolution']
    assert len(learnable) == 3 * len([n for n in learnable if not n.endswith(('_res075', '_res05'))])


# ----------------------------------------------------------------------------- float64 reference

def np_conv(x, w, b=None, stride=1, pad=0, dilation=1):
    """C x H x W float64 convolution as Caffe defines it (cross-correlation, zero pad)."""
    k = w.shape[2]
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad)))
    ho = (x.shape[1] + 2 * pad - dilation * (k - 1) - 1) // stride + 1
    wo = (x.shape[2] + 2 * pad - dilation * (k - 1) - 1) // stride + 1
    out = np.zeros((w.shape[0], ho, wo))
    for ky in range(k):
        for kx in range(k):
            y0, x0 = ky * dilation, kx * dilation
            patch = xp[:, y0:y0 + stride * (ho - 1) + 1:stride, x0:x0 + stride * (wo - 1) + 1:stride]
            out += np.einsum('oi,ihw->ohw', w[:, :, ky, kx], patch)
    return out if b is None else out + b[:, None, None]


def np_max_pool(x, k=3, s=2, pad=1):
    """Caffe's MAX pooling: ceil rounding, the last window dropped if it starts in the pad."""
    h = x.shape[1]
    n = -(-(h + 2 * pad - k) // s) + 1
    if pad and (n - 1) * s >= h + pad:
        n -= 1
    out = np.empty((x.shape[0], n, n))
    for i in range(n):
        y0, y1 = max(i * s - pad, 0), min(i * s - pad + k, h)
        for j in range(n):
            x0, x1 = max(j * s - pad, 0), min(j * s - pad + k, h)
            out[:, i, j] = x[:, y0:y1, x0:x1].max(axis=(1, 2))
    return out


def np_interp_axis(n_in, n_out):
    """The release's Interp along one axis (align corners), straight from its formula."""
    a = np.zeros((n_out, n_in))
    r = (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
    for j in range(n_out):
        y = r * j
        i0 = int(math.floor(y))
        lam = y - i0
        a[j, i0] += 1 - lam
        a[j, min(i0 + 1, n_in - 1)] += lam
    return a


def np_interp(x, size):
    a = np_interp_axis(x.shape[1], size)
    return np.einsum('ij,cjk->cik', a, x) @ a.T


def reference_logits(params, image, scales=(1.0, 0.75, 0.5), rates=(6, 12, 18, 24)):
    """fc1_interp of a narrow DeepLab v2 (1 block per stage) in float64 from {layer:
    [arrays]}: trunk, ASPP, MSC with max fusion, zoom, written from the paper's and the
    release's definitions, independent of net.py."""
    def cbr(x, conv, stride=1, pad=0, dilation=1, relu=True):
        bn = 'bn' + (conv[3:] if conv.startswith('res') else '_' + conv)
        mean, var, factor = params[bn]
        slope, bias = params['scale' + bn[2:]]
        y = np_conv(x, params[conv][0], None, stride, pad, dilation)
        y = (y - (mean / factor[0])[:, None, None]) / np.sqrt(var / factor[0] + 1e-5)[:, None, None]
        y = y * slope[:, None, None] + bias[:, None, None]
        return np.maximum(y, 0) if relu else y

    def trunk(x):
        x = np_max_pool(cbr(x, 'conv1', 2, 3))
        for stage, stride, dilation in ((2, 1, 1), (3, 2, 1), (4, 1, 2), (5, 1, 4)):
            b = 'res%da' % stage
            short = cbr(x, b + '_branch1', stride, relu=False)
            y = cbr(x, b + '_branch2a', stride)
            y = cbr(y, b + '_branch2b', 1, dilation, dilation)
            x = np.maximum(short + cbr(y, b + '_branch2c', relu=False), 0)
        return sum(np_conv(x, *params['fc1_voc12_c%d' % i], pad=r, dilation=r)
                   for i, r in enumerate(rates))

    side = image.shape[1]
    outs = []
    for s in scales:
        small = (side - 1) // {1.0: 1, 0.75: 4, 0.5: 2}[s] * {1.0: 1, 0.75: 3, 0.5: 1}[s] + 1
        outs.append(trunk(np_interp(image, small) if s != 1 else image))
    fused = np.max([outs[0]] + [np_interp(o, outs[0].shape[1]) for o in outs[1:]], axis=0)
    return np_interp(fused, side), outs


def randomise(net_, seed=0):
    """N(0, 0.3) weights, BN statistics with positive variances and factor 1; then the
    model's finish steps (the interpolation weights)."""
    rng = np.random.RandomState(seed)
    types = dict(zip(net_._layer_names, (l.type for l in net_.layers)))
    for name, blobs in net_.params.items():
        if types[name] == 'BatchNorm':
            blobs[0].data[...] = rng.normal(0, 0.3, blobs[0].data.shape)
            blobs[1].data[...] = rng.uniform(0.5, 1.5, blobs[1].data.shape)
            blobs[2].data[...] = 1
        else:
            for b in blobs:
                b.data[...] = rng.normal(0, 0.3, b.data.shape)
    surgery.finish(net_, SPEC.finish)


@pytest.fixture(scope='module')
def deploy(tmp_path_factory):
    folder = tmp_path_factory.mktemp('deeplab')
    path = write(folder / 'deploy.prototxt', narrow('deploy'))
    net_ = caffe.Net(path, caffe.TEST)
    randomise(net_)
    weights = str(folder / 'narrow.caffemodel')
    net_.save(weights)
    return path, weights, net_


def test_narrow_net_equals_the_float64_formulas(deploy):
    _, _, net_ = deploy
    image = np.random.RandomState(3).normal(0, 50, (3, CROP, CROP))
    net_.blobs['data'].data[0] = image
    net_.forward()
    params = {name: [b.data.astype(np.float64) for b in blobs]
              for name, blobs in net_.params.items()}
    want, branches = reference_logits(params, image)
    for blob, ref in zip(('fc1_voc12', 'fc1_voc12_res075', 'fc1_voc12_res05'), branches):
        got = net_.blobs[blob].data[0]
        assert got.shape == ref.shape
        assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max(), blob
    got = net_.blobs['fc1_interp'].data[0]
    assert got.shape == (21, CROP, CROP)
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()


def test_msc_branches_share_every_parameter(deploy):
    _, _, net_ = deploy
    params = net_.params
    copies = [n for n in params if n.endswith(('_res075', '_res05'))]
    assert copies and all(n.rsplit('_res', 1)[0] in params for n in copies)
    for name in copies:
        base = params[name.rsplit('_res', 1)[0]]
        for mine, theirs in zip(params[name], base):
            assert mine.data.ctypes.data == theirs.data.ctypes.data, name
    params['conv1'][0].data[0, 0, 0, 0] = 7.5
    assert params['conv1_res05'][0].data[0, 0, 0, 0] == 7.5


# ----------------------------------------------------------------------------- Interp replacements

def resizes(param, shapes):
    """(size_in, size_out) of every stock align-corners resize in `param`: a Deconvolution
    (zoom), a kernel-1 Pooling (every p-th pixel), or the two chained."""
    by_top = {l.top[0]: l for l in param.layer}
    found = []
    for l in param.layer:
        if l.type == 'Deconvolution':
            if l.name.endswith('_zoom'):
                continue  # counted with the Pooling that follows it
            found.append((shapes[l.bottom[0]][2], shapes[l.top[0]][2]))
        elif l.type == 'Pooling' and l.pooling_param.kernel_size == 1:
            first = by_top.get(l.bottom[0])
            start = first.bottom[0] if first is not None and first.name.endswith('_zoom') else l.bottom[0]
            found.append((shapes[start][2], shapes[l.top[0]][2]))
    return found


def test_interp_replacements_equal_the_formula_at_every_size_used(tmp_path):
    used = set()
    for split, phase in (('deploy', 'test'), ('train', 'train')):
        param = with_inputs(net.build_net(SPEC, split), 321)
        used |= set(resizes(param, netinit.check_net(param, split, phase=phase, probe=False)))
    assert used == {(513, 385), (513, 257), (49, 65), (33, 65), (65, 513),
                    (321, 241), (321, 161), (31, 41), (21, 41), (321, 41), (321, 21)}
    assert net.align_corners_steps(513, 385) == (3, 4) and net.align_corners_steps(49, 65) == (4, 3)
    rng = np.random.RandomState(0)
    for size_in, size_out in sorted(used):
        n = caffe.NetSpec()
        n.data = L.Input(shape=dict(dim=[1, 2, size_in, size_in]))
        net.align_corners_resize(n, 'out', n.data, 2, size_in, size_out)
        path = write(tmp_path / ('r%d_%d.prototxt' % (size_in, size_out)), n.to_proto())
        net_ = caffe.Net(path, caffe.TEST)
        surgery.pspnet_interp(net_)
        x = rng.normal(0, 1, (2, size_in, size_in))
        net_.blobs['data'].data[0] = x
        net_.forward()
        want = np_interp(x, size_out)
        assert np.abs(net_.blobs['out'].data[0] - want).max() < 1e-5, (size_in, size_out)


def test_sizes_outside_small_ratios_are_refused():
    with pytest.raises(ValueError, match='needs a zoom by'):
        net.align_corners_steps(100, 38)
    with pytest.raises(ValueError, match='use 8 k \\+ 1'):
        narrow('deploy', crop=67)


# ----------------------------------------------------------------------------- released caffemodels

def release_file(path, deploy_net, copies=True, extra=None, bad=None):
    """A caffemodel in the release's layout, written field by field: every learnable
    layer of its (train) net by name -- the _res075 / _res05 copies too, as Caffe writes
    shared layers -- with stock BatchNorm [mean (C), var (C), factor (1)] and Scale
    [slope, bias] blobs, plus the layers that hold none (data, Interp, loss). Returns
    {layer: [arrays]}."""
    pb = caffe.proto.caffe_pb2
    types = dict(zip(deploy_net._layer_names, (l.type for l in deploy_net.layers)))
    model = pb.NetParameter(name='deeplab_aspp_resnet101')
    for name, kind in (('data', 'ImageSegData'), ('data_res075', 'Interp'),
                       ('label_shrink', 'Interp')):
        model.layer.add(name=name, type=kind)
    rng, values = np.random.RandomState(1), {}
    for name, blobs in deploy_net.params.items():
        if types[name] == 'Deconvolution' or (not copies and name.endswith(('_res075', '_res05'))):
            continue
        base = name.rsplit('_res', 1)[0] if name.endswith(('_res075', '_res05')) else name
        if base not in values:
            values[base] = [rng.uniform(0.5, 1.5, b.data.shape).astype(np.float32) for b in blobs]
        out = model.layer.add(name=name, type=types[name])
        for i, a in enumerate(values[base]):
            shape = (a.shape[0] + 1,) + a.shape[1:] if (name, i) == bad else a.shape
            blob = out.blobs.add()
            blob.shape.dim.extend(shape)
            blob.data.extend(np.resize(a, shape).ravel().tolist())
    if extra:
        out = model.layer.add(name=extra, type='Convolution')
        out.blobs.add(shape=dict(dim=[1])).data.append(1.0)
    model.layer.add(name='loss', type='SoftmaxWithLoss')
    with open(path, 'wb') as f:
        f.write(model.SerializeToString())
    return values


def test_release_layout_caffemodel_loads_by_name_and_converts(deploy, tmp_path):
    path, _, net_ = deploy
    src = tmp_path / 'train_iter_20000.caffemodel'
    values = release_file(src, net_)
    fresh = caffe.Net(path, caffe.TEST)
    # as it is: every layer by name, only the interpolation layers left for surgery
    with pytest.raises(project.InputError, match='has no weights for 4 of'):
        netload.check_weights(str(src), fresh)
    netload.check_weights(str(src), fresh, partial=True)
    fresh.copy_from(str(src))
    np.testing.assert_array_equal(fresh.params['bn_conv1_res05'][1].data, values['bn_conv1'][1])
    out = tmp_path / 'train_iter_20000-stock.caffemodel'
    report = surgery.convert_by_name(src, path, out, quiet=True)
    assert len(report.interp) == 4 and report.no_params == {'ImageSegData': 1, 'Interp': 2,
                                                            'SoftmaxWithLoss': 1}
    loaded = netload.open_net(path, 'test', str(out))  # full coverage
    for name in ('conv1', 'scale5a_branch2c', 'fc1_voc12_c3'):
        for blob, want in zip(loaded.params[name], values[name]):
            np.testing.assert_array_equal(blob.data, want)
    zoom = loaded.params['fc1_interp'][0].data
    np.testing.assert_allclose(zoom[3, 0, 7], surgery.upsample_filt(15)[7])
    # a file without the scale copies still covers them: they share the 1x layers' blobs
    lean = tmp_path / 'lean.caffemodel'
    release_file(lean, net_, copies=False)
    surgery.convert_by_name(lean, path, tmp_path / 'lean-stock.caffemodel', quiet=True)
    assert netload.open_net(path, 'test', str(tmp_path / 'lean-stock.caffemodel'))


def test_release_conversion_refuses_bad_files(deploy, tmp_path):
    path, _, net_ = deploy
    bad = tmp_path / 'bad.caffemodel'
    release_file(bad, net_, bad=('bn2a_branch2b', 0))
    with pytest.raises(project.InputError, match="bad.caffemodel: layer 'bn2a_branch2b' has blobs"):
        surgery.convert_by_name(bad, path, tmp_path / 'o.caffemodel', quiet=True)
    release_file(bad, net_, extra='fc1_coco_c0')
    with pytest.raises(project.InputError, match="'fc1_coco_c0' .* carries weights but the net"):
        surgery.convert_by_name(bad, path, tmp_path / 'o.caffemodel', quiet=True)
    with pytest.raises(project.InputError, match='would replace'):
        surgery.convert_by_name(bad, path, bad, quiet=True)
    assert not (tmp_path / 'o.caffemodel').exists()


# ----------------------------------------------------------------------------- data layer

PAINT = {0: (40, 40, 40), 1: (220, 40, 40), 2: (40, 200, 60), 3: (40, 60, 220)}


def make_painted(root, ids, split, sizes=((40, 56), (52, 44)), sbd=(), seed=0):
    """VOC 2012 images whose pixels are their label's colour plus noise (learnable), with
    palette PNG labels (a void border) -- or, for ids in `sbd`, SBD .mat labels only."""
    rng = np.random.RandomState(seed)
    voc, sbdd = os.path.join(str(root), VOC12), os.path.join(str(root), 'sbdd/dataset')
    for k, idx in enumerate(ids):
        h, w = sizes[k % len(sizes)]
        label = np.zeros((h, w), np.uint8)
        for _ in range(3):
            y, x = rng.randint(0, h - 8), rng.randint(0, w - 8)
            label[y:y + rng.randint(8, h), x:x + rng.randint(8, w)] = rng.randint(1, 4)
        rgb = np.array([PAINT[v] for v in label.ravel()], np.float64).reshape(h, w, 3)
        rgb = np.clip(rgb + rng.normal(0, 8, rgb.shape), 0, 255).astype(np.uint8)
        os.makedirs(os.path.join(voc, 'JPEGImages'), exist_ok=True)
        Image.fromarray(rgb).save(os.path.join(voc, 'JPEGImages', idx + '.jpg'), quality=95)
        if idx in sbd:
            datasets._savemat(os.path.join(sbdd, 'cls', idx + '.mat'),
                              {'GTcls': {'Segmentation': label}})
        else:
            label[0, :] = 255
            layers.save_label_png(os.path.join(voc, 'SegmentationClass', idx + '.png'), label)
    datasets._write_list(os.path.join(voc, 'ImageSets/Segmentation', split + '.txt'), ids)
    return ids


@pytest.fixture
def root(tmp_path, monkeypatch):
    monkeypatch.setenv('FCN_DATA_ROOT', str(tmp_path / 'data'))
    return tmp_path / 'data'


def data_net(tmp_path, params, name='d'):
    n = caffe.NetSpec()
    n.data, n.label = L.Python(module='layers', layer='VOC12AugSegDataLayer', ntop=2,
                               param_str=json.dumps(params))
    return caffe.Net(write(tmp_path / (name + '.prototxt'), n.to_proto()), caffe.TRAIN)


def test_val_pads_with_the_mean_and_void_never_resizes(root, tmp_path):
    make_painted(root, ['2008_000001', '2008_000002'], 'val')
    d = data_net(tmp_path, {'split': 'val', 'crop': CROP})
    d.forward()
    p = layers.VOC12AugSegDataLayer.parse_params({'split': 'val'})
    rgb, label = layers.VOC12AugSegDataLayer.read_example(p, '2008_000001')
    h, w = label.shape
    assert d.blobs['data'].data.shape == (1, 3, CROP, CROP)
    want = rgb[:, :, ::-1].astype(np.float32) - np.float32(models.dataset('voc12aug').mean)
    np.testing.assert_allclose(d.blobs['data'].data[0, :, :h, :w], want.transpose(2, 0, 1), atol=1e-4)
    assert not d.blobs['data'].data[0, :, h:].any() and not d.blobs['data'].data[0, :, :, w:].any()
    np.testing.assert_array_equal(d.blobs['label'].data[0, 0, :h, :w], label)
    assert (d.blobs['label'].data[0, 0, h:] == 255).all()
    with pytest.raises(project.InputError, match='2008_000001.png: image 2008_000001 is 56 x '
                       '40, larger than the net.s 41 x 41 input'):
        data_net(tmp_path, {'split': 'val', 'crop': 41}, 'small')


def test_train_aug_reads_sbd_labels_and_augments_the_release_way(root, tmp_path):
    ids = make_painted(root, ['2007_000032', '2008_000003', '2008_000004'], 'train_aug',
                       sbd=('2008_000003',))
    p = layers.VOC12AugSegDataLayer.parse_params({'split': 'train_aug', 'crop': 321})
    assert layers.VOC12AugSegDataLayer.label_path(p, '2008_000003').endswith(
        os.path.join('sbdd', 'dataset', 'cls', '2008_000003.mat'))
    _, label = layers.VOC12AugSegDataLayer.read_example(p, '2008_000003')
    assert label.max() <= 3 and 255 not in label  # SBD: no void
    assert p['scales'] == (0.5, 0.75, 1.0, 1.25, 1.5) and p['augment'] is True
    # the augmentation itself: a scale from the set, mirror, mean / void pad, random crop
    image = np.arange(50 * 30 * 3, dtype=np.float32).reshape(50, 30, 3)
    lab = (np.arange(50 * 30) % 4).astype(np.uint8).reshape(50, 30)
    rng = np.random.default_rng(5)
    out, out_lab = layers.deeplab_augment(image, lab, rng, 41, scales=(1.0,), mirror=False)
    rng = np.random.default_rng(5)
    rng.integers(1)  # the scale's draw
    y, x = rng.integers(0, 50 - 41 + 1), rng.integers(0, 1)
    padded, padded_lab = layers.pad_to(image, lab, (41, 41))  # 50 x 41: mean / void right
    np.testing.assert_array_equal(out, padded[y:y + 41, x:x + 41])
    np.testing.assert_array_equal(out_lab, padded_lab[y:y + 41, x:x + 41])
    assert not out[:, 30:].any() and (out_lab[:, 30:] == 255).all()
    seen = set()
    for seed in range(12):
        _, l2 = layers.deeplab_augment(image, lab, np.random.default_rng(seed), 41,
                                       scales=(0.5, 1.5), mirror=True)
        seen.add(int((l2 != 255).sum()))
    assert seen == {25 * 15, 41 * 41}  # 0.5 -> 25 x 15 padded; 1.5 -> 75 x 45 cut
    # the layer: deterministic for a seed, and a resumed layer draws what a run would
    runs = []
    for name in ('a', 'b'):
        d = data_net(tmp_path, {'split': 'train_aug', 'crop': CROP, 'seed': 7}, name)
        tops = []
        for _ in range(4):
            d.forward()
            tops.append((d.blobs['data'].data.copy(), d.blobs['label'].data.copy()))
        runs.append(tops)
    for (a, la), (b, lb) in zip(*runs):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(la, lb)
        assert a.shape == (1, 3, CROP, CROP)
    d.layers[0].seek(2)
    d.forward()
    np.testing.assert_array_equal(d.blobs['data'].data, runs[0][2][0])
    assert len(ids) == 3


# ----------------------------------------------------------------------------- training

def narrow_folder(folder, base_lr=None, max_iter=60):
    """A narrow deeplabv2-voc12 folder: train / val / deploy nets of the release's builder
    (its data layer cropping / padding to CROP) and the release's solver."""
    os.makedirs(folder, exist_ok=True)
    for split, name in (('train', 'train_aug'), ('val', 'val'), ('deploy', None)):
        data = {} if split == 'deploy' else dict(
            data_layer='VOC12AugSegDataLayer',
            data_params={'split': name, 'crop': CROP, 'seed': 1337})
        write(os.path.join(str(folder), split + '.prototxt'), narrow(split, **data))
    solver = dict(test_iter=3, iter_size=1, max_iter=max_iter)
    if base_lr:
        solver['base_lr'] = base_lr
    with open(os.path.join(str(folder), 'solver.prototxt'), 'w') as f:
        # the fillers seeded too: the loop reseeds each iteration, not the nets' first fill
        f.write(net.model_solver(SPEC, **solver) + 'random_seed: 1337\n')
    return str(folder)


def test_narrow_deeplab_learns_through_the_solving_loop(root, tmp_path):
    make_painted(root, ['2008_%06d' % i for i in range(1, 9)], 'train_aug', seed=1)
    make_painted(root, ['2009_000001', '2009_000002', '2009_000003'], 'val', seed=2)
    # From fresh weights the identity BN leaves the features at the pixels' scale (~100),
    # so the rate is far below the release's 2.5e-4, which fine-tunes normalised features.
    folder = narrow_folder(tmp_path / 'deeplabv2-voc12', base_lr=1e-5)
    # the registry's model from the net's fillers (no release weights here): the loop
    # still runs its finish steps (interpolation weights, identity BN)
    spec = dataclasses.replace(SPEC, init='copy')
    log = train.solve(train.Model(folder, spec),
                      train.RunConfig(rounds=3, iters=20, out=str(tmp_path / 'out')))
    losses = [r['train_loss'] for r in log]
    assert [r['iter'] for r in log] == [20, 40, 60] and all(map(math.isfinite, losses))
    assert losses[-1] < 0.7 * losses[0], losses  # the four losses' sum falls
    for r in log:  # each round scored fc1_interp against the padded val labels
        assert 0 <= r['scores']['seg']['mean_iu'] <= 1
    # the train net has no fc1_interp (its losses compare logits with shrunk labels), so
    # its snapshot has none: a deploy net opened from it fills the zoom from the formula
    snap = max((tmp_path / 'out').glob('**/*.caffemodel'), key=os.path.getmtime)
    deploy_path = os.path.join(folder, 'deploy.prototxt')
    with pytest.raises(project.InputError, match='fc1_interp'):
        netload.open_net(deploy_path, 'test', str(snap))
    opened = netload.open_net(deploy_path, 'test', str(snap), finish=SPEC.finish)
    zoom = opened.params['fc1_interp'][0].data
    assert zoom.any()
    for c in range(zoom.shape[0]):  # the x8 align-corners zoom, per class
        np.testing.assert_allclose(zoom[c, 0], surgery.upsample_filt(15), atol=1e-7)
    # the trained layers are the snapshot's, untouched by the fill
    trained = netload.open_net(os.path.join(folder, 'train.prototxt'), 'test', str(snap))
    for name in ('conv1', 'fc1_voc12_c0', 'bn_conv1'):
        for a, b in zip(opened.params[name], trained.params[name]):
            np.testing.assert_array_equal(a.data, b.data)


# ----------------------------------------------------------------------------- evaluation

def engine_scores(deploy_path, weights, root, ids):
    """mean IU of the registry's protocol (predict.py) over `ids` of the val split."""
    net_ = netload.open_net(deploy_path, 'test', weights)
    p = layers.VOC12AugSegDataLayer.parse_params({'split': 'val'}, root=str(root))
    cm = metrics.ConfusionMatrix(21)
    preds = {}
    for idx in ids:
        rgb, label = layers.VOC12AugSegDataLayer.read_example(p, idx)
        preds[idx] = predict.labels(net_, rgb, SPEC.evaluation, SPEC.preprocess, 'fc1_interp')
        assert preds[idx].shape == label.shape
        cm.update(label, preds[idx])
    return cm.compute(), preds


def test_score_reproduce_and_infer_run_the_release_evaluation(root, tmp_path, deploy, capsys,
                                                              monkeypatch):
    import reproduce
    ids = make_painted(root, ['2009_000001', '2009_000002', '2009_000003'], 'val')
    model_root = tmp_path / 'models'
    folder = narrow_folder(model_root / SPEC.folder)
    deploy_path, weights, _ = deploy
    want, preds = engine_scores(deploy_path, weights, root, ids)
    # score.py: the val net (image padded with the mean, label with void) = the engine
    out = tmp_path / 'score.json'
    assert score.main(['--model', folder, '--weights', weights, '--out', str(out), '--quiet']) == 0
    record = json.loads(out.read_text())
    assert record['images'] == 3 and record['split'] == 'val'
    assert record['mean_iu'] == pytest.approx(want['mean_iu'])
    assert record['overall_acc'] == pytest.approx(want['overall_acc'])
    # reproduce.py: the paper row of the registry's model, measured the same way
    stock = os.path.join(folder, SPEC.weights.stock_file)
    with open(weights, 'rb') as f, open(stock, 'wb') as g:
        g.write(f.read())
    assert reproduce.main(['--model-root', str(model_root), '--models', SPEC.name,
                           '--weights', '%s=%s' % (SPEC.name, stock), '--out',
                           str(tmp_path / 'r'), '--quiet']) == 0
    rows = [r for r in json.loads((tmp_path / 'r' / 'results.json').read_text())['rows']
            if r['model'] == SPEC.name]
    assert rows and rows[0]['paper']['mean_iu'] == 76.35 and rows[0]['status'] == 'measured'
    assert rows[0]['measured']['mean_iu'] == pytest.approx(100 * want['mean_iu'])
    # infer.py: the registry's protocol on a photo, VOC's palette
    rgb = np.array(Image.open(root / VOC12 / 'JPEGImages' / (ids[0] + '.jpg')))
    photo = tmp_path / 'photo.png'
    Image.fromarray(rgb).save(photo)
    assert infer.main([str(photo), '--model', SPEC.name, '--deploy', deploy_path,
                       '--weights', weights, '--out', str(tmp_path / 'seg')]) == 0
    saved = Image.open(tmp_path / 'seg' / 'photo.png')
    np.testing.assert_array_equal(np.array(saved), preds[ids[0]])
    assert saved.getpalette()[:6] == [0, 0, 0, 128, 0, 0]


def test_train_aug_list_is_voc_train_and_sbd_less_voc_val(root, capsys):
    import importlib.util
    voc = root / VOC12 / 'ImageSets/Segmentation'
    datasets._write_list(str(voc / 'train.txt'), ['2007_000032', '2008_000001'])
    datasets._write_list(str(voc / 'val.txt'), ['2007_000033', '2008_000002'])
    datasets._write_list(str(root / 'sbdd/dataset/train.txt'), ['2008_000001', '2008_000002'])
    datasets._write_list(str(root / 'sbdd/dataset/val.txt'), ['2007_000033', '2008_000003'])
    spec = importlib.util.spec_from_file_location(
        'train_aug', os.path.join(project.REPO, 'data/pascal/train_aug.py'))
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    with pytest.raises(project.InputError, match='train_aug would have 3 ids .* expected 10582'):
        script.main([])
    assert not (voc / 'train_aug.txt').exists()
    assert script.main(['--expect', '3']) == 0
    assert (voc / 'train_aug.txt').read_text().split() == ['2007_000032', '2008_000001',
                                                           '2008_000003']


def test_registry_record_and_missing_weights_say_how(tmp_path):
    import weights
    rec = weights.read_url_record(models.model_dir(SPEC))
    assert rec['url'].endswith('deeplab_aspp_resnet101/prototxt_and_model.zip')
    assert 'UNCONFIRMED' in rec['note'] and 'deeplab-convert' in rec['note']
    assert weights.weights_path(SPEC.name).endswith('deeplab/deeplabv2-voc12/train_iter_20000.caffemodel')
    assert models.stock_file(SPEC).endswith('train_iter_20000-stock.caffemodel')
    assert SPEC.classes == 21 and SPEC.builder_facts()['num_classes'] == 21
    photo = tmp_path / 'a.jpg'
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(photo)
    with pytest.raises(project.InputError, match='train_iter_20000-stock.caffemodel: not found'
                       '.*surgery.py deeplab-convert --model deeplabv2-voc12'):
        infer.main([str(photo), '--model', SPEC.name, '--out', str(tmp_path / 'o')])
