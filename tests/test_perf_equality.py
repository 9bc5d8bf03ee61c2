"""The project's Caffe computes what plain Caffe computes: forward and backward of small
FCNs checked against an independent numpy reference.

The speed patches in tools/caffe-patches/ (convolution in bands of output rows, blocked
deconvolution, OpenMP loops) must not change any number beyond float rounding. Rather
than comparing two Caffe builds, every value here is checked against a direct numpy
implementation of the same layers (convolution as a sum of shifted matrix products, no
im2col; deconvolution as a scatter-add; Caffe's max pooling, crop, sum, softmax loss) in
float64, so the test means the same with any build installed, patched or not.

The nets: the project's own FCN-8s (net.py) at narrow widths and an odd input, big
enough that the patched code takes each of its paths (several row bands per thread,
the whole-buffer path of the deep layers, 1x1 convolutions, blocked deconvolution); and
a small net with what FCN-8s lacks: stride 4, groups, dilation, a strided 1x1, a padded
grouped deconvolution with bias. Forward outputs, the loss, every parameter gradient and
the input gradient are compared, with Caffe's threads and with one thread (subprocess,
OMP_NUM_THREADS=1), and a process forked after Caffe ran its threads must still run a net
(GNU OpenMP's thread pool does not survive fork).

The 3 x 3 convolutions with 16 or more input channels, dilated ones too, go through
Winograd's F(4x4, 3x3) (tools/caffe-patches/05-winograd.patch); FCN_CAFFE_WINOGRAD=2 gives
F(2x2, 3x3), 0 the direct way: every way is checked against the same reference, on FCN-8s
and on single convolutions whose sizes, pads and dilations cut the tiles every way (odd
sizes, pads 0-6, dilations 2, 4, 6 with sub-grids not a multiple of the tile, outputs of
one pixel, leaky ReLU fused), forward and input gradient, also a block of channels at a
time as the largest layers are (FCN_CAFFE_WINOGRAD_U_MB); and F(4x4)'s error bound, 1e-5 of
the largest output, at the channel counts of the registry's nets (64 to 2048).
No timing here: tools/bench.py measures speed. About 15 s.
"""
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest

import guard
import net
import project

caffe = guard.import_caffe()
from caffe import layers as L, params as P  # noqa: E402

RTOL = 2e-5  # of the largest magnitude of each compared array (float32 vs float64)


# ---------------------------------------------------------------------------
# numpy reference: layers on C x H x W arrays (batch of one), float64.

def _conv_geometry(p, nd=2):
    def pick(values, default):
        values = list(values) or [default]
        return values * nd if len(values) == 1 else values
    return (pick(p.kernel_size, None), pick(p.stride, 1), pick(p.pad, 0), pick(p.dilation, 1),
            max(1, p.group))


def conv_forward(x, w, b, p):
    """Caffe Convolution: cross-correlation with zero padding, stride, dilation, groups."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw), g = _conv_geometry(p)
    c, h, wd = x.shape
    m = w.shape[0]
    ho = (h + 2 * ph - (dh * (kh - 1) + 1)) // sh + 1
    wo = (wd + 2 * pw - (dw * (kw - 1) + 1)) // sw + 1
    xp = np.zeros((c, h + 2 * ph, wd + 2 * pw))
    xp[:, ph:ph + h, pw:pw + wd] = x
    y = np.zeros((m, ho, wo))
    cg, mg = c // g, m // g
    for gi in range(g):
        for i in range(kh):
            for j in range(kw):
                xs = xp[gi * cg:(gi + 1) * cg, i * dh:i * dh + sh * (ho - 1) + 1:sh,
                        j * dw:j * dw + sw * (wo - 1) + 1:sw]
                y[gi * mg:(gi + 1) * mg] += np.tensordot(w[gi * mg:(gi + 1) * mg, :, i, j], xs, 1)
    if b is not None:
        y += b[:, None, None]
    return y


def conv_backward(x, w, dy, p):
    """(dx, dw, db) of conv_forward."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw), g = _conv_geometry(p)
    c, h, wd = x.shape
    m, ho, wo = dy.shape
    xp = np.zeros((c, h + 2 * ph, wd + 2 * pw))
    xp[:, ph:ph + h, pw:pw + wd] = x
    dxp = np.zeros_like(xp)
    dwt = np.zeros(w.shape)
    cg, mg = c // g, m // g
    for gi in range(g):
        cs, ms = slice(gi * cg, (gi + 1) * cg), slice(gi * mg, (gi + 1) * mg)
        for i in range(kh):
            for j in range(kw):
                win = (slice(i * dh, i * dh + sh * (ho - 1) + 1, sh),
                       slice(j * dw, j * dw + sw * (wo - 1) + 1, sw))
                dwt[ms, :, i, j] = np.tensordot(dy[ms], xp[(cs,) + win], ([1, 2], [1, 2]))
                dxp[(cs,) + win] += np.tensordot(w[ms, :, i, j], dy[ms], ([0], [0]))
    return dxp[:, ph:ph + h, pw:pw + wd], dwt, dy.sum(axis=(1, 2))


def deconv_forward(x, w, b, p):
    """Caffe Deconvolution: the transpose of conv_forward (weights C_in x C_out/g x kh x kw)."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw), g = _conv_geometry(p)
    c, h, wd = x.shape
    mg = w.shape[1]
    ho = sh * (h - 1) + dh * (kh - 1) + 1
    wo = sw * (wd - 1) + dw * (kw - 1) + 1
    y = np.zeros((mg * g, ho, wo))
    cg = c // g
    for gi in range(g):
        cs, ms = slice(gi * cg, (gi + 1) * cg), slice(gi * mg, (gi + 1) * mg)
        for i in range(kh):
            for j in range(kw):
                y[ms, i * dh:i * dh + sh * (h - 1) + 1:sh, j * dw:j * dw + sw * (wd - 1) + 1:sw] += \
                    np.tensordot(w[cs, :, i, j], x[cs], ([0], [0]))
    y = y[:, ph:ho - ph, pw:wo - pw]
    if b is not None:
        y += b[:, None, None]
    return y


def deconv_backward(x, w, dy, p):
    """(dx, dw, db) of deconv_forward."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw), g = _conv_geometry(p)
    c, h, wd = x.shape
    mg = w.shape[1]
    dyp = np.zeros((dy.shape[0], dy.shape[1] + 2 * ph, dy.shape[2] + 2 * pw))
    dyp[:, ph:ph + dy.shape[1], pw:pw + dy.shape[2]] = dy
    dx = np.zeros(x.shape)
    dwt = np.zeros(w.shape)
    cg = c // g
    for gi in range(g):
        cs, ms = slice(gi * cg, (gi + 1) * cg), slice(gi * mg, (gi + 1) * mg)
        for i in range(kh):
            for j in range(kw):
                win = dyp[ms, i * dh:i * dh + sh * (h - 1) + 1:sh, j * dw:j * dw + sw * (wd - 1) + 1:sw]
                dx[cs] += np.tensordot(w[cs, :, i, j], win, ([1], [0]))
                dwt[cs, :, i, j] = np.tensordot(x[cs], win, ([1, 2], [1, 2]))
    return dx, dwt, dy.sum(axis=(1, 2))


def pool_geometry(h, k, s, pad):
    """Caffe's pooled size: rounded up, the last window starting inside the image."""
    out = int(np.ceil((h + 2 * pad - k) / s)) + 1
    if pad and (out - 1) * s >= h + pad:
        out -= 1
    return out


def maxpool_forward(x, p):
    """Caffe MAX pooling with kernel == stride, no pad (the FCN pools): windows cut at the
    bottom/right edge, the first maximum in row-major order wins. Returns (y, argmax)."""
    k, s, pad = p.kernel_size, p.stride or 1, p.pad
    assert p.pool == P.Pooling.MAX and pad == 0 and k == s
    c, h, w = x.shape
    ho, wo = pool_geometry(h, k, s, pad), pool_geometry(w, k, s, pad)
    xp = np.full((c, ho * s, wo * s), -np.inf)
    xp[:, :h, :w] = x
    win = xp.reshape(c, ho, s, wo, s).transpose(0, 1, 3, 2, 4).reshape(c, ho, wo, s * s)
    a = win.argmax(axis=3)
    y = np.take_along_axis(win, a[..., None], 3)[..., 0]
    rows = np.arange(ho)[None, :, None] * s + a // s
    cols = np.arange(wo)[None, None, :] * s + a % s
    return y, rows * w + cols


def maxpool_backward(x_shape, arg, dy):
    dx = np.zeros(x_shape)
    c = x_shape[0]
    flat = dx.reshape(c, -1)
    for ci in range(c):
        np.add.at(flat[ci], arg[ci].ravel(), dy[ci].ravel())
    return dx


def crop_offsets(p, x_shape, ref_shape):
    axis = p.axis if p.HasField('axis') else 2
    offs = []
    for d in range(1, 3):  # spatial dims of C x H x W (axes 2, 3 of N x C x H x W)
        a = d + 1
        if a < axis:
            offs.append(0)
        else:
            offs.append(p.offset[0] if len(p.offset) == 1 else p.offset[a - axis] if p.offset else 0)
    return offs


def softmax_loss(score, label, ignore):
    """Caffe SoftmaxWithLoss, normalize false (batch of one): (loss, dscore)."""
    z = score - score.max(axis=0)
    e = np.exp(z)
    prob = e / e.sum(axis=0)
    valid = label != ignore
    lab = np.where(valid, label, 0).astype(np.int64)
    picked = np.take_along_axis(prob, lab[None], 0)[0]
    loss = -np.log(np.maximum(picked, np.finfo(np.float32).tiny))[valid].sum()
    d = prob.copy()
    np.put_along_axis(d, lab[None], np.take_along_axis(d, lab[None], 0) - 1, 0)
    d *= valid
    return loss, d


class Reference:
    """Run a NetParameter's layers in numpy, recording a tape for the backward pass.
    Blob names map to value ids, so in-place layers (ReLU) make new values as Caffe's
    split/in-place bookkeeping does."""

    def __init__(self, param, params, inputs):
        self.param, self.params = param, params
        self.values, self.tape, self.blob = [], [], {}
        for name, value in inputs.items():
            self.blob[name] = self._new(value)
        for layer in param.layer:
            self._forward(layer)

    def _new(self, value):
        self.values.append(value)
        return len(self.values) - 1

    def __getitem__(self, name):
        return self.values[self.blob[name]]

    def _forward(self, layer):
        t, ins = layer.type, [self.blob[b] for b in layer.bottom]
        xs = [self.values[i] for i in ins]
        ctx = None
        if t == 'Input':
            return
        if t == 'Convolution':
            w = self.params[layer.name]
            y = conv_forward(xs[0], w[0], w[1] if len(w) > 1 else None, layer.convolution_param)
        elif t == 'Deconvolution':
            w = self.params[layer.name]
            y = deconv_forward(xs[0], w[0], w[1] if len(w) > 1 else None, layer.convolution_param)
        elif t == 'ReLU':
            assert layer.relu_param.negative_slope == 0
            y = np.maximum(xs[0], 0)
        elif t == 'Pooling':
            y, ctx = maxpool_forward(xs[0], layer.pooling_param)
        elif t == 'Crop':
            oh, ow = crop_offsets(layer.crop_param, xs[0].shape, xs[1].shape)
            h, w = xs[1].shape[1:]
            y, ctx = xs[0][:, oh:oh + h, ow:ow + w], (oh, ow)
        elif t == 'Eltwise':
            assert layer.eltwise_param.operation == P.Eltwise.SUM and not layer.eltwise_param.coeff
            y = xs[0] + xs[1]
        elif t == 'SoftmaxWithLoss':
            lp = layer.loss_param
            assert lp.HasField('normalize') and not lp.normalize
            y, ctx = softmax_loss(xs[0], xs[1][0], lp.ignore_label)
        else:
            raise NotImplementedError(t)
        out = self._new(y)
        self.tape.append((layer, ins, out, ctx))
        self.blob[layer.top[0]] = out

    def backward(self, need_input=('data',)):
        """{param name: [grads]} and {input name: grad} of the (single) loss."""
        grad = {}
        pgrad = {}

        def add(i, g):
            grad[i] = grad[i] + g if i in grad else g

        for layer, ins, out, ctx in reversed(self.tape):
            t = layer.type
            if t == 'SoftmaxWithLoss':
                add(ins[0], ctx)
                continue
            if out not in grad:
                continue
            dy = grad[out]
            x = self.values[ins[0]]
            if t in ('Convolution', 'Deconvolution'):
                w = self.params[layer.name]
                f = conv_backward if t == 'Convolution' else deconv_backward
                dx, dw, db = f(x, w[0], dy, layer.convolution_param)
                pgrad[layer.name] = [dw, db][:len(w)]
                add(ins[0], dx)
            elif t == 'ReLU':
                add(ins[0], dy * (x > 0))
            elif t == 'Pooling':
                add(ins[0], maxpool_backward(x.shape, ctx, dy))
            elif t == 'Crop':
                dx = np.zeros(x.shape)
                oh, ow = ctx
                dx[:, oh:oh + dy.shape[1], ow:ow + dy.shape[2]] = dy
                add(ins[0], dx)
            elif t == 'Eltwise':
                add(ins[0], dy)
                add(ins[1], dy)
        return pgrad, {name: grad.get(self.blob[name]) for name in need_input}


# ---------------------------------------------------------------------------
# Nets, Caffe side.

def instantiate(param, phase):
    with tempfile.NamedTemporaryFile('w', suffix='.prototxt', delete=False) as f:
        f.write(str(param))
    try:
        return caffe.Net(f.name, phase)
    finally:
        os.unlink(f.name)


def fill(net, rng):
    """He-scaled random weights (float32), small random biases, bilinear-free deconvs."""
    values = {}
    for name, blobs in net.params.items():
        vs = []
        for i, blob in enumerate(blobs):
            shape = blob.data.shape
            if i == 0:
                fan_in = int(np.prod(shape[1:]))
                v = rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)
            else:
                v = rng.standard_normal(shape) * 0.1
            blob.data[...] = v
            vs.append(blob.data.astype(np.float64))
        values[name] = vs
    return values


def fcn8s_param(split, h, w, widths=(16, 16, 32, 32, 32, 64), classes=21):
    """The project's FCN-8s (net.py), narrow, with Input layers and no Dropout."""
    src = net.voc_fcn('8s', 'deploy' if split == 'deploy' else 'train', num_classes=classes,
                      widths=widths, data_layer='X', data_params={})
    param = caffe.proto.caffe_pb2.NetParameter()
    inputs = [('data', [1, 3, h, w])] + ([('label', [1, 1, h, w])] if split != 'deploy' else [])
    for name, dims in inputs:
        layer = param.layer.add(name=name, type='Input', top=[name])
        layer.input_param.shape.add(dim=dims)
    for layer in src.layer:
        if layer.type not in ('Python', 'Input', 'Dropout'):
            param.layer.add().CopyFrom(layer)
    return param


def odd_param(h, w, classes=5):
    """What FCN-8s lacks: stride 4, groups, dilation, a strided 1x1, a padded grouped
    deconvolution with bias, then a crop to the input and the loss."""
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 6, h, w]))
    n.label = L.Input(shape=dict(dim=[1, 1, h, w]))
    n.c1 = L.Convolution(n.data, num_output=16, kernel_size=11, stride=4, pad=20)
    n.r1 = L.ReLU(n.c1, in_place=True)
    n.c2 = L.Convolution(n.r1, num_output=32, kernel_size=3, group=2, dilation=2, pad=2)
    n.r2 = L.ReLU(n.c2, in_place=True)
    n.c3 = L.Convolution(n.r2, num_output=24, kernel_size=1, stride=2)
    n.c4 = L.Convolution(n.c3, num_output=64, kernel_size=5)
    n.r4 = L.ReLU(n.c4, in_place=True)
    n.d1 = L.Deconvolution(n.r4, convolution_param=dict(num_output=8, kernel_size=4, stride=2,
                                                         pad=1, group=2))
    n.d2 = L.Deconvolution(n.d1, convolution_param=dict(num_output=classes, kernel_size=16,
                                                         stride=8, bias_term=False))
    n.score = L.Crop(n.d2, n.data, axis=2, offset=[30, 35])
    n.loss = L.SoftmaxWithLoss(n.score, n.label, loss_param=dict(normalize=False, ignore_label=255))
    param = n.to_proto()
    param.force_backward = True
    return param


def close(actual, expected, what, rtol=RTOL):
    actual = np.asarray(actual, np.float64)
    assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
    scale = max(np.abs(expected).max(), 1e-30)
    err = np.abs(actual - expected).max()
    assert err <= rtol * scale, '%s: max error %.3g, %.3g of the largest magnitude %.3g' % (
        what, err, err / scale, scale)


def run_case(param, with_loss, seed, check_blobs):
    rng = np.random.default_rng(seed)
    net = instantiate(param, caffe.TRAIN if with_loss else caffe.TEST)
    values = fill(net, rng)
    data = rng.standard_normal(net.blobs['data'].data.shape).astype(np.float32)
    net.blobs['data'].data[...] = data
    inputs = {'data': data[0].astype(np.float64)}
    if with_loss:
        shape = net.blobs['label'].data.shape
        label = rng.integers(0, net.blobs['score'].data.shape[1], shape)
        label[rng.random(shape) < 0.1] = 255  # void pixels
        net.blobs['label'].data[...] = label
        inputs['label'] = label[0].astype(np.float64)
    net.forward()
    ref = Reference(param, values, inputs)
    for name in check_blobs:
        close(net.blobs[name].data[0], ref[name], 'blob %s' % name)
    if not with_loss:
        return
    close(np.float64(net.blobs['loss'].data), np.float64(ref['loss']), 'loss')
    for blob in net.params.values():
        for b in blob:
            b.diff[...] = 0
    net.backward()
    pgrad, igrad = ref.backward()
    for name, grads in pgrad.items():
        specs = next(l for l in param.layer if l.name == name).param
        for i, g in enumerate(grads):
            if not param.force_backward and i < len(specs) and specs[i].lr_mult == 0:
                # fixed (the FCN upsamplings): Caffe computes no gradient
                assert not net.params[name][i].diff.any(), name
                continue
            close(net.params[name][i].diff, g, 'gradient of %s[%d]' % (name, i))
    if param.force_backward:
        close(net.blobs['data'].diff[0], igrad['data'], 'gradient of the input')


def test_fcn8s_forward_matches_numpy():
    # 500 x 500 would be the deploy size; an odd 37 x 53 keeps the reference fast while
    # conv1_1's pad of 100 still makes a 235 x 251 map (several row bands per thread).
    run_case(fcn8s_param('deploy', 37, 53), False, 0,
             ['conv1_2', 'pool2', 'conv4_3', 'fc6', 'fc7', 'fuse_pool4', 'upscore8', 'score'])


def test_fcn8s_forward_backward_matches_numpy():
    # As in training: no force_backward, so the fixed upsamplings compute no weight
    # gradient (their backward takes the banded path) and the input gets no gradient.
    run_case(fcn8s_param('train', 29, 41, widths=(8, 16, 16, 32, 32, 64)), True, 1,
             ['conv1_2', 'fc7', 'score'])


def test_strided_grouped_dilated_net_matches_numpy():
    run_case(odd_param(45, 51), True, 2, ['c1', 'c2', 'c3', 'c4', 'd1', 'score'])


def has_winograd():
    return '05-winograd.patch' in (guard.build_info().get('project_patches') or [])


@pytest.fixture
def direct_convolution(monkeypatch):
    """FCN_CAFFE_WINOGRAD=0: Caffe reads it at every call, so this process's nets compute
    the 3 x 3 convolutions the direct way (02's banded im2col + sgemm) from now on."""
    monkeypatch.setenv('FCN_CAFFE_WINOGRAD', '0')


def test_fcn8s_forward_direct_way_matches_numpy(direct_convolution):
    run_case(fcn8s_param('deploy', 37, 53), False, 0, ['conv1_2', 'conv4_3', 'fc7', 'score'])


def test_fcn8s_forward_backward_direct_way_matches_numpy(direct_convolution):
    run_case(fcn8s_param('train', 29, 41, widths=(8, 16, 16, 32, 32, 64)), True, 1,
             ['conv1_2', 'fc7', 'score'])


def conv3x3(channels, outputs, h, w, pad, slope, dilation=1):
    """One 3 x 3 convolution (+ an in-place leaky ReLU, fused by 03, unless slope is None)."""
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[1, channels, h, w]))
    n.conv = L.Convolution(n.data, num_output=outputs, kernel_size=3, pad=pad, dilation=dilation)
    if slope is not None:
        n.relu = L.ReLU(n.conv, in_place=True, negative_slope=slope)
    return n.to_proto()


# FCN_CAFFE_WINOGRAD: unset the default (F(4x4, 3x3)), 2 F(2x2, 3x3), 0 the direct way.
WAYS = (None, '2', '0')


def check_3x3(channels, outputs, h, w, pad, slope, dilation=1, ways=WAYS, rtol=RTOL):
    """Output and input gradient of one 3 x 3 convolution against the reference, each way
    of WAYS; returns {way: (output, input gradient)}."""
    param = conv3x3(channels, outputs, h, w, pad, slope, dilation)
    param.force_backward = True
    rng = np.random.default_rng(channels * 1000 + h * 10 + w + dilation)
    net = instantiate(param, caffe.TRAIN)
    values = fill(net, rng)
    x = rng.standard_normal(net.blobs['data'].data.shape).astype(np.float32)
    net.blobs['data'].data[...] = x
    p = param.layer[1].convolution_param
    x64, w64 = x[0].astype(np.float64), values['conv'][0]
    ref = conv_forward(x64, w64, values['conv'][1], p)
    if slope is not None:
        ref = np.maximum(ref, 0) + slope * np.minimum(ref, 0)
    dy = rng.standard_normal(ref.shape).astype(np.float32)
    dpre = dy * np.where(ref > 0, 1.0, slope or 0.0) if slope is not None else dy
    ref_dx = conv_backward(x64, w64, dpre.astype(np.float64), p)[0]
    got = {}
    saved = os.environ.get('FCN_CAFFE_WINOGRAD')
    try:
        for way in ways:
            os.environ.pop('FCN_CAFFE_WINOGRAD', None)
            if way is not None:
                os.environ['FCN_CAFFE_WINOGRAD'] = way
            out = net.forward()['conv'][0].copy()
            close(out, ref, 'output, FCN_CAFFE_WINOGRAD=%s' % way, rtol)
            net.blobs['conv'].diff[0] = dy
            net.backward()
            dx = net.blobs['data'].diff[0].copy()
            close(dx, ref_dx, 'input gradient, FCN_CAFFE_WINOGRAD=%s' % way, rtol)
            got[way] = out, dx
    finally:
        os.environ.pop('FCN_CAFFE_WINOGRAD', None)
        if saved is not None:
            os.environ['FCN_CAFFE_WINOGRAD'] = saved
    return got


@pytest.mark.parametrize('channels,outputs,h,w,pad,slope,dilation', [
    (16, 8, 5, 5, 1, None, 1),      # the fewest channels Winograd takes; odd output: cut tiles
    (16, 16, 6, 7, 1, 0.0, 1),      # rows a multiple of 2, not of 4; ReLU; gradient Winograd too
    (32, 17, 9, 4, 0, 0.1, 1),      # no padding (7 x 2 output; gradient padding 2); leaky ReLU
    (24, 20, 3, 3, 2, None, 1),     # padding wider than a tile's overlap (gradient padding 0)
    (16, 16, 2, 9, 3, 0.0, 1),      # more padding than image rows (gradient: the direct way)
    (20, 3, 1, 1, 1, None, 1),      # a 1 x 1 output: one tile, mostly cut
    (64, 48, 61, 37, 1, 0.0, 1),    # several bands per thread, tiles cut both ways
    (15, 8, 9, 9, 1, None, 1),      # one channel too few: the direct way
    (16, 24, 19, 23, 2, 0.0, 2),    # dilation 2: 2 x 2 sub-grids of 9-12 outputs per side
    (24, 16, 21, 18, 1, None, 2),   # dilation 2, padding 1: a 19 x 16 output
    (16, 16, 22, 21, 0, 0.1, 2),    # dilation 2, no padding (gradient padding 4)
    (16, 20, 37, 33, 4, 0.0, 4),    # dilation 4: sub-grids of 8-10 outputs per side
    (16, 16, 50, 53, 6, None, 6),   # dilation 6 (ASPP): sub-grids of 8-9 outputs per side
    (16, 16, 29, 29, 4, None, 4),   # dilation 4, sub-grids under 8 outputs: the direct way
])
def test_3x3_convolutions_match_numpy(channels, outputs, h, w, pad, slope, dilation):
    """Output and input gradient (Winograd takes the gradient where the layer has at least
    16 outputs and a padding of at most twice the dilation) against the reference, every
    way."""
    got = check_3x3(channels, outputs, h, w, pad, slope, dilation)
    subgrids = min(h, w) + 2 * pad - 2 * dilation >= 8 * dilation  # 05's smallest sub-grid
    if has_winograd() and channels >= 16 and h * w > 100 and subgrids:
        # The ways really differ: the same values up to rounding, not bit for bit (tiny
        # maps, mostly padding, can round alike).
        for a, b in ((None, '0'), ('2', '0'), (None, '2')):
            assert not np.array_equal(got[a][0], got[b][0]), (a, b)
            if outputs >= 16 and pad <= 2 * dilation:
                assert not np.array_equal(got[a][1], got[b][1]), (a, b)


@pytest.mark.parametrize('channels,h,dilation', [
    (64, 40, 1),      # FCN's conv1_2 / ResNet's layer1 width
    (512, 24, 1),     # FCN's conv4-5, ResNet's layer4 bottleneck 3 x 3
    (512, 36, 4),     # PSPNet / DeepLab layer4 with dilation 4
    (2048, 50, 6),    # DeepLabv3's ASPP: 2048 inputs, dilation 6
])
def test_winograd_error_within_1e5_at_real_widths(channels, h, dilation):
    """The stated bound: at most 1e-5 of the largest output against float64, with the
    channel counts of the registry's nets, He-scaled weights and ReLU-like inputs
    (05's header: F(4x4) errs about 2e-6 here, 1.3e-5 at 2048 channels with the channel
    sum in one sgemm; a wrong transform errs by the outputs' own size)."""
    param = conv3x3(channels, 16, h, h, dilation, None, dilation)
    rng = np.random.default_rng(channels + dilation)
    net = instantiate(param, caffe.TEST)
    values = fill(net, rng)
    x = np.maximum(rng.standard_normal(net.blobs['data'].data.shape), 0).astype(np.float32)
    net.blobs['data'].data[...] = x
    ref = conv_forward(x[0].astype(np.float64), values['conv'][0], values['conv'][1],
                       param.layer[1].convolution_param)
    saved = os.environ.pop('FCN_CAFFE_WINOGRAD', None)  # the default: F(4x4)
    try:
        close(net.forward()['conv'][0], ref, 'output', rtol=1e-5)
    finally:
        os.environ.pop('FCN_CAFFE_WINOGRAD', None)
        if saved is not None:
            os.environ['FCN_CAFFE_WINOGRAD'] = saved


@pytest.mark.parametrize('channels,outputs,h,dilation,slope,u_mb', [
    (512, 32, 16, 1, 0.0, '2'),    # output: 2 blocks of 256 inputs; gradient: 2 of 256 outputs
    (64, 256, 20, 1, 0.1, '1'),    # output: 3 blocks of at most 96 outputs; gradient: 4 of 16
    (32, 640, 24, 2, None, '1'),   # dilated; output: 3 blocks of outputs; gradient: 5 of inputs
])
def test_winograd_in_blocks_matches_numpy(channels, outputs, h, dilation, slope, u_mb,
                                          monkeypatch):
    """05 keeps the transformed kernels (36 x outputs x inputs floats) under 64 MB: a layer
    with more (PSPNet's conv5_4) is computed a block of input channels, or of output
    channels, at a time. FCN_CAFFE_WINOGRAD_U_MB (MB, read at every call) lowers the bound
    so that these small layers take both ways, forward and input gradient: the reference's
    numbers, and those of the layer in one block."""
    whole = check_3x3(channels, outputs, h, h, dilation, slope, dilation, ways=(None,))[None]
    monkeypatch.setenv('FCN_CAFFE_WINOGRAD_U_MB', u_mb)
    blocked = check_3x3(channels, outputs, h, h, dilation, slope, dilation, ways=(None,))[None]
    for got, want, what in zip(blocked, whole, ('output', 'input gradient')):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6 * np.abs(want).max(),
                                   err_msg=what)


def test_3x3_convolution_batch_of_two():
    """Each image of a batch through the Winograd way gives what it gives alone."""
    param = conv3x3(32, 24, 19, 23, 1, 0.0)
    param.layer[0].input_param.shape[0].dim[0] = 2
    net = instantiate(param, caffe.TEST)
    fill(net, np.random.default_rng(5))
    x = np.random.default_rng(6).standard_normal(net.blobs['data'].data.shape)
    net.blobs['data'].data[...] = x
    both = net.forward()['conv'].copy()
    for i in range(2):
        net.blobs['data'].data[...] = x[i]
        close(both[i], net.forward()['conv'][0].astype(np.float64), 'image %d' % i, rtol=0)


def test_one_thread_gives_the_same_numbers(tmp_path):
    """OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 (the serial paths: one band after another,
    no per-thread gradient copies), in a subprocess: the same checks pass."""
    code = ('import sys; sys.path[:0] = [%r, %r]; import test_perf_equality as t; '
            't.test_fcn8s_forward_matches_numpy(); t.test_fcn8s_forward_backward_matches_numpy(); '
            't.test_strided_grouped_dilated_net_matches_numpy(); '
            't.check_3x3(64, 48, 61, 37, 1, 0.0); t.check_3x3(16, 24, 19, 23, 2, 0.0, 2); '
            'print("ok")'
            % (project.REPO, os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, OMP_NUM_THREADS='1', OPENBLAS_NUM_THREADS='1', GLOG_minloglevel='2')
    out = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True,
                         cwd=str(tmp_path))
    assert out.returncode == 0 and 'ok' in out.stdout, (out.stdout + out.stderr)[-3000:]


@pytest.mark.parametrize('isa', ['avx2', 'baseline'])
def test_narrower_winograd_kernels_give_the_same_numbers(isa, tmp_path):
    """05 compiles its transforms for AVX-512, AVX2 and the baseline x86-64 and takes the
    widest the CPU has; FCN_CAFFE_WINOGRAD_ISA (read once per process, hence a
    subprocess) caps it, so that the narrower ones are checked on a CPU that has all."""
    code = ('import sys; sys.path[:0] = [%r, %r]; import test_perf_equality as t; '
            't.check_3x3(64, 48, 61, 37, 1, 0.0); t.check_3x3(16, 24, 19, 23, 2, 0.0, 2); '
            't.check_3x3(24, 20, 3, 3, 2, None); print("ok")'
            % (project.REPO, os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, FCN_CAFFE_WINOGRAD_ISA=isa, GLOG_minloglevel='2')
    out = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True,
                         cwd=str(tmp_path))
    assert out.returncode == 0 and 'ok' in out.stdout, (out.stdout + out.stderr)[-3000:]


def test_forked_child_runs_the_net():
    """GNU OpenMP's threads do not survive fork(): a child forked after the parent ran
    Caffe's parallel loops must still run a net (the patches make it use one thread)
    and get the same numbers, not hang in its first parallel region."""
    net = instantiate(fcn8s_param('deploy', 37, 53), caffe.TEST)
    fill(net, np.random.default_rng(3))
    net.blobs['data'].data[...] = np.random.default_rng(4).standard_normal(
        net.blobs['data'].data.shape)
    expected = net.forward()['score'].copy()
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 1
        try:
            got = net.forward()['score']
            code = 0 if np.abs(got - expected).max() <= RTOL * np.abs(expected).max() else 3
        finally:
            os._exit(code)
    deadline = time.time() + 120
    while time.time() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
            return
        time.sleep(0.1)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    pytest.fail('the forked child did not finish a forward pass in 120 s (hung)')
