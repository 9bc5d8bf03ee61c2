"""Nets opened for inference are built folded straight from the prototxt and the
caffemodel (netload.open_folded), never as written: the folded weights are bit for bit
those of folding the net as written (netload.fold_batchnorm), and every bad caffemodel
is refused with the same message as when the net as written is opened."""
import numpy as np
import pytest

import guard
import netinit
import netload
from project import InputError
from test_bnfold import chain_net, saved
from test_export import narrow

caffe = guard.import_caffe()


def folded_as_before(path, weights, partial=False):
    """The net as written, weights copied, then folded: what open_net gave before."""
    plain = netload.open_net(path, 'test', weights, partial=partial)
    return netload.fold_batchnorm(plain, netinit.read_net_param(path))[0]


def assert_same_params(want, got):
    assert list(want.params) == list(got.params)
    for name in want.params:
        for a, b in zip(want.params[name], got.params[name]):
            assert np.array_equal(a.data, b.data), name


def built_from_temporary_files_only(net):
    """caffe.Net that refuses the prototxt as written (deploy.prototxt): the folded net
    is built from its own temporary prototxt."""
    def build(path, *args):
        assert not str(path).endswith('deploy.prototxt'), 'the net as written was built'
        return net(path, *args)
    return build


@pytest.mark.parametrize('which', ['chain', 'deeplabv2-voc12'])
def test_folded_weights_are_those_of_folding_the_net_as_written(which, tmp_path, monkeypatch):
    path, weights = saved(tmp_path, chain_net() if which == 'chain' else narrow(which))
    monkeypatch.setattr(caffe, 'Net', built_from_temporary_files_only(caffe.Net))
    got = netload.open_net(path, 'test', weights, forward_only=True)
    monkeypatch.undo()
    assert_same_params(folded_as_before(path, weights), got)


def edited(tmp_path, weights, edit, name='bad.caffemodel'):
    """A copy of caffemodel `weights` changed by edit(NetParameter); its path."""
    param = netload.read_proto(weights, caffe.proto.caffe_pb2.NetParameter())
    edit(param)
    out = tmp_path / name
    out.write_bytes(param.SerializeToString())
    return str(out)


def layer(param, name):
    return next(l for l in param.layer if l.name == name)


def drop(name):
    return lambda p: p.layer.remove(layer(p, name))


def extra_blob(name):
    return lambda p: layer(p, name).blobs.add().CopyFrom(layer(p, name).blobs[0])


def reshape_blob(name, i, dims):
    def edit(p):
        b = layer(p, name).blobs[i]
        del b.shape.dim[:]
        b.shape.dim.extend(dims)
    return edit


def cut_values(name, i):
    return lambda p: layer(p, name).blobs[i].data.pop()


def relu_with_blobs(p):
    l = p.layer.add(name='r1', type='ReLU')
    l.blobs.add().CopyFrom(layer(p, 'c1').blobs[0])


def renamed(p):
    for l in p.layer:
        l.name = 'other_' + l.name


BAD = {'no BatchNorm': drop('b3'), 'no Scale': drop('sc1'), 'no convolution': drop('c2'),
       'bias blob for a conv without bias': extra_blob('c1'),
       'Scale bias blob missing': lambda p: layer(p, 'sc1').blobs.pop(),
       'BatchNorm factor shape': reshape_blob('bn1', 2, [2]),
       'BatchNorm mean shape': reshape_blob('b2', 0, [7]),
       'conv weights shape': reshape_blob('c3', 0, [5, 5, 1, 2]),
       'BatchNorm values cut': cut_values('b3', 1), 'conv values cut': cut_values('c1', 0),
       'ReLU with blobs': relu_with_blobs, 'another net': renamed}


@pytest.mark.parametrize('case', sorted(BAD))
def test_bad_caffemodels_are_refused_as_for_the_net_as_written(case, tmp_path):
    path, weights = saved(tmp_path, chain_net())
    bad = edited(tmp_path, weights, BAD[case])
    with pytest.raises(InputError) as written:
        netload.open_net(path, 'test', bad)
    with pytest.raises(InputError) as folded:
        netload.open_net(path, 'test', bad, forward_only=True)
    assert str(folded.value) == str(written.value)


def test_a_partial_file_without_part_of_a_fold_folds_as_before(tmp_path):
    """A fold whose Scale the file leaves out takes the Scale's initial values, as
    folding the net as written does."""
    path, weights = saved(tmp_path, chain_net())
    part = edited(tmp_path, weights, drop('s3'), 'part.caffemodel')
    got = netload.open_net(path, 'test', part, partial=True, forward_only=True)
    assert_same_params(folded_as_before(path, part, partial=True), got)
