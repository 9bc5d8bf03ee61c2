"""Export a model's deploy net with its weights to ONNX, checked against Caffe.

    python export.py voc-fcn8s --weights voc-fcn8s/fcn8s-heavy-pascal.caffemodel --out fcn8s.onnx
    python export.py voc-fcn8s --weights W --check               # + ONNX Runtime vs Caffe
    python export.py voc-fcn8s --weights W --check --size 375x500
    python export.py pspnet101-voc2012 --random 0 --check        # random weights, no file needed
    python export.py path/to/my-model --weights W --check-openvino
    python export.py --all --random 0 --check --out-dir out/onnx  # every built-in model

MODEL is what models.get resolves: a model id, its folder, a user's folder holding
model.json. The graph is written here, layer by layer, from the model's deploy.prototxt
(caffe_pb2 text format) and the weights as real Caffe loads them (netload.open_net), with
the `onnx` package's helpers for the protobuf; no generic converter is involved. The
layer mapping, Caffe's pooling rounding rule and the BatchNorm folding are described in
docs/export.md.

Input size: height and width stay dynamic where no layer ties the net to its input size
(the FCNs: Crop takes its size from the reference blob at run time); a net with an
InnerProduct or a Reshape to fixed sizes (PSPNet's pyramid, the ImageNet classifiers) or
an align-corners zoom (DeepLab v2 / v3's Interp, made for 513) keeps the prototxt's size. The batch is always dynamic. The preprocessing the net
expects (mean per channel, channel order, 0-255 values, NCHW; a converted model's own
scale and std) is written into the model's metadata_props.

--check runs the exported model in ONNX Runtime on a random input of the net's size
(or --size) and compares every output with Caffe's forward: the largest absolute
difference divided by the largest |Caffe output|; above 1e-4 the command fails and
writes nothing. --check-openvino does the same with OpenVINO (optional, when installed).
"""
import argparse
import io
import json
import os

import numpy as np
import onnx
import onnxruntime
from onnx import TensorProto, helper, numpy_helper

import bnfold
import models
from cli import run_cli
from netinit import check_net, read_net_param
from netload import open_net
from project import REPO, InputError
from safewrite import atomic_write

OPSET = 17
TOLERANCE = 1e-4      # max |ONNX - Caffe| / max |Caffe|, per output
FLT_MIN = float(np.finfo(np.float32).min)  # Caffe's -FLT_MAX, the value max pooling starts from
PROTO_LIMIT = 2 ** 31 - 1  # one protobuf message; larger models would need external data
DEPLOY = 'deploy.prototxt'
SUPPORTED = ('Input', 'Convolution', 'Deconvolution', 'Pooling', 'ReLU', 'LRN', 'Crop',
             'Eltwise', 'Concat', 'BatchNorm', 'Scale', 'Bias', 'Power', 'InnerProduct',
             'Reshape', 'Tile', 'Dropout', 'Softmax', 'Split')
PARAM_LAYERS = ('Convolution', 'Deconvolution', 'InnerProduct', 'BatchNorm', 'Scale', 'Bias')


# ---------------------------------------------------------------------------
# Caffe's layer geometry

def _pair(p, stem, default):
    """A 2-D geometry value as [h, w]: `stem`_h / `stem`_w, else `stem` (one value for
    both or one per axis), else `default`. ValueError for other than two spatial axes."""
    h, w = stem + '_h', stem + '_w'
    if stem != 'dilation' and (p.HasField(h) or p.HasField(w)):
        return [getattr(p, h), getattr(p, w)]
    field = getattr(p, 'kernel_size' if stem == 'kernel' else stem)
    values = (list(field) if hasattr(field, '__len__')
              else [field] if p.HasField('kernel_size' if stem == 'kernel' else stem) else [])
    values = values or [default]
    if len(values) == 1:
        values = values * 2
    if len(values) != 2:
        raise ValueError('%s has %d values: only 2-D (N x C x H x W) is exported' % (stem, len(values)))
    return [int(v) for v in values]


def _canonical(axis, rank):
    return axis + rank if axis < 0 else axis


def net_outputs(param):
    """The blobs Caffe's Net reports as outputs: tops whose last version no later layer reads."""
    last, read = {}, set()
    for i, layer in enumerate(param.layer):
        for b in layer.bottom:
            read.add((b, last.get(b)))
        for t in layer.top:
            last[t] = i
    return [b for b, i in last.items() if (b, i) not in read]


def net_shapes(param, path, input_shapes=None):
    """{blob: shape} of NetParameter `param` (read from `path`) in the TEST phase, by
    netinit.check_net (InputError naming the file and layer). Caffe's Bias has Scale's
    shape rule (the top is bottom 0; a second bottom or the blob matches bottom 0 from
    `axis` on), which check_net knows: Bias layers are checked as Scale layers."""
    checked = param
    if any(layer.type == 'Bias' for layer in param.layer):
        checked = type(param)()
        checked.CopyFrom(param)
        for layer in checked.layer:
            if layer.type == 'Bias':
                p = layer.bias_param
                layer.type = 'Scale'
                layer.scale_param.axis, layer.scale_param.num_axes = p.axis, p.num_axes
                layer.scale_param.bias_term = False
                layer.ClearField('bias_param')
    try:
        return check_net(checked, path, 'test', input_shapes)
    except InputError as e:  # name a Bias layer's type as the file does
        text = str(e)
        for layer in param.layer:
            if layer.type == 'Bias':
                text = text.replace('%r (Scale)' % layer.name, '%r (Bias)' % layer.name)
        raise type(e)(text)


def is_align_corners_zoom(layer):
    """True for a Deconvolution that is an align-corners zoom by its stride s (kernel
    2 s - 1, pad s - 1: F -> (F - 1) s + 1, net.align_corners_resize)."""
    if layer.type != 'Deconvolution':
        return False
    p = layer.convolution_param
    k, s, pad = _pair(p, 'kernel', None), _pair(p, 'stride', 1), _pair(p, 'pad', 0)
    return any(ss > 1 for ss in s) and k == [2 * ss - 1 for ss in s] and pad == [ss - 1 for ss in s]


def fixed_size_reason(param):
    """Why the net only runs at its prototxt's input size ('layer X (InnerProduct) ...'),
    or None: then height and width can stay dynamic."""
    for layer in param.layer:
        if layer.type == 'InnerProduct':
            return 'layer %r (InnerProduct) has weights for one input size' % layer.name
        if layer.type == 'Reshape' and any(d > 0 for d in layer.reshape_param.shape.dim[2:]):
            return 'layer %r (Reshape) gives fixed sizes' % layer.name
        if is_align_corners_zoom(layer):  # DeepLab's Interp: the ratio is the built sizes'
            return ('layer %r (Deconvolution) is an align-corners zoom made for one input size'
                    % layer.name)
    return None


# ---------------------------------------------------------------------------
# The graph

class Graph:
    """ONNX nodes built layer by layer from a NetParameter.

    tensor: Caffe blob -> the ONNX tensor holding its current version (in-place layers
    make new versions, as in Caffe's own bookkeeping). inits: initializer name -> numpy
    array, kept as arrays until the end so that BatchNorm and Scale can still be folded
    into the convolution before them. uses: how many layers read each version (a fold is
    only valid where the convolution's output feeds nothing else)."""

    def __init__(self, param, path, params, shapes, dynamic):
        self.param, self.path, self.params = param, path, params
        self.shapes, self.dynamic = shapes, dynamic
        self.nodes, self.inits, self.inputs = [], {}, []
        self.tensor, self.version, self.producer, self.taken = {}, {}, {}, set()
        self.uses, self.shared, self.index = {}, set(), 0
        self.named, self.folds = {}, {}  # Caffe's shared parameter name -> initializer; fold cache
        self.common = set()  # initializers several layers read (shared blobs, their folds)
        self.base = {}  # a folded shared initializer -> the param name it comes from
        last = {}
        for i, layer in enumerate(param.layer):
            for b in layer.bottom:
                key = (b, last.get(b))
                self.uses[key] = self.uses.get(key, 0) + 1
            for t in layer.top:
                last[t] = i
        # The outputs keep their blob names: only their last version may take them.
        self.final = {b: last[b] for b in net_outputs(param)}
        for b, i in self.final.items():
            self.uses[(b, i)] = self.uses.get((b, i), 0) + 1

    # -- helpers
    def name(self, wanted):
        name, k = wanted, 1
        while name in self.taken or (name in self.final and not self.is_final(name)):
            k += 1
            name = '%s_%d' % (wanted, k)
        self.taken.add(name)
        return name

    def const(self, name, value, dtype=np.float32):
        name = self.name(name)
        self.inits[name] = np.ascontiguousarray(value, dtype=dtype)
        return name

    def blob(self, layer, i, name):
        """The initializer of parameter blob i of `layer` (named `name`). Blobs shared
        across layers by Caffe's param name (DeepLab v2's scale branches) are one
        initializer, named after the param."""
        shared = layer.param[i].name if i < len(layer.param) else ''
        if not shared:
            return self.const(name, self.params[layer.name][i])
        if shared not in self.named:
            self.named[shared] = self.const(shared, self.params[layer.name][i])
            self.common.add(self.named[shared])
        return self.named[shared]

    def ints(self, name, values):
        return self.const(name, np.array(values, dtype=np.int64), np.int64)

    def node(self, op, inputs, name, **attrs):
        out = self.name(name)
        n = helper.make_node(op, list(inputs), [out], name=out, **attrs)
        self.nodes.append(n)
        self.producer[out] = n
        return out

    def rank(self, blob):
        return len(self.shapes[blob])

    def dims(self, tensor, start, end, name):
        """Shape(tensor)[start:end] as an int64 tensor."""
        shape = self.node('Shape', [tensor], name + '_shape')
        return self.node('Slice', [shape, self.ints(name + '_s', [start]), self.ints(name + '_e', [end])],
                         name + '_dims')

    def is_final(self, blob):
        """True while the layer being converted writes the output blob `blob`'s last version."""
        layer = self.param.layer[self.index]
        return self.final.get(blob) == self.index and blob in layer.top

    def bind(self, layer, i, top, tensor):
        if tensor in self.tensor.values() and not self.sole_use(tensor):
            self.shared.add(tensor)  # an alias (Split, Dropout) of a version others read too
        self.tensor[top] = tensor
        self.version[tensor] = (top, i)

    def sole_use(self, tensor):
        """True when the Caffe version `tensor` holds is read by exactly one layer."""
        return tensor not in self.shared and self.uses.get(self.version.get(tensor), 0) == 1

    # -- the walk
    def build(self):
        for i, layer in enumerate(self.param.layer):
            where = '%s: layer %r (%s)' % (self.path, layer.name, layer.type)
            if layer.type not in SUPPORTED:
                raise InputError('%s: not supported by the ONNX export (supported: %s)'
                                 % (where, ', '.join(SUPPORTED)))
            xs = [self.tensor[b] for b in layer.bottom]
            self.index = i
            try:
                outs = getattr(self, 'layer_' + layer.type)(layer, xs)
            except ValueError as e:
                raise InputError('%s: %s' % (where, e))
            for top, out in zip(layer.top, outs):
                self.bind(layer, i, top, out)
        return self

    # -- layers: each returns the ONNX tensors of its tops
    def layer_Input(self, layer, xs):
        outs = []
        for j, top in enumerate(layer.top):
            shape = list(self.shapes[top])
            dims = ['batch'] + shape[1:]
            if self.dynamic and len(shape) == 4:
                dims[2:] = ['height', 'width']
            self.taken.add(top)
            self.inputs.append(helper.make_tensor_value_info(top, TensorProto.FLOAT, dims))
            outs.append(top)
        return outs

    def layer_Split(self, layer, xs):
        return xs * len(layer.top)

    def layer_Dropout(self, layer, xs):
        return xs  # Caffe's TEST phase passes the input through unchanged

    def layer_Convolution(self, layer, xs, op='Conv'):
        p = layer.convolution_param
        if p.axis != 1 or self.rank(layer.bottom[0]) != 4:
            raise ValueError('only 2-D convolution on axis 1 is exported')
        pad = _pair(p, 'pad', 0)
        inputs = [xs[0], self.blob(layer, 0, layer.name + '_W')]
        if p.bias_term:
            inputs.append(self.blob(layer, 1, layer.name + '_b'))
        return [self.node(op, inputs, self.top_name(layer), kernel_shape=_pair(p, 'kernel', None),
                          strides=_pair(p, 'stride', 1), pads=pad + pad,
                          dilations=_pair(p, 'dilation', 1), group=max(1, p.group))]

    def layer_Deconvolution(self, layer, xs):
        # Caffe's and ONNX's weights are both C_in x C_out/group x kh x kw, and the output
        # size is the same: stride (in - 1) + dilation (k - 1) + 1 - 2 pad.
        return self.layer_Convolution(layer, xs, op='ConvTranspose')

    def top_name(self, layer, j=0):
        """A layer's output tensor: named after its top where that name is free (the first
        version of a blob), else after the layer (in-place layers: relu1_1, conv1_1/bn)."""
        top = layer.top[j]
        free = top not in self.taken and top not in self.tensor
        return top if free and (top not in self.final or self.is_final(top)) else layer.name

    def layer_ReLU(self, layer, xs):
        slope = layer.relu_param.negative_slope
        if slope:
            return [self.node('LeakyRelu', xs, self.top_name(layer), alpha=slope)]
        return [self.node('Relu', xs, self.top_name(layer))]

    def layer_LRN(self, layer, xs):
        p = layer.lrn_param
        if p.norm_region != p.ACROSS_CHANNELS:
            raise ValueError('only ACROSS_CHANNELS normalization is exported')
        return [self.node('LRN', xs, self.top_name(layer), size=p.local_size, alpha=p.alpha,
                          beta=p.beta, bias=p.k)]

    def layer_Softmax(self, layer, xs):
        axis = _canonical(layer.softmax_param.axis, self.rank(layer.bottom[0]))
        return [self.node('Softmax', xs, self.top_name(layer), axis=axis)]

    def layer_Concat(self, layer, xs):
        p = layer.concat_param
        axis = p.concat_dim if p.HasField('concat_dim') else p.axis
        return [self.node('Concat', xs, self.top_name(layer),
                          axis=_canonical(axis, self.rank(layer.bottom[0])))]

    def layer_Eltwise(self, layer, xs):
        p = layer.eltwise_param
        out = self.top_name(layer)
        if p.operation == p.PROD:
            op = 'Mul'
        elif p.operation == p.MAX:
            op = 'Max'
        else:
            op = 'Sum'
            if p.coeff:
                if len(p.coeff) != len(xs):
                    raise ValueError('%d coefficients for %d bottoms' % (len(p.coeff), len(xs)))
                xs = [x if c == 1 else self.node('Mul', [x, self.const('%s_coeff%d' % (layer.name, k), c)],
                                                 '%s_x%d' % (layer.name, k))
                      for k, (x, c) in enumerate(zip(xs, p.coeff))]
        if op == 'Mul':  # binary in ONNX
            top = xs[0]
            for k, x in enumerate(xs[1:]):
                top = self.node('Mul', [top, x], out if k == len(xs) - 2 else '%s_%d' % (layer.name, k))
            return [top]
        return [self.node(op, xs, out)]

    def layer_Crop(self, layer, xs):
        """Slice bottom 0 to bottom 1's shape from axis on, starting at the offsets; the
        end comes from the reference's shape at run time (dynamic height and width)."""
        p = layer.crop_param
        rank = self.rank(layer.bottom[0])
        axis = _canonical(p.axis, rank)
        axes = list(range(axis, rank))
        offsets = [p.offset[0] if len(p.offset) == 1 else p.offset[a - axis] if p.offset else 0
                   for a in axes]
        starts = self.ints(layer.name + '_offsets', offsets)
        ends = self.node('Add', [self.dims(xs[1], axis, rank, layer.name + '_ref'), starts],
                         layer.name + '_ends')
        return [self.node('Slice', [xs[0], starts, ends, self.ints(layer.name + '_axes', axes)],
                          self.top_name(layer))]

    def layer_Tile(self, layer, xs):
        p = layer.tile_param
        rank = self.rank(layer.bottom[0])
        repeats = [1] * rank
        repeats[_canonical(p.axis, rank)] = p.tiles
        return [self.node('Tile', [xs[0], self.ints(layer.name + '_repeats', repeats)],
                          self.top_name(layer))]

    def layer_Reshape(self, layer, xs):
        """Caffe's dims: 0 copies the bottom's dim at that place, -1 is inferred; axis and
        num_axes pick the part of the bottom's shape that is replaced."""
        p = layer.reshape_param
        rank = self.rank(layer.bottom[0])
        dims = list(p.shape.dim)
        axis = _canonical(p.axis, rank + 1) if p.axis < 0 else p.axis
        end = rank if p.num_axes == -1 else axis + p.num_axes
        if axis == 0 and end == rank:  # ONNX's 0 and -1 mean the same as Caffe's here
            shape = self.ints(layer.name + '_shape', dims)
        else:
            parts = [self.dims(xs[0], 0, axis, layer.name + '_head')] if axis else []
            for k, d in enumerate(dims):
                parts.append(self.dims(xs[0], axis + k, axis + k + 1, '%s_d%d' % (layer.name, k))
                             if d == 0 else self.ints('%s_d%d' % (layer.name, k), [d]))
            if end < rank:
                parts.append(self.dims(xs[0], end, rank, layer.name + '_tail'))
            shape = self.node('Concat', parts, layer.name + '_shape', axis=0)
        return [self.node('Reshape', [xs[0], shape], self.top_name(layer))]

    def layer_InnerProduct(self, layer, xs):
        """Flatten from `axis` on, multiply by the weights (N x K, or K x N transposed), add the bias."""
        p = layer.inner_product_param
        axis = _canonical(p.axis, self.rank(layer.bottom[0]))
        blobs = self.params[layer.name]
        w = blobs[0] if p.transpose else blobs[0].T
        flat = self.node('Reshape', [xs[0], self.ints(layer.name + '_flat', [0] * axis + [-1])],
                         layer.name + '_in')
        out = self.top_name(layer)
        y = self.node('MatMul', [flat, self.const(layer.name + '_W', w)],
                      out if not p.bias_term else layer.name + '_mm')
        if p.bias_term:
            y = self.node('Add', [y, self.const(layer.name + '_b', blobs[1])], out)
        return [y]

    def layer_Pooling(self, layer, xs):
        p = layer.pooling_param
        if p.pool not in (p.MAX, p.AVE):
            raise ValueError('only MAX and AVE pooling are exported')
        if self.rank(layer.bottom[0]) != 4:
            raise ValueError('only 2-D pooling is exported')
        out = self.top_name(layer)
        if p.global_pooling:
            return [self.node('GlobalMaxPool' if p.pool == p.MAX else 'GlobalAveragePool', xs, out)]
        k, s, pad = _pair(p, 'kernel', None), _pair(p, 'stride', 1), _pair(p, 'pad', 0)
        ceil = p.round_mode == p.CEIL
        if p.pool == p.MAX:
            return [self.max_pool(layer.name, xs[0], k, s, pad, ceil, out)]
        return [self.ave_pool(layer, xs[0], k, s, pad, ceil, out)]

    def max_pool(self, name, x, k, s, pad, ceil, out):
        """Caffe's MAX pooling. Unpadded with kernel >= stride (the FCNs' pools): ONNX's
        ceil_mode is Caffe's rule (last window clipped to the input). Padded: explicit
        -FLT_MAX padding (pads never win, as in Caffe), then Caffe's count of windows."""
        if not any(pad) and all(a >= b for a, b in zip(k, s)):
            return self.node('MaxPool', [x], out, kernel_shape=k, strides=s, ceil_mode=int(ceil))
        xp = self.pad(name, x, pad, s if ceil else [1, 1], FLT_MIN)
        if not (any(pad) and ceil):
            return self.node('MaxPool', [xp], out, kernel_shape=k, strides=s)
        y = self.node('MaxPool', [xp], name + '_pool', kernel_shape=k, strides=s)
        return self.caffe_count(name, y, x, pad, s, out)

    def ave_pool(self, layer, x, k, s, pad, ceil, out):
        """Caffe's AVE pooling: the sum of each window divided by the window's size clipped
        to the padded input (pad counted, the rounded-up part beyond it not). Summed over
        an input padded far enough that every window is whole, divided by the same pooling
        of a mask that is 1 on the padded input and 0 beyond."""
        name = layer.name
        shape = self.shapes[layer.bottom[0]]
        if not self.dynamic and not any(pad) and all(
                (n - kk) % ss == 0 for n, kk, ss in zip(shape[2:], k, s)):
            return self.node('AveragePool', [x], out, kernel_shape=k, strides=s)  # whole windows
        extra = [ss - 1 for ss in s] if ceil else [0, 0]
        xp = self.pad(name, x, pad, [e + 1 for e in extra], 0.0)
        total = self.node('AveragePool', [xp], name + '_sum', kernel_shape=k, strides=s)
        if self.dynamic:
            ones = self.node('ConstantOfShape', [self.node('Concat', [
                self.ints(name + '_one', [1, 1]), self.dims(x, 2, 4, name)], name + '_mshape', axis=0)],
                name + '_ones', value=helper.make_tensor('one', TensorProto.FLOAT, [1], [1.0]))
            mask = self.pad(name + '_mask', self.pad(name + '_maskpad', ones, pad, [1, 1], 1.0),
                            [0, 0], [e + 1 for e in extra], 0.0)
            size = self.node('AveragePool', [mask], name + '_size', kernel_shape=k, strides=s)
        else:
            size = self.const(name + '_size', _caffe_ave_divisor(shape[2:], k, s, pad, ceil)
                              / float(k[0] * k[1]))
        if not (any(pad) and ceil):
            return self.node('Div', [total, size], out)
        y = self.node('Div', [total, size], name + '_ave')
        return self.caffe_count(name, y, x, pad, s, out)

    def pad(self, name, x, pad, end_extra, value):
        """x padded by `pad` before and pad + end_extra - 1 after on H and W (end_extra 1: none)."""
        end = [a + b - 1 for a, b in zip(pad, end_extra)]
        if not any(pad) and not any(end):
            return x
        return self.node('Pad', [x, self.ints(name + '_pads', [0, 0] + pad + [0, 0] + end),
                                 self.const(name + '_value', np.float32(value))], name + '_pad',
                         mode='constant')

    def caffe_count(self, name, y, x, pad, s, out):
        """Keep Caffe's number of windows: with padding and rounding up, Caffe drops a last
        window that would start in the padding after the input (x: the unpadded input),
        i.e. keeps floor((H + pad - 1) / stride) + 1 windows at most (Slice clips to the
        windows there are)."""
        ends = self.node('Add', [self.node('Div', [
            self.node('Add', [self.dims(x, 2, 4, name + '_in'), self.ints(name + '_pm1', [q - 1 for q in pad])],
                      name + '_hp'), self.ints(name + '_stride', s)], name + '_last'),
            self.ints(name + '_1', [1, 1])], name + '_count')
        return self.node('Slice', [y, self.ints(name + '_zero', [0, 0]), ends,
                                   self.ints(name + '_hw', [2, 3])], out)

    def layer_BatchNorm(self, layer, xs):
        """(x - mean) / sqrt(var + eps), mean and var being blobs 0 and 1 divided by the
        moving-average factor in blob 2 (0 stays 0, as in Caffe). Folded into the
        convolution before it when that convolution's output feeds only this layer."""
        p = layer.batch_norm_param
        if p.HasField('use_global_stats') and not p.use_global_stats:
            raise ValueError('use_global_stats false: batch statistics at test time are not exported')
        a, b = bnfold.batchnorm_affine(*self.params[layer.name], eps=p.eps)
        return [self.affine(layer, xs[0], 1, a, b)]

    def layer_Scale(self, layer, xs):
        p = layer.scale_param
        if len(xs) == 2:  # y = x * bottom 1, broadcast from axis (+ the bias blob)
            y = self.node('Mul', [xs[0], self.broadcast(layer, xs[1], p.axis)],
                          layer.name + '_mul' if p.bias_term else self.top_name(layer))
            if p.bias_term:
                y = self.node('Add', [y, self.broadcast(layer, self.blob(layer, 0, layer.name + '_b'),
                                                        p.axis, 1)], self.top_name(layer))
            return [y]
        blobs = self.params[layer.name]
        rank = self.rank(layer.bottom[0])
        axis = _canonical(p.axis, rank)
        gamma = blobs[0].astype(np.float64)
        beta = blobs[1].astype(np.float64) if p.bias_term else None
        return [self.affine(layer, xs[0], axis, gamma, beta)]

    def layer_Bias(self, layer, xs):
        """y = x + b, b (bottom 1, or the learned blob) broadcast from `axis` on: DeepLabv3's
        image_pool_tile adds the N x C pooled vector to zeros of the map's shape (axis 0)."""
        p = layer.bias_param
        b = xs[1] if len(xs) == 2 else self.blob(layer, 0, layer.name + '_b')
        return [self.node('Add', [xs[0], self.broadcast(layer, b, p.axis, 1 if len(xs) == 2 else 0)],
                          self.top_name(layer))]

    def broadcast(self, layer, b, axis, bottom=1):
        """Tensor `b` (bottom `bottom` of `layer`, or a parameter blob of this layer when
        bottom is 0) with trailing axes of size 1 added, so that it lines up with bottom
        0 from `axis` on (Caffe's Scale / Bias broadcasting)."""
        rank = self.rank(layer.bottom[0])
        axis = _canonical(axis, rank)
        b_rank = self.rank(layer.bottom[bottom]) if bottom else self.inits[b].ndim
        trailing = list(range(b_rank, rank - axis))  # b's new axes, after its own
        if not trailing:
            return b
        return self.node('Unsqueeze', [b, self.ints(layer.name + '_axes', trailing)],
                         layer.name + '_bcast')

    def layer_Power(self, layer, xs):
        """Caffe's Power: (shift + scale x) ^ power. With scale 0 a constant of the input's
        shape (1 for power 0), whatever x holds, as in Caffe (DeepLabv3's zeros and ones)."""
        p = layer.power_param
        out = self.top_name(layer)
        if p.scale == 0 or p.power == 0:
            value = 1.0 if p.power == 0 else float(np.float32(p.shift) ** np.float32(p.power))
            return [self.node('Expand', [self.const(layer.name + '_value', np.float32(value)),
                                         self.node('Shape', xs, layer.name + '_shape')], out)]
        steps = [(p.scale != 1, 'Mul', 'scale', p.scale), (p.shift != 0, 'Add', 'shift', p.shift),
                 (p.power != 1, 'Pow', 'power', p.power)]
        steps = [s for s in steps if s[0]]
        y = xs[0]
        if not steps:
            return [self.node('Identity', [y], out)]
        for k, (_, op, what, value) in enumerate(steps):
            if op == 'Pow' and value == -1:
                y = self.node('Reciprocal', [y], out if k == len(steps) - 1 else layer.name + '_rcp')
                continue
            y = self.node(op, [y, self.const('%s_%s' % (layer.name, what), np.float32(value))],
                          out if k == len(steps) - 1 else '%s_%s' % (layer.name, op.lower()))
        return [y]

    def affine(self, layer, x, axis, a, b):
        """y = a x + b, a and b broadcast from `axis` on. Per channel (axis 1, one dim) right
        after a convolution whose output nothing else reads: folded into its weights."""
        conv = self.producer.get(x)
        if (axis == 1 and a.ndim == 1 and conv is not None and conv.op_type == 'Conv'
                and self.sole_use(x)):
            self.fold(layer, conv, a, b)
            return x
        rank = self.rank(layer.bottom[0])
        shape = a.shape + (1,) * (rank - axis - a.ndim)
        y = self.node('Mul', [x, self.const(layer.name + '_scale', a.reshape(shape))],
                      self.top_name(layer) if b is None else layer.name + '_mul')
        if b is not None:
            y = self.node('Add', [y, self.const(layer.name + '_shift', b.reshape(shape))],
                          self.top_name(layer))
        return y

    def fold(self, layer, conv, a, b):
        """Conv node `conv` gets weights W a and bias bias a + b (per output channel,
        bnfold.fold_conv).
        Weights shared by param name (DeepLab v2's branches, each with its own BatchNorm
        and Scale layers sharing theirs) are folded once into new initializers that every
        branch folding the same affine layer into the same weights reuses; the unfolded
        ones are dropped from the model when nothing reads them (Graph.model)."""
        w_name, b_name = conv.input[1], conv.input[2] if len(conv.input) > 2 else None
        key = (w_name, b_name, tuple(q.name for q in layer.param) if all(
            q.name for q in layer.param) and layer.param else layer.name)
        if key not in self.folds:
            w, bias = bnfold.fold_conv(self.inits[w_name], self.inits[b_name] if b_name else None, a, b)
            w = w.astype(np.float32)
            if w_name in self.common:  # shared: new initializers, shared in turn, named
                base = self.base.get(w_name, w_name)  # after the param and the last fold
                self.folds[key] = (self.const('%s_%s' % (base, layer.name), w),
                                   self.const('%s_%s_b' % (base, layer.name), bias))
                self.base.update(zip(self.folds[key], (base, base)))
                self.common.update(self.folds[key])
            else:  # this layer's own: in place
                self.inits[w_name] = w
                if b_name:
                    self.inits[b_name] = bias.astype(np.float32)
                self.folds[key] = (w_name, b_name or self.const(conv.name + '_b', bias))
        w_name, b_name = self.folds[key]
        conv.input[1] = w_name
        if len(conv.input) > 2:
            conv.input[2] = b_name
        else:
            conv.input.append(b_name)

    # -- the model
    def model(self, metadata, weights=True):
        """The onnx.ModelProto; without `weights` the parameters are graph inputs of their
        shapes instead of initializers (a structure check of a full-size net, no values)."""
        outputs = []
        for blob in net_outputs(self.param):
            tensor = self.tensor[blob]
            if tensor != blob:
                self.nodes.append(helper.make_node('Identity', [tensor], [blob], name=blob + '_out'))
            shape = ['batch'] + list(self.shapes[blob][1:])
            if self.dynamic:
                shape[2:] = [None] * (len(shape) - 2)  # known at run time
            outputs.append(helper.make_tensor_value_info(blob, TensorProto.FLOAT, shape))
        inputs, inits = list(self.inputs), []
        read = {t for n in self.nodes for t in n.input}
        for k, v in self.inits.items():
            if k not in read:  # a shared blob every reader of which was folded
                continue
            if weights or v.dtype != np.float32:
                inits.append(numpy_helper.from_array(v, k))
            else:
                inputs.append(helper.make_tensor_value_info(k, TensorProto.FLOAT, v.shape))
        graph = helper.make_graph(self.nodes, self.param.name or 'net', inputs, outputs, inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid('', OPSET)],
                                  producer_name='fcn-reproduction export.py')
        helper.set_model_props(model, metadata)
        return model


def _caffe_ave_divisor(size, k, s, pad, ceil):
    """Caffe's AVE pooling divisor per output position (H_out x W_out), for a fixed input:
    each window's extent clipped to the padded input, H + 2 pad."""
    per_axis = []
    for n, kk, ss, pp in zip(size, k, s, pad):
        span = n + 2 * pp - kk
        count = (-(-span // ss) if ceil else span // ss) + 1
        if pp and (count - 1) * ss >= n + pp:
            count -= 1
        starts = np.arange(count) * ss - pp
        per_axis.append(np.minimum(starts + kk, n + pp) - starts)
    return np.outer(*per_axis).reshape((1, 1) + tuple(len(a) for a in per_axis))


# ---------------------------------------------------------------------------
# Model, weights, metadata

def deploy_path(spec):
    """The deploy prototxt of a ModelSpec (in its folder) or a ClassifierSpec."""
    if isinstance(spec, models.ClassifierSpec):
        return os.path.join(REPO, spec.deploy)
    return os.path.join(models.model_dir(spec), DEPLOY)


def metadata(spec, param, shapes, dynamic, weights):
    """metadata_props: what the model is and the preprocessing its inputs expect."""
    inputs = [t for layer in param.layer if layer.type == 'Input' for t in layer.top]
    props = {'model': spec.name, 'source': 'Caffe deploy net %s, weights %s' % (
        os.path.relpath(deploy_path(spec), REPO), weights),
        'input_size': 'dynamic height and width' if dynamic else 'fixed %d x %d' % tuple(shapes[inputs[0]][2:])}
    if isinstance(spec, models.ModelSpec):
        data = spec.data
        kinds = spec.inputs if len(spec.inputs) == len(inputs) else ('color',) * len(inputs)
        pre = []
        for j, (top, kind) in enumerate(zip(inputs, kinds)):
            i = data.input(kind)
            entry = dict(input=top, kind=kind, layout='NCHW', channels=i.channels,
                         channel_order=i.order, mean=list(i.mean),
                         values='0-255, the mean subtracted, not divided' if kind != 'depth'
                         else 'log(depth PNG value in mm), the mean subtracted')
            if j == 0 and spec.preprocessing is not None:  # a converted model's own (torchvision's)
                q = spec.preprocessing
                entry.update(channel_order=q.order, mean=list(q.mean), scale=q.scale,
                             std=list(q.std) if q.std else None,
                             values='0-255 pixel values times scale, minus mean, divided by std')
            pre.append(entry)
        props['preprocessing'] = json.dumps(pre)
        props['dataset'] = data.name
        props['classes'] = json.dumps(list(spec.data.label(spec.outputs[0].label).classes))
        props['outputs'] = json.dumps({o.score: o.label for o in spec.outputs})
    else:  # an ImageNet classifier: BGR, the ILSVRC mean is not part of this project's registry
        props['preprocessing'] = json.dumps([dict(input=t, layout='NCHW', channel_order='BGR',
                                                  values='0-255 pixel values minus the ImageNet mean')
                                             for t in inputs])
    return props


def random_weights(net, seed):
    """Random weights written into caffe.Net `net` for an export check: He-scaled normal
    weights, small biases; BatchNorm with a moving-average factor in blob 2 other than 1
    (so the export must divide by it) and positive variances; Scale near 1."""
    rng = np.random.default_rng(seed)
    for name, layer in zip(net._layer_names, net.layers):
        blobs = net.params.get(name, [])
        if layer.type == 'BatchNorm':
            c = blobs[0].data.size
            factor = rng.uniform(0.5, 2.0)
            blobs[0].data[...] = rng.normal(0, 0.5, c) * factor
            blobs[1].data[...] = rng.uniform(0.5, 2.0, c) * factor
            blobs[2].data[...] = factor
            continue
        if layer.type == 'Scale':
            blobs[0].data[...] = rng.uniform(0.5, 1.5, blobs[0].data.shape)
            if len(blobs) > 1:
                blobs[1].data[...] = rng.normal(0, 0.1, blobs[1].data.shape)
            continue
        for i, blob in enumerate(blobs):
            a = blob.data
            flat = a.reshape(-1)
            for start in range(0, flat.size, 1 << 22):
                rng.standard_normal(out=flat[start:start + (1 << 22)], dtype=np.float32)
            a *= np.float32(np.sqrt(2.0 / max(1, a[0].size)) if i == 0 and a.ndim > 1 else 0.1)


def param_shapes(param, shapes):
    """{layer: [parameter shapes]} of the layers the export reads weights of, from the
    prototxt and the blob shapes of check_net (no caffe.Net needed)."""
    out = {}
    for layer in param.layer:
        if layer.type not in PARAM_LAYERS:
            continue
        bottom = shapes[layer.bottom[0]]
        if layer.type in ('Convolution', 'Deconvolution'):
            p = layer.convolution_param
            k, g = _pair(p, 'kernel', None), max(1, p.group)
            w = ((p.num_output, bottom[1] // g) if layer.type == 'Convolution'
                 else (bottom[1], p.num_output // g)) + tuple(k)
            out[layer.name] = [w] + ([(p.num_output,)] if p.bias_term else [])
        elif layer.type == 'InnerProduct':
            p = layer.inner_product_param
            k = int(np.prod(bottom[_canonical(p.axis, len(bottom)):]))
            out[layer.name] = [(k, p.num_output) if p.transpose else (p.num_output, k)]
            out[layer.name] += [(p.num_output,)] if p.bias_term else []
        elif layer.type == 'BatchNorm':
            out[layer.name] = [(bottom[1],), (bottom[1],), (1,)]
        elif len(layer.bottom) == 1:  # Scale or Bias with learned blobs
            p = layer.scale_param if layer.type == 'Scale' else layer.bias_param
            axis = _canonical(p.axis, len(bottom))
            end = len(bottom) if p.num_axes == -1 else axis + p.num_axes
            count = 1 + (layer.type == 'Scale' and p.bias_term)
            out[layer.name] = [tuple(bottom[axis:end])] * count
        elif layer.type == 'Scale' and layer.scale_param.bias_term:  # scale from bottom 1
            out[layer.name] = [tuple(shapes[layer.bottom[1]])]
    return out


def placeholder_params(param, shapes):
    """{layer: [arrays]} of parameter shapes without values (zeros, one shared element;
    BatchNorm's factor 1), for the structure check of full-size nets."""
    return {name: [np.ones(s, np.float32) if len(blobs) == 3 and i == 2
                   else np.broadcast_to(np.float32(0), s) for i, s in enumerate(blobs)]
            for name, blobs in param_shapes(param, shapes).items()}


def net_params(net):
    """{layer: [float32 arrays]} of a caffe.Net's parameters (views, not copies)."""
    return {name: [b.data for b in blobs] for name, blobs in net.params.items()}


def to_onnx(param, path, params, shapes, dynamic, props, weights=True):
    """The onnx.ModelProto of NetParameter `param` (read from `path`) with `params`
    ({layer: [arrays]}), `shapes` ({blob: shape} at the prototxt's size, check_net),
    dynamic height and width or not, metadata `props`; checked by onnx.checker.
    weights False: parameters as graph inputs (see Graph.model)."""
    model = Graph(param, path, params, shapes, dynamic).build().model(props, weights)
    if model.ByteSize() > PROTO_LIMIT:
        raise InputError('%s: the ONNX model would be %.1f GB, over protobuf\'s 2 GB' % (path, model.ByteSize() / 1e9))
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise InputError('%s: the exported graph does not pass onnx.checker: %s'
                         % (path, str(e).splitlines()[0]))
    return model


# ---------------------------------------------------------------------------
# The check: Caffe vs ONNX Runtime (or OpenVINO)

def random_inputs(shapes, seed=1):
    """{input: float32 array}: N(0, 1) x 50, about a mean-subtracted image's spread."""
    rng = np.random.default_rng(seed)
    return {k: (rng.standard_normal(s, dtype=np.float32) * 50) for k, s in shapes.items()}


def caffe_forward(net, inputs):
    """{output: array} of caffe.Net `net` reshaped to `inputs` and run forward."""
    for k, v in inputs.items():
        net.blobs[k].reshape(*v.shape)
    net.reshape()
    for k, v in inputs.items():
        net.blobs[k].data[...] = v
    out = net.forward()
    return {k: v.copy() for k, v in out.items()}


def run_onnxruntime(model, inputs):
    opts = onnxruntime.SessionOptions()
    opts.log_severity_level = 3
    sess = onnxruntime.InferenceSession(model.SerializeToString(), opts,
                                        providers=['CPUExecutionProvider'])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, inputs)))


def run_openvino(model, inputs):
    import openvino
    core = openvino.Core()
    compiled = core.compile_model(core.read_model(io.BytesIO(model.SerializeToString())), 'CPU',
                                  {'INFERENCE_PRECISION_HINT': 'f32'})
    result = compiled(inputs)
    # An output that is another's tensor (an identity Power) shares its port: every name counts.
    return {name: np.asarray(result[o]) for o in compiled.outputs for name in o.get_names()}


def differences(expected, got):
    """{output: max |got - expected| / max |expected|} (the largest |logit| as scale)."""
    rel = {}
    for k, e in expected.items():
        g = got[k]
        if g.shape != e.shape:
            raise InputError('output %s: shape %s, Caffe gives %s' % (k, g.shape, e.shape))
        rel[k] = float(np.abs(g.astype(np.float64) - e).max() / max(np.abs(e).max(), 1e-30))
    return rel


def check(model, net, inputs, runtime='onnxruntime'):
    """Run `model` in `runtime` and caffe.Net `net` on `inputs`; {output: relative difference}."""
    expected = caffe_forward(net, inputs)
    got = (run_onnxruntime if runtime == 'onnxruntime' else run_openvino)(model, inputs)
    return differences(expected, got)


# ---------------------------------------------------------------------------
# The command

def parse_size(text):
    try:
        h, w = (int(v) for v in text.lower().split('x'))
        if h > 0 and w > 0:
            return h, w
    except ValueError:
        pass
    raise InputError('--size %r: expected HEIGHTxWIDTH, e.g. 375x500' % text)


def default_weights(spec):
    path = models.weights_file(spec)
    if path and os.path.isfile(path):
        return path
    raise InputError('%s: no weights given and %s not found: pass --weights FILE (a trained '
                     'snapshot, or the released file: python weights.py %s) or --random SEED'
                     % (spec.name, path or 'no released weights', spec.name))


def export_model(name, weights=None, seed=None, out=None, size=None, runtimes=(), log=print):
    """Export model `name` (weights: a caffemodel, or random ones from `seed`) to `out`
    (default <model folder>/<model>.onnx), first checked in each of `runtimes` on an input
    of the net's size or `size` (H, W). Returns the path written."""
    spec = models.get(name)
    prototxt = deploy_path(spec)
    param = read_net_param(prototxt)
    shapes = net_shapes(param, prototxt)
    if weights is None and seed is None:
        weights = default_weights(spec)
    out = out or os.path.join(os.path.dirname(prototxt), '%s.onnx' % spec.name)
    protect = [prototxt] + ([weights] if weights else [])
    net = open_net(prototxt, 'test', weights)
    if seed is not None:
        random_weights(net, seed)
    reason = fixed_size_reason(param)
    dynamic = reason is None
    source = os.path.basename(weights) if weights else 'random (seed %d)' % seed
    model = to_onnx(param, prototxt, net_params(net), shapes, dynamic,
                    metadata(spec, param, shapes, dynamic, source))
    inputs = {t: shapes[t] for layer in param.layer if layer.type == 'Input' for t in layer.top}
    if size:
        if not dynamic:
            raise InputError('%s: --size: this net runs at %s only (%s)'
                             % (spec.name, 'x'.join(map(str, inputs[next(iter(inputs))][2:])), reason))
        inputs = {k: tuple(s[:2]) + tuple(size) for k, s in inputs.items()}
        net_shapes(param, prototxt, inputs)
    for runtime in runtimes:
        rel = check(model, net, random_inputs(inputs), runtime)
        worst = max(rel.values())
        shape = 'x'.join(map(str, next(iter(inputs.values()))))
        if worst > TOLERANCE:
            raise InputError('%s: %s differs from Caffe by %.2e of the largest |output| on %s '
                             '(limit %g); nothing written' % (spec.name, runtime, worst, shape, TOLERANCE))
        log('%s: %s vs Caffe on %s: %s (max |difference| / max |output|, limit %g)' % (
            spec.name, runtime, shape, ', '.join('%s %.1e' % kv for kv in rel.items()), TOLERANCE))
    with atomic_write(out, protect=protect) as f:
        f.write(model.SerializeToString())
    log('%s: wrote %s (%s, %.1f MB)' % (spec.name, out, 'dynamic height and width' if dynamic
                                       else 'fixed input size', os.path.getsize(out) / 1e6))
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description='Export a model\'s deploy net with its weights '
                                     'to ONNX (see docs/export.md).')
    parser.add_argument('model', nargs='?', help='model id, its folder, or a folder holding model.json')
    parser.add_argument('--weights', help='caffemodel (default: the released weights in the model folder)')
    parser.add_argument('--random', type=int, metavar='SEED',
                        help='random weights instead (to check the export itself)')
    parser.add_argument('--out', help='ONNX file (default: <model folder>/<model>.onnx)')
    parser.add_argument('--check', action='store_true', help='compare with Caffe in ONNX Runtime')
    parser.add_argument('--check-openvino', action='store_true', help='compare with Caffe in OpenVINO')
    parser.add_argument('--size', help='HEIGHTxWIDTH of the check\'s input (dynamic nets)')
    parser.add_argument('--all', action='store_true', help='every built-in model (with --random), into --out-dir')
    parser.add_argument('--out-dir', help='folder of the --all exports')
    args = parser.parse_args(argv)
    if (args.model is None) == (not args.all):
        raise InputError('give one MODEL, or --all')
    if args.weights and args.random is not None:
        raise InputError('--weights and --random exclude each other')
    size = parse_size(args.size) if args.size else None
    runtimes = (['onnxruntime'] if args.check else []) + (['openvino'] if args.check_openvino else [])
    if 'openvino' in runtimes:
        try:
            import openvino  # noqa: F401  (optional: pip install openvino)
        except ImportError:
            raise InputError('--check-openvino: OpenVINO is not installed (pip install openvino)')
    if args.all:
        if args.random is None or not args.out_dir:
            raise InputError('--all needs --random SEED and --out-dir DIR')
        for name in models.BUILTIN:
            export_model(name, None, args.random, os.path.join(args.out_dir, name + '.onnx'),
                         None, runtimes)
        return 0
    if args.out_dir:
        raise InputError('--out-dir goes with --all; use --out FILE')
    export_model(args.model, args.weights, args.random, args.out, size, runtimes)
    return 0


if __name__ == '__main__':
    run_cli(main)
