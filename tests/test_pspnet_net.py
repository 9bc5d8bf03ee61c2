"""PSPNet on stock Caffe (net.pspnet, surgery.pspnet_interp / convert_fork_bn): the fork's
weights converted and checked against a float64 numpy implementation of the fork's
formulas, written here from the release's description (Interp with aligned corners, BN,
dilated convolutions, Caffe's pooling, the pyramid head).

    .venv/bin/python -m pytest tests/test_pspnet_net.py -q

The caffemodels are written in the fork's own on-disk layout: layer type `BN` with four
1 x C x 1 x 1 blobs (slope, bias, mean, var), `Interp` layers without blobs carrying the
fork's interp_param (field 143 of LayerParameter, which stock Caffe reads as input_param
with unknown fields), random values. Narrow nets (4-8 channels, 1-2 blocks a stage, an
89 x 89 crop: F = 12) keep it fast; the full-size deploy nets are only built.
"""
import os
import subprocess
import sys

import numpy as np
import pytest

import guard
import models
import net
import netload
import project
import surgery

caffe = guard.import_caffe()
PY = sys.executable

NARROW = (4, 4, 8, 4, 4, 8, 8, 4, 8, 4)
BLOCKS = (1, 1, 2, 1)
CROP = 89  # F = 12: bins 1, 2, 3, 6 give kernels 12, 6, 4, 2
EPS = 1e-5


def caffe_net(tmp_path, param, name='net'):
    path = tmp_path / ('%s.prototxt' % name)
    path.write_text(str(param))
    return caffe.Net(str(path), caffe.TEST), path


def narrow(split='deploy', aux=None, depth=101, stride_on='3x3', classes=5):
    return net.pspnet(split, depth=depth, num_classes=classes, crop=CROP, stride_on=stride_on,
                      widths=NARROW, blocks=BLOCKS, aux=aux)


# ----------------------------------------------------------------------------- the fork's file

def _varint(v):
    out = bytearray()
    while True:
        b, v = v & 0x7f, v >> 7
        out.append(b | (0x80 if v else 0))
        if not v:
            return bytes(out)


def _field(number, payload):
    """A length-delimited protobuf field."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _interp_param(**values):
    """The fork's InterpParameter (height 1, width 2, zoom_factor 3) as field 143."""
    order = {'height': 1, 'width': 2, 'zoom_factor': 3}
    payload = b''.join(_varint(order[k] << 3) + _varint(v) for k, v in sorted(values.items()))
    return _field(143, payload)


def fork_caffemodel(param, shapes, path, seed=0, drop=(), extra=None, type_of=None):
    """Write, for our NetParameter `param` (whose parameter shapes are `shapes`), the
    caffemodel the PSPNet fork saves: BatchNorm + Scale as one BN layer (slope, bias,
    mean, var; 1 x C x 1 x 1 each), our interpolation constructions as one Interp layer
    each, every other layer as it is, random weights. type_of(our layer, fork type): the
    type string written instead (the released files': BNData, ConvolutionData, ...).
    Returns {layer: [arrays]} (float64)."""
    pb = caffe.proto.caffe_pb2
    rng = np.random.default_rng(seed)
    values, out = {}, b''
    for layer in param.layer:
        kind, name = layer.type, layer.name
        if kind == 'Scale' or name.endswith('_flat') or name.endswith('_interp_h'):
            continue  # merged into BN, or part of an interpolation
        fork = pb.LayerParameter(name=name, type=kind, bottom=layer.bottom, top=layer.top)
        raw = b''
        if kind == 'BatchNorm':
            c = shapes[name][0][0]
            blobs = [rng.uniform(0.5, 1.5, c), rng.normal(0, 0.2, c), rng.normal(0, 0.3, c),
                     rng.uniform(0.3, 2.0, c)]
            fork.type = 'BN'
            dims = [(1, c, 1, 1)] * 4
        elif kind in ('Reshape', 'Tile', 'Deconvolution'):
            fork.type = 'Interp'
            fork.bottom[:] = [layer.bottom[0]]
            if kind == 'Deconvolution':
                raw = _interp_param(zoom_factor=layer.convolution_param.stride[0])
            else:
                side = (layer.reshape_param.shape.dim[2] if kind == 'Reshape'
                        else layer.tile_param.tiles)
                raw = _interp_param(height=side, width=side)
            blobs = []
        elif name in shapes:
            blobs = []
            for i, s in enumerate(shapes[name]):
                fan_in = np.prod(s[1:]) if len(s) > 1 else 1
                blobs.append(rng.normal(0, np.sqrt(2.0 / fan_in) if i == 0 else 0.1, s))
            dims = [s for s in shapes[name]]
        else:
            blobs = []
        if name in drop:
            continue
        if type_of:
            fork.type = type_of(layer, fork.type)
        for a, d in zip(blobs, dims if blobs else ()):
            fork.blobs.add(data=a.ravel().astype(np.float32), shape=dict(dim=d))
        if blobs:
            values[name] = [b.astype(np.float32).astype(np.float64) for b in blobs]
        out += _field(100, fork.SerializeToString() + raw)
    if extra:
        out += _field(100, extra.SerializeToString())
    path.write_bytes(_field(1, b'pspnet') + out)
    return values


def param_shapes(tmp_path, param):
    n, _ = caffe_net(tmp_path, param, 'shapes')
    return {k: [tuple(b.data.shape) for b in v] for k, v in n.params.items()}


# ----------------------------------------------------------------------------- numpy reference

def conv(x, w, b=None, stride=1, pad=0, dilation=1):
    """C x H x W (float64) convolved with O x C x k x k, zero padding, like Caffe."""
    o, c, k, _ = w.shape
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad)))
    h = (xp.shape[1] - dilation * (k - 1) - 1) // stride + 1
    wd = (xp.shape[2] - dilation * (k - 1) - 1) // stride + 1
    y = np.zeros((o, h, wd))
    for a in range(k):
        for bb in range(k):
            patch = xp[:, a * dilation:a * dilation + stride * (h - 1) + 1:stride,
                       bb * dilation:bb * dilation + stride * (wd - 1) + 1:stride]
            y += np.tensordot(w[:, :, a, bb], patch, axes=1)
    return y if b is None else y + b[:, None, None]


def bn(x, slope, bias, mean, var):
    """The fork's BN: slope (x - mean) / sqrt(var + eps) + bias, per channel."""
    f = lambda v: v.reshape(-1, 1, 1)  # noqa: E731
    return f(slope) * (x - f(mean)) / np.sqrt(f(var) + EPS) + f(bias)


def max_pool(x, k=3, s=2, p=1):
    """Caffe's max pooling: output ceil((H + 2p - k) / s) + 1, windows clipped to the image."""
    c, h, w = x.shape
    oh, ow = -(-(h + 2 * p - k) // s) + 1, -(-(w + 2 * p - k) // s) + 1
    y = np.empty((c, oh, ow))
    for i in range(oh):
        for j in range(ow):
            h0, w0 = max(i * s - p, 0), max(j * s - p, 0)
            y[:, i, j] = x[:, h0:min(i * s - p + k, h), w0:min(j * s - p + k, w)].max(axis=(1, 2))
    return y


def interp(x, h2, w2):
    """The fork's Interp: bilinear, corners aligned, pixel by pixel."""
    c, h1, w1 = x.shape
    rh = (h1 - 1) / (h2 - 1) if h2 > 1 else 0.0
    rw = (w1 - 1) / (w2 - 1) if w2 > 1 else 0.0
    y = np.empty((c, h2, w2))
    for i in range(h2):
        hr = rh * i
        i0 = int(hr)
        ip, lh = (1 if i0 < h1 - 1 else 0), hr - int(hr)
        for j in range(w2):
            wr = rw * j
            j0 = int(wr)
            jp, lw = (1 if j0 < w1 - 1 else 0), wr - int(wr)
            y[:, i, j] = ((1 - lh) * ((1 - lw) * x[:, i0, j0] + lw * x[:, i0, j0 + jp])
                          + lh * ((1 - lw) * x[:, i0 + ip, j0] + lw * x[:, i0 + ip, j0 + jp]))
    return y


def reference(v, image, blocks=BLOCKS, stride_on='3x3', bins=(1, 2, 3, 6)):
    """The fork's PSPNet forward on C x H x W `image`, from the fork's weights `v`
    ({layer: arrays}, BN layers with slope, bias, mean, var). Returns classes x H x W."""
    def cbr(x, name, stride=1, dilation=1, relu=True):
        k = v[name][0].shape[2]
        y = bn(conv(x, v[name][0], stride=stride, pad=dilation * (k - 1) // 2,
                    dilation=dilation), *v[name + '/bn'])
        return np.maximum(y, 0) if relu else y

    x = cbr(image, 'conv1_1_3x3_s2', stride=2)
    x = cbr(cbr(x, 'conv1_2_3x3'), 'conv1_3_3x3')
    x = max_pool(x)
    for stage, stride, dilation in ((2, 1, 1), (3, 2, 1), (4, 1, 2), (5, 1, 4)):
        for block in range(1, blocks[stage - 2] + 1):
            p = 'conv%d_%d' % (stage, block)
            s = stride if block == 1 else 1
            y = cbr(x, p + '_1x1_reduce', stride=s if stride_on == '1x1_reduce' else 1)
            y = cbr(y, p + '_3x3', stride=s if stride_on == '3x3' else 1, dilation=dilation)
            y = cbr(y, p + '_1x1_increase', relu=False)
            short = cbr(x, p + '_1x1_proj', stride=s, relu=False) if block == 1 else x
            x = np.maximum(y + short, 0)
    last = 'conv5_%d' % blocks[3]
    f = x.shape[1]
    branches = []
    for b in bins:
        k = f // b
        pooled = x.reshape(x.shape[0], b, k, b, k).mean(axis=(2, 4))
        branches.append(interp(cbr(pooled, '%s_pool%d_conv' % (last, b)), f, f))
    x = np.concatenate([x] + branches[::-1])
    x = cbr(x, 'conv5_%d' % (blocks[3] + 1))
    x = conv(x, *v['conv6'])
    return interp(x, (f - 1) * 8 + 1, (f - 1) * 8 + 1)


# ----------------------------------------------------------------------------- tests

def test_interp_constructions_match_the_formula(tmp_path):
    """Tile (1 x 1), InnerProduct + Reshape (b x b) and the grouped Deconvolution (zoom 8),
    set by pspnet_interp, equal the fork's Interp computed pixel by pixel."""
    L = caffe.layers
    n = caffe.NetSpec()
    rng = np.random.default_rng(3)
    cases = {1: 12, 2: 12, 3: 12, 6: 12, 5: 9}
    for b, f in cases.items():
        n['in%d' % b] = L.Input(shape=dict(dim=[1, 3, b, b]))
        net.align_corners_interp(n, 'up%d' % b, n['in%d' % b], b, f)
    n.coarse = L.Input(shape=dict(dim=[1, 3, 4, 4]))
    n.zoom = L.Deconvolution(n.coarse, convolution_param=dict(
        num_output=3, group=3, kernel_size=15, stride=8, pad=7, bias_term=False))
    cn, _ = caffe_net(tmp_path, n.to_proto())
    assert sorted(surgery.pspnet_interp(cn)) == ['up2_flat', 'up3_flat', 'up5_flat',
                                                 'up6_flat', 'zoom']
    inputs = {name: rng.normal(size=cn.blobs[name].data.shape)
              for name in list(cn.blobs) if name.startswith('in') or name == 'coarse'}
    for name, x in inputs.items():
        cn.blobs[name].data[...] = x
    cn.forward()
    for b, f in cases.items():
        want = interp(inputs['in%d' % b][0], f, f)
        np.testing.assert_allclose(cn.blobs['up%d' % b].data[0], want, atol=1e-5)
    np.testing.assert_allclose(cn.blobs['zoom'].data[0], interp(inputs['coarse'][0], 25, 25),
                               atol=1e-5)


@pytest.mark.parametrize('depth,stride_on', [(101, '3x3'), (50, '1x1_reduce')])
def test_converted_fork_weights_match_numpy_reference(tmp_path, depth, stride_on):
    """A fork-layout caffemodel of a narrow PSPNet (with the auxiliary branch), converted,
    loads by name into the deploy net, whose logits equal the fork's formulas in float64."""
    target = narrow(aux=True, depth=depth, stride_on=stride_on)
    src = tmp_path / 'fork.caffemodel'
    values = fork_caffemodel(target, param_shapes(tmp_path, target), src)
    assert 'conv4_3' in values and 'conv6_1' in values  # the auxiliary branch (blocks[2] + 1)
    out = tmp_path / 'stock.caffemodel'
    report = surgery.convert_fork_bn(src, target, out, quiet=True)
    assert report.no_params['Interp'] == 5 and len(report.interp) == 4
    assert len(report.bn) == sum(1 for k in values if k.endswith('/bn'))

    deploy, path = caffe_net(tmp_path, narrow(depth=depth, stride_on=stride_on), 'deploy')
    del deploy
    cn = netload.open_net(path, weights=out)  # check_weights passes, copied by name
    image = np.random.default_rng(7).normal(0, 50, (3, CROP, CROP))
    cn.blobs['data'].data[0] = image
    cn.forward()
    got = cn.blobs['conv6_interp'].data[0]
    want = reference(values, image, stride_on=stride_on)
    assert got.shape == (5, CROP, CROP)
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()


def test_convert_refuses_what_it_cannot_account_for(tmp_path):
    pb = caffe.proto.caffe_pb2
    target = narrow(aux=True)
    shapes = param_shapes(tmp_path, target)
    src = tmp_path / 'fork.caffemodel'
    extra = pb.LayerParameter(name='conv7_extra', type='Convolution')
    extra.blobs.add(data=[1.0], shape=dict(dim=[1]))
    fork_caffemodel(target, shapes, src, extra=extra)
    with pytest.raises(project.InputError, match=r"fork.caffemodel: layer 'conv7_extra' "):
        surgery.convert_fork_bn(src, target, tmp_path / 'out.caffemodel', quiet=True)
    fork_caffemodel(target, shapes, src, drop=('conv6',))
    with pytest.raises(project.InputError, match=r"layer 'conv6' \(Convolution\) is missing"):
        surgery.convert_fork_bn(src, target, tmp_path / 'out.caffemodel', quiet=True)
    # a fork file of another width: the BN layer's channels differ
    fork_caffemodel(narrow(aux=True, classes=7), param_shapes(tmp_path, narrow(aux=True, classes=7)),
                    src)
    with pytest.raises(project.InputError, match=r"layer 'conv6' has blobs"):
        surgery.convert_fork_bn(src, target, tmp_path / 'out.caffemodel', quiet=True)
    with pytest.raises(project.InputError, match='would replace'):
        surgery.convert_fork_bn(src, target, src, quiet=True)
    assert not (tmp_path / 'out.caffemodel').exists()


def test_convert_command_one_line_error(tmp_path):
    r = subprocess.run([PY, os.path.join(project.REPO, 'surgery.py'), 'pspnet-convert', '--model',
                        'pspnet101-voc2012', '--weights', str(tmp_path / 'none.caffemodel'),
                        '--out', str(tmp_path / 'x.caffemodel')],
                       capture_output=True, text=True)
    assert r.returncode == 1
    assert r.stderr.strip().count('\n') == 0 and 'none.caffemodel' in r.stderr


@pytest.mark.parametrize('model,crop,feature,classes,stride_on', [
    ('pspnet50-ade20k', 473, 60, 150, '1x1_reduce'),
    ('pspnet101-voc2012', 473, 60, 21, '3x3'),
    ('pspnet101-cityscapes', 713, 90, 19, '3x3')])
def test_release_deploy_nets_build(tmp_path, model, crop, feature, classes, stride_on):
    """Full-size deploy nets: the release's layer names and shapes (no forward pass)."""
    param = net.build_net(model, 'deploy')
    layers = {l.name: l for l in param.layer}
    strided = [n for n in ('conv3_1_1x1_reduce', 'conv3_1_3x3')
               if layers[n].convolution_param.stride == [2]]
    assert strided == ['conv3_1_' + stride_on]
    assert layers['conv3_1_1x1_proj'].convolution_param.stride == [2]
    assert layers['conv4_2_3x3'].convolution_param.dilation == [2]
    assert layers['conv5_3_3x3'].convolution_param.dilation == [4]
    assert layers['conv5_3_3x3'].convolution_param.pad == [4]
    assert not any(l.convolution_param.bias_term for l in param.layer
                   if l.type == 'Convolution' and l.name != 'conv6')
    assert layers['conv1_1_3x3_s2/bn'].type == 'BatchNorm'
    assert layers['conv1_1_3x3_s2/scale'].type == 'Scale'
    cn, _ = caffe_net(tmp_path, param)
    assert tuple(cn.blobs['conv5_3'].data.shape) == (1, 2048, feature, feature)
    assert tuple(cn.blobs['conv5_3_concat'].data.shape) == (1, 4096, feature, feature)
    for b in (1, 2, 3, 6):
        assert tuple(cn.blobs['conv5_3_pool%d' % b].data.shape) == (1, 2048, b, b)
        assert tuple(cn.blobs['conv5_3_pool%d_interp' % b].data.shape) == (1, 512, feature, feature)
    assert tuple(cn.blobs['conv6_interp'].data.shape) == (1, classes, crop, crop)
    last4 = 'conv4_%d' % net.RESNET_BLOCKS[models.get(model).builder_facts()['depth']][2]
    assert last4 in cn.blobs and 'conv4_24' not in cn.params and 'conv4_7' not in cn.params


def test_train_nets_aux_head_and_losses():
    for model, aux in (('pspnet101-voc2012', 'conv4_24'), ('pspnet50-ade20k', 'conv4_7')):
        layers = {l.name: l for l in net.build_net(model, 'train').layer}
        assert layers[aux].bottom == ['conv4_%d' % (int(aux.split('_')[1]) - 1)]
        assert layers['loss_aux'].loss_weight[0] == pytest.approx(0.4)
        assert layers['loss_aux'].bottom == ['conv6_1', 'label_shrink']
        assert layers['loss'].bottom == ['conv6', 'label_shrink']
        assert layers['label_shrink'].pooling_param.stride == 8
        assert layers['conv6'].param[0].lr_mult == 10 and layers['conv1_2_3x3'].param[0].lr_mult == 1
        val = {l.name for l in net.build_net(model, 'val').layer}
        assert 'loss' in val and 'loss_aux' not in val and aux not in val


def test_solver_poly():
    text = net.model_solver('pspnet50-ade20k')
    for line in ('lr_policy: "poly"', 'power: 0.9', 'base_lr: 0.01', 'momentum: 0.9',
                 'weight_decay: 0.0001', 'iter_size: 16', 'max_iter: 150000'):
        assert line + '\n' in text
    assert 'max_iter: 30000\n' in net.model_solver('pspnet101-voc2012')
    assert 'max_iter: 90000\n' in net.model_solver('pspnet101-cityscapes')
    with pytest.raises(ValueError):
        net.solver_text(0.01, 0.9, 10, 1, lr_policy='poly')


def test_bad_crop_and_bins():
    with pytest.raises(ValueError, match='8 k \\+ 1'):
        net.pspnet(crop=480)
    with pytest.raises(ValueError, match='divisible'):
        net.pspnet(crop=65, widths=NARROW, blocks=BLOCKS)  # F = 9


def test_weights_records_and_gdown_download(tmp_path):
    """The three release records parse (Google Drive through gdown, the release's file
    names); download_gdown stages the file, checks the size, renames only when complete."""
    import weights
    for model, name in (('pspnet50-ade20k', 'pspnet50_ADE20K.caffemodel'),
                        ('pspnet101-voc2012', 'pspnet101_VOC2012.caffemodel'),
                        ('pspnet101-cityscapes', 'pspnet101_cityscapes.caffemodel')):
        rec = weights.read_url_record(weights.record_path(model))
        assert rec['downloader'] == 'gdown' and rec['url'].startswith('https://drive.google.com/')
        assert weights.weights_path(model) == os.path.join(project.REPO, 'pspnet', model, name)
        assert 'UNCONFIRMED' in rec['note']

    def fetch_file(url, output, quiet, resume):  # what gdown does once past Google's page
        with open(output, 'wb') as f:
            f.write(b'x' * 10)
        return output
    dest = tmp_path / 'w.caffemodel'
    with pytest.raises(project.InputError, match='size mismatch'):
        weights.download_gdown('https://drive.google.com/uc?id=X', dest, size=11,
                               fetch_file=fetch_file)
    assert not dest.exists() and not (tmp_path / 'w.caffemodel.gdown').exists()
    weights.download_gdown('https://drive.google.com/uc?id=X', dest, size=10, fetch_file=fetch_file)
    assert dest.read_bytes() == b'x' * 10

    def offline(**kwargs):
        raise OSError('Failed to resolve drive.google.com')
    with pytest.raises(project.InputError, match='cannot download .* put it at'):
        weights.download_gdown('https://drive.google.com/uc?id=X', tmp_path / 'o', fetch_file=offline)


def test_narrow_train_net_on_generated_ade20k(tmp_path, monkeypatch):
    """The train net with its real data layer (generated ADE20K files): both losses, the
    labels sampled to F x F, gradients reaching the stem (MSRA-initialised convolutions,
    pspnet_init_bn making the fresh BatchNorm layers the identity)."""
    import datasets
    monkeypatch.setenv('FCN_DATA_ROOT', str(tmp_path))
    datasets.make_ade20k(tmp_path, split='training')
    param = net.pspnet('train', depth=50, num_classes=150, crop=CROP, stride_on='1x1_reduce',
                       dataset='ade20k', widths=NARROW, blocks=BLOCKS)
    path = tmp_path / 'train.prototxt'
    path.write_text(str(param))
    cn = caffe.Net(str(path), caffe.TRAIN)
    assert len(surgery.pspnet_init_bn(cn)) == sum(1 for l in param.layer if l.type == 'BatchNorm')
    surgery.pspnet_interp(cn)
    cn.forward()
    assert tuple(cn.blobs['label_shrink'].data.shape) == (1, 1, 12, 12)
    assert np.array_equal(cn.blobs['label_shrink'].data[0, 0], cn.blobs['label'].data[0, 0, ::8, ::8])
    loss, aux = float(cn.blobs['loss'].data), float(cn.blobs['loss_aux'].data)
    assert np.isfinite(loss) and np.isfinite(aux) and loss > 0 and aux > 0
    cn.backward()  # the class scorers start at zero (as in the FCNs): only they learn first
    assert np.abs(cn.params['conv6'][0].diff).max() > 0 and np.abs(cn.params['conv6_1'][0].diff).max() > 0
    assert np.abs(cn.params['conv1_1_3x3_s2'][0].diff).max() == 0
    cn.params['conv6'][0].data[...] = np.random.default_rng(0).normal(0, 0.1, cn.params['conv6'][0].data.shape)
    cn.forward()
    cn.backward()
    assert np.abs(cn.params['conv1_1_3x3_s2'][0].diff).max() > 0


def released_types(layer, fork_type):
    """The type strings of the released caffemodels (the training fork's names)."""
    if fork_type == 'BN':
        return 'BNData'
    if fork_type == 'Convolution':
        dilated = any(d > 1 for d in layer.convolution_param.dilation)
        return 'HoleConvolutionData' if dilated else 'ConvolutionData'
    return fork_type


def test_convert_matches_layers_by_name_whatever_the_fork_type_string(tmp_path):
    """The released files name their types BNData, ConvolutionData, HoleConvolutionData
    (as the training fork did): matched by name and blobs, they convert to the same
    weights as the `BN` / `Convolution` layout."""
    target = narrow(aux=True)
    shapes = param_shapes(tmp_path, target)
    plain, released = tmp_path / 'plain.caffemodel', tmp_path / 'released.caffemodel'
    fork_caffemodel(target, shapes, plain)
    fork_caffemodel(target, shapes, released, type_of=released_types)
    stored = {l.type for l in surgery._fork_layers(str(released))}
    assert {'BNData', 'ConvolutionData', 'HoleConvolutionData'} <= stored and 'BN' not in stored
    a = surgery.convert_fork_bn(plain, target, tmp_path / 'a.caffemodel', quiet=True)
    b = surgery.convert_fork_bn(released, target, tmp_path / 'b.caffemodel', quiet=True)
    assert a.bn == b.bn and a.copied == b.copied and b.bn
    assert (tmp_path / 'a.caffemodel').read_bytes() == (tmp_path / 'b.caffemodel').read_bytes()


def _edit_blob(src, dst, layer_name, index, edit):
    """Copy caffemodel `src` to `dst` with blob `index` of layer `layer_name` changed by
    edit(blob) (the fork's unknown fields are kept by the parser)."""
    param = netload.read_proto(str(src), caffe.proto.caffe_pb2.NetParameter())
    layer = next(l for l in param.layer if l.name == layer_name)
    edit(layer.blobs[index])
    dst.write_bytes(param.SerializeToString())


def test_convert_checks_value_counts_and_reads_double_data(tmp_path):
    """A blob whose values do not fill its shape was repeated cyclically (a short one), a
    double_data blob became zeros, one BN variance was broadcast: each is refused in one
    line naming the file, the layer and the blob; a whole double_data blob is read."""
    target = narrow(aux=True)
    src = tmp_path / 'fork.caffemodel'
    values = fork_caffemodel(target, param_shapes(tmp_path, target), src, type_of=released_types)
    out = tmp_path / 'out.caffemodel'

    def short(b):
        del b.data[len(b.data) // 2:]

    def as_double(b):
        b.double_data[:] = list(b.data)
        del b.data[:]

    def one_var(b):
        del b.data[1:]

    def double_short(b):
        as_double(b)
        del b.double_data[1:]

    bad = tmp_path / 'bad.caffemodel'
    for layer, index, edit, blob in (('conv6', 0, short, 0), ('conv1_1_3x3_s2/bn', 3, one_var, 3),
                                     ('conv5_2', 0, double_short, 0)):
        _edit_blob(src, bad, layer, index, edit)
        with pytest.raises(project.InputError, match=r"bad\.caffemodel: layer '%s' blob %d holds \d+ "
                           r"values, its shape" % (layer, blob)):
            surgery.convert_fork_bn(bad, target, out, quiet=True)
        assert not out.exists()
    _edit_blob(src, bad, 'conv6', 0, as_double)
    surgery.convert_fork_bn(bad, target, out, quiet=True)
    n, _ = caffe_net(tmp_path, target, 'loaded')
    n.copy_from(str(out))
    np.testing.assert_allclose(n.params['conv6'][0].data, values['conv6'][0].reshape(
        n.params['conv6'][0].data.shape), rtol=1e-6)
    assert np.abs(n.params['conv6'][0].data).max() > 0
