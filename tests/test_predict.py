"""predict.py, the protocol engine: MATLAB's bilinear imresize checked against hand-derived
values, and both protocols end to end (the registry's PSPNet spec on a narrow PSPNet and a
one-convolution net, an FCN's whole image) against a plain re-derivation of the release's
MATLAB evaluation written out with loops below."""
import dataclasses

import numpy as np
import pytest

import guard
import project
import models
import predict
from datasets import random_weights  # tests/datasets.py
from test_pspnet_eval import CROP, conv_net, conv_x, narrow_pspnet

caffe = guard.import_caffe()
PSP = models.get('pspnet50-ade20k')


# ----------------------------------------------------------------------------- imresize

def test_shrink_by_two_antialiased_weights():
    # 4 -> 2: scale 1/2, the triangle widened to 4 taps and halved: h(x) = (1 - |x| / 2) / 2.
    # Output 1 (1-based) sits at u = 1 / 0.5 + (1 - 2) / 2 = 1.5: taps at -1 .. 4 weigh
    # h(2.5) = 0, h(1.5) = 1/8, h(0.5) = 3/8, h(-0.5) = 3/8, h(-1.5) = 1/8, h(-2.5) = 0;
    # tap 0 mirrors onto pixel 1, so pixel 1 gets 1/8 + 3/8.
    np.testing.assert_allclose(predict.resize_weights(4, 2),
                               [[4 / 8, 3 / 8, 1 / 8, 0], [0, 1 / 8, 3 / 8, 4 / 8]])
    # MATLAB: imresize([1 2 3 4], [1 2]) = [1.625 3.375]
    np.testing.assert_allclose(predict.imresize(np.array([[1., 2., 3., 4.]]), (1, 2)),
                               [[1.625, 3.375]])
    # away from the edges every output averages 4 inputs with weights 1, 3, 3, 1 (/ 8)
    x = np.random.RandomState(0).rand(1, 8)
    got = predict.imresize(x, (1, 4))
    np.testing.assert_allclose(got[0, 1], (x[0, 1] + 3 * x[0, 2] + 3 * x[0, 3] + x[0, 4]) / 8,
                               rtol=1e-6)
    # shrinking by 3 averages the three pixels of the footprint equally (plus the mirror)
    np.testing.assert_allclose(predict.resize_weights(3, 1), [[1 / 3, 1 / 3, 1 / 3]])


def test_upsampling_is_half_pixel_bilinear_with_edge_replication():
    np.testing.assert_allclose(predict.resize_weights(2, 4),
                               [[1, 0], [0.75, 0.25], [0.25, 0.75], [0, 1]])
    rng = np.random.RandomState(1)
    x = rng.rand(5, 7, 2)
    got = predict.imresize(x, (13, 16))
    # output j samples the input at (j + 0.5) * n_in / n_out - 0.5, clamped at the edges
    ys, xs = (np.clip((np.arange(n) + 0.5) * m / n - 0.5, 0, m - 1) for n, m in ((13, 5), (16, 7)))
    want = np.empty((13, 16, 2))
    for c in range(2):
        rows = np.stack([np.interp(ys, np.arange(5), x[:, j, c]) for j in range(7)], 1)
        want[:, :, c] = np.stack([np.interp(xs, np.arange(7), r) for r in rows])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_constant_stays_constant_and_uint8_rounds():
    for size in ((3, 5), (11, 2), (40, 33), (1, 1)):
        for a in (np.full((7, 9, 3), 77, np.uint8), np.full((7, 9), 0.3, np.float32)):
            got = predict.imresize(a, size)
            assert got.dtype == a.dtype and got.shape[:2] == size
            np.testing.assert_allclose(got, a.flat[0], rtol=1e-6)
    # 2 -> 8 samples [0, 1] at 0, 0, .125, .375, .625, .875, 1, 1: uint8 rounds half up
    np.testing.assert_array_equal(predict.imresize(np.array([[0, 1]], np.uint8), (1, 8)),
                                  [[0, 0, 0, 0, 1, 1, 1, 1]])
    np.testing.assert_array_equal(predict.imresize(np.array([[0, 3]], np.uint8), (1, 4)),
                                  [[0, 1, 2, 3]])  # 0.75 -> 1, 2.25 -> 2


def test_release_sizes_and_padding_pixel():
    # the longer side base * s + 1; the other round(long / L * S), halves away from zero
    assert predict.release_size((375, 500), 513) == (385, 513)      # 384.75
    assert predict.release_size((1024, 2048), 2049) == (1025, 2049)  # 1024.5 -> 1025
    assert predict.release_size((600, 300), 257) == (257, 129)       # 128.5 -> 129
    prep = PSP.preprocess
    pixel = predict.mean_pixel(prep)
    assert tuple(pixel) == (124, 117, 104)  # R, G, B
    # after preprocessing (BGR minus the mean) the padding is not 0
    np.testing.assert_allclose(predict.preprocess(pixel.reshape(1, 1, 3), prep).ravel(),
                               (0.061, 0.221, 0.32), atol=1e-4)


# ----------------------------------------------------------------------------- the protocol, re-derived

def ref_resize_axis(x, n_out, axis, antialias=True):
    """MATLAB's imresize contributions along `axis`, one output pixel at a time."""
    x = np.moveaxis(np.asarray(x, np.float64), axis, 0)
    n_in = x.shape[0]
    scale = n_out / n_in
    wide = scale < 1 and antialias
    out = np.zeros((n_out,) + x.shape[1:])
    for i in range(1, n_out + 1):
        u = i / scale + 0.5 * (1 - 1 / scale)
        width = 2 / scale if wide else 2
        taps, weights = [], []
        first = int(np.floor(u - width / 2))
        for t in range(first, first + int(np.ceil(width)) + 2):
            d = u - t
            wt = scale * max(0, 1 - abs(scale * d)) if wide else max(0, 1 - abs(d))
            k = (t - 1) % (2 * n_in)  # mirror: 1..n, n..1
            taps.append(k if k < n_in else 2 * n_in - 1 - k)
            weights.append(wt)
        total = 0
        for wt in weights:
            total += wt
        for k, wt in zip(taps, weights):  # summed in tap order, as MATLAB's loop
            out[i - 1] += wt / total * x[k]
    return np.moveaxis(out, 0, axis)


def ref_imresize(a, size):
    scale = [size[0] / a.shape[0], size[1] / a.shape[1]]
    out = np.asarray(a, np.float64)
    for axis in ([0, 1] if scale[0] <= scale[1] else [1, 0]):
        if out.shape[axis] != size[axis]:
            out = ref_resize_axis(out, size[axis], axis)
            if a.dtype == np.uint8:
                out = np.minimum(np.floor(out + 0.5), 255)
    return out


def softmax(x):
    e = np.exp(x - x.max(0))
    return e / e.sum(0)


def ref_release(f, rgb, base, crop, scales, mean_bgr, flip=True):
    """eval_sub.m / scale_process.m / caffe_process.m / pre_img.m for network f
    (3 x crop x crop BGR float -> K x crop x crop logits), written out plainly."""
    h, w = rgb.shape[:2]
    mean_rgb = np.array(mean_bgr[::-1])

    def pre(img):  # H x W x 3 RGB -> 3 x H x W BGR minus the mean
        return (img.astype(np.float64) - mean_rgb)[:, :, ::-1].transpose(2, 0, 1)

    def window(x):
        logits = f(x)
        if flip:
            logits = logits + f(x[:, :, ::-1].copy())[:, :, ::-1]
        return softmax(logits)

    total = 0
    stride = int(np.ceil(crop * 2 / 3))
    for s in scales:
        long = int(base * s + 0.5) + 1
        if h > w:
            nh, nw = long, int(np.floor(np.float32(long) / np.float32(h) * np.float32(w) + 0.5))
        else:
            nh, nw = int(np.floor(np.float32(long) / np.float32(w) * np.float32(h) + 0.5)), long
        img = ref_imresize(rgb, (nh, nw)).astype(np.uint8)
        if max(nh, nw) <= crop:
            x = np.zeros((3, crop, crop))
            x[:, :nh, :nw] = pre(img)
            score = window(x)[:, :nh, :nw]
        else:
            ph, pw = max(nh, crop), max(nw, crop)
            padded = np.zeros((ph, pw, 3), np.uint8)
            padded[...] = np.floor(mean_rgb + 0.5).astype(np.uint8)
            padded[:nh, :nw] = img
            acc, count = 0, np.zeros((ph, pw))
            for gy in range(int(np.ceil((ph - crop) / stride)) + 1):
                for gx in range(int(np.ceil((pw - crop) / stride)) + 1):
                    ey, ex = min(gy * stride + crop, ph), min(gx * stride + crop, pw)
                    sy, sx = ey - crop, ex - crop
                    out = window(pre(padded[sy:ey, sx:ex]))
                    full = np.zeros((out.shape[0], ph, pw))
                    full[:, sy:ey, sx:ex] = out
                    acc = acc + full
                    count[sy:ey, sx:ex] += 1
            score = (acc / count)[:, :nh, :nw]
        back = ref_imresize(score.transpose(1, 2, 0), (h, w)).transpose(2, 0, 1)
        total = total + back / back.sum(0)
    return total / len(scales)


def protocol(base_size, scales=None):
    """The registry's PSPNet protocol at a base size fit for tiny images."""
    e = PSP.evaluation
    return dataclasses.replace(e, base_size=base_size, scales=tuple(scales or e.scales))


def test_sliding_protocol_on_a_one_convolution_net(tmp_path):
    """Windows, mirror, softmax, overlap mean, resize and renormalise, several scales:
    the net is a 1 x 3 convolution, computed in numpy for the reference."""
    rng = np.random.RandomState(0)
    w = rng.normal(size=(4, 3, 1, 3)).astype(np.float32)
    net = conv_net(tmp_path, w)
    net.blobs['data'].reshape(1, 3, 9, 9)  # the window: 9 x 9
    rgb = rng.randint(0, 256, (11, 17, 3)).astype(np.uint8)
    mean = PSP.preprocess.mean
    # long sides 7 (one padded window), 13 and 17 (windows, short side padded with the mean)
    for scales in ((0.5,), (1.0,), (0.5, 1.0, 1.25)):
        p = protocol(12, scales)
        got = predict.scores(net, rgb, p, PSP.preprocess, blob='score')
        want = ref_release(lambda x: conv_x(x, w), rgb, 12, 9, scales, mean)
        assert got.shape == (4, 11, 17) and got.dtype == np.float32
        np.testing.assert_allclose(got.sum(0), 1, rtol=1e-5)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    # at another size (a label's), still probabilities
    got = predict.scores(net, rgb, protocol(12), PSP.preprocess, blob='score', size=(5, 8))
    assert got.shape == (4, 5, 8)
    np.testing.assert_allclose(got.sum(0), 1, rtol=1e-5)


def test_sliding_protocol_on_a_narrow_pspnet(tmp_path):
    """The registry's PSPNet spec (its protocol, preprocessing, scored blob) on a narrow
    PSPNet: equal to the re-derivation around the same net's forward pass."""
    deploy, weights = narrow_pspnet(tmp_path, classes=5)
    net = caffe.Net(deploy, weights, caffe.TEST)
    blob = PSP.outputs[0].score

    def f(x):
        net.blobs['data'].reshape(1, *x.shape)
        net.blobs['data'].data[...] = x
        net.forward()
        return net.blobs[blob].data[0].astype(np.float64).copy()

    rgb = np.random.RandomState(2).randint(0, 256, (30, 50, 3)).astype(np.uint8)
    for scales in ((1.0,), (0.5, 1.25)):  # long sides 61 (4 windows) and 31, 76
        got = predict.scores(net, rgb, protocol(60, scales), PSP.preprocess, blob)
        want = ref_release(f, rgb, 60, CROP, scales, PSP.preprocess.mean)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    label = predict.labels(net, rgb, protocol(60), PSP.preprocess, blob, size=(30, 50))
    np.testing.assert_array_equal(label, want.argmax(0))


def test_whole_image_protocol_is_the_fcn_data_layers_pass(tmp_path):
    """An FCN: one pass on BGR minus the dataset's mean, logits as the net gives them."""
    rng = np.random.RandomState(3)
    w = rng.normal(size=(21, 3, 1, 3)).astype(np.float32)
    net = conv_net(tmp_path, w)
    spec = models.get('voc-fcn8s')
    rgb = rng.randint(0, 256, (13, 19, 3)).astype(np.uint8)
    got = predict.scores(net, rgb, spec.evaluation, spec.preprocess, blob='score')
    x = (rgb.astype(np.float64)[:, :, ::-1] - np.array(spec.preprocess.mean)).transpose(2, 0, 1)
    np.testing.assert_allclose(got, conv_x(x, w), rtol=1e-4, atol=1e-3)
    np.testing.assert_array_equal(
        predict.labels(net, rgb, spec.evaluation, spec.preprocess, 'score'),
        predict.segment(net, rgb, spec.preprocess.mean, 'score'))


def test_the_registry_says_how_each_model_is_evaluated():
    for name in models.names():
        spec = models.get(name)
        if spec.builder == 'pspnet':
            e = spec.evaluation
            assert (e.windows, e.flip, e.combine) == ('sliding', True, 'probabilities')
            assert e.scales == (1.0,) and e.multi_scales == (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
            assert spec.finish == ('bilinear', 'align-corners', 'bn-identity')
        elif spec.builder == 'deeplab_v2':  # the release's test: padded to 513, one pass
            assert spec.evaluation == models.Protocol(windows='padded')
            assert spec.finish == ('align-corners', 'bn-identity')
        elif spec.builder == 'deeplab_v3':  # padded to the deploy net's input
            assert spec.evaluation.windows == 'padded'
            assert spec.finish == (('bilinear',) if dict(spec.builder_args).get('variant') == 'torchvision'
                                   else ('align-corners', 'bn-identity'))
        else:
            assert spec.evaluation.windows == 'whole' and spec.finish == ('bilinear',)
    bases = {n: models.get(n).evaluation.base_size for n in models.names('pspnet')}
    assert bases == {'pspnet50-ade20k': 512, 'pspnet101-voc2012': 512, 'pspnet101-cityscapes': 2048}
    sides = {models.get(n).dataset: models.get(n).evaluation.side for n in models.names()
             if models.get(n).evaluation.windows == 'whole'}
    assert sides == {'voc': 500, 'pascalcontext': 500, 'nyud': 640, 'siftflow': 256}
    with pytest.raises(project.InputError, match='sliding windows need a base_size'):
        models.Protocol(windows='sliding')
    spec = models.from_dict(dict(models.to_dict(PSP), name='x'))
    assert spec.evaluation == PSP.evaluation and spec.finish == PSP.finish


# ----------------------------------------------------------------------------- tiles (infer --full-res)

def _conv_net(tmp_path, kernel=1):
    """A 1 x 1 (or k x k, padded) convolution: its output at a pixel depends only on
    that pixel (or a small neighbourhood), so windows can be checked exactly."""
    deploy = tmp_path / ('conv%d.prototxt' % kernel)
    deploy.write_text("""layer { name: "input" type: "Input" top: "data"
        input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }
layer { name: "score" type: "Convolution" bottom: "data" top: "score"
        convolution_param { num_output: 4 kernel_size: %d pad: %d } }
""" % (kernel, kernel // 2))
    return caffe.Net(str(deploy), str(random_weights(deploy, tmp_path / 'c.caffemodel')), caffe.TEST)


def test_sliding_logits(tmp_path):
    net = _conv_net(tmp_path)
    image = np.random.RandomState(8).randn(3, 23, 31).astype(np.float32)
    whole = predict.forward_logits(net, image)
    # pointwise net: every window gives the pixel the same logits, so the mean is exact
    for crop, stride in ((10, None), ((7, 12), 5), (40, None)):
        got = predict.sliding_logits(net, image, crop, stride)
        assert got.shape == (4, 23, 31) and got.dtype == np.float32
        np.testing.assert_allclose(got, whole, rtol=1e-5, atol=1e-5)
    # flip adds the mirrored window's logits (the same, mirrored back, for this net)
    np.testing.assert_allclose(predict.sliding_logits(net, image, 10, flip=True), 2 * whole,
                               rtol=1e-5, atol=1e-5)
    # a 3 x 3 net near window edges sees the padding: the overlap average is a real mean
    net3 = _conv_net(tmp_path, 3)
    small = image[:, :9, :9]
    got = predict.sliding_logits(net3, small, 6, 3)  # windows at 0 and 3 on each axis
    w = [predict.forward_logits(net3, np.ascontiguousarray(small[:, y:y + 6, x:x + 6]))
         for y in (0, 3) for x in (0, 3)]
    np.testing.assert_allclose(got[:, 0, 0], w[0][:, 0, 0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got[:, 4, 4], np.mean([w[0][:, 4, 4], w[1][:, 4, 1], w[2][:, 1, 4],
                                                      w[3][:, 1, 1]], axis=0), rtol=1e-5, atol=1e-5)
    # smaller than the crop: zero padding (the mean) bottom / right, cut back after
    padded = np.zeros((3, 12, 12), np.float32)
    padded[:, :9, :9] = small
    np.testing.assert_allclose(predict.sliding_logits(net3, small, 12),
                               predict.forward_logits(net3, padded)[:, :9, :9], rtol=1e-5, atol=1e-5)
    # windows every ceil(2/3 crop), the last flush with the edge
    assert predict.window_starts(31, 10, 7) == [0, 7, 14, 21]
    assert predict.window_starts(10, 10, 7) == [0]
