"""Blobs sharing memory in nets that only run forward (tools/caffe-patches/
06-forward-memory.patch, netload.share_memory): the outputs are bit for bit those of the
same net without sharing, at the prototxt's size and after reshapes to other sizes; the
blobs the project reads after a pass (outputs, data layers' tops, `keep`) hold their
values; nets that run backward are left alone."""
import numpy as np

import guard
import netinit
import netload
import predict
from test_bnfold import chain_net, forward, saved
from test_export import narrow

caffe = guard.import_caffe()
L = caffe.layers


def pointers(n_):
    """{blob: address of its data} (the arrays pycaffe gives wrap Caffe's memory)."""
    return {k: b.data.__array_interface__['data'][0] for k, b in n_.blobs.items() if b.count}


def unshared(path, weights, finish=()):
    """The folded net as open_net(forward_only=True) gives it, but without sharing."""
    plain = netload.open_net(path, 'test', weights, finish=finish)
    return netload.fold_batchnorm(plain, netinit.read_net_param(path))[0]


def test_the_project_caffe_can_share():
    assert hasattr(caffe.Net, '_share_forward_memory')  # built with 06-forward-memory.patch


def test_narrow_resnet_nets_same_outputs_bit_for_bit(tmp_path):
    for name in ('pspnet101-voc2012', 'deeplabv2-voc12', 'deeplabv3-voc12'):
        folder = tmp_path / name
        folder.mkdir()
        path, weights = saved(folder, narrow(name))
        alone = unshared(path, weights, ('align-corners',))
        shared = netload.open_net(path, 'test', weights, finish=('align-corners',), forward_only=True)
        before = pointers(shared)
        assert len(set(before.values())) < len(before) / 3  # most blobs take turns
        assert len(set(pointers(alone).values())) > len(before) / 2  # (Splits share anyway)
        for seed in (1, 2):  # a second pass reuses the buffers the first left dirty
            want, got = forward(alone, seed), forward(shared, seed)
            assert all(np.array_equal(want[k], got[k]) for k in want), name


def test_reshapes_between_images_and_kept_blobs(tmp_path):
    """infer.py reshapes the net per image: bigger, smaller, back; with net.reshape()
    (predict.forward_logits) and without it (the layers reshape during the pass, a
    bigger blob then takes memory of its own until the next pass shares it again)."""
    path, weights = saved(tmp_path, chain_net())
    alone = unshared(path, weights)
    shared = netload.open_net(path, 'test', weights, forward_only=True, keep=['s3', 'c4'])
    for h, w in ((11, 13), (40, 33), (20, 7), (40, 33), (11, 13), (64, 64)):
        for whole in (True, False):
            for n_ in (alone, shared):
                n_.blobs['data'].reshape(1, 3, h, w)
                if whole:
                    n_.reshape()
            want, got = forward(alone, h + w), forward(shared, h + w)
            assert np.array_equal(want['score'], got['score']), (h, w, whole)
            for k in ('s3', 'c4', 'data'):  # kept, and the input
                assert np.array_equal(alone.blobs[k].data, shared.blobs[k].data), k


def test_predict_engine_on_a_shared_net(tmp_path):
    path, weights = saved(tmp_path, chain_net())
    alone = unshared(path, weights)
    shared = netload.open_net(path, 'test', weights, forward_only=True)
    rng = np.random.default_rng(0)
    for h, w in ((11, 13), (37, 21), (11, 13)):
        image = rng.normal(0, 50, (3, h, w)).astype(np.float32)
        assert np.array_equal(predict.forward_logits(alone, image, 'score'),
                              predict.forward_logits(shared, image, 'score'))


def test_nets_that_run_backward_do_not_share(tmp_path):
    path, weights = saved(tmp_path, chain_net())
    train = netload.open_net(path, 'train', weights, forward_only=True)  # train: never folded or shared
    assert len(set(pointers(train).values())) > 10
    param = chain_net()
    param.force_backward = True
    (tmp_path / 'fb.prototxt').write_text(str(param))
    net = netload.open_net(str(tmp_path / 'fb.prototxt'), 'test', weights)
    assert netload.share_memory(net) is False
