"""BatchNorm (+ Scale) folded into the convolutions of nets opened for inference
(bnfold.py, netload.open_net(forward_only=True)): narrow PSPNet and DeepLab v2 / v3 deploy
nets with random statistics give the unfolded net's outputs within float rounding, and the
cases the folding must leave alone (a convolution output read twice, batch statistics)
stay as they are."""
import hashlib

import numpy as np
import pytest

import bnfold
import export
import guard
import netload
from test_export import narrow

caffe = guard.import_caffe()
L, P = caffe.layers, caffe.params
RESNET_MODELS = ('pspnet101-voc2012', 'pspnet50-ade20k', 'deeplabv2-voc12', 'deeplabv3-voc12')


def saved(tmp_path, param, seed=0):
    """(prototxt, caffemodel with export.random_weights: BN factor != 1, variances > 0)."""
    path = tmp_path / 'deploy.prototxt'
    path.write_text(str(param))
    n_ = caffe.Net(str(path), caffe.TEST)
    export.random_weights(n_, seed)
    n_.save(str(tmp_path / 'w.caffemodel'))
    return str(path), str(tmp_path / 'w.caffemodel')


def forward(n_, seed=1):
    """{output blob: copy} of one forward pass on a random input of the net's shape."""
    rng = np.random.default_rng(seed)
    for name in n_.inputs:
        n_.blobs[name].data[...] = rng.normal(0, 50, n_.blobs[name].data.shape)
    n_.forward()
    return {k: n_.blobs[k].data.copy() for k in n_.outputs}


def assert_close(want, got, rel=1e-5):
    assert set(want) == set(got)
    for k in want:
        err = np.abs(want[k] - got[k]).max() / np.abs(want[k]).max()
        print('%s: %.1e' % (k, err))
        assert err < rel, (k, err)


def types(n_):
    return [layer.type for layer in n_.layers]


@pytest.mark.parametrize('name', RESNET_MODELS)
def test_folded_narrow_nets_equal_the_unfolded(name, tmp_path):
    param = narrow(name)
    path, weights = saved(tmp_path, param)
    digest = hashlib.sha256(open(weights, 'rb').read()).hexdigest()
    plain = netload.open_net(path, 'test', weights, finish=('align-corners',))
    folded = netload.open_net(path, 'test', weights, finish=('align-corners',), forward_only=True)
    assert 'BatchNorm' in types(plain) and 'BatchNorm' not in types(folded)
    assert 'Scale' not in types(folded) or name == 'deeplabv3-voc12'  # v3: Scale by a blob
    assert list(folded.outputs) == list(plain.outputs)
    assert_close(forward(plain), forward(folded))
    assert hashlib.sha256(open(weights, 'rb').read()).hexdigest() == digest  # file untouched
    if name == 'deeplabv2-voc12':  # the scale branches fold to shared weights again
        w = {l.name: folded.params[l.name][0].data for l in param.layer if l.type == 'Convolution'}
        branches = [(k, k + s) for k in w for s in ('_res075', '_res05') if k + s in w]
        assert len(branches) > 10
        assert all(np.shares_memory(w[k], w[b]) for k, b in branches)


def chain_net(h=11, w=13):
    """Every case the folding meets: conv with and without bias, BN with and without
    Scale, BN not in place, a convolution output read by a second layer (no fold), BN
    with batch statistics (no fold), a Scale without bias."""
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 3, h, w]))
    n.c1 = L.Convolution(n.data, num_output=4, kernel_size=3, pad=1, bias_term=False)
    n.bn1 = L.BatchNorm(n.c1, in_place=True)  # in place: layer bn1, top c1
    n.sc1 = L.Scale(n.bn1, bias_term=True, in_place=True)
    n.r1 = L.ReLU(n.sc1, in_place=True)
    n.c2 = L.Convolution(n.r1, num_output=5, kernel_size=3, pad=2, dilation=2)
    n.b2 = L.BatchNorm(n.c2)  # not in place: the convolution takes its top b2
    n.c3 = L.Convolution(n.b2, num_output=5, kernel_size=1)
    n.b3 = L.BatchNorm(n.c3)
    n.s3 = L.Scale(n.b3, bias_term=False)
    n.c4 = L.Convolution(n.s3, num_output=6, kernel_size=3, pad=1, group=1)
    n.b4 = L.BatchNorm(n.c4)  # c4 is read by the sum too: no fold
    n.sum = L.Eltwise(n.b4, n.c4)
    n.c5 = L.Convolution(n.sum, num_output=3, kernel_size=1)
    n.bn5 = L.BatchNorm(n.c5, in_place=True, batch_norm_param=dict(use_global_stats=False))
    n.score = L.Convolution(n.bn5, num_output=2, kernel_size=1)
    return n.to_proto()


def test_plan_folds_what_it_may_and_leaves_the_rest(tmp_path):
    param = chain_net()
    names = lambda chain: tuple(param.layer[i].name if i is not None else None  # noqa: E731
                                for i in chain)
    assert [names(c) for c in bnfold.plan(param)] == [
        ('c1', 'bn1', 'sc1'), ('c2', 'b2', None), ('c3', 'b3', 's3')]
    out = bnfold.folded(param, bnfold.plan(param))
    assert [l.name for l in out.layer if l.type in ('BatchNorm', 'Scale')] == ['b4', 'bn5']
    tops = {l.name: list(l.top) for l in out.layer}
    assert tops['c1'] == ['c1'] and tops['c2'] == ['b2'] and tops['c3'] == ['s3']
    assert all(l.convolution_param.bias_term for l in out.layer if l.name in ('c1', 'c2', 'c3'))


def test_every_case_equal_and_after_reshapes(tmp_path):
    """Outputs equal at the prototxt's size, then after reshaping to others and back
    (infer.py reshapes the net per image)."""
    path, weights = saved(tmp_path, chain_net())
    plain = netload.open_net(path, 'test', weights)
    folded = netload.open_net(path, 'test', weights, forward_only=True)
    assert types(folded).count('BatchNorm') == 2  # b4 and the batch-statistics one
    for h, w in ((11, 13), (20, 7), (11, 13)):
        for n_ in (plain, folded):
            n_.blobs['data'].reshape(1, 3, h, w)
            n_.reshape()
        assert_close(forward(plain, h), forward(folded, h))


def test_training_and_unasked_nets_are_not_folded(tmp_path):
    path, weights = saved(tmp_path, chain_net())
    assert types(netload.open_net(path, 'test', weights)).count('BatchNorm') == 5
    assert types(netload.open_net(path, 'train', weights, forward_only=True)).count('BatchNorm') == 5


def test_arithmetic_is_caffes_batchnorm_and_scale():
    rng = np.random.default_rng(0)
    w, bias = rng.normal(size=(3, 2, 3, 3)), rng.normal(size=3)
    mean, var, factor = rng.normal(size=3) * 4, rng.uniform(1, 2, 3) * 4, 4.0
    x = rng.normal(size=(2, 3, 3))  # one patch: conv output = sum(w * x) + bias
    y = (w * x).sum(axis=(1, 2, 3)) + bias
    want = (y - mean / factor) / np.sqrt(var / factor + 1e-3)
    fw, fb = bnfold.fold_conv(w, bias, *bnfold.batchnorm_affine(mean, var, factor, 1e-3))
    assert np.allclose((fw * x).sum(axis=(1, 2, 3)) + fb, want)
    a, b = bnfold.batchnorm_affine(mean, var, 0.0)  # factor 0: statistics 0, as Caffe
    assert np.allclose(a, 1 / np.sqrt(1e-5)) and np.allclose(b, 0)
    fw, fb = bnfold.fold_conv(w, None, np.full(3, 2.0))  # no bias, no shift
    assert np.allclose(fw, 2 * w) and np.allclose(fb, 0)
