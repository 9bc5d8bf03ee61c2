"""Every FCN net of the paper, written once with Caffe's net_spec, and the files made from them.

Each trainable model is a folder holding train.prototxt, val.prototxt, deploy.prototxt,
solver.prototxt (the nets: docs/fcn.md; the solvers: docs/training.md), caffemodel-url
(where its released weights come from, read by weights.py) and solve.py (the same few
lines for every model: train.py trains the folder's spec). What each model is (dataset,
head, builder, parents, solver, schedule, released weights) is written once, in
models.py; this file turns those specs into nets. ilsvrc-nets/ holds the ImageNet
classifiers (VGG16, CaffeNet) whose weights are cast into the FCNs. docs/models.md, the
models table, is generated here too.

Commands (from anywhere; paths are resolved from this file):

    python net.py                 # (re)write every model directory and ilsvrc-nets/
    python net.py voc-fcn8s       # only the named models
    python net.py --check         # exit 1, listing the files that differ from net.py
    python net.py --list          # the models and their settings
    python net.py --docs          # print docs/models.md (written with the prototxts)
    python net.py new NAME --from voc-fcn8s --data DIR --classes FILE   # your data: newmodel.py

From Python (the demo builds a narrow FCN-8s on its own VOC-format data):

    import net
    net.voc_fcn('8s', 'deploy')                       # a caffe_pb2.NetParameter
    net.write_model_dir('out/demo', 'voc-fcn8s', widths=(8, 8, 16, 16, 16, 32),
                        data={'train': ('VOCSegDataLayer', {...}), 'val': (...)},
                        solver={'test_iter': 10})

Conventions, as in the FCN release:
- Layer and blob names are the paper's (conv1_1 ... fc7, score_fr, upscore2, score_pool4c,
  fuse_pool4, ...): weights are copied between nets by name.
- No fillers: every parameter starts at zero unless weights are copied in (the at-once
  Scale layers are the one exception), so new score layers start at zero.
- Crops are computed by caffe.coord_map.crop from the layer geometry, never typed.
- Data layers are Python layers from layers.py, configured by JSON in param_str; their
  paths are relative to the data root ($FCN_DATA_ROOT or <repo>/data).
"""
import argparse
import dataclasses
import fractions
import inspect
import json
import os
import sys

import models
from cli import run_cli
from guard import import_caffe
from project import REPO, InputError
from safewrite import atomic_write

caffe = import_caffe()
from caffe import layers as L, params as P  # noqa: E402  (after import_caffe quiets logging)
from caffe.coord_map import crop  # noqa: E402

# Channel widths: conv blocks 1-5 then fc6/fc7. Tests and the demo pass narrow ones.
VGG16_WIDTHS = (64, 128, 256, 512, 512, 4096)
# conv1-conv5 then fc6/fc7.
CAFFENET_WIDTHS = (96, 256, 384, 384, 256, 4096)

SPLITS = ('train', 'val', 'deploy')
IGNORE_LABEL = models.VOID
# Deploy nets take one 500 x 500 image (the largest PASCAL image side).
DEPLOY_SIZE = 500



def dataset_classes(dataset):
    """The class count of `dataset`'s first label top (models.py): the builders' default
    num_classes, so a count written in the registry is the only one."""
    return len(models.dataset(dataset).classes)


def default_data(dataset):
    """{'train' | 'val': (class in layers.py, param_str parameters)}: the default data
    layers of `dataset`'s train net (its train split) and val net (its scored split), from
    its DatasetSpec in models.py. Paths are relative to the data root. The NYUD layer's
    `tops` parameter is added by nyud_fcn: it depends on the modality."""
    d = models.dataset(dataset)
    return {'train': d.layer_params(d.train_split), 'val': d.layer_params(d.score_split)}


# ---------------------------------------------------------------------------
# Checks on the builders' arguments (raised as ValueError naming what was expected).

def _check_choice(what, value, choices):
    if value not in choices:
        raise ValueError('%s must be one of %s, got %r' % (what, ', '.join(map(str, choices)), value))


def _check_positive(what, value):
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError('%s must be a positive integer, got %r' % (what, value))


def _check_widths(widths, default, even=False):
    widths = tuple(widths)
    if len(widths) != len(default):
        raise ValueError('widths must be %d positive integers like %s, got %r'
                         % (len(default), default, widths))
    for w in widths:
        _check_positive('each width', w)
        # CaffeNet's conv2/4/5 are split in two groups: their channel counts must be even.
        if even and w % 2:
            raise ValueError('CaffeNet widths must be even (conv2, conv4, conv5 use group 2), got %r'
                             % (widths,))
    return widths


# ---------------------------------------------------------------------------
# Layer helpers.

# Weights learn at the base rate with weight decay; biases at twice the rate, no decay.
LEARN = [dict(lr_mult=1, decay_mult=1), dict(lr_mult=2, decay_mult=0)]


def conv_relu(bottom, nout, ks=3, stride=1, pad=1, group=1, mults=True):
    """Convolution + in-place ReLU. `mults=False` leaves Caffe's default multipliers (CaffeNet)."""
    kwargs = dict(kernel_size=ks, stride=stride, num_output=nout, pad=pad)
    if group != 1:
        kwargs['group'] = group
    if mults:
        kwargs['param'] = LEARN
    conv = L.Convolution(bottom, **kwargs)
    return conv, L.ReLU(conv, in_place=True)


def fc_relu(bottom, nout, mults=True):
    """InnerProduct + in-place ReLU: the classifiers' fc6/fc7 before they are cast to conv."""
    kwargs = dict(param=LEARN) if mults else {}
    fc = L.InnerProduct(bottom, num_output=nout, **kwargs)
    return fc, L.ReLU(fc, in_place=True)


def max_pool(bottom, ks=2, stride=2):
    return L.Pooling(bottom, pool=P.Pooling.MAX, kernel_size=ks, stride=stride)


def score_conv(bottom, num_classes):
    """1x1 class scorer (score_fr, score_pool4, score_pool3); starts at zero (no filler)."""
    return L.Convolution(bottom, num_output=num_classes, kernel_size=1, pad=0, param=LEARN)


def upsample(bottom, num_classes, factor, kernel=None):
    """Upsampling by `factor`: a fixed (lr_mult 0), bias-free Deconvolution of kernel
    2 x factor, set to bilinear interpolation later by surgery.interp."""
    return L.Deconvolution(bottom, param=[dict(lr_mult=0)], convolution_param=dict(
        num_output=num_classes, kernel_size=kernel or 2 * factor, stride=factor, bias_term=False))


def softmax_loss(score, label, normalize=False):
    """Per-pixel softmax loss; summed over the image (normalize false) as in the paper,
    which is why the learning rates are so small. Void pixels (255) are ignored."""
    return L.SoftmaxWithLoss(score, label,
                             loss_param=dict(normalize=normalize, ignore_label=IGNORE_LABEL))


# ---------------------------------------------------------------------------
# Trunks: the ImageNet classifiers, fully convolutional.

def vgg16(n, bottom, widths=VGG16_WIDTHS, suffix='', train=False, pad=100,
          conv1_1='conv1_1', fully_conv=True):
    """The VGG16 trunk conv1_1 ... fc7 into NetSpec `n`; returns fc7's last top.

    suffix: appended to every layer name (NYUD late fusion's towers: conv1_1color ...).
    train: Dropout drop6/drop7 in place (only train nets have them).
    pad: conv1_1's padding: 100 in the FCNs, so that even small inputs leave fc6 a
      spatial extent and the output can be cropped back to the input; 1 in the classifier.
    conv1_1: the first conv's name (NYUD color-d renames it conv1_1_bgrd, it has 4 inputs).
    fully_conv: fc6/fc7 as 7x7 and 1x1 convolutions; False gives the classifier's
      InnerProducts (same weights, other shape: surgery casts one into the other).
    """
    widths = _check_widths(widths, VGG16_WIDTHS)
    s = suffix
    blocks = [(1, 2), (2, 2), (3, 3), (4, 3), (5, 3)]  # (block, number of convs)
    top = bottom
    for (block, convs), width in zip(blocks, widths):
        for i in range(1, convs + 1):
            name = '%d_%d' % (block, i)
            conv = conv1_1 if name == '1_1' else 'conv' + name
            n[conv + s], n['relu' + name + s] = conv_relu(top, width, pad=pad if name == '1_1' else 1)
            top = n['relu' + name + s]
        n['pool%d' % block + s] = top = max_pool(top)
    for name, ks in (('6', 7), ('7', 1)):
        if fully_conv:
            n['fc' + name + s], n['relu' + name + s] = conv_relu(top, widths[5], ks=ks, pad=0)
        else:
            n['fc' + name + s], n['relu' + name + s] = fc_relu(top, widths[5])
        top = n['relu' + name + s]
        if train:
            n['drop' + name + s] = top = L.Dropout(top, dropout_ratio=0.5, in_place=True)
    return top


def caffenet(n, bottom, widths=CAFFENET_WIDTHS, train=False, pad=100, fully_conv=True):
    """The CaffeNet (bvlc_reference_caffenet) trunk conv1 ... fc7; returns fc7's last top.
    Caffe's default multipliers, as the release's FCN-AlexNet; pooling before LRN."""
    widths = _check_widths(widths, CAFFENET_WIDTHS, even=True)
    n.conv1, n.relu1 = conv_relu(bottom, widths[0], ks=11, stride=4, pad=pad, mults=False)
    n.pool1 = max_pool(n.relu1, 3, stride=2)
    n.norm1 = L.LRN(n.pool1, local_size=5, alpha=1e-4, beta=0.75)
    n.conv2, n.relu2 = conv_relu(n.norm1, widths[1], ks=5, pad=2, group=2, mults=False)
    n.pool2 = max_pool(n.relu2, 3, stride=2)
    n.norm2 = L.LRN(n.pool2, local_size=5, alpha=1e-4, beta=0.75)
    n.conv3, n.relu3 = conv_relu(n.norm2, widths[2], ks=3, pad=1, mults=False)
    n.conv4, n.relu4 = conv_relu(n.relu3, widths[3], ks=3, pad=1, group=2, mults=False)
    n.conv5, n.relu5 = conv_relu(n.relu4, widths[4], ks=3, pad=1, group=2, mults=False)
    n.pool5 = top = max_pool(n.relu5, 3, stride=2)
    for name, ks in (('6', 6), ('7', 1)):
        if fully_conv:
            n['fc' + name], n['relu' + name] = conv_relu(top, widths[5], ks=ks, pad=0, mults=False)
        else:
            n['fc' + name], n['relu' + name] = fc_relu(top, widths[5], mults=False)
        top = n['relu' + name]
        if train:
            n['drop' + name] = top = L.Dropout(top, dropout_ratio=0.5, in_place=True)
    return top


# ---------------------------------------------------------------------------
# Heads: class scores on the trunk, then upsampling, skip fusion and the crop to the input.

# The score layers each head needs, coarsest first (the skips of section 4.2).
SCORES = {'32s': ('score_fr',), '16s': ('score_fr', 'score_pool4'),
          '8s': ('score_fr', 'score_pool4', 'score_pool3')}


def class_scores(n, head, num_classes, fc7, pool4=None, pool3=None, suffix='', at_once=False):
    """The 1x1 score layers the head needs: score_fr on fc7; for 16s/8s score_pool4 on pool4,
    for 8s score_pool3 on pool3. Returns their names (with `suffix`), coarsest first.

    at_once: the all-at-once FCN-8s scales the pool features first (scale_pool4 x 0.01,
    scale_pool3 x 0.0001, fixed), because pool3/pool4 activations are much larger than
    fc7's and would otherwise swamp the coarse scores at the start of training."""
    _check_choice('head', head, models.FCN_HEADS)
    s = suffix
    n['score_fr' + s] = score_conv(fc7, num_classes)
    for pool, name, scale in ((pool4, 'pool4', 0.01), (pool3, 'pool3', 0.0001)):
        if 'score_' + name not in SCORES[head]:
            break
        if pool is None:
            raise ValueError('an FCN-%s head needs the trunk\'s %s' % (head, name))
        if at_once:
            n['scale_' + name + s] = pool = L.Scale(
                pool, filler=dict(type='constant', value=scale), param=[dict(lr_mult=0)])
        n['score_' + name + s] = score_conv(pool, num_classes)
    return [name + s for name in SCORES[head]]


def fcn_head(n, scores, reference, num_classes, suffix='', kernel=None):
    """Upsample the class scores named in `scores` (coarsest first: [score_fr] for FCN-32s,
    + score_pool4 for 16s, + score_pool3 for 8s) back to the input, fusing each finer skip
    by a 2x upsampling and a sum, and crop to the `reference` top (the input).
    Layers: upscore | upscore2, <skip>c, fuse_pool4, upscore16 | ..., upscore_pool4,
    fuse_pool3, upscore8; then `score` (+ suffix). The crop of a skip is named after it
    with a 'c' (score_pool4c; score_pool4_semc in SIFT Flow, as in the release).
    kernel: the final upsampling's kernel (FCN-AlexNet: 63 instead of 64).
    Returns the name of the score top."""
    if not 1 <= len(scores) <= 3:
        raise ValueError('fcn_head takes 1 to 3 score tops (coarsest first), got %r' % (scores,))
    s = suffix
    score = 'score' + s
    if len(scores) == 1:
        n['upscore' + s] = up = upsample(n[scores[0]], num_classes, 32, kernel)
    else:
        n['upscore2' + s] = up = upsample(n[scores[0]], num_classes, 2)
        n[scores[1] + 'c'] = crop(n[scores[1]], up)
        n['fuse_pool4' + s] = fused = L.Eltwise(up, n[scores[1] + 'c'], operation=P.Eltwise.SUM)
        if len(scores) == 2:
            n['upscore16' + s] = up = upsample(fused, num_classes, 16, kernel)
        else:
            n['upscore_pool4' + s] = up = upsample(fused, num_classes, 2)
            n[scores[2] + 'c'] = crop(n[scores[2]], up)
            n['fuse_pool3' + s] = fused = L.Eltwise(up, n[scores[2] + 'c'], operation=P.Eltwise.SUM)
            n['upscore8' + s] = up = upsample(fused, num_classes, 8, kernel)
    # The offset comes from the layers' geometry (coord_map), e.g. 19 for FCN-32s.
    n[score] = crop(up, n[reference])
    return score


# ---------------------------------------------------------------------------
# Data: a Python data layer (train/val) or Input layers (deploy).

def data_layer_params(dataset, split, data_layer=None, data_params=None):
    """(class, params) of the data layer of `dataset`'s `split` net: the defaults of its
    DatasetSpec (default_data), or the given ones. data_params replaces the defaults whole (not merged), so a
    data_layer of another class must come with its data_params."""
    default_layer, default_params = default_data(dataset)[split]
    if data_layer is not None and data_params is None:
        raise ValueError('data_layer %r given without data_params (the defaults are for %s)'
                         % (data_layer, default_layer))
    layer = data_layer or default_layer
    params = dict(default_params if data_params is None else data_params)
    if not isinstance(layer, str) or not layer:
        raise ValueError('data_layer must be a class name in layers.py, got %r' % (layer,))
    try:
        json.dumps(params)
    except (TypeError, ValueError) as e:
        raise ValueError('data_params must be JSON-serializable: %s' % e)
    return layer, params


def data_tops(n, dataset, split, inputs, labels, data_layer=None, data_params=None):
    """The net's input tops. inputs: [(blob name, channels)] of the image tops;
    labels: label blob names. train/val: one Python layer (module layers.py) with tops
    inputs + labels, configured by JSON in param_str; deploy: one Input per image top,
    1 x channels x 500 x 500, and no labels."""
    _check_choice('split', split, SPLITS)
    if split == 'deploy':
        for name, channels in inputs:
            n[name] = L.Input(shape=dict(dim=[1, channels, DEPLOY_SIZE, DEPLOY_SIZE]))
        return
    layer, params = data_layer_params(dataset, split, data_layer, data_params)
    names = [name for name, _ in inputs] + list(labels)
    tops = L.Python(module='layers', layer=layer, ntop=len(names),
                    param_str=json.dumps(params, sort_keys=True))
    tops = tops if len(names) > 1 else (tops,)
    for name, top in zip(names, tops):
        n[name] = top


# ---------------------------------------------------------------------------
# The nets.

def fcn(head='8s', split='train', dataset='voc', num_classes=None, widths=VGG16_WIDTHS,
        data_layer=None, data_params=None, at_once=False):
    """A VGG16 FCN-32s/16s/8s with one image input `data` and one label `label`:
    the VOC and PASCAL-Context nets (and a user's dataset of models.py with one label
    top). Returns a caffe_pb2.NetParameter.

    split: 'train' (with dropout), 'val' (scoring) or 'deploy' (Input, no loss).
    num_classes: default the dataset's (models.py: 21 for VOC, 60 for PASCAL-Context).
    data_layer/data_params: the Python data layer (default: default_data(dataset)[split]).
    at_once: the all-at-once FCN-8s (scaled pool skips)."""
    _check_choice('head', head, models.FCN_HEADS)
    labels = [lab.top for lab in models.dataset(dataset).labels]
    if labels != ['label']:
        raise ValueError('fcn() nets have one label top `label`; dataset %s has %s (use its '
                         'own builder)' % (dataset, ', '.join(labels)))
    num_classes = num_classes or dataset_classes(dataset)
    _check_positive('num_classes', num_classes)
    if at_once and head != '8s':
        raise ValueError('at_once is the all-at-once FCN-8s: head must be 8s, got %r' % head)
    n = caffe.NetSpec()
    data_tops(n, dataset, split, [('data', 3)], ['label'], data_layer, data_params)
    fc7 = vgg16(n, n.data, widths, train=split == 'train')
    scores = class_scores(n, head, num_classes, fc7, n.pool4, n.pool3, at_once=at_once)
    fcn_head(n, scores, 'data', num_classes)
    if split != 'deploy':
        n.loss = softmax_loss(n.score, n.label)
    return n.to_proto()


def voc_fcn(head='8s', split='train', num_classes=None, widths=VGG16_WIDTHS,
            data_layer=None, data_params=None, at_once=False):
    """The PASCAL VOC FCN-32s/16s/8s (and at-once 8s); see fcn()."""
    return fcn(head, split, 'voc', num_classes, widths, data_layer, data_params, at_once)


def pascalcontext_fcn(head='8s', split='train', num_classes=None, widths=VGG16_WIDTHS,
                      data_layer=None, data_params=None):
    """The PASCAL-Context FCN-32s/16s/8s (background + 59 classes); see fcn()."""
    return fcn(head, split, 'pascalcontext', num_classes, widths, data_layer, data_params)


def voc_fcn_alexnet(split='train', num_classes=None, widths=CAFFENET_WIDTHS,
                    data_layer=None, data_params=None):
    """FCN-AlexNet: the CaffeNet trunk, one 32x upsampling with kernel 63 (the release's;
    coord_map then gives crop offset 18), and a loss normalized over the valid pixels.
    num_classes: default VOC's (models.py)."""
    num_classes = num_classes or dataset_classes('voc')
    _check_positive('num_classes', num_classes)
    n = caffe.NetSpec()
    data_tops(n, 'voc', split, [('data', 3)], ['label'], data_layer, data_params)
    fc7 = caffenet(n, n.data, widths, train=split == 'train')
    scores = class_scores(n, '32s', num_classes, fc7)
    fcn_head(n, scores, 'data', num_classes, kernel=63)
    if split != 'deploy':
        n.loss = softmax_loss(n.score, n.label, normalize=True)
    return n.to_proto()


NYUD_MODALITIES = ('color', 'hha', 'color-d', 'color-hha')


def nyud_fcn(modality='color', split='train', head='32s', num_classes=None, widths=VGG16_WIDTHS,
             data_layer=None, data_params=None):
    """The NYUDv2 nets (40 classes; num_classes: default the dataset's) of the paper's Table 4.

    color / hha: one input, named `data` in the net (the layer's top 'color' or 'hha').
    color-d: early fusion: `data` = Concat(color, depth) on channels, 4 channels into
      the first conv, which is therefore renamed conv1_1_bgrd (its weights are made
      from VGG's conv1_1 by surgery, not copied by name).
    color-hha: late fusion: two complete VGG towers whose layer names carry the suffix
      'color' or 'hha' (conv1_1color ... score_frcolor), so trained color and HHA nets
      transplant into them; `score_fused` = 0.5 score_frcolor + 0.5 score_frhha, one
      upscore, score cropped to `color`.
    The NYUD layer's `tops` parameter (what it loads, in order) is set here from the
    modality, also in given data_params.
      head '16s' is the paper's FCN-16s RGB-HHA, which the release never shipped. Naming
      (ours): each tower scores its pool4 (score_pool4color, score_pool4hha), fused like
      the coarse scores into `score_pool4_fused` = 0.5 each; then the standard FCN-16s
      head (upscore2 on score_fused, score_pool4_fusedc, fuse_pool4, upscore16, score).
      The new score_pool4* layers start at zero, so the net starts as the 32s one.
    """
    _check_choice('modality', modality, NYUD_MODALITIES)
    _check_choice('head', head, models.FCN_HEADS)
    num_classes = num_classes or dataset_classes('nyud')
    _check_positive('num_classes', num_classes)
    train = split == 'train'
    n = caffe.NetSpec()
    # The layer's `tops` names what it loads, in order; the net's blobs may be named otherwise.
    if modality in ('color', 'hha'):
        tops, inputs = [modality, 'label'], [('data', 3)]
    elif modality == 'color-d':
        tops, inputs = ['color', 'depth', 'label'], [('color', 3), ('depth', 1)]
    else:
        tops, inputs = ['color', 'hha', 'label'], [('color', 3), ('hha', 3)]
    if split != 'deploy':
        data_layer, data_params = data_layer_params('nyud', split, data_layer, data_params)
        data_params['tops'] = tops
    data_tops(n, 'nyud', split, inputs, ['label'], data_layer, data_params)

    if modality != 'color-hha':
        if modality == 'color-d':
            n.data = L.Concat(n.color, n.depth)
        fc7 = vgg16(n, n.data, widths, train=train,
                    conv1_1='conv1_1_bgrd' if modality == 'color-d' else 'conv1_1')
        scores = class_scores(n, head, num_classes, fc7, n.pool4, n.pool3)
        fcn_head(n, scores, 'data', num_classes)
    else:
        for tower in ('color', 'hha'):
            fc7 = vgg16(n, n[tower], widths, suffix=tower, train=train)
            class_scores(n, head, num_classes, fc7, n['pool4' + tower], n['pool3' + tower],
                         suffix=tower)
        scores = []
        for name in SCORES[head]:
            fused = 'score_fused' if name == 'score_fr' else name + '_fused'
            n[fused] = L.Eltwise(n[name + 'color'], n[name + 'hha'],
                                 operation=P.Eltwise.SUM, coeff=[0.5, 0.5])
            scores.append(fused)
        fcn_head(n, scores, 'color', num_classes)
    if split != 'deploy':
        n.loss = softmax_loss(n.score, n.label)
    return n.to_proto()


def siftflow_fcn(head='16s', split='train', widths=VGG16_WIDTHS, data_layer=None, data_params=None,
                 num_classes=None):
    """SIFT Flow: one VGG16 trunk, two heads: semantic (33 classes, every head layer
    suffixed _sem: score_fr_sem ... score_sem) and geometric (3 classes, _geo).
    Data tops data, sem, geo; losses `loss` (score_sem vs sem) and `loss_geo`.
    num_classes: (semantic, geometric), default the dataset's label tops' (models.py)."""
    _check_choice('head', head, models.FCN_HEADS)
    if num_classes is None:
        num_classes = tuple(len(models.dataset('siftflow').label(top).classes) for top in ('sem', 'geo'))
    if len(num_classes) != 2:
        raise ValueError('num_classes must be (semantic, geometric), got %r' % (num_classes,))
    n = caffe.NetSpec()
    data_tops(n, 'siftflow', split, [('data', 3)], ['sem', 'geo'], data_layer, data_params)
    fc7 = vgg16(n, n.data, widths, train=split == 'train')
    for top, classes, loss in (('sem', num_classes[0], 'loss'), ('geo', num_classes[1], 'loss_geo')):
        _check_positive('num_classes', classes)
        scores = class_scores(n, head, classes, fc7, n.pool4, n.pool3, suffix='_' + top)
        score = fcn_head(n, scores, 'data', classes, suffix='_' + top)
        if split != 'deploy':
            n[loss] = softmax_loss(n[score], n[top])
    return n.to_proto()


# ---------------------------------------------------------------------------
# PSPNet (Zhao, Shi, Qi, Wang, Jia, "Pyramid Scene Parsing Network", CVPR 2017), as its
# authors released it: a Caffe fork with three deploy nets and caffemodels. The nets here
# have the release's layer names, so its weights load by name once converted
# (surgery.py pspnet-convert), and use only stock Caffe layers:
#
# - Trunk: a dilated ResNet-50/101 with the "deep stem" (three 3x3 convolutions in place
#   of ResNet's 7x7): conv1_1_3x3_s2, conv1_2_3x3, conv1_3_3x3, pool1_3x3_s2, then
#   bottleneck blocks convS_B_1x1_reduce / _3x3 / _1x1_increase (+ convS_1_1x1_proj on a
#   stage's first block), sum convS_B, convS_B/relu. Stage 3 halves the resolution (on
#   conv3_1_1x1_reduce in pspnet50_ADE20K, on conv3_1_3x3 in both pspnet101 nets; the
#   projection always has stride 2); stages 4 and 5 keep it, their 3x3 convolutions
#   dilated 2 and 4. Trunk convolutions have no bias. Feature map F = crop / 8 rounded
#   up: 473 -> 60, 713 -> 90.
# - BN: the fork's BN layer (slope, bias, running mean, biased running variance; y =
#   slope (x - mean) / sqrt(var + 1e-5) + bias) is stock BatchNorm `<conv>/bn`
#   (use_global_stats, eps 1e-5; blobs mean, var, factor 1) followed by Scale
#   `<conv>/scale` (bias_term; blobs slope, bias), both in place. The BatchNorm keeps the
#   fork's layer name; the Scale's name is this project's.
# - Pyramid pooling (section 3.3): conv5_3_pool{1,2,3,6}: average pooling to b x b bins
#   (kernel = stride = F / b, F divisible by 6), conv5_3_poolN_conv (1x1, 512, BN, ReLU),
#   conv5_3_poolN_interp back to F x F; conv5_3_concat [conv5_3, pool6, pool3, pool2,
#   pool1]; conv5_4 (3x3, 512, BN, ReLU, Dropout 0.1); conv6 (1x1 to the classes, bias);
#   conv6_interp zooms x8: (F - 1) 8 + 1 = the crop. The output is logits.
# - The fork's Interp (bilinear with aligned corners: output pixel j of H2 reads input
#   position j (H1 - 1) / (H2 - 1)) as exact stock constructions, their fixed weights
#   set by surgery.pspnet_interp from that formula: the x8 zoom a grouped Deconvolution
#   (kernel 2f - 1, stride f, pad f - 1); b x b -> F x F an InnerProduct on axis 2 with
#   weights kron(A, A), A the F x b interpolation matrix (layer <name>_flat), then
#   Reshape <name>; b = 1 (a copy to every position) two Tiles (<name>_h, <name>).
# - Training only (the release published no training net): the auxiliary loss on stage
#   4 (weight 0.4, section 4.1): conv4_<last + 1> (conv4_24 in ResNet-101, conv4_7 in
#   ResNet-50: 3x3, 256, BN, ReLU, Dropout 0.1), conv6_1 (1x1 to the classes). These
#   names are INFERRED (two independent converters of the caffemodels agree), not
#   published. Both losses are computed at F x F (the release's Caffe training did the
#   same) against the label sampled every 8th pixel (label_shrink: Pooling of kernel 1,
#   stride 8, the align-corners grid: exact, no blending of class numbers), averaged over
#   the valid pixels. BN statistics stay frozen in training: stock Caffe has no
#   synchronised BN, and the paper's batch of 16 is 1-2 images per GPU here.
# - New layers (the head: everything after conv5_3) learn at 10x the base rate (biases
#   20x), the trunk at 1x; Scale layers have no weight decay. Train nets give the
#   head's and trunk's convolutions MSRA-initialised weights (zero would never break
#   symmetry; copied weights replace them); the class scorers start at zero as in the FCNs.

RESNET_BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}  # bottleneck blocks of stages 2-5
# conv1_1..conv1_3, the bottleneck width of stages 2-5 (a block outputs 4x), the pyramid
# branches' conv, conv5_4, the auxiliary conv. Tests pass narrow ones.
PSP_WIDTHS = (64, 64, 128, 64, 128, 256, 512, 512, 512, 256)
EXPANSION = 4
PSP_BINS = (1, 2, 3, 6)
PSP_ZOOM = 8          # conv6_interp: F x F -> (F - 1) 8 + 1
PSP_STRIDE_ON = ('1x1_reduce', '3x3')  # where stage 3 halves the resolution
AUX_WEIGHT = 0.4
PSP_DROPOUT = 0.1
# The release's three nets (depth, stride placement, classes, crop, dataset), their
# solvers, schedules and weights: models.py (family folder pspnet/<model>/).


def _out_size(size, ks, stride, pad, dilation=1, ceil=False):
    """A convolution's (floor) or a pooling's (ceil) output size, as Caffe computes it."""
    span = size + 2 * pad - dilation * (ks - 1) - 1
    return (-(-span // stride) if ceil else span // stride) + 1


def psp_feature_size(crop):
    """F, the side of the trunk's output for a crop x crop input: conv1_1_3x3_s2 (3x3,
    stride 2, pad 1), pool1_3x3_s2 (3x3, stride 2, pad 1, Caffe's ceil), stage 3's
    stride 2 (3x3 pad 1 or 1x1 pad 0: the same size). 473 -> 60, 713 -> 90."""
    _check_positive('crop', crop)
    size = _out_size(_out_size(crop, 3, 2, 1), 3, 2, 1, ceil=True)
    return _out_size(size, 1, 2, 0)


def psp_scale_name(bn_name):
    """The Scale layer paired with BatchNorm `<conv>/bn`: `<conv>/scale`."""
    if not bn_name.endswith('/bn'):
        raise ValueError('a PSPNet BN layer is named <conv>/bn, got %r' % bn_name)
    return bn_name[:-len('/bn')] + '/scale'


# How a ResNet release names its layers: 'psp' (PSPNet's: convS_B_1x1_reduce, <conv>/bn,
# <conv>/scale, <conv>/relu) or 'msra' (Kaiming He's, which DeepLab v2 keeps: resSB_branch2a,
# bnSB_branch2a, scaleSB_branch2a, resSB_branch2a_relu; bn_conv1, scale_conv1, conv1_relu).
RESNET_STYLES = ('psp', 'msra')


def bn_names(conv, style='psp'):
    """(BatchNorm, Scale, ReLU) layer names of convolution `conv` in `style`."""
    _check_choice('style', style, RESNET_STYLES)
    if style == 'psp':
        return conv + '/bn', psp_scale_name(conv + '/bn'), conv + '/relu'
    stem = conv[len('res'):] if conv.startswith('res') else '_' + conv  # res2a_x -> 2a_x
    return 'bn' + stem, 'scale' + stem, conv + '_relu'


def _param(lr, decay, share, names):
    """ParamSpecs of one layer: `lr` / `decay` multipliers each, named `names` when the
    layer shares them with its copies (share: the multi-scale branches)."""
    specs = [dict(lr_mult=lr, decay_mult=decay) for _ in names]
    return [dict(s, name=name) for s, name in zip(specs, names)] if share else specs


def conv_bn(n, name, bottom, nout, ks=1, stride=1, dilation=1, relu=True, lr=1, filler=False,
            style='psp', suffix='', share=False, bn_lr=None, bn_decay=None):
    """Convolution `name` (no bias; pad keeps the size) + BatchNorm + Scale (+ ReLU), all in
    place on the top `name`, their names as `style` names them (bn_names). lr: the
    weights' rate multiplier (1 trunk, 10 head); filler: MSRA initial weights (train nets).
    suffix: appended to every layer name (DeepLab's scale branches: conv1_res075);
    share: name the parameters after the unsuffixed layer (<layer>_0, _1, ...) so the
    branches share them; bn_lr: the Scale's rate (None: lr; 0: frozen, as DeepLab's)
    -- 'msra' also lists the BatchNorm's three frozen statistics. bn_decay: None keeps the
    statistics frozen (use_global_stats); a number trains them (batch statistics in the
    TRAIN phase, moving averages with this decay: DeepLabv3's first stage)."""
    bn, scale, relu_name = bn_names(name, style)
    kwargs = dict(num_output=nout, kernel_size=ks, stride=stride, pad=dilation * (ks - 1) // 2,
                  bias_term=False, param=_param(lr, 1, share, [name + '_0']))
    if dilation != 1:
        kwargs['dilation'] = dilation
    if filler:
        kwargs['weight_filler'] = dict(type='msra')
    s = suffix
    n[name + s] = top = L.Convolution(bottom, **kwargs)
    stats = {} if style == 'psp' else dict(param=_param(0, 0, share, ['%s_%d' % (bn, i) for i in range(3)]))
    if bn_decay is None:
        n[bn + s] = L.BatchNorm(top, in_place=True, use_global_stats=True, eps=1e-5, **stats)
    else:
        n[bn + s] = L.BatchNorm(top, in_place=True, moving_average_fraction=bn_decay, eps=1e-5,
                                **stats)
    n[scale + s] = L.Scale(top, in_place=True, bias_term=True,
                           param=_param(lr if bn_lr is None else bn_lr, 0, share,
                                        [scale + '_0', scale + '_1']))
    if relu:
        n[relu_name + s] = L.ReLU(top, in_place=True)
    return top


def block_names(stage, count, style='psp', depth=101):
    """The names of a stage's `count` bottleneck blocks: conv3_1, conv3_2, ... ('psp');
    res3a, res3b, ... or, in a deep net's long stages, res3a, res3b1, res3b2, ... ('msra':
    the MSRA release letters ResNet-50's blocks and numbers the b's of ResNet-101's and
    -152's stages of more than three blocks)."""
    if style == 'psp':
        return ['conv%d_%d' % (stage, b) for b in range(1, count + 1)]
    if depth == 50 or count <= 3:
        return ['res%d%s' % (stage, 'abcdefghijklmnopqrstuvwxyz'[b]) for b in range(count)]
    return ['res%da' % stage] + ['res%db%d' % (stage, b) for b in range(1, count)]


# A bottleneck's convolutions (reduce, 3x3, increase, projection shortcut) in each style.
BLOCK_PARTS = {'psp': ('_1x1_reduce', '_3x3', '_1x1_increase', '_1x1_proj'),
               'msra': ('_branch2a', '_branch2b', '_branch2c', '_branch1')}


def bottleneck(n, bottom, name, width, stride=1, stride_on='3x3', dilation=1, proj=False,
               filler=False, style='psp', suffix='', share=False, bn_lr=None, bn_decay=None):
    """One ResNet bottleneck block `name` (conv3_1, res3a ...): reduce (1x1, width), 3x3
    (width, dilated), increase (1x1, 4 width, no ReLU), on the first block of a stage a
    1x1 projection (4 width) as the shortcut; the sum `name` and its ReLU. Names as
    `style` gives them (BLOCK_PARTS: name_1x1_reduce ... or name_branch2a ...; the
    'msra' release lists the projection first). stride: on the reduce or the 3x3
    (stride_on) and on the projection. suffix, share, bn_lr: see conv_bn."""
    _check_choice('stride_on', stride_on, PSP_STRIDE_ON)
    reduce_, conv3, increase, projection = BLOCK_PARTS[style]
    kw = dict(filler=filler, style=style, suffix=suffix, share=share, bn_lr=bn_lr,
              bn_decay=bn_decay)
    short = bottom
    if proj and style == 'msra':
        short = conv_bn(n, name + projection, bottom, EXPANSION * width, stride=stride,
                        relu=False, **kw)
    top = conv_bn(n, name + reduce_, bottom, width,
                  stride=stride if stride_on == '1x1_reduce' else 1, **kw)
    top = conv_bn(n, name + conv3, top, width, ks=3, dilation=dilation,
                  stride=stride if stride_on == '3x3' else 1, **kw)
    top = conv_bn(n, name + increase, top, EXPANSION * width, relu=False, **kw)
    if proj and style == 'psp':
        short = conv_bn(n, name + projection, bottom, EXPANSION * width, stride=stride,
                        relu=False, **kw)
    n[name + suffix] = L.Eltwise(short, top, operation=P.Eltwise.SUM)
    n[name + ('/relu' if style == 'psp' else '_relu') + suffix] = L.ReLU(n[name + suffix],
                                                                        in_place=True)
    return n[name + suffix]


def _check_blocks(blocks):
    blocks = tuple(blocks)
    if len(blocks) != 4:
        raise ValueError('blocks must be 4 positive integers (stages 2-5), got %r' % (blocks,))
    for b in blocks:
        _check_positive('each stage\'s number of blocks', b)
    return blocks


# The stem of each style: 'psp' three 3x3 convolutions (widths[0:3]), 'msra' one 7x7
# (widths[0]); both stride 2 then a 3x3 stride-2 max pooling with pad 1 (Caffe's ceil).
STEMS = {'psp': (('conv1_1_3x3_s2', 3, 2), ('conv1_2_3x3', 3, 1), ('conv1_3_3x3', 3, 1)),
         'msra': (('conv1', 7, 2),)}
POOL1 = {'psp': 'pool1_3x3_s2', 'msra': 'pool1'}


def stage_plan(blocks, output_stride=8, multi_grid=None, dilate_first=True):
    """(stride, dilation of each block) of stages 2-5 of a trunk of output stride 8, 16 or
    32: stride 4 after pool1, stage 3 halves it; stages 4 and 5 halve it too while the
    output stride allows, else dilate by 2 each (8: dilations 2 and 4; 16: 1 and 2).
    multi_grid: stage 5's unit multipliers (DeepLabv3's (1, 2, 4): 2/4/8 at 16, 4/8/16 at
    8); dilate_first False: a dilated stage's first block keeps the previous stage's
    dilation (torchvision's ResNet)."""
    _check_choice('output_stride', output_stride, (8, 16, 32))
    if multi_grid is not None and len(multi_grid) != blocks[3]:
        raise ValueError('multi_grid %r needs one multiplier per stage-5 block (%d)'
                         % (tuple(multi_grid), blocks[3]))
    plan, current, rate = [], 4, 1
    for stage, count in zip((2, 3, 4, 5), blocks):
        stride, previous = (1 if stage == 2 else 2), rate
        if stride == 2 and current * 2 > output_stride:
            stride, rate = 1, rate * 2
        current *= stride
        grid = multi_grid if stage == 5 and multi_grid else (1,) * count
        plan.append((stride, tuple((previous if b == 0 and not dilate_first else rate) * grid[b]
                                   for b in range(count))))
    return plan


def dilated_resnet(n, bottom, depth=101, widths=PSP_WIDTHS, blocks=None, stride_on='3x3',
                   filler=False, style='psp', suffix='', share=False, bn_lr=None,
                   output_stride=8, multi_grid=None, dilate_first=True, pool1_pad=1,
                   pool1_floor=False, bn_decay=None):
    """The dilated ResNet trunk into NetSpec `n`, from `bottom` (N x 3 x H x W, BGR, mean
    subtracted) to stage 5 (N x 4 widths[6] x F x F, F = psp_feature_size(H)): output
    stride 8, stages 4 and 5 dilated 2 and 4.
    depth: 50 or 101 (blocks per stage RESNET_BLOCKS[depth]); blocks: other counts
    (narrow test nets); stride_on: where stage 3 strides ('1x1_reduce' or '3x3').
    style: 'psp' (PSPNet's deep stem and names) or 'msra' (Kaiming He's 7x7 stem and
    names, DeepLab v2's; widths[1:3] unused); suffix, share, bn_lr, bn_decay: see conv_bn
    (the scale branches of DeepLab's multi-scale input share one trunk's parameters).
    output_stride, multi_grid, dilate_first: stage_plan (stages 4 and 5 stride as stage
    3 does, on `stride_on`). pool1_pad: pool1's pad (1; Kaiming He's ImageNet net 0);
    pool1_floor: pool1's size rounded down as PyTorch does (Caffe rounds up): `pool1` is
    then the Crop of `pool1_ceil` to `pool1_size` (a 1-channel Convolution, kernel 1,
    stride 4, on `bottom`: floor((H - 1) / 4) + 1, the stem's floor size; its weights
    are never read).
    Returns the names of stage 4's and stage 5's last blocks (conv4_23, conv5_3; res4b22,
    res5c), without the suffix."""
    _check_choice('depth', depth, sorted(RESNET_BLOCKS))
    _check_choice('style', style, RESNET_STYLES)
    widths = _check_widths(widths, PSP_WIDTHS)
    blocks = _check_blocks(blocks or RESNET_BLOCKS[depth])
    plan = stage_plan(blocks, output_stride, multi_grid, dilate_first)
    kw = dict(filler=filler, style=style, suffix=suffix, share=share, bn_lr=bn_lr)
    if bn_decay is not None:
        kw['bn_decay'] = bn_decay
    top = bottom
    for (name, ks, stride), width in zip(STEMS[style], widths):
        top = conv_bn(n, name, top, width, ks=ks, stride=stride, **kw)
    pool1 = POOL1[style] + suffix
    pool = dict(pool=P.Pooling.MAX, kernel_size=3, stride=2)
    if pool1_pad:
        pool['pad'] = pool1_pad
    if pool1_floor:
        n[pool1 + '_ceil'] = L.Pooling(top, **pool)
        n[pool1 + '_size'] = L.Convolution(bottom, num_output=1, kernel_size=1, stride=4,
                                           bias_term=False, param=[dict(lr_mult=0, decay_mult=0)])
        n[pool1] = top = L.Crop(n[pool1 + '_ceil'], n[pool1 + '_size'], axis=2, offset=0)
    else:
        n[pool1] = top = L.Pooling(top, **pool)
    for stage, (stride, dilations) in zip((2, 3, 4, 5), plan):
        names = block_names(stage, blocks[stage - 2], style, depth)
        for block, (name, dilation) in enumerate(zip(names, dilations)):
            top = bottleneck(n, top, name, widths[stage + 1], stride if block == 0 else 1,
                             stride_on, dilation, proj=block == 0, **kw)
        if stage == 4:
            stage4 = name
    return stage4, name


def align_corners_interp(n, name, bottom, size_in, size_out):
    """The fork's Interp from size_in x size_in to size_out x size_out (N x C kept), as
    stock layers whose fixed weights surgery.pspnet_interp sets: Tile (size_in 1) or
    InnerProduct `name`_flat on axis 2 (size_in^2 -> size_out^2, no bias, lr 0) + Reshape.
    The top is `name`."""
    if size_in == 1:
        n[name + '_h'] = L.Tile(bottom, axis=2, tiles=size_out)
        n[name] = L.Tile(n[name + '_h'], axis=3, tiles=size_out)
    else:
        n[name + '_flat'] = L.InnerProduct(bottom, num_output=size_out ** 2, axis=2,
                                           bias_term=False,
                                           param=[dict(lr_mult=0, decay_mult=0)])
        n[name] = L.Reshape(n[name + '_flat'], shape=dict(dim=[0, 0, size_out, size_out]))
    return n[name]


def pyramid_pooling(n, stage5, feature, width, bins=PSP_BINS, filler=False):
    """The pyramid pooling module on `stage5` (N x K x F x F, F = `feature`): per bin b,
    <stage5>_pool<b> (average, kernel = stride = F / b), _conv (1x1, `width`, BN, ReLU,
    lr 10), _interp back to F x F; then <stage5>_concat of [stage5, finest bin ... coarsest]
    (N x (K + 4 width) x F x F). Returns the concat top."""
    branches = []
    for b in bins:
        if feature % b:
            raise ValueError('pyramid bin %d: the %d x %d feature map is not divisible by it'
                             % (b, feature, feature))
        name = '%s_pool%d' % (stage5, b)
        n[name] = L.Pooling(n[stage5], pool=P.Pooling.AVE, kernel_size=feature // b,
                            stride=feature // b)
        top = conv_bn(n, name + '_conv', n[name], width, lr=10, filler=filler)
        branches.append(align_corners_interp(n, name + '_interp', top, b, feature))
    n[stage5 + '_concat'] = L.Concat(n[stage5], *reversed(branches))
    return n[stage5 + '_concat']


def _block_name(name, offset):
    """conv5_3 -> conv5_4 (offset 1): the head's names continue the stage's numbering."""
    stage, block = name.rsplit('_', 1)
    return '%s_%d' % (stage, int(block) + offset)


def pspnet(split='deploy', depth=101, num_classes=None, crop=473, stride_on='3x3',
           dataset='voc2012', widths=PSP_WIDTHS, blocks=None, data_layer=None,
           data_params=None, aux=None):
    """A PSPNet: dilated ResNet trunk, pyramid pooling head, x8 zoom to the crop.
    Returns a caffe_pb2.NetParameter.

    split: 'deploy' (Input `data` 1 x 3 x crop x crop; output conv6_interp, N x classes
      x crop x crop logits), 'train' (Python data layer tops data N x 3 x crop x crop,
      label N x 1 x crop x crop; losses `loss` and, weighted 0.4, `loss_aux`) or 'val'
      (the same, `loss` only).
    aux: include the auxiliary branch (conv4_24, conv6_1); default only in train nets.
      surgery.py pspnet-convert builds the deploy net with it, to account for the
      released caffemodels' auxiliary weights.
    depth, stride_on, widths, blocks: see dilated_resnet; crop: the input side, whose
      feature map F = psp_feature_size(crop) must be divisible by every bin.
    dataset, data_layer, data_params: the train/val data layer (default: default_data(dataset));
    num_classes: default the dataset's (models.py)."""
    _check_choice('split', split, SPLITS)
    num_classes = num_classes or dataset_classes(dataset)
    _check_positive('num_classes', num_classes)
    train = split == 'train'
    aux = train if aux is None else aux
    feature = psp_feature_size(crop)
    if (feature - 1) * PSP_ZOOM + 1 != crop:
        raise ValueError('crop %d: the x%d zoom of its %d x %d feature map gives %d, not the '
                         'crop (use 8 k + 1)' % (crop, PSP_ZOOM, feature, feature,
                                                 (feature - 1) * PSP_ZOOM + 1))
    widths = _check_widths(widths, PSP_WIDTHS)
    n = caffe.NetSpec()
    if split == 'deploy':
        n.data = L.Input(shape=dict(dim=[1, 3, crop, crop]))
    else:
        layer, params = data_layer_params(dataset, split, data_layer, data_params)
        if data_params is None:  # the default layer crops to this net's input
            params['crop'] = crop
        data_tops(n, dataset, split, [('data', 3)], ['label'], layer, params)
    stage4, stage5 = dilated_resnet(n, n.data, depth, widths, blocks, stride_on, filler=train)
    top = pyramid_pooling(n, stage5, feature, widths[7], filler=train)
    top = conv_bn(n, _block_name(stage5, 1), top, widths[8], ks=3, lr=10, filler=train)
    n[_block_name(stage5, 1) + '_drop'] = L.Dropout(top, dropout_ratio=PSP_DROPOUT, in_place=True)
    n.conv6 = L.Convolution(top, num_output=num_classes, kernel_size=1, param=[
        dict(lr_mult=10, decay_mult=1), dict(lr_mult=20, decay_mult=0)])
    n.conv6_interp = L.Deconvolution(n.conv6, param=[dict(lr_mult=0, decay_mult=0)],
                                     convolution_param=dict(
        num_output=num_classes, group=num_classes, kernel_size=2 * PSP_ZOOM - 1,
        stride=PSP_ZOOM, pad=PSP_ZOOM - 1, bias_term=False))
    if aux:
        name = _block_name(stage4, 1)  # INFERRED: conv4_24 (ResNet-101), conv4_7 (ResNet-50)
        top = conv_bn(n, name, n[stage4], widths[9], ks=3, lr=10, filler=train)
        n[name + '_drop'] = L.Dropout(top, dropout_ratio=PSP_DROPOUT, in_place=True)
        n.conv6_1 = L.Convolution(top, num_output=num_classes, kernel_size=1, param=[
            dict(lr_mult=10, decay_mult=1), dict(lr_mult=20, decay_mult=0)])
    if split != 'deploy':
        n.label_shrink = L.Pooling(n.label, pool=P.Pooling.MAX, kernel_size=1, stride=PSP_ZOOM)
        loss_param = dict(ignore_label=IGNORE_LABEL, normalize=True)
        n.loss = L.SoftmaxWithLoss(n.conv6, n.label_shrink, loss_param=loss_param)
        if aux and split == 'train':
            n.loss_aux = L.SoftmaxWithLoss(n.conv6_1, n.label_shrink, loss_param=loss_param,
                                           loss_weight=AUX_WEIGHT)
    return n.to_proto()


# ---------------------------------------------------------------------------
# DeepLab v2 (Chen, Papandreou, Kokkinos, Murphy, Yuille, "DeepLab: Semantic Image
# Segmentation with Deep Convolutional Nets, Atrous Convolution, and Fully Connected
# CRFs", TPAMI 2017, arXiv 1606.00915), its released VOC 2012 model
# deeplab_aspp_resnet101 (docs/deeplab.md), with the release's layer names so its
# caffemodels load by name, on stock layers only:
#
# - Trunk: Kaiming He's ResNet-101 as the MSRA release names it (dilated_resnet, style
#   'msra'): conv1 (7x7, stride 2) + bn_conv1 + scale_conv1, pool1 (3x3, stride 2, pad
#   1), res2a .. res5c with branch1 / branch2a-c and their bn* / scale*; stage 3 strides
#   on res3a_branch1 and res3a_branch2a; stages 4 and 5 dilated 2 and 4 (output stride
#   8). BatchNorm and Scale frozen (global statistics, rate 0).
# - ASPP-L head (section 3.3): fc1_voc12_c0 .. c3, 3x3 convolutions straight to the
#   classes (with bias) at dilation 6, 12, 18, 24, summed into fc1_voc12.
# - Multi-scale inputs (MSC, section 4.1): the input and its 0.75 and 0.5 copies
#   (data_res075, data_res05) through three copies of trunk + head whose layer names end
#   in _res075 / _res05 and which share every parameter by name; the smaller logits are
#   interpolated to the 1x logits (fc1_voc12_res075_interp, fc1_voc12_res05_interp),
#   fused by an element-wise max (fc_fusion) and zoomed x8 to the input (fc1_interp).
# - The release's Interp (align-corners bilinear, output size: shrink first, then zoom)
#   as exact stock constructions (align_corners_resize): a zoom by q is a grouped
#   Deconvolution (kernel 2q - 1, stride q, pad q - 1; weights set by
#   surgery.pspnet_interp), then taking every p-th pixel is a Pooling of kernel 1,
#   stride p: 513 -> 385 = x3 then every 4th, 49 -> 65 = x4 then every 3rd.
# - Training (train net, partly UNCONFIRMED: the release's train prototxt was not
#   retrieved): one softmax loss per branch and one on the fusion, each against the
#   label sampled at its logits' grid (label_shrink: Pooling kernel 1 stride 8, exact);
#   a branch whose logits the label cannot be sampled to exactly (0.75: 321 -> 31) is
#   scored after its interpolation to the 1x logits, as the paper describes.
#   Classifier rate x10 (bias x20).

DEEPLAB_SCALES = (1.0, 0.75, 0.5)   # the MSC branches, 1x first
DEEPLAB_RATES = (6, 12, 18, 24)     # ASPP-L's dilations
DEEPLAB_ZOOM = 8                    # fc1_interp: logits -> input
DEEPLAB_HEAD = 'fc1_voc12'          # the release's classifier prefix
MAX_INTERP_ZOOM = 16                # a larger zoom would mean an unintended size


def align_corners_steps(size_in, size_out):
    """(zoom q, stride p) with (size_in - 1) / (size_out - 1) = p / q in lowest terms: the
    align-corners resize size_in -> size_out is a zoom by q ((size_in - 1) q + 1 pixels)
    then every p-th pixel. ValueError when q exceeds MAX_INTERP_ZOOM."""
    _check_positive('size_in', size_in)
    _check_positive('size_out', size_out)
    if size_out == 1 or size_in == size_out:
        return 1, max(size_in - 1, 1) if size_out == 1 else 1
    ratio = fractions.Fraction(size_in - 1, size_out - 1)
    if ratio.denominator > MAX_INTERP_ZOOM:
        raise ValueError('align-corners resize %d -> %d needs a zoom by %d (at most %d): pick '
                         'sizes of the form k m + 1' % (size_in, size_out, ratio.denominator,
                                                        MAX_INTERP_ZOOM))
    return ratio.denominator, ratio.numerator


def align_corners_resize(n, name, bottom, channels, size_in, size_out):
    """The release's Interp of a N x `channels` x size_in x size_in top to size_out, as
    stock layers (align_corners_steps): `name`_zoom (Deconvolution, grouped per channel,
    fixed: surgery.pspnet_interp fills it) and `name` (Pooling, kernel 1); one of them
    alone, named `name`, when the other would be the identity. Returns the top."""
    zoom, stride = align_corners_steps(size_in, size_out)
    top = bottom
    if zoom > 1:
        n[name + '_zoom' if stride > 1 else name] = top = L.Deconvolution(
            top, param=[dict(lr_mult=0, decay_mult=0)], convolution_param=dict(
                num_output=channels, group=channels, kernel_size=2 * zoom - 1, stride=zoom,
                pad=zoom - 1, bias_term=False))
    if stride > 1:
        n[name] = top = L.Pooling(top, pool=P.Pooling.MAX, kernel_size=1, stride=stride)
    return top


def msc_size(size, scale):
    """The side of the 'scale' branch's input, by the release's Interp size rule: shrink by
    the scale's denominator first, then zoom by its numerator (513 at 0.75 -> 385)."""
    s = fractions.Fraction(scale).limit_denominator(MAX_INTERP_ZOOM)
    return (size - 1) // s.denominator * s.numerator + 1


def msc_suffix(scale):
    """The layer-name suffix of a scale branch: '' (1x), '_res075', '_res05'."""
    return '' if scale == 1 else '_res' + ('%g' % scale).replace('.', '')


def aspp(n, bottom, num_classes, rates=DEEPLAB_RATES, name=DEEPLAB_HEAD, suffix='',
         share=False, filler=False):
    """ASPP-L: <name>_c0 .. c<k> (3x3 to the classes, bias, dilation = pad = each rate,
    rate x10 / bias x20; parameters <name>_cI_w / _b when shared), summed into <name>
    (+ suffix). filler: the train net's start (Gaussian 0.01, bias 0). Returns the sum."""
    branches = []
    for i, rate in enumerate(rates):
        layer = '%s_c%d' % (name, i)
        kwargs = dict(num_output=num_classes, kernel_size=3, pad=rate, dilation=rate,
                      param=[dict(lr_mult=10, decay_mult=1), dict(lr_mult=20, decay_mult=0)])
        if share:
            kwargs['param'] = [dict(p, name=layer + e) for p, e in zip(kwargs['param'], ('_w', '_b'))]
        if filler:
            kwargs.update(weight_filler=dict(type='gaussian', std=0.01),
                          bias_filler=dict(type='constant', value=0))
        n[layer + suffix] = L.Convolution(bottom, **kwargs)
        branches.append(n[layer + suffix])
    n[name + suffix] = L.Eltwise(*branches, operation=P.Eltwise.SUM)
    return n[name + suffix]


def square_data(n, split, size, dataset, data_layer=None, data_params=None, split_name=None,
                batch=None):
    """The DeepLab nets' input: `data` 1 x 3 x size x size (deploy), else `data` and
    `label` from the dataset's data layer (data_layer_params), whose default parameters
    crop (pad) to size x size and read split `split_name` when given; `batch`: its
    batch_size unless the given data_params set their own."""
    if split == 'deploy':
        n.data = L.Input(shape=dict(dim=[1, 3, size, size]))
        return
    layer, params = data_layer_params(dataset, split, data_layer, data_params)
    if data_params is None:  # the default layer crops (pads) to this net's input
        params['crop'] = size
        if split_name:
            params['split'] = split_name
    if batch:
        params.setdefault('batch_size', batch)
    data_tops(n, dataset, split, [('data', 3)], ['label'], layer, params)


def deeplab_v2(split='deploy', depth=101, num_classes=None, crop=513, train_crop=321,
               dataset='voc12aug', widths=PSP_WIDTHS, blocks=None, data_layer=None,
               data_params=None, scales=DEEPLAB_SCALES, rates=DEEPLAB_RATES):
    """DeepLab v2 with multi-scale inputs: MSRA ResNet trunk (dilated, output stride 8),
    ASPP-L head, three scale branches sharing their parameters, max fusion, x8 zoom.
    Returns a caffe_pb2.NetParameter.

    split: 'deploy' (Input `data` 1 x 3 x crop x crop; output fc1_interp, N x classes x
      crop x crop logits), 'val' (the data layer's `data` / `label` at crop x crop, the
      image padded with the mean and the label with 255; `loss` on fc1_interp) or
      'train' (at train_crop; losses on every branch and the fusion, see above; no
      fc1_interp).
    num_classes: default the dataset's.  crop: the test input (513: every VOC image
      padded to it); train_crop: the training crop (321).
    widths, blocks, depth: see dilated_resnet (widths[1:3] unused: the 7x7 stem).
    scales: the MSC branches, 1 first (another 1-tuple: a single-scale net);
    rates: ASPP's dilations. dataset, data_layer, data_params: the data layer (default:
      default_data(dataset), its `crop` set to this net's input)."""
    _check_choice('split', split, SPLITS)
    num_classes = num_classes or len(models.dataset(dataset).classes)
    _check_positive('num_classes', num_classes)
    if not scales or scales[0] != 1 or not all(0 < s < 1 for s in scales[1:]):
        raise ValueError('scales must start with 1, the others in (0, 1), got %r' % (scales,))
    train = split == 'train'
    size = train_crop if train else crop
    _check_positive('crop', size)
    n = caffe.NetSpec()
    square_data(n, split, size, dataset, data_layer, data_params)
    share = len(scales) > 1
    logits = []  # (scale, blob, side)
    for scale in scales:
        s, side = msc_suffix(scale), msc_size(size, scale)
        bottom = n.data if scale == 1 else align_corners_resize(n, 'data' + s, n.data, 3, size, side)
        _, stage5 = dilated_resnet(n, bottom, depth, widths, blocks, stride_on='1x1_reduce',
                                   filler=train, style='msra', suffix=s, share=share, bn_lr=0)
        top = aspp(n, n[stage5 + s], num_classes, rates, suffix=s, share=share, filler=train)
        # conv1 (7x7, stride 2, pad 3) gives the size PSPNet's 3x3 stride-2 stem does
        logits.append((scale, top, psp_feature_size(side)))
    feature = logits[0][2]
    fused = [logits[0][1]]
    resized = {}
    for scale, top, side in logits[1:]:
        name = DEEPLAB_HEAD + msc_suffix(scale) + '_interp'
        resized[scale] = align_corners_resize(n, name, top, num_classes, side, feature)
        fused.append(resized[scale])
    if share:
        n.fc_fusion = L.Eltwise(*fused, operation=P.Eltwise.MAX)
    if not train:  # the release's test output (training scores the logits' grid)
        if (feature - 1) * DEEPLAB_ZOOM + 1 != size:
            raise ValueError('crop %d: the x%d zoom of its %d x %d logits gives %d, not the '
                             'crop (use 8 k + 1)' % (size, DEEPLAB_ZOOM, feature, feature,
                                                     (feature - 1) * DEEPLAB_ZOOM + 1))
        out = align_corners_resize(n, 'fc1_interp', n.fc_fusion if share else fused[0],
                                   num_classes, feature, size)
    loss_param = dict(ignore_label=IGNORE_LABEL)
    if split == 'val':
        n.loss = L.SoftmaxWithLoss(out, n.label, loss_param=loss_param)
    elif train:
        shrunk = {}

        def label_at(side):  # the label sampled at a logits grid, or None if not exactly
            zoom, stride = align_corners_steps(size, side)
            if zoom != 1:
                return None
            if side not in shrunk:
                name = 'label_shrink' + ('' if side == feature else '_%d' % side)
                n[name] = shrunk[side] = L.Pooling(n.label, pool=P.Pooling.MAX, kernel_size=1,
                                                   stride=stride)
            return shrunk[side]
        if label_at(feature) is None:
            raise ValueError('train crop %d: the label cannot be sampled to the %d x %d logits'
                             % (size, feature, feature))
        for scale, top, side in logits:
            own = label_at(side)
            score, label = (top, own) if own is not None else (resized[scale], shrunk[feature])
            n['loss' + msc_suffix(scale)] = L.SoftmaxWithLoss(score, label, loss_param=loss_param)
        if share:
            n.loss_fusion = L.SoftmaxWithLoss(n.fc_fusion, shrunk[feature], loss_param=loss_param)
    return n.to_proto()


# ---------------------------------------------------------------------------
# DeepLabv3 (Chen, Papandreou, Schroff, Adam, "Rethinking Atrous Convolution for Semantic
# Image Segmentation", arXiv 1706.05587; docs/deeplabv3.md). No Caffe release exists: the
# layer names of the head are this project's (after the TF reference's scopes), the
# trunk's Kaiming He's, so his ImageNet caffemodel loads by name.
#
# - Trunk: the MSRA ResNet (dilated_resnet, style 'msra', stride on the 1x1), output
#   stride 16 in the train net and 8 in the val / deploy nets, multi-grid (1, 2, 4) on
#   res5; the same parameters in both, so one caffemodel loads into every net.
# - ASPP with image pooling (section 3.3): aspp0 (1x1) and aspp1..3 (3x3 at rates 6, 12,
#   18 at output stride 16, doubled at 8), image_pool (global average) + image_pool_conv
#   (1x1), each conv + BN + ReLU; image_pool_tile broadcasts the pooled vector over the
#   map with stock layers of any size (Power scale 0 gives zeros of the map's shape, Bias
#   adds the vector); aspp_concat in the TF reference's order (image pool first);
#   concat_projection (1x1 + BN + ReLU); logits (1x1 to the classes, bias); logits_interp
#   the align-corners zoom by the output stride (fixed Deconvolution, 65 -> 513 at 8).
# - Training: the loss on the zoomed logits against the full-size label (the paper keeps
#   the ground truth intact); BatchNorm trained (decay 0.9997) in the first stage.
# - variant 'torchvision': torchvision's deeplabv3_resnet101 (surgery.py
#   deeplabv3-from-torchvision): stride on the 3x3, pool1 rounded down, a dilated stage's
#   first block keeps the previous dilation, no multi-grid, rates 12/24/36 at stride 8,
#   image pool concatenated last, dropout 0.5 after the projection, head_conv (3x3 + BN +
#   ReLU) before the logits, and a half-pixel (align_corners=False) zoom: Caffe's
#   bilinear Deconvolution (kernel 2f, stride f, pad f / 2) divided by the same
#   Deconvolution of ones, which at the border is exactly the clamped edge of PyTorch.

DEEPLABV3_WIDTHS = (64, 64, 128, 64, 128, 256, 512, 256, 256, 256)  # [7] ASPP, [8] projection, [9] head_conv
DEEPLABV3_RATES = (6, 12, 18)   # ASPP's 3x3 rates at output stride 16 (x 16 / stride)
DEEPLABV3_GRID = (1, 2, 4)      # multi-grid of res5's three units
DEEPLABV3_BN_DECAY = 0.9997     # moving-average decay of the BN statistics when trained
DEEPLABV3_VARIANTS = ('paper', 'torchvision')


def image_pooling(n, bottom, like, width, **kw):
    """image_pool (global AVE of `bottom`) -> image_pool_conv (1x1 `width`, BN, ReLU) ->
    image_pool_tile: the N x width vector over every pixel of `like` (N x width x F x F):
    Power (scale 0) of `like` is zeros of its shape, Bias (axis 0) adds the vector;
    any F. Returns image_pool_tile."""
    n.image_pool = L.Pooling(bottom, pool=P.Pooling.AVE, global_pooling=True)
    top = conv_bn(n, 'image_pool_conv', n.image_pool, width, **kw)
    n.image_pool_flat = L.Reshape(top, shape=dict(dim=[0, -1]))
    n.image_pool_zero = L.Power(like, power=1, scale=0, shift=0)
    n.image_pool_tile = L.Bias(n.image_pool_zero, n.image_pool_flat, axis=0)
    return n.image_pool_tile


def aspp_v3(n, bottom, width, rates, pool_first=True, **kw):
    """DeepLabv3's ASPP with image pooling on `bottom`: aspp0 (1x1), aspp1.. (3x3 at
    `rates`), image pooling, concatenated (image pool first or last) into aspp_concat
    (N x (len(rates) + 2) width x F x F). kw: conv_bn's. Returns aspp_concat."""
    branches = [conv_bn(n, 'aspp0', bottom, width, **kw)]
    for i, rate in enumerate(rates, 1):
        branches.append(conv_bn(n, 'aspp%d' % i, bottom, width, ks=3, dilation=rate, **kw))
    pool = image_pooling(n, bottom, branches[0], width, **kw)
    n.aspp_concat = L.Concat(*([pool] + branches if pool_first else branches + [pool]))
    return n.aspp_concat


def half_pixel_zoom(n, name, bottom, channels, factor):
    """PyTorch's bilinear upsampling by `factor` with align_corners=False, exactly, for any
    input size: `name`_zoom (Caffe's bilinear kernel: Deconvolution, grouped, kernel 2f,
    stride f, pad f / 2; output f H) divided by `name`_norm, the same Deconvolution of
    ones (1 inside, < 1 within f / 2 of the border, where the kernel misses the edge's
    outer neighbour; the ratio is then the edge value PyTorch clamps to). Fixed weights
    ('bilinear' finish step). Returns `name`."""
    deconv = lambda b: L.Deconvolution(b, param=[dict(lr_mult=0, decay_mult=0)],  # noqa: E731
                                       convolution_param=dict(
        num_output=channels, group=channels, kernel_size=2 * factor, stride=factor,
        pad=factor // 2, bias_term=False))
    n[name + '_zoom'] = deconv(bottom)
    n[name + '_ones'] = L.Power(bottom, power=1, scale=0, shift=1)
    n[name + '_ones_zoom'] = deconv(n[name + '_ones'])
    n[name + '_norm'] = L.Power(n[name + '_ones_zoom'], power=-1)
    n[name] = L.Eltwise(n[name + '_zoom'], n[name + '_norm'], operation=P.Eltwise.PROD)
    return n[name]


def stem_size(size, pool1_pad=1, floor=False):
    """The side after conv1 (7x7, stride 2, pad 3) and pool1 (3x3, stride 2)."""
    return _out_size(_out_size(size, 7, 2, 3), 3, 2, pool1_pad, ceil=not floor)


def deeplab_v3(split='deploy', depth=101, num_classes=None, crop=513, train_crop=513,
               dataset='voc12aug', widths=DEEPLABV3_WIDTHS, blocks=None, data_layer=None,
               data_params=None, train_stride=16, test_stride=8, multi_grid=DEEPLABV3_GRID,
               rates=DEEPLABV3_RATES, train_bn=True, variant='paper', train_split=None,
               train_batch=1):
    """DeepLabv3: MSRA ResNet trunk at output stride `train_stride` (train net) or
    `test_stride` (val, deploy), ASPP + image pooling, logits zoomed to the input.
    Returns a caffe_pb2.NetParameter.

    split: 'deploy' (Input `data` 1 x 3 x crop x crop; output logits_interp, N x classes
      x crop x crop), 'val' (data / label padded to crop; `loss`), 'train' (at
      train_crop; `loss` on logits_interp against the label).
    widths: [0] conv1, [3:7] the stages' bottleneck widths, [7] ASPP, [8] projection,
      [9] torchvision's head_conv. rates: ASPP's 3x3 rates at output stride 16 (scaled
      by 16 / stride). train_bn: the train net's BatchNorm learns (statistics and Scale,
      DEEPLABV3_BN_DECAY) -- else frozen, as the val / deploy nets' always are.
    variant: 'paper' or 'torchvision' (see above; deploy only, at input multiples of 8).
    train_split: the train net's list when not the dataset's (stage 2: trainval_aug).
    train_batch: crops per forward of the train net's data layer (its batch_size; stage 1:
      16, the batch Caffe's BatchNorm normalises over); 1 writes no batch_size key.
    dataset, data_layer, data_params: the data layer (default: default_data(dataset),
      its crop set to this net's input)."""
    _check_choice('split', split, SPLITS)
    _check_choice('variant', variant, DEEPLABV3_VARIANTS)
    num_classes = num_classes or len(models.dataset(dataset).classes)
    _check_positive('num_classes', num_classes)
    widths = _check_widths(widths, PSP_WIDTHS)
    train = split == 'train'
    size, stride = (train_crop, train_stride) if train else (crop, test_stride)
    _check_positive('crop', size)
    torch = variant == 'torchvision'
    n = caffe.NetSpec()
    if train and train_batch != 1:
        _check_positive('train_batch', train_batch)
    square_data(n, split, size, dataset, data_layer, data_params,
                split_name=train_split if train else None,
                batch=train_batch if train and train_batch != 1 else None)
    bn_decay = DEEPLABV3_BN_DECAY if train and train_bn else None
    kw = dict(filler=train, style='msra', bn_lr=None if bn_decay else 0)
    if bn_decay:
        kw['bn_decay'] = bn_decay
    _, stage5 = dilated_resnet(n, n.data, depth, widths, blocks,
                               stride_on='3x3' if torch else '1x1_reduce',
                               output_stride=stride, multi_grid=None if torch else multi_grid,
                               dilate_first=not torch, pool1_floor=torch, **kw)
    top = aspp_v3(n, n[stage5], widths[7], [r * 16 // stride for r in rates],
                  pool_first=not torch, **kw)
    top = conv_bn(n, 'concat_projection', top, widths[8], **kw)
    if torch:
        n.concat_projection_drop = L.Dropout(top, dropout_ratio=0.5, in_place=True)
        top = conv_bn(n, 'head_conv', top, widths[9], ks=3, **kw)
    logits = dict(num_output=num_classes, kernel_size=1, param=LEARN)
    if train:
        logits.update(weight_filler=dict(type='gaussian', std=0.01),
                      bias_filler=dict(type='constant', value=0))
    n.logits = L.Convolution(top, **logits)
    if torch:
        out = half_pixel_zoom(n, 'logits_interp', n.logits, num_classes, stride)
    else:
        feature = -(-stem_size(size) // (stride // 4))  # stride-2 1x1 convs: ceil
        if (feature - 1) * stride + 1 != size:
            raise ValueError('crop %d: the x%d zoom of its %d x %d logits gives %d, not the '
                             'crop (use %d k + 1)' % (size, stride, feature, feature,
                                                      (feature - 1) * stride + 1, stride))
        out = align_corners_resize(n, 'logits_interp', n.logits, num_classes, feature, size)
    if split != 'deploy':
        n.loss = L.SoftmaxWithLoss(out, n.label, loss_param=dict(ignore_label=IGNORE_LABEL))
    proto = n.to_proto()
    for layer in proto.layer:  # the zoom's kernel depends on the stride: one name per stride,
        if layer.name == 'logits_interp' and not torch:  # so Caffe never shares the two
            layer.name = 'logits_interp_x%d' % stride
    return proto


def vgg16_classifier(widths=VGG16_WIDTHS, num_classes=1000):
    """VGG16 as in the Model Zoo's VGG_ILSVRC_16_layers deploy net (fc6/fc7/fc8
    InnerProduct, 224 x 224 input, prob), to load its weights and cast them to conv."""
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 3, 224, 224]))
    fc7 = vgg16(n, n.data, widths, pad=1, fully_conv=False)
    n.fc8 = L.InnerProduct(fc7, num_output=num_classes, param=LEARN)
    n.prob = L.Softmax(n.fc8)
    return n.to_proto()


def caffenet_classifier(widths=CAFFENET_WIDTHS, num_classes=1000):
    """bvlc_reference_caffenet's deploy net (227 x 227 input), to cast its weights."""
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 3, 227, 227]))
    fc7 = caffenet(n, n.data, widths, pad=0, fully_conv=False)
    n.fc8 = L.InnerProduct(fc7, num_output=num_classes)
    n.prob = L.Softmax(n.fc8)
    return n.to_proto()


# The functions a spec's `builder` may name (models.ModelSpec / ClassifierSpec).
BUILDERS = {f.__name__: f for f in (fcn, voc_fcn, pascalcontext_fcn, voc_fcn_alexnet, nyud_fcn,
                                    siftflow_fcn, pspnet, deeplab_v2, deeplab_v3, vgg16_classifier, caffenet_classifier)}
# name -> builder of each ImageNet classifier of models.CLASSIFIERS.
CLASSIFIER_BUILDERS = {name: BUILDERS[c.builder] for name, c in models.CLASSIFIERS.items()}


def classifier_path(name):
    """The deploy prototxt of an ImageNet classifier ('vgg16' or 'caffenet')."""
    _check_choice('classifier', name, sorted(CLASSIFIER_BUILDERS))
    return os.path.join(REPO, models.CLASSIFIERS[name].deploy)


# ---------------------------------------------------------------------------
# Solvers (docs/training.md).

def solver_text(base_lr, momentum, max_iter, test_iter, iter_size=1, snapshot=None,
                weight_decay=0.0005, lr_policy='fixed', power=None):
    """solver.prototxt text. Paths are relative to the model directory (the solving loop
    rewrites them to absolute ones). Caffe never tests by itself (test_interval huge,
    test_initialization false): the Python loop scores the val net between rounds.
    lr_policy 'poly' (PSPNet): base_lr (1 - iter / max_iter)^power."""
    _check_choice('lr_policy', lr_policy, ('fixed', 'poly'))
    if (lr_policy == 'poly') != (power is not None):
        raise ValueError('power is the poly policy\'s exponent: give it with lr_policy poly only')
    _check_positive('max_iter', max_iter)
    _check_positive('test_iter', test_iter)
    _check_positive('iter_size', iter_size)
    lines = [
        'train_net: "train.prototxt"',
        'test_net: "val.prototxt"',
        '# one image per iteration: the whole scoring split',
        'test_iter: %d' % test_iter,
        '# make the test net, but never run it from the solver itself',
        'test_interval: 999999999',
        'test_initialization: false',
        'display: 20',
        'average_loss: 20',
    ] + ([
        'lr_policy: "fixed"',
        '# tiny where the loss is summed over the pixels (normalize: false), not averaged',
    ] if lr_policy == 'fixed' else [
        '# poly: base_lr (1 - iter / max_iter)^power',
        'lr_policy: "poly"',
        'power: %r' % power,
    ]) + [
        'base_lr: %r' % base_lr,
        'momentum: %r' % momentum,
        '# gradient accumulation over iter_size images' if iter_size > 1 else '# no gradient accumulation',
        'iter_size: %d' % iter_size,
        'max_iter: %d' % max_iter,
        'weight_decay: %r' % weight_decay,
    ]
    if snapshot:
        lines.append('snapshot: %d' % snapshot)
    else:
        # Caffe's default snapshot: 0 means no periodic snapshots (as the release's SIFT
        # Flow solvers); the prefix still names an explicit solver.snapshot().
        lines.append('# no periodic snapshots (snapshot: 0, the default)')
    lines.append('snapshot_prefix: "snapshot/train"')
    return '\n'.join(lines) + '\n'


# ---------------------------------------------------------------------------
# The models: built from their specs in models.py.

def _spec(model):
    """The ModelSpec of `model` (a model id, a folder, or a ModelSpec)."""
    spec = model if isinstance(model, models.ModelSpec) else models.get(model)
    if not isinstance(spec, models.ModelSpec):
        raise InputError('%s is an ImageNet classifier, not an FCN model' % model)
    if spec.builder not in BUILDERS:
        raise InputError('%s: builder %r is not one of net.py\'s (%s)'
                         % (spec.name, spec.builder, ', '.join(sorted(BUILDERS))))
    return spec


def build_args(spec):
    """The arguments `spec`'s builder gets: the facts of the spec's own fields that the
    builder has a parameter for (models.ModelSpec.builder_facts: head, dataset, class
    counts, ResNet depth), then builder_args, what only the builder takes."""
    takes = inspect.signature(BUILDERS[spec.builder]).parameters
    args = {k: v for k, v in spec.builder_facts().items() if k in takes}
    args.update(spec.build_kwargs())
    return args


def build_net(model, split, **kwargs):
    """The NetParameter of `model`'s train/val/deploy net (kwargs: widths, data_layer, data_params)."""
    spec = _spec(model)
    _check_choice('split', split, SPLITS)
    return BUILDERS[spec.builder](split=split, **dict(build_args(spec), **kwargs))


def model_solver(model, **overrides):
    """The solver.prototxt text of `model`, with settings overridden (e.g. test_iter, base_lr)."""
    spec = _spec(model)
    data = spec.data
    settings = dict(dataclasses.asdict(spec.solver), test_iter=data.split(data.score_split).size)
    unknown = set(overrides) - set(settings)
    if unknown:
        raise ValueError('unknown solver settings %s (known: %s)'
                         % (sorted(unknown), ', '.join(sorted(settings))))
    settings.update(overrides)
    return solver_text(**settings)


# ---------------------------------------------------------------------------
# Files.

def _header(what):
    """The first line of a generated file: where its facts and its layers are written."""
    return ('# %s: generated by `python net.py` from its spec (models.py, or a model.json) '
            'and net.py\'s builders; edit those, then rerun it.\n' % what)


def model_files(model, widths=None, data=None, solver=None):
    """{file name: text} of `model`'s train/val/deploy/solver prototxts.
    widths: channel widths (default the paper's); data: {'train'|'val': (data_layer,
    data_params)} replacing the default data layers; solver: solver setting overrides."""
    spec = _spec(model)
    data = dict(data or {})
    for split in data:
        _check_choice('data split', split, ('train', 'val'))
    files = {}
    for split in SPLITS:
        kwargs = {'widths': widths} if widths is not None else {}
        if split in data:
            kwargs['data_layer'], kwargs['data_params'] = data[split]
        proto = build_net(spec, split, **kwargs)
        files['%s.prototxt' % split] = _header('%s %s net' % (spec.name, split)) + str(proto)
    files['solver.prototxt'] = _header('%s solver' % spec.name) + model_solver(spec, **(solver or {}))
    return files


def classifier_files():
    """{path: text} of the ImageNet classifier deploy nets under ilsvrc-nets/."""
    return {classifier_path(name): _header('%s ImageNet classifier' % name) + str(build())
            for name, build in sorted(CLASSIFIER_BUILDERS.items())}


def _read(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def write_files(files, check=False):
    """Write {path: text}, only where the content changed (atomically). Returns the paths
    that changed (check=False) or that are stale and would change (check=True)."""
    changed = [path for path, text in sorted(files.items()) if _read(path) != text]
    if not check:
        for path in changed:
            with atomic_write(path, 'w') as f:
                f.write(files[path])
    return changed


def write_model_dir(directory, model, widths=None, data=None, solver=None, check=False):
    """Write `model`'s train/val/deploy/solver prototxts into `directory` (see model_files);
    returns the paths written (or, with check, the stale ones)."""
    files = model_files(model, widths, data, solver)
    return write_files({os.path.join(str(directory), name): text for name, text in files.items()},
                       check)


NO_CHECKSUM = ('# no size or checksum is published for this file: weights.py checks its '
               'content against deploy.prototxt')


def url_record(spec):
    """The caffemodel-url record of a ModelSpec or ClassifierSpec, from its Weights: the
    URL on the first line (the release's one-line format), its mirrors (more URL lines,
    tried in order), the notes, the saved name and
    downloader where they differ from the URL's and plain HTTP, the archive member that
    holds the weights (when the URL is an archive), then each published size
    and checksum under a comment naming its source (weights.read_url_record reads it)."""
    w = spec.weights
    if w is None:
        return ('# no released weights: %s.\n# Train it with solve.py in this directory.\n%s\n'
                % (spec.note or 'the release never shipped it', models.GENERATED))
    lines = [w.url] + list(w.mirrors) + ['# ' + line for line in w.note]
    if w.file_name:
        lines.append('file: %s' % w.file_name)
    if w.downloader:
        lines.append('downloader: %s' % w.downloader)
    if w.member:
        lines.append('member: %s' % w.member)
    sources = dict(w.sources)
    published = [(key, getattr(w, key)) for key in ('size', 'sha256', 'sha1', 'md5')
                 if getattr(w, key) is not None]
    for key, value in published:
        if key not in sources:
            raise ValueError('%s: the %s of its weights has no source (Weights.sources)'
                             % (spec.name, key))
        lines += ['# %s: %s' % (key, sources[key]), '%s: %s' % (key, value)]
    if not published and not w.note:
        lines.append(NO_CHECKSUM)
    return '\n'.join(lines + [models.GENERATED]) + '\n'


# A model folder's solve.py: the same lines for every model but its id (train.main finds
# the spec of the folder it sits in; models.py says the rest). It finds the repository by
# walking up to the folder holding train.py, so it works at any depth (voc-fcn8s/,
# nyud-fcn/fcn32s-color-hha/) and from any current directory.
# Every model folder's solve.py: a docstring, then the repository put on the path and
# train.main run on the folder (models.py says how the model starts and trains).
SOLVE_PY = '''"""{doc}
"""
import os
import sys

{root}
sys.path.insert(0, ROOT)
import train  # noqa: E402

if __name__ == '__main__':
    train.main(__file__)
'''
BUILTIN_DOC = '''Train {name}: models.py says what it is (net, start, solver, schedule).

    python solve.py            # in this folder, or python path/to/this/folder/solve.py
    python solve.py --gpu 0    # on a GPU (0,1,...: several)
    python solve.py --help     # the schedule, other weights, short runs, data root, output

Snapshots, log.jsonl and log.png go to snapshot/ beside this file; a rerun resumes.'''
# A built-in model's folder finds the repository by walking up to train.py (any depth,
# any current directory); a folder made by `net.py new` may sit anywhere, so it records
# the repository's path (FIND_REPO), and falls back on $FCN_REPO and on walking up when
# the repository has moved or been cloned again.
WALK_UP = '''ROOT = os.path.dirname(os.path.abspath(__file__))
while not os.path.isfile(os.path.join(ROOT, 'train.py')) and os.path.dirname(ROOT) != ROOT:
    ROOT = os.path.dirname(ROOT)  # up to the repository, whatever this folder's depth'''
FIND_REPO = """HERE = os.path.dirname(os.path.abspath(__file__))
# The repository: where it was when this folder was made, else $FCN_REPO (set it when the
# repository moved or was cloned again), else a folder above this one holding train.py.
CANDIDATES = [os.path.join(HERE, RECORDED), os.environ.get('FCN_REPO', '')]
UP = HERE
while os.path.dirname(UP) != UP:
    UP = os.path.dirname(UP)
    CANDIDATES.append(UP)
ROOT = next((c for c in CANDIDATES if c and os.path.isfile(os.path.join(c, 'train.py'))
             and os.path.isfile(os.path.join(c, 'models.py'))), None)
if ROOT is None:
    sys.exit('error: %s: the FCN repository is not at %s any more; set FCN_REPO to its folder'
             % (os.path.abspath(__file__), os.path.normpath(CANDIDATES[0])))"""


def solve_py(spec, doc=None, repo=None):
    """The text of `spec`'s solve.py. A built-in model's: BUILTIN_DOC under net.py's
    header, walking up to the repository. With `doc` and `repo` (newmodel.py): that
    docstring, no header, and the repository at `repo` (a path relative to the folder, or
    absolute), else at $FCN_REPO, else above the folder (FIND_REPO); a clear one-line
    error when none holds it."""
    if repo is None:
        return _header('%s solve.py' % spec.name) + SOLVE_PY.format(
            doc=BUILTIN_DOC.format(name=spec.name), root=WALK_UP)
    return SOLVE_PY.format(doc=doc, root=FIND_REPO.replace('RECORDED', repr(repo)))


DOCS = os.path.join(REPO, 'docs', 'models.md')


def all_files(names=None):
    """{path: text} of every generated file: each model's prototxts, solve.py and
    caffemodel-url record, ilsvrc-nets/ (deploy nets, records) and docs/models.md (or only
    the models `names`, plus ilsvrc-nets and docs/models.md)."""
    files = classifier_files()
    files.update({models.record_file(c): url_record(c) for c in models.CLASSIFIERS.values()})
    for model in names or sorted(models.BUILTIN):
        for name, text in model_files(model).items():
            files[os.path.join(models.model_dir(_spec(model)), name)] = text
        files[models.record_file(model)] = url_record(_spec(model))
        files[os.path.join(models.model_dir(_spec(model)), 'solve.py')] = solve_py(_spec(model))
    files[DOCS] = models.markdown()
    return files


def list_models():
    """One line per model of the registry: id, dataset, classes, head, lr, schedule, parents."""
    for name in models.names():
        spec = models.get(name)
        print('%-24s %-13s C=%-3d %-4s lr %-6g %3d x %-5d from %s'
              % (name, spec.dataset, spec.classes, spec.head, spec.solver.base_lr,
                 spec.schedule.rounds, spec.schedule.iters, spec.parent_text()))


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ['new']:  # `net.py new NAME --from ... --data ...`: a model for your data
        # newmodel.py runs as its own program: it builds its nets with this module, which
        # therefore never imports it (dependencies point one way)
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(sys.executable, [sys.executable, os.path.join(REPO, 'newmodel.py')] + argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('models', nargs='*', metavar='MODEL',
                        help='model directories to write (default: all): %s'
                        % ', '.join(models.BUILTIN))
    parser.add_argument('--check', action='store_true',
                        help='write nothing; exit 1 listing the files that differ from net.py')
    parser.add_argument('--list', action='store_true', help='print the models table and exit')
    parser.add_argument('--docs', action='store_true',
                        help='print docs/models.md, the models table generated from models.py')
    args = parser.parse_args(argv)
    for model in args.models:
        if model not in models.BUILTIN:
            parser.error('unknown model %r (known: %s)' % (model, ', '.join(models.BUILTIN)))
    if args.list:
        list_models()
        return 0
    if args.docs:
        sys.stdout.write(models.markdown())
        return 0
    changed = write_files(all_files(args.models), check=args.check)
    for path in changed:
        print(('stale: %s' if args.check else 'wrote %s') % os.path.relpath(path, REPO))
    if args.check:
        return 1 if changed else 0
    if not changed:
        print('all files up to date')
    return 0


if __name__ == '__main__':
    run_cli(main)
