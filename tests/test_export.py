"""export.py: the ONNX models it writes compute what Caffe computes.

    .venv/bin/python -m pytest tests/test_export.py -q

Every built-in model's deploy net is rebuilt narrow by its own builder (net.build_net with
narrow widths: the same layers, names and geometry as the full-size deploy.prototxt),
given random weights (BatchNorm with a moving-average factor other than 1), exported,
run in ONNX Runtime and compared with Caffe's forward on the same random input: the
largest difference relative to the largest |output| must stay under export.TOLERANCE.
One FCN is checked at three input sizes from one export (dynamic height and width).
Two small nets cover what the registry's nets do not use (padded and rounded-up MAX/AVE
pooling at sizes where Caffe drops the last window, global pooling, pad_h/pad_w,
dilation, groups, grouped deconvolution with bias, leaky ReLU, Eltwise PROD/MAX/SUM
with coefficients, Crop on axis 1, BatchNorm and Scale that cannot be folded, Reshape
with 0 / -1 / axis / num_axes, Tile, InnerProduct on axes 1 and 2, Softmax, Dropout,
Split, Power with power / scale / shift and as a constant, Bias by a blob or a second
bottom, Scale by a second bottom). The net surgery.py converts torchvision's DeepLabv3
into is checked at two sizes with its metadata; DeepLab v2's shared parameters are one
initializer each. The full-size deploy.prototxt of every built-in model is converted without
weight values (parameters as graph inputs) and passes onnx.checker. The command itself
runs on a user's model folder (model.json). About 25 s.
"""
import dataclasses
import json
import os
import subprocess
import sys

import onnx
import pytest

import guard
import netinit
import project
import export
import models
import net
import surgery

caffe = guard.import_caffe()
from caffe import layers as L, params as P  # noqa: E402

REPO = project.REPO
FCN_WIDTHS = (4, 4, 8, 8, 8, 16)
ALEXNET_WIDTHS = (8, 8, 8, 8, 8, 16)   # grouped: even widths
# ResNet trunks (PSPNet, DeepLab v2 / v3): one narrow setting for every builder; stage 4
# has a second (dilated) block, stage 5 three (DeepLabv3's multi-grid needs one per unit)
RESNET = dict(widths=(4, 4, 8, 4, 4, 8, 8, 4, 8, 4), blocks=(1, 1, 2, 3))
RESNET_CROPS = range(65, 200, 8)  # 8 k + 1 from logits 9 x 9 (DeepLab v2's 0.5 branch: 5 x 5)
SIZE = (61, 45)  # odd sides: every FCN pool rounds up


# models a test registers (a user's model.json) are forgotten after it
pytestmark = pytest.mark.usefixtures('registry')


def prototxt(tmp_path, param, name='deploy'):
    path = tmp_path / ('%s.prototxt' % name)
    path.write_text(str(param))
    return str(path)


def exported(tmp_path, param, seed=0):
    """(onnx model, caffe.Net with the same random weights, {input: shape}, dynamic)."""
    path = prototxt(tmp_path, param)
    shapes = export.net_shapes(param, path)
    caffe_net = caffe.Net(path, caffe.TEST)
    export.random_weights(caffe_net, seed)
    dynamic = export.fixed_size_reason(param) is None
    model = export.to_onnx(param, path, export.net_params(caffe_net), shapes, dynamic, {})
    inputs = {t: shapes[t] for layer in param.layer if layer.type == 'Input' for t in layer.top}
    return model, caffe_net, inputs, dynamic


def compare(model, caffe_net, inputs, size=None):
    """{output: relative difference} at the net's size or `size` (H, W)."""
    if size:
        inputs = {k: tuple(s[:2]) + tuple(size) for k, s in inputs.items()}
    rel = export.check(model, caffe_net, export.random_inputs(inputs))
    print('%s: %s' % ('x'.join(map(str, next(iter(inputs.values())))),
                      ', '.join('%s %.1e' % kv for kv in rel.items())))
    return rel


def narrow(name):
    """The deploy net of model `name` built narrow by its own builder. ResNet trunks: at the
    first crop of RESNET_CROPS the builder accepts (its own checks: PSPNet's pyramid bins
    must divide the feature map, the zooms must give the crop back)."""
    spec = models.get(name)
    if spec.trunk not in models.RESNET_DEPTHS:
        return net.build_net(spec, 'deploy', widths=ALEXNET_WIDTHS if spec.trunk == 'caffenet'
                             else FCN_WIDTHS)
    problems = []
    for crop in RESNET_CROPS:
        try:
            return net.build_net(spec, 'deploy', crop=crop, **RESNET)
        except ValueError as e:
            problems.append('%d: %s' % (crop, e))
    raise AssertionError('%s: no narrow crop fits: %s' % (name, '; '.join(problems)))

# ---------------------------------------------------------------------------- the registry

@pytest.mark.parametrize('name', list(models.BUILTIN) + list(models.CLASSIFIERS))
def test_every_builtin_model_narrow_equals_caffe(name, tmp_path):
    spec = models.get(name)
    param = (narrow(name) if isinstance(spec, models.ModelSpec)
             else net.CLASSIFIER_BUILDERS[name](widths=ALEXNET_WIDTHS if name == 'caffenet' else FCN_WIDTHS,
                                        num_classes=10))
    model, caffe_net, inputs, dynamic = exported(tmp_path, param)
    # the FCNs run at any size; the ResNet nets (PSPNet's pyramid, DeepLab's align-corners
    # zooms) and the classifiers at the one they are built for
    assert dynamic == (isinstance(spec, models.ModelSpec) and spec.trunk not in models.RESNET_DEPTHS)
    rel = compare(model, caffe_net, inputs, SIZE if dynamic else None)
    assert set(rel) == set(caffe_net.outputs)
    assert max(rel.values()) < export.TOLERANCE, rel
    if name == 'deeplabv2-voc12':  # the scale branches' shared parameters: one initializer each
        shared = {l.param[0].name or l.name for l in param.layer if l.type == 'Convolution'}
        assert len({n.input[1] for n in model.graph.node if n.op_type == 'Conv'}) == len(shared)
        assert len(shared) < sum(l.type == 'Convolution' for l in param.layer) / 2
    if name == 'pspnet101-voc2012':  # conv + BatchNorm + Scale became one convolution each
        ops = [n.op_type for n in model.graph.node]
        assert 'BatchNormalization' not in ops and 'Mul' not in ops
        bns = sum(layer.type == 'BatchNorm' for layer in param.layer)
        convs = sum(layer.type == 'Convolution' for layer in param.layer)
        assert bns == convs - 1 == ops.count('Conv') - 1


def test_torchvision_deeplabv3_any_multiple_of_8_and_its_preprocessing(tmp_path, registry):
    """The net surgery.py deeplabv3-from-torchvision writes (pool1 rounded down by a Crop to
    a strided convolution's size, PyTorch's half-pixel zoom as Deconvolution / Power /
    Eltwise PROD, a Dropout) exports with dynamic height and width, exact at multiples of
    8 (the sizes it is built for), and its metadata carries torchvision's normalisation."""
    folder = tmp_path / 'tv'
    folder.mkdir()
    spec = surgery.torchvision_spec('my-tv-deeplabv3', folder, 'ck.pth', 21, RESNET['widths'],
                                    RESNET['blocks'], 101, 64)
    param = net.build_net(spec, 'deploy')
    (folder / 'deploy.prototxt').write_text(str(param))
    (folder / models.SPEC_FILE).write_text(json.dumps(models.to_dict(spec)))
    lines = []
    out = export.export_model(str(folder), seed=2, out=str(tmp_path / 'tv.onnx'), size=(48, 72),
                              runtimes=['onnxruntime'], log=lines.append)
    assert 'onnxruntime vs Caffe on 1x3x48x72: logits_interp' in lines[0]
    model = onnx.load(out)
    props = {p.key: p.value for p in model.metadata_props}
    assert props['input_size'] == 'dynamic height and width'
    pre = json.loads(props['preprocessing'])[0]
    assert (pre['channel_order'], pre['mean'], pre['std']) == ('RGB', [0.485, 0.456, 0.406],
                                                                [0.229, 0.224, 0.225])
    assert abs(pre['scale'] - 1 / 255.0) < 1e-12
    ops = {n.op_type for n in model.graph.node}
    assert {'Reciprocal', 'Expand', 'ConvTranspose', 'Slice'} <= ops
    caffe_net = caffe.Net(str(folder / 'deploy.prototxt'), caffe.TEST)
    export.random_weights(caffe_net, 2)  # the same weights as the export's
    assert compare(model, caffe_net, {'data': (1, 3, 64, 64)}, (80, 40))['logits_interp'] < export.TOLERANCE


def test_fcn_three_sizes_from_one_export(tmp_path):
    model, caffe_net, inputs, dynamic = exported(tmp_path, narrow('voc-fcn8s'))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ['batch', 3, 'height', 'width']
    for size in ((32, 32), (61, 45), (100, 77)):
        rel = compare(model, caffe_net, inputs, size)
        assert rel['score'] < export.TOLERANCE


def test_the_tolerance_catches_a_wrong_weight(tmp_path):
    """The comparison is sharp: one changed weight of the exported model shows."""
    model, caffe_net, inputs, _ = exported(tmp_path, narrow('voc-fcn32s'))
    w = next(i for i in model.graph.initializer if i.name == 'score_fr_W')
    a = onnx.numpy_helper.to_array(w).copy()
    a[0, 0] += 0.05
    w.CopyFrom(onnx.numpy_helper.from_array(a, w.name))
    assert compare(model, caffe_net, inputs, SIZE)['score'] > export.TOLERANCE


# ---------------------------------------------------------------------------- every layer variant

def variants_net(h=29, w=33):
    """A dynamic-size net of many branches off one input, each an output."""
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 4, h, w]))
    n.conv = L.Convolution(n.data, num_output=6, kernel_h=3, kernel_w=5, pad_h=2, pad_w=1,
                           stride=2, bias_term=False)
    n.leaky = L.ReLU(n.conv, negative_slope=0.1, in_place=True)
    for pool, tag in ((P.Pooling.MAX, 'max'), (P.Pooling.AVE, 'ave')):
        # k2 s2 p1: Caffe drops the last window at odd sides; k4 s3 p2 at side % 3 == 1
        n['%s_k2p1' % tag] = L.Pooling(n.data, pool=pool, kernel_size=2, stride=2, pad=1)
        n['%s_k4p2' % tag] = L.Pooling(n.data, pool=pool, kernel_size=4, stride=3, pad=2)
        n['%s_k3p0' % tag] = L.Pooling(n.data, pool=pool, kernel_size=3, stride=2)
        n['%s_hw' % tag] = L.Pooling(n.data, pool=pool, kernel_h=3, kernel_w=2, stride_h=2,
                                     stride_w=1, pad_h=1, pad_w=0)
        n['%s_floor' % tag] = L.Pooling(n.data, pool=pool, kernel_size=3, stride=2, pad=1,
                                        round_mode=P.Pooling.FLOOR)
        n['%s_global' % tag] = L.Pooling(n.leaky, pool=pool, global_pooling=True)
    n.dil = L.Convolution(n.data, num_output=8, kernel_size=3, dilation=2, pad=2, group=2)
    n.up = L.Deconvolution(n.dil, convolution_param=dict(num_output=6, kernel_size=4, stride=2,
                                                         pad=1, group=2))
    n.lrn = L.LRN(n.dil, local_size=3, alpha=0.01, beta=0.75, k=2)
    n.sum = L.Eltwise(n.dil, n.lrn, operation=P.Eltwise.SUM, coeff=[-0.5, 2])
    n.prod = L.Eltwise(n.dil, n.lrn, n.sum, operation=P.Eltwise.PROD)
    n.max = L.Eltwise(n.dil, n.sum, operation=P.Eltwise.MAX)
    # a convolution read by two layers: its BatchNorm cannot be folded into it
    n.c2 = L.Convolution(n.data, num_output=4, kernel_size=1)
    n.bn = L.BatchNorm(n.c2, use_global_stats=True, eps=1e-3)
    n.c2relu = L.ReLU(n.c2)
    n.sc = L.Scale(n.bn, bias_term=True)
    n.bn_pool = L.BatchNorm(n.max_k3p0, use_global_stats=True)      # after pooling: ops
    n.crop = L.Crop(n.up, n.data, axis=1, offset=[1, 2, 3])          # channels too
    n.cat = L.Concat(n.crop, n.data, axis=1)
    n.tile = L.Tile(n.ave_k3p0, axis=1, tiles=3)
    n.prob = L.Softmax(n.max, axis=1)
    n.drop = L.Dropout(n.prob, dropout_ratio=0.3)
    n.s1, n.s2 = L.Split(n.conv, ntop=2)
    n.split_sum = L.Eltwise(n.s1, n.s2)
    n.pow = L.Power(n.prob, power=2, scale=-0.5, shift=1.5)  # (1.5 - 0.5 x)^2
    n.rcp = L.Power(n.pow, power=-1, shift=0.1)
    n.const = L.Power(n.lrn, power=3, scale=0, shift=2)      # 8 everywhere
    n.ident = L.Power(n.dil)
    n.bias_c = L.Bias(n.dil, axis=1, num_axes=1)              # a learned blob per channel
    n.gap = L.Pooling(n.dil, pool=P.Pooling.AVE, global_pooling=True)       # N x 8 x 1 x 1
    n.gap_flat = L.Reshape(n.gap, shape=dict(dim=[0, -1]))                   # N x 8
    n.zeros = L.Power(n.dil, power=1, scale=0, shift=0)
    n.tiled = L.Bias(n.zeros, n.gap_flat, axis=0)             # DeepLabv3's image_pool_tile
    n.scaled = L.Scale(n.dil, n.gap_flat, axis=0, bias_term=True)  # scale by a bottom, + bias
    return n.to_proto()


def fixed_net():
    """InnerProduct on axes 1 and 2, Reshape with Caffe's 0, -1, axis and num_axes."""
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 3, 6, 5]))
    n.flat = L.InnerProduct(n.data, num_output=4, axis=2, bias_term=False)       # N x 3 x 4
    n.sq = L.Reshape(n.flat, shape=dict(dim=[0, 0, 2, -1]))                    # N x 3 x 2 x 2
    n.mid = L.Reshape(n.sq, shape=dict(dim=[-1]), axis=1, num_axes=2)          # N x 6 x 2
    n.back = L.Reshape(n.mid, shape=dict(dim=[2, -1]), axis=1, num_axes=1)     # N x 2 x 3 x 2
    n.fc = L.InnerProduct(n.data, num_output=7)                                # axis 1
    n.fct = L.InnerProduct(n.data, num_output=5, transpose=True)
    n.fcbn = L.BatchNorm(n.fc, use_global_stats=True)
    n.fcs = L.Scale(n.fcbn, bias_term=False, in_place=True)
    n.scale2 = L.Scale(n.data, axis=2, num_axes=2, bias_term=True)
    n.bias2 = L.Bias(n.data, axis=2, num_axes=-1)                             # a blob of H x W
    return n.to_proto()


def test_layer_variants_dynamic(tmp_path):
    model, caffe_net, inputs, dynamic = exported(tmp_path, variants_net(), seed=3)
    assert dynamic
    # the Dropout output is its input under its own name; the BatchNorm after a shared
    # convolution stays an operation
    assert {o.name for o in model.graph.output} == set(caffe_net.outputs)
    for size in ((29, 33), (30, 31), (34, 28)):
        rel = compare(model, caffe_net, inputs, size)
        assert max(rel.values()) < export.TOLERANCE, rel
        assert caffe_net.blobs['max_k2p1'].data.shape[2] == size[0] // 2 + 1  # ceil, last dropped


def test_layer_variants_fixed(tmp_path):
    model, caffe_net, inputs, dynamic = exported(tmp_path, fixed_net(), seed=4)
    assert not dynamic
    rel = compare(model, caffe_net, inputs)
    assert max(rel.values()) < export.TOLERANCE, rel


def test_static_ave_pooling_divisor_is_caffes(tmp_path):
    """The fixed-size path's divisor table: a ones input gives ones (Caffe divides by the
    window clipped to the padded input, so padded positions count as zeros)."""
    div = export._caffe_ave_divisor((6, 5), (3, 2), (2, 2), (1, 1), True)
    # H 6, k 3, s 2, p 1: windows [-1,2) [1,4) [3,6) [5,8), the last clipped to H + p = 7
    # W 5, k 2, s 2, p 1: windows [-1,1) [1,3) [3,5); [5,7) starts after W + p - 1: dropped
    assert div[0, 0].tolist() == [[6, 6, 6]] * 3 + [[4, 4, 4]]


def test_unsupported_layer_is_one_error_naming_it(tmp_path):
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 3, 8, 8]))
    n.act = L.Sigmoid(n.data)
    param = n.to_proto()
    path = prototxt(tmp_path, param)
    shapes = export.net_shapes(param, path)
    with pytest.raises(project.InputError, match=r"layer 'act' \(Sigmoid\): not supported"):
        export.to_onnx(param, path, {}, shapes, True, {})


# ---------------------------------------------------------------------------- full-size nets

@pytest.mark.parametrize('name', list(models.BUILTIN) + list(models.CLASSIFIERS))
def test_every_builtin_deploy_file_converts(name):
    """The real deploy.prototxt, full size: every layer converts and onnx.checker passes
    (parameters as graph inputs of their shapes: no values needed)."""
    spec = models.get(name)
    path = export.deploy_path(spec)
    param = netinit.read_net_param(path)
    shapes = export.net_shapes(param, path)
    dynamic = export.fixed_size_reason(param) is None
    assert dynamic == (isinstance(spec, models.ModelSpec) and spec.trunk not in models.RESNET_DEPTHS)
    model = export.to_onnx(param, path, export.placeholder_params(param, shapes), shapes,
                           dynamic, {}, weights=False)
    assert {o.name for o in model.graph.output} == set(export.net_outputs(param))


# ---------------------------------------------------------------------------- the command

def run(*args):
    return subprocess.run([sys.executable, os.path.join(REPO, 'export.py')] + [str(a) for a in args],
                          capture_output=True, text=True)


@pytest.fixture
def user_model(tmp_path):
    """A user's model folder (model.json + narrow prototxts) and a caffemodel for it."""
    folder = tmp_path / 'my-fcn'
    spec = dataclasses.replace(models.get('voc-fcn16s'), name='my-export-fcn16s',
                               folder=str(folder), weights=None)
    net.write_model_dir(str(folder), spec, widths=FCN_WIDTHS)
    (folder / models.SPEC_FILE).write_text(json.dumps(models.to_dict(spec)))
    caffe_net = caffe.Net(str(folder / 'deploy.prototxt'), caffe.TEST)
    export.random_weights(caffe_net, 5)
    weights = tmp_path / 'w.caffemodel'
    caffe_net.save(str(weights))
    return folder, weights


def test_command_exports_a_user_model_checked(user_model, tmp_path):
    folder, weights = user_model
    out = tmp_path / 'out' / 'fcn.onnx'
    r = run(folder, '--weights', weights, '--out', out, '--check', '--size', '70x90')
    assert r.returncode == 0, r.stderr
    assert 'onnxruntime vs Caffe on 1x3x70x90: score' in r.stdout
    model = onnx.load(str(out))
    props = {p.key: p.value for p in model.metadata_props}
    pre = json.loads(props['preprocessing'])
    assert pre == [dict(input='data', kind='color', layout='NCHW', channels=3,
                        channel_order='BGR', mean=list(models.dataset('voc').mean),
                        values='0-255, the mean subtracted, not divided')]
    assert props['input_size'] == 'dynamic height and width'
    assert json.loads(props['classes'])[0] == 'background'
    assert not [p for p in os.listdir(out.parent) if p.endswith('.part')]


def test_command_errors_are_one_line(user_model, tmp_path):
    folder, weights = user_model
    deploy = folder / 'deploy.prototxt'
    before = deploy.read_text()
    r = run(folder, '--weights', weights, '--out', deploy)  # never over an input
    assert r.returncode == 1 and deploy.read_text() == before
    assert len(r.stderr.strip().splitlines()) == 1 and 'replace the input' in r.stderr
    deploy.write_text(before + 'layer { name: "sig" type: "Sigmoid" bottom: "score" top: "sig" }\n')
    r = run(folder, '--random', '0', '--out', tmp_path / 'x.onnx')
    assert r.returncode == 1 and 'Traceback' not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert "layer 'sig' (Sigmoid): not supported by the ONNX export" in r.stderr
    assert not (tmp_path / 'x.onnx').exists()


def test_openvino_computes_the_same(tmp_path):
    """export.py --check-openvino's comparison (optional: only where OpenVINO is installed)."""
    pytest.importorskip('openvino')
    for param, size in ((variants_net(), (30, 31)), (narrow('pspnet50-ade20k'), None)):
        model, caffe_net, inputs, _ = exported(tmp_path, param, seed=6)
        if size:
            inputs = {k: tuple(s[:2]) + size for k, s in inputs.items()}
        rel = export.check(model, caffe_net, export.random_inputs(inputs), 'openvino')
        assert max(rel.values()) < export.TOLERANCE, rel
