"""The project's pycaffe build: it imports on its own, computes right, and bad nets are
Python errors, never a Caffe abort."""
import os
import subprocess
import sys

import numpy as np
import pytest

import guard
import netload
import project

caffe = guard.import_caffe()
from caffe import layers as L  # noqa: E402

REPO = project.REPO


def tiny_net(path, with_loss=True):
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[2, 3, 5, 6]))
    n.conv = L.Convolution(n.data, num_output=4, kernel_size=3, pad=1,
                           weight_filler=dict(type='gaussian', std=0.5),
                           bias_filler=dict(type='constant', value=0.1))
    n.act = L.TanH(n.conv, in_place=True)  # smooth, so finite differences are exact enough
    n.fc = L.InnerProduct(n.act, num_output=3, weight_filler=dict(type='gaussian', std=0.5))
    if with_loss:
        n.label = L.Input(shape=dict(dim=[2]))
        n.loss = L.SoftmaxWithLoss(n.fc, n.label)
    with open(path, 'w') as f:
        f.write(str(n.to_proto()))
    return path


def test_import_needs_no_environment_variables():
    env = {k: v for k, v in os.environ.items() if k not in ('PYTHONPATH', 'LD_LIBRARY_PATH')}
    env['GLOG_minloglevel'] = '2'
    code = ('import caffe, json, os; '
            'print(json.load(open(os.path.join(os.path.dirname(caffe.__file__), "fcn_build.json")))["source"])')
    out = subprocess.run([sys.executable, '-c', code], env=env, cwd='/', capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert 'caffe' in out.stdout


def test_forward_backward_matches_numerical_gradient(tmp_path):
    caffe.set_mode_cpu()
    net = caffe.Net(tiny_net(str(tmp_path / 'net.prototxt')), caffe.TRAIN)
    rng = np.random.RandomState(0)
    for blobs in net.params.values():  # fixed weights: Caffe's fillers use an unseeded RNG
        for b in blobs:
            b.data[...] = 0.5 * rng.randn(*b.data.shape)
    net.blobs['data'].data[...] = rng.randn(2, 3, 5, 6)
    net.blobs['label'].data[...] = [0, 2]
    loss = float(net.forward()['loss'])
    assert np.isfinite(loss) and loss > 0
    net.backward()
    w = net.params['conv'][0]
    analytic = w.diff.copy()
    assert np.abs(analytic).sum() > 0

    # Central differences on a few weights: Caffe's backward is the true gradient.
    eps = 1e-3
    for idx in [(0, 0, 1, 1), (3, 2, 0, 2), (1, 1, 2, 0)]:
        orig = w.data[idx]
        w.data[idx] = orig + eps
        up = float(net.forward()['loss'])
        w.data[idx] = orig - eps
        down = float(net.forward()['loss'])
        w.data[idx] = orig
        numeric = (up - down) / (2 * eps)
        assert abs(numeric - analytic[idx]) <= 1e-2 * max(1.0, abs(numeric)), (idx, numeric, analytic[idx])


def test_missing_prototxt_is_a_python_error_with_the_path(tmp_path):
    missing = str(tmp_path / 'nope.prototxt')
    with pytest.raises(project.InputError, match='nope.prototxt'):
        netload.open_net(missing)


@pytest.mark.parametrize('text', ['layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 1 } }',
                                  'this is not a net', '', '\xff\xfe binary'])
def test_malformed_prototxt_is_a_python_error_with_the_path(tmp_path, text):
    path = tmp_path / 'bad.prototxt'
    path.write_text(text, encoding='latin-1')
    with pytest.raises(project.InputError, match='bad.prototxt'):
        netload.open_net(str(path))


def test_malformed_prototxt_in_a_subprocess_never_aborts(tmp_path):
    """What a user sees: one exception line, exit code 1, no SIGABRT from glog."""
    path = tmp_path / 'bad.prototxt'
    path.write_text('layer { name: "broken"')
    code = ('import sys, cli, netload\n'
            'def main(argv): netload.open_net(sys.argv[1])\n'
            'cli.run_cli(main)\n')
    out = subprocess.run([sys.executable, '-c', code, str(path)], cwd=REPO, capture_output=True,
                         text=True, env=dict(os.environ, PYTHONPATH=REPO))
    assert out.returncode == 1, (out.returncode, out.stderr)
    assert 'bad.prototxt' in out.stderr and 'Traceback' not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_weights_with_wrong_shapes_are_refused_before_caffe(tmp_path):
    proto = tiny_net(str(tmp_path / 'a.prototxt'), with_loss=False)
    net = caffe.Net(proto, caffe.TEST)
    net.save(str(tmp_path / 'a.caffemodel'))
    # The same net with a wider conv: Caffe itself would abort on copy_from.
    wide = open(proto).read().replace('num_output: 4', 'num_output: 5')
    (tmp_path / 'b.prototxt').write_text(wide)
    with pytest.raises(project.InputError, match=r"a\.caffemodel.*'conv'"):
        netload.open_net(str(tmp_path / 'b.prototxt'), weights=str(tmp_path / 'a.caffemodel'))
    # Matching weights load, and the values arrive.
    net2 = netload.open_net(proto, weights=str(tmp_path / 'a.caffemodel'))
    np.testing.assert_array_equal(net2.params['conv'][0].data, net.params['conv'][0].data)
    # Garbage and empty weight files are one-line errors too.
    (tmp_path / 'junk.caffemodel').write_bytes(b'\x00\x01garbage' * 10)
    (tmp_path / 'empty.caffemodel').write_bytes(b'')
    for name in ('junk.caffemodel', 'empty.caffemodel'):
        with pytest.raises(project.InputError, match=name):
            netload.open_net(proto, weights=str(tmp_path / name))


def test_gpu_request_on_cpu_build_is_an_input_error():
    if guard.build_info().get('cuda'):
        pytest.skip('CUDA build')
    with pytest.raises(project.InputError, match='without CUDA'):
        guard.set_mode(0)
    assert guard.set_mode(None) == 'cpu'


def test_project_python_layer_runs_inside_a_net(tmp_path):
    """A data layer of layers.py, on a tiny VOC tree in the real on-disk format."""
    datasets = pytest.importorskip('datasets')
    voc = tmp_path / 'VOC'
    ids = datasets.make_voc(str(voc), ['a', 'b'], split='val', voc_dir='.')
    n = caffe.NetSpec()
    n.data, n.label = L.Python(module='layers', layer='VOCSegDataLayer', ntop=2,
                               param_str='{"voc_dir": "%s", "split": "val"}' % voc)
    n.score = L.Convolution(n.data, num_output=21, kernel_size=1, weight_filler=dict(type='xavier'))
    n.loss = L.SoftmaxWithLoss(n.score, n.label, loss_param=dict(ignore_label=255, normalize=False))
    (tmp_path / 'net.prototxt').write_text(str(n.to_proto()))
    net = netload.open_net(str(tmp_path / 'net.prototxt'), phase='train')
    out = net.forward()
    assert np.isfinite(out['loss'])
    assert net.blobs['data'].data.shape[1] == 3
    assert net.blobs['label'].data.shape[2:] == net.blobs['data'].data.shape[2:]
    assert len(ids) == 2


def test_legacy_v1_weights_like_the_model_zoo_vgg16_load(tmp_path):
    """The Model Zoo's VGG16 is a V1 net (`layers`, 4-D num/channels/height/width blobs):
    the shape check understands it and Caffe upgrades it on load."""
    proto = tiny_net(str(tmp_path / 'a.prototxt'), with_loss=False)
    v1 = caffe.proto.caffe_pb2.NetParameter()
    v1.name = 'legacy'
    rng = np.random.RandomState(1)
    values = {}
    for name, kind, shapes in (('conv', caffe.proto.caffe_pb2.V1LayerParameter.CONVOLUTION,
                                [(4, 3, 3, 3), (1, 1, 1, 4)]),
                               ('fc', caffe.proto.caffe_pb2.V1LayerParameter.INNER_PRODUCT,
                                [(1, 1, 3, 120), (1, 1, 1, 3)])):
        layer = v1.layers.add()
        layer.name, layer.type = name, kind
        for shape in shapes:
            blob = layer.blobs.add()
            blob.num, blob.channels, blob.height, blob.width = shape
            data = rng.randn(int(np.prod(shape))).astype(np.float32)
            blob.data.extend(data.tolist())
            values.setdefault(name, []).append(data)
    path = tmp_path / 'legacy.caffemodel'
    path.write_bytes(v1.SerializeToString())
    net = netload.open_net(proto, weights=str(path))
    np.testing.assert_array_equal(net.params['fc'][0].data.ravel(), values['fc'][0])
    np.testing.assert_array_equal(net.params['conv'][1].data.ravel(), values['conv'][1])
    # and a V1 blob of the wrong size is refused before Caffe sees it
    v1.layers[1].blobs[0].width = 121
    v1.layers[1].blobs[0].data.append(0.0)
    path.write_bytes(v1.SerializeToString())
    with pytest.raises(project.InputError, match="legacy.caffemodel: layer 'fc'"):
        netload.open_net(proto, weights=str(path))
