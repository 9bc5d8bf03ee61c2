"""net.py and the prototxts it generated, checked on real pycaffe against docs/fcn.md and
docs/training.md (the nets, offsets and solvers of the papers and the release).

    .venv/bin/python -m pytest tests/test_net.py -q      # about 20-30 s on 2 cores

Full-width nets are instantiated at a small odd input (37 x 53) so that only the
parameters (~0.5 GB per VGG tower) cost memory; one full VGG FCN-8s and the full
FCN-AlexNet run forward, and every model runs forward and backward at narrow widths.
The train nets' Python data layers need layers.py and datasets: these tests swap
them for Input layers instead.
"""
import functools
import gc
import json
import math
import os
import subprocess
import sys
import tempfile

import numpy as np
import pytest
from google.protobuf import text_format

import guard
import models
import net
import netinit
import netload

caffe = guard.import_caffe()

H, W = 37, 53  # odd, and not multiples of any stride
# The FCNs of the registry: the nets evaluated on whole images of any size (PSPNet's and
# DeepLab's fixed-size nets: tests/test_pspnet_net.py, tests/test_deeplab.py).
FCNS = [name for name, spec in models.BUILTIN.items() if spec.evaluation.windows == 'whole']
NARROW = (4, 4, 8, 8, 8, 16)
NARROW_CAFFENET = (4, 4, 8, 8, 8, 16)
CHANNELS = {'data': 3, 'color': 3, 'hha': 3, 'depth': 1}
VGG_CONVS = ['conv1_1', 'conv1_2', 'conv2_1', 'conv2_2', 'conv3_1', 'conv3_2', 'conv3_3',
             'conv4_1', 'conv4_2', 'conv4_3', 'conv5_1', 'conv5_2', 'conv5_3']


@functools.lru_cache(maxsize=None)
def _committed(model, name):
    return netinit.read_net_param(os.path.join(models.model_dir(model), name))


def committed(model, name):
    """A fresh copy of the committed NetParameter `model`/`name` (parsed once)."""
    param = caffe.proto.caffe_pb2.NetParameter()
    param.CopyFrom(_committed(model, name))
    return param


def scored(model):
    """(score blob, label top, classes) of each scored output of `model`."""
    spec = models.get(model)
    return [(o.score, o.label, len(spec.data.label(o.label).classes)) for o in spec.outputs]


def outputs(model):
    return [score for score, _, _ in scored(model)]


def instantiate(param, phase=None):
    """caffe.Net from a NetParameter (written to a temporary file: pycaffe reads files)."""
    with tempfile.NamedTemporaryFile('w', suffix='.prototxt', delete=False) as f:
        f.write(str(param))
    try:
        return caffe.Net(f.name, caffe.TEST if phase is None else phase)
    finally:
        os.unlink(f.name)


def set_input_size(param, h, w):
    for layer in param.layer:
        if layer.type == 'Input':
            layer.input_param.shape[0].dim[2:] = [h, w]
    return param


def python_to_inputs(param, h, w):
    """The train/val net with its Python data layer replaced by one Input per top."""
    new = caffe.proto.caffe_pb2.NetParameter()
    for layer in param.layer:
        if layer.type != 'Python':
            new.layer.add().CopyFrom(layer)
            continue
        for top in layer.top:
            inp = new.layer.add(name=top, type='Input', top=[top])
            inp.input_param.shape.add(dim=[1, CHANNELS.get(top, 1), h, w])
    return new


@functools.lru_cache(maxsize=None)
def full_net_shapes(model):
    """Parameter shapes and output shapes of `model`'s committed deploy net at H x W."""
    deploy = set_input_size(committed(model, 'deploy.prototxt'), H, W)
    n = instantiate(deploy)
    params = {name: [tuple(b.data.shape) for b in blobs] for name, blobs in n.params.items()}
    outs = {name: n.blobs[name].data.shape for name in outputs(model)}
    del n
    gc.collect()
    return params, outs


# ---------------------------------------------------------------------------
# The committed files are what net.py generates.

def test_committed_files_are_up_to_date(capsys):
    assert net.main(['--check']) == 0, capsys.readouterr().out
    for model in models.BUILTIN:
        for name in ('train.prototxt', 'val.prototxt', 'deploy.prototxt', 'solver.prototxt'):
            assert os.path.isfile(os.path.join(models.model_dir(model), name))


def test_check_lists_stale_files_and_write_repairs_them(tmp_path):
    written = net.write_model_dir(tmp_path, 'voc-fcn8s', widths=NARROW)
    assert sorted(os.path.basename(p) for p in written) == [
        'deploy.prototxt', 'solver.prototxt', 'train.prototxt', 'val.prototxt']
    assert net.write_model_dir(tmp_path, 'voc-fcn8s', widths=NARROW) == []
    (tmp_path / 'val.prototxt').write_text('stale')
    assert net.write_model_dir(tmp_path, 'voc-fcn8s', widths=NARROW, check=True) == [
        str(tmp_path / 'val.prototxt')]
    assert (tmp_path / 'val.prototxt').read_text() == 'stale'  # check writes nothing
    net.write_model_dir(tmp_path, 'voc-fcn8s', widths=NARROW)
    assert net.write_model_dir(tmp_path, 'voc-fcn8s', widths=NARROW, check=True) == []


# ---------------------------------------------------------------------------
# Full-width deploy nets: instantiate at an odd size, output at the input's size.

@pytest.mark.parametrize('model', sorted(FCNS))
def test_full_deploy_net_output_matches_input_size(model):
    params, outs = full_net_shapes(model)
    classes = {score: c for score, _, c in scored(model)}
    for score, shape in outs.items():
        assert shape == (1, classes[score], H, W), (model, score)


def test_full_fcn8s_and_alexnet_forward():
    for model in ('voc-fcn8s', 'voc-fcn-alexnet'):
        n = instantiate(set_input_size(committed(model, 'deploy.prototxt'), H, W))
        n.blobs['data'].data[...] = np.random.RandomState(0).randn(1, 3, H, W)
        out = n.forward()
        # No fillers: every weight is zero, so the scores are too.
        assert out['score'].shape == (1, 21, H, W) and not out['score'].any()
        del n
        gc.collect()


def test_deploy_inputs():
    expect = {'voc-fcn32s': {'data': 3}, 'nyud-fcn32s-hha': {'data': 3},
              'nyud-fcn32s-color-d': {'color': 3, 'depth': 1},
              'nyud-fcn32s-color-hha': {'color': 3, 'hha': 3}, 'siftflow-fcn8s': {'data': 3}}
    for model, inputs in expect.items():
        param = committed(model, 'deploy.prototxt')
        got = {l.top[0]: list(l.input_param.shape[0].dim) for l in param.layer if l.type == 'Input'}
        assert got == {name: [1, c, 500, 500] for name, c in inputs.items()}, model
        types = {l.type for l in param.layer}
        assert not types & {'Dropout', 'SoftmaxWithLoss', 'Python'}, model


# ---------------------------------------------------------------------------
# The trunks: names and shapes of VGG16 / CaffeNet, so ImageNet weights transfer.

def classifier_shapes(name):
    n = netload.open_net(net.classifier_path(name))
    shapes = {k: [tuple(b.data.shape) for b in v] for k, v in n.params.items()}
    del n
    gc.collect()
    return shapes


def test_vgg_trunk_matches_vgg16_classifier():
    vgg = classifier_shapes('vgg16')
    assert list(vgg) == VGG_CONVS + ['fc6', 'fc7', 'fc8']
    assert vgg['conv1_1'] == [(64, 3, 3, 3), (64,)]
    assert vgg['fc6'] == [(4096, 25088), (4096,)] and vgg['fc8'] == [(1000, 4096), (1000,)]
    fcn, _ = full_net_shapes('voc-fcn32s')
    assert list(fcn)[:15] == VGG_CONVS + ['fc6', 'fc7']
    for name in VGG_CONVS:
        assert fcn[name] == vgg[name], name
    assert fcn['fc6'] == [(4096, 512, 7, 7), (4096,)]
    assert fcn['fc7'] == [(4096, 4096, 1, 1), (4096,)]
    for name in ('fc6', 'fc7'):  # surgery casts the InnerProducts by element count
        assert [np.prod(s) for s in fcn[name]] == [np.prod(s) for s in vgg[name]]
    assert fcn['score_fr'] == [(21, 4096, 1, 1), (21,)]
    assert fcn['upscore'] == [(21, 21, 64, 64)]  # no bias


def test_caffenet_trunk_matches_caffenet_classifier():
    ref = classifier_shapes('caffenet')
    assert list(ref) == ['conv1', 'conv2', 'conv3', 'conv4', 'conv5', 'fc6', 'fc7', 'fc8']
    assert ref['conv1'] == [(96, 3, 11, 11), (96,)] and ref['conv2'] == [(256, 48, 5, 5), (256,)]
    fcn, _ = full_net_shapes('voc-fcn-alexnet')
    for name in ('conv1', 'conv2', 'conv3', 'conv4', 'conv5'):
        assert fcn[name] == ref[name], name
    assert fcn['fc6'] == [(4096, 256, 6, 6), (4096,)]
    for name in ('fc6', 'fc7'):
        assert [np.prod(s) for s in fcn[name]] == [np.prod(s) for s in ref[name]]
    assert fcn['upscore'] == [(21, 21, 63, 63)]


def test_nyud_trunks():
    early, _ = full_net_shapes('nyud-fcn32s-color-d')
    assert early['conv1_1_bgrd'] == [(64, 4, 3, 3), (64,)] and 'conv1_1' not in early
    late, _ = full_net_shapes('nyud-fcn32s-color-hha')
    vgg, _ = full_net_shapes('voc-fcn32s')
    for tower in ('color', 'hha'):
        for name in VGG_CONVS + ['fc6', 'fc7']:
            assert late[name + tower] == vgg[name], name + tower
        assert late['score_fr' + tower] == [(40, 4096, 1, 1), (40,)]
    fused = committed('nyud-fcn32s-color-hha', 'train.prototxt')
    (eltwise,) = [l for l in fused.layer if l.name == 'score_fused']
    assert list(eltwise.bottom) == ['score_frcolor', 'score_frhha']
    assert list(eltwise.eltwise_param.coeff) == [0.5, 0.5]
    (score,) = [l for l in fused.layer if l.name == 'score']
    assert list(score.bottom) == ['upscore', 'color']
    late16, _ = full_net_shapes('nyud-fcn16s-color-hha')
    assert late16['score_pool4color'] == late16['score_pool4hha'] == [(40, 512, 1, 1), (40,)]


def test_trunk_learning_rates():
    for layer in committed('voc-fcn8s', 'train.prototxt').layer:
        if layer.type == 'Convolution':
            assert [(p.lr_mult, p.decay_mult) for p in layer.param] == [(1, 1), (2, 0)], layer.name
    alex = {l.name: l for l in committed('voc-fcn-alexnet', 'train.prototxt').layer}
    assert not alex['conv1'].param and not alex['fc7'].param  # Caffe's defaults
    assert alex['conv1'].convolution_param.pad == [100]
    assert alex['conv2'].convolution_param.group == 2


# ---------------------------------------------------------------------------
# Heads: crops, upsampling, at-once scaling, losses.

CROPS = {
    'voc-fcn32s': {'score': 19},
    'voc-fcn16s': {'score_pool4c': 5, 'score': 27},
    'voc-fcn8s': {'score_pool4c': 5, 'score_pool3c': 9, 'score': 31},
    'voc-fcn8s-atonce': {'score_pool4c': 5, 'score_pool3c': 9, 'score': 31},
    'voc-fcn-alexnet': {'score': 18},
    'nyud-fcn32s-color': {'score': 19},
    'nyud-fcn32s-hha': {'score': 19},
    'nyud-fcn32s-color-d': {'score': 19},
    'nyud-fcn32s-color-hha': {'score': 19},
    'nyud-fcn16s-color-hha': {'score_pool4_fusedc': 5, 'score': 27},
    'siftflow-fcn32s': {'score_sem': 19, 'score_geo': 19},
    'siftflow-fcn16s': {'score_pool4_semc': 5, 'score_sem': 27,
                        'score_pool4_geoc': 5, 'score_geo': 27},
    'siftflow-fcn8s': {'score_pool4_semc': 5, 'score_pool3_semc': 9, 'score_sem': 31,
                       'score_pool4_geoc': 5, 'score_pool3_geoc': 9, 'score_geo': 31},
    'pascalcontext-fcn32s': {'score': 19},
    'pascalcontext-fcn16s': {'score_pool4c': 5, 'score': 27},
    'pascalcontext-fcn8s': {'score_pool4c': 5, 'score_pool3c': 9, 'score': 31},
}
UPSAMPLING = {'32s': [(64, 32)], '16s': [(4, 2), (32, 16)], '8s': [(4, 2), (4, 2), (16, 8)]}


def test_crop_offsets_are_the_spec_ones():
    assert set(CROPS) == set(FCNS)
    for model, expect in CROPS.items():
        for split in ('train', 'val', 'deploy'):
            crops = {l.name: (l.crop_param.axis, list(l.crop_param.offset))
                     for l in committed(model, split + '.prototxt').layer if l.type == 'Crop'}
            assert crops == {name: (2, [offset]) for name, offset in expect.items()}, (model, split)


def test_upsampling_is_fixed_bias_free_deconvolution():
    for model in FCNS:
        m = models.get(model)
        param = committed(model, 'train.prototxt')
        deconvs = [l for l in param.layer if l.type == 'Deconvolution']
        for l in deconvs:
            assert [(p.lr_mult, p.HasField('decay_mult')) for p in l.param] == [(0, False)], l.name
            assert l.convolution_param.bias_term is False, l.name
            assert l.convolution_param.num_output in (m.classes, 3), l.name
        kernels = sorted((l.convolution_param.kernel_size[0], l.convolution_param.stride[0])
                         for l in deconvs)
        want = [(63, 32)] if model == 'voc-fcn-alexnet' else UPSAMPLING[m.head]
        heads = len(m.outputs)
        assert kernels == sorted(want * heads), model


def fillers(message, path=''):
    """Paths of every *filler field set anywhere in a protobuf message."""
    found = []
    for field, value in message.ListFields():
        where = path + '.' + field.name
        if field.name.endswith('filler'):
            found.append(where)
        if field.message_type is not None:
            for item in ([value] if hasattr(value, 'ListFields') else value):  # one or repeated
                found += fillers(item, where)
    return found


def test_no_fillers_but_at_once_scales():
    for model in FCNS:
        for split in ('train', 'deploy'):
            for layer in committed(model, split + '.prototxt').layer:
                if layer.type != 'Scale':
                    assert fillers(layer) == [], (model, layer.name)
    layers = {l.name: l for l in committed('voc-fcn8s-atonce', 'train.prototxt').layer}
    for name, value, feeds in (('scale_pool4', 0.01, 'score_pool4'),
                               ('scale_pool3', 0.0001, 'score_pool3')):
        scale = layers[name]
        assert scale.type == 'Scale' and list(scale.bottom) == [name[len('scale_'):]]
        assert scale.scale_param.filler.type == 'constant'
        assert scale.scale_param.filler.value == pytest.approx(value)
        assert [p.lr_mult for p in scale.param] == [0]
        assert not scale.scale_param.bias_term
        assert list(layers[feeds].bottom) == [name]
    assert 'scale_pool4' not in {l.name for l in committed('voc-fcn8s', 'train.prototxt').layer}


def test_dropout_only_in_train_nets():
    for model in FCNS:
        for split in ('train', 'val', 'deploy'):
            drops = [l for l in committed(model, split + '.prototxt').layer if l.type == 'Dropout']
            if split != 'train':
                assert drops == [], (model, split)
                continue
            towers = 2 if 'color-hha' in model else 1
            assert len(drops) == 2 * towers, model
            for l in drops:
                assert list(l.bottom) == list(l.top) and l.dropout_param.dropout_ratio == 0.5


def test_losses():
    for model in FCNS:
        for split, want in (('train', True), ('val', True), ('deploy', False)):
            losses = {l.name: l for l in committed(model, split + '.prototxt').layer
                      if l.type == 'SoftmaxWithLoss'}
            if not want:
                assert not losses, model
                continue
            expect = ({'loss': ['score_sem', 'sem'], 'loss_geo': ['score_geo', 'geo']}
                      if model.startswith('siftflow') else {'loss': ['score', 'label']})
            assert {k: list(l.bottom) for k, l in losses.items()} == expect, model
            for l in losses.values():
                assert l.loss_param.ignore_label == 255
                assert l.loss_param.normalize is (model == 'voc-fcn-alexnet')


# ---------------------------------------------------------------------------
# Data layers: the classes and JSON param_str layers.py expects.

def python_layer(model, split):
    (layer,) = [l for l in committed(model, split + '.prototxt').layer if l.type == 'Python']
    return (layer.python_param.module, layer.python_param.layer, list(layer.top),
            json.loads(layer.python_param.param_str))


def test_data_layers():
    mean = [104.00699, 116.66877, 122.67892]
    assert python_layer('voc-fcn32s', 'train') == ('layers', 'SBDDSegDataLayer', ['data', 'label'], {
        'sbdd_dir': 'sbdd/dataset', 'split': 'train', 'seed': 1337, 'mean': mean})
    assert python_layer('voc-fcn8s', 'val') == ('layers', 'VOCSegDataLayer', ['data', 'label'], {
        'voc_dir': 'pascal/VOC2011', 'split': 'seg11valid', 'seed': 1337, 'mean': mean})
    nyud = {'nyud_dir': 'nyud', 'split': 'trainval', 'seed': 1337}
    assert python_layer('nyud-fcn32s-color', 'train') == (
        'layers', 'NYUDSegDataLayer', ['data', 'label'], dict(nyud, tops=['color', 'label']))
    assert python_layer('nyud-fcn32s-hha', 'val')[2:] == (
        ['data', 'label'], dict(nyud, split='test', tops=['hha', 'label']))
    assert python_layer('nyud-fcn32s-color-d', 'train')[2:] == (
        ['color', 'depth', 'label'], dict(nyud, tops=['color', 'depth', 'label']))
    assert python_layer('nyud-fcn16s-color-hha', 'train')[2:] == (
        ['color', 'hha', 'label'], dict(nyud, tops=['color', 'hha', 'label']))
    assert python_layer('siftflow-fcn16s', 'val') == ('layers', 'SIFTFlowSegDataLayer', [
        'data', 'sem', 'geo'], {'siftflow_dir': 'sift-flow', 'split': 'test', 'seed': 1337})
    assert python_layer('pascalcontext-fcn8s', 'train') == (
        'layers', 'PASCALContextSegDataLayer', ['data', 'label'],
        {'voc_dir': 'pascal/VOC2010', 'context_dir': 'pascal-context', 'split': 'train',
         'seed': 1337, 'mean': [104.007, 116.669, 122.679]})
    concat = [l for l in committed('nyud-fcn32s-color-d', 'val.prototxt').layer if l.type == 'Concat']
    assert [(l.name, list(l.bottom)) for l in concat] == [('data', ['color', 'depth'])]


def test_demo_data_layer_override():
    params = {'voc_dir': '/tmp/demo-voc', 'split': 'train', 'seed': 1337, 'mean': [1, 2, 3]}
    param = net.voc_fcn('8s', 'train', widths=NARROW, data_layer='VOCSegDataLayer',
                        data_params=params)
    (layer,) = [l for l in param.layer if l.type == 'Python']
    assert layer.python_param.layer == 'VOCSegDataLayer'
    assert json.loads(layer.python_param.param_str) == params
    assert any(l.type == 'Dropout' for l in param.layer)


def test_bad_arguments_are_explained():
    with pytest.raises(ValueError, match='head must be one of'):
        net.voc_fcn('4s', 'train')
    with pytest.raises(ValueError, match='widths must be 6'):
        net.voc_fcn('8s', 'train', widths=(8, 8))
    with pytest.raises(ValueError, match='even'):
        net.voc_fcn_alexnet('deploy', widths=(3, 4, 4, 4, 4, 4))
    with pytest.raises(ValueError, match='without data_params'):
        net.voc_fcn('8s', 'train', data_layer='VOCSegDataLayer')
    with pytest.raises(ValueError, match='split must be one of'):
        net.build_net('voc-fcn8s', 'test')
    with pytest.raises(ValueError, match='unknown solver settings'):
        net.model_solver('voc-fcn8s', lr=1)


# ---------------------------------------------------------------------------
# Narrow nets through the same builders: train nets run forward and backward.

@pytest.mark.parametrize('model', sorted(FCNS))
def test_narrow_train_net_runs(model):
    widths = NARROW_CAFFENET if model == 'voc-fcn-alexnet' else NARROW
    n = instantiate(python_to_inputs(net.build_net(model, 'train', widths=widths), H, W),
                    caffe.TRAIN)
    rng = np.random.RandomState(0)
    labels = [label for _, label, _ in scored(model)]
    for name in n.inputs:
        if name in labels:
            n.blobs[name].data[...] = 255  # void, ignored by the loss
            n.blobs[name].data[..., :10, :] = 0
        else:
            n.blobs[name].data[...] = rng.randn(*n.blobs[name].data.shape)
    out = n.forward()
    n.backward()
    # Zero weights: uniform scores, so each valid pixel costs log(C).
    for (score, label, classes), loss in zip(scored(model), ('loss', 'loss_geo')):
        assert n.blobs[score].data.shape == (1, classes, H, W)
        valid = 1 if model == 'voc-fcn-alexnet' else 10 * W  # normalized vs summed loss
        assert out[loss] == pytest.approx(valid * math.log(classes), rel=1e-5), (model, loss)
    del n


# ---------------------------------------------------------------------------
# Solvers and the MODELS table.

SOLVERS = {  # docs/training.md: base_lr, momentum, iter_size, max_iter, test_iter, snapshot
    'voc-fcn32s': (1e-10, 0.99, 1, 100000, 736, 4000),
    'voc-fcn8s': (1e-14, 0.99, 1, 100000, 736, 4000),
    'voc-fcn8s-atonce': (1e-10, 0.99, 1, 300000, 736, 4000),
    'voc-fcn-alexnet': (1e-4, 0.9, 20, 100000, 736, 4000),
    'nyud-fcn32s-color-d': (1e-10, 0.99, 1, 300000, 654, 2000),
    'nyud-fcn32s-color-hha': (1e-12, 0.99, 1, 300000, 654, 2000),
    'siftflow-fcn16s': (1e-12, 0.99, 1, 300000, 200, 0),
    'pascalcontext-fcn8s': (1e-14, 0.99, 1, 300000, 5105, 4000),
}


def test_solvers():
    for model, (lr, momentum, iter_size, max_iter, test_iter, snapshot) in SOLVERS.items():
        s = caffe.proto.caffe_pb2.SolverParameter()
        with open(os.path.join(models.model_dir(model), 'solver.prototxt')) as f:
            text_format.Merge(f.read(), s)
        assert (s.train_net, list(s.test_net)) == ('train.prototxt', ['val.prototxt'])
        assert (s.base_lr, s.momentum) == (pytest.approx(lr), pytest.approx(momentum)), model
        assert (s.iter_size, s.max_iter, list(s.test_iter), s.snapshot) == (
            iter_size, max_iter, [test_iter], snapshot), model
        assert (s.lr_policy, s.weight_decay) == ('fixed', pytest.approx(0.0005))
        assert (s.test_interval, s.test_initialization) == (999999999, False)
        assert (s.display, s.average_loss, s.snapshot_prefix) == (20, 20, 'snapshot/train')


def test_models_table():
    lengths = {'voc-fcn32s': (25, 4000), 'voc-fcn-alexnet': (25, 4000),
               'voc-fcn8s-atonce': (75, 4000), 'nyud-fcn32s-hha': (50, 2000),
               'siftflow-fcn8s': (50, 2000), 'pascalcontext-fcn32s': (50, 8000)}
    for model, length in lengths.items():
        s = models.get(model).schedule
        assert (s.rounds, s.iters) == length
    assert models.get('voc-fcn16s').parents == (models.Parent('voc-fcn32s'),)
    assert models.get('nyud-fcn32s-color-hha').parents == (
        models.Parent('nyud-fcn32s-color', 'color'), models.Parent('nyud-fcn32s-hha', 'hha'))
    for model in FCNS:
        m = models.get(model)
        assert m.trunk in net.CLASSIFIER_BUILDERS
        for p in m.parents:
            assert p.source in models.BUILTIN or p.source in net.CLASSIFIER_BUILDERS, (model, p.source)
    assert {models.get(k).classes for k in FCNS if k.startswith('pascalcontext')} == {60}


def test_solve_py_is_the_same_for_every_model_but_its_id():
    """Each model folder's generated solve.py, at any depth, differs from the others only by
    the model id, and runs from its own folder (`cd nyud-fcn/fcn32s-color-hha && python
    solve.py`) as the folder's registry model."""
    texts = set()
    for model in models.BUILTIN:
        with open(os.path.join(models.model_dir(model), 'solve.py')) as f:
            texts.add(f.read().replace(model, 'MODEL'))
    assert len(texts) == 1
    out = subprocess.run([sys.executable, 'solve.py', '--help'], capture_output=True, text=True,
                         cwd=models.model_dir('nyud-fcn32s-color-hha'),
                         env=dict(os.environ, GLOG_minloglevel='2'))
    assert out.returncode == 0, out.stderr
    assert 'nyud-fcn32s-color-hha' in out.stdout and '50 rounds x 2000 iterations' in out.stdout
