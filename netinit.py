"""Net prototxts checked before Caffe sees them: Caffe's Net::Init redone in Python.

Caffe's Net::Init aborts the process (glog CHECK) on a layer type it does not know, a
bottom no layer produces, a top two layers produce, a wrong number of bottoms or tops,
a kernel larger than its padded input, a zero num_output, a blob of more than INT_MAX
values (the im2col buffer of a big photo), ... `check_net` walks the layers as Init
does and infers every blob's shape, so each of these is an InputError naming the
prototxt and the layer instead. Layers of a type it has no rule for are built once in
a subprocess (`probe_net`), so that Caffe's abort there is an InputError here.

- `read_net_param(path)`: a prototxt parsed, or an InputError naming it.
- `check_prototxt(path, phase)`: read_net_param + check_net in one or both phases.
- `check_net(param, path, phase, input_shapes)`: {blob: shape}, every layer checked.
- `layer_active(layer, phase)`: whether Net::FilterNet keeps a layer in a phase.
- `check_resize(param, path, input_shapes)` / `check_input(net, input_shapes)`: before a
  built net is reshaped to another input size (an image's): the blobs, the layers
  without a rule (probed at that size), parameters whose shape follows the input.
"""
import os
import sys
import weakref

from guard import import_caffe
from project import INT_MAX, REPO, InputError, TooLargeError


def read_net_param(path):
    """Parse a net prototxt into a caffe_pb2.NetParameter, raising InputError naming `path`."""
    from google.protobuf import text_format
    caffe = import_caffe()
    path = str(path)
    if not os.path.isfile(path):
        raise InputError('%s: net prototxt not found' % path)
    try:
        with open(path) as f:
            text = f.read()
        param = caffe.proto.caffe_pb2.NetParameter()
        text_format.Merge(text, param)
    except (UnicodeDecodeError, text_format.ParseError) as e:
        raise InputError('%s: not a valid net prototxt: %s' % (path, str(e).splitlines()[0]))
    if not param.layer:
        raise InputError('%s: net prototxt has no layers' % path)
    return param




LIMIT = "more than Caffe's limit 2^31 - 1"  # how the errors below say a blob passes it


FILLERS = ('constant', 'gaussian', 'positive_unitball', 'uniform', 'xavier', 'msra', 'bilinear')


# type -> (bottoms at least, at most, tops at least, at most), None = no limit, as the
# layers' ExactNum/MinNum/MaxNum declarations say
ARITY = {
    'Input': (0, 0, 1, None), 'Python': (0, None, 0, None), 'DummyData': (0, 0, 1, None),
    'Convolution': (1, None, 1, None), 'Deconvolution': (1, None, 1, None),
    'Pooling': (1, 1, 1, 2), 'Crop': (2, 2, 1, 1), 'Eltwise': (2, None, 1, 1),
    'Concat': (1, None, 1, 1), 'InnerProduct': (1, 1, 1, 1), 'Scale': (1, 2, 1, 1),
    'BatchNorm': (1, 1, 1, 1), 'Reshape': (1, 1, 1, 1), 'Tile': (1, 1, 1, 1),
    'Flatten': (1, 1, 1, 1), 'Slice': (1, 1, 1, None), 'Split': (1, 1, 1, None),
    'Softmax': (1, 1, 1, 1), 'SoftmaxWithLoss': (2, 3, 1, 2), 'Accuracy': (2, 3, 1, 2),
    'Silence': (1, None, 0, 0), 'LRN': (1, 1, 1, 1),
}


SAME_SHAPE = ('ReLU', 'Dropout', 'TanH', 'Sigmoid', 'Power', 'AbsVal', 'BNLL', 'ELU', 'Exp',
              'Log', 'Threshold', 'Clip', 'Swish', 'PReLU', 'MVN', 'Softmax', 'BatchNorm', 'LRN')


# types whose data does not come from a bottom: their top shapes are known only at run time
RUNTIME_SHAPES = ('Python', 'Data', 'ImageData', 'HDF5Data', 'MemoryData', 'WindowData')


def _count(shape):
    n = 1
    for d in shape:
        n *= int(d)
    return n


def _axis(axis, ndim):
    """Caffe's CanonicalAxisIndex: a negative axis counts from the end."""
    if not -ndim <= axis < ndim:
        raise ValueError('axis %d is out of range for a %d-axis bottom' % (axis, ndim))
    return axis % ndim


def _dims(values, h, w, has_hw, n, default, what):
    """Per-spatial-axis values of a repeated field (one value for all axes, or one each)
    or of its _h/_w pair (then not the field too: BaseConvolutionLayer::LayerSetUp
    CHECKs either, not both); `default` when unset (None: required)."""
    if has_hw:
        if n != 2:
            raise ValueError('%s_h/%s_w need 2 spatial axes, the bottom has %d' % (what, what, n))
        if len(values):
            stem = what.replace('_size', '')
            raise ValueError('%s and %s_h/%s_w are both set: give one or the other'
                             % (what, stem, stem))
        vals = [h, w]
    elif not len(values):
        if default is None:
            raise ValueError('%s is not set' % what)
        vals = [default] * n
    elif len(values) in (1, n):
        vals = list(values) * (n if len(values) == 1 else 1)
    else:
        raise ValueError('%s has %d values for %d spatial axes' % (what, len(values), n))
    return [int(v) for v in vals]


def _check_fillers(layer, *fillers):
    for name, filler in fillers:
        if filler.type not in FILLERS:
            raise ValueError('%s type %r is unknown (known: %s)' % (name, filler.type, ', '.join(FILLERS)))


def _check_params(layer, n_blobs):
    if len(layer.param) > n_blobs:
        raise ValueError('%d param { } blocks for %d parameter blobs' % (len(layer.param), n_blobs))


def _conv_shapes(layer, bottoms, reverse):
    """Convolution (reverse False) or Deconvolution (True): top shapes, checking the
    parameter blobs and the im2col buffer (kernel volume x spatial size) stay under INT_MAX."""
    p = layer.convolution_param
    if p.num_output < 1:
        raise ValueError('num_output must be positive, got %d' % p.num_output)
    if p.group < 1:
        raise ValueError('group must be positive, got %d' % p.group)
    _check_fillers(layer, ('weight_filler', p.weight_filler), ('bias_filler', p.bias_filler))
    _check_params(layer, 2 if p.bias_term else 1)
    known = [b for b in bottoms if b is not None]
    if any(b != known[0] for b in known):
        raise ValueError('bottoms differ in shape: %s' % ', '.join(map(str, known)))
    if len(known) < len(bottoms):
        return [None] * len(layer.top)
    b = bottoms[0]
    axis = _axis(p.axis, len(b))
    n = len(b) - axis - 1
    k = _dims(p.kernel_size, p.kernel_h, p.kernel_w, p.HasField('kernel_h') or p.HasField('kernel_w'),
              n, None, 'kernel_size')
    s = _dims(p.stride, p.stride_h, p.stride_w, p.HasField('stride_h') or p.HasField('stride_w'),
              n, 1, 'stride')
    pad = _dims(p.pad, p.pad_h, p.pad_w, p.HasField('pad_h') or p.HasField('pad_w'), n, 0, 'pad')
    dil = _dims(p.dilation, 0, 0, False, n, 1, 'dilation')
    for what, vals in (('kernel_size', k), ('stride', s), ('dilation', dil)):
        if min(vals) < 1:
            raise ValueError('%s must be positive, got %s' % (what, vals))
    channels = b[axis]
    if channels % p.group or p.num_output % p.group:
        raise ValueError('group %d does not divide the %d input channels and num_output %d'
                         % (p.group, channels, p.num_output))
    spatial_in, out = b[axis + 1:], []
    for i, size in enumerate(spatial_in):
        extent = dil[i] * (k[i] - 1) + 1
        o = s[i] * (size - 1) + extent - 2 * pad[i] if reverse else (size + 2 * pad[i] - extent) // s[i] + 1
        if o < 1:
            raise ValueError('kernel %d (dilation %d, pad %d, stride %d) does not fit its input '
                             'of size %d on spatial axis %d' % (k[i], dil[i], pad[i], s[i], size, i))
        out.append(o)
    weight = ((channels, p.num_output // p.group) if reverse else
              (p.num_output, channels // p.group)) + tuple(k)
    col = (_count(weight[1:]) * p.group,) + tuple(spatial_in if reverse else out)
    for what, shape in (('weights', weight), ('im2col buffer', col)):
        if _count(shape) > INT_MAX:
            raise TooLargeError('its %s would hold %d values (%s), %s'
                                % (what, _count(shape), ' x '.join(map(str, shape)), LIMIT))
    top = b[:axis] + (p.num_output,) + tuple(out)
    return [top] * len(layer.top)


def _pool_settings(p):
    """(kernel or None for global pooling, stride, pad), each [h, w], as PoolingLayer's
    LayerSetUp reads them, refusing what it CHECKs: kernel_size or both kernel_h and
    kernel_w (none with global_pooling); pad or both pad_h and pad_w, likewise stride
    (`pad: 1 pad_h: 1`, or `pad_h` alone, aborts); global pooling without pad and
    stride; padding only for MAX and AVE, smaller than the kernel."""
    has = p.HasField
    if p.global_pooling:
        if has('kernel_size') or has('kernel_h') or has('kernel_w'):
            raise ValueError('global_pooling takes no kernel size')
    elif has('kernel_size') == (has('kernel_h') and has('kernel_w')):
        raise ValueError('give kernel_size or both kernel_h and kernel_w, not both' if has('kernel_size')
                         else 'kernel_size (or kernel_h and kernel_w) is not set')
    for stem in ('pad', 'stride'):
        if not ((not has(stem) and has(stem + '_h') and has(stem + '_w')) or
                (not has(stem + '_h') and not has(stem + '_w'))):
            raise ValueError('give %s or both %s_h and %s_w (not %s)' % (
                stem, stem, stem, ' and '.join(f for f in (stem, stem + '_h', stem + '_w') if has(f))))
    k = None if p.global_pooling else ([p.kernel_size] * 2 if has('kernel_size') else [p.kernel_h, p.kernel_w])
    s = [p.stride_h, p.stride_w] if has('stride_h') else [p.stride] * 2
    pad = [p.pad_h, p.pad_w] if has('pad_h') else [p.pad] * 2
    if k is not None and min(k) < 1:
        raise ValueError('kernel %s must be positive' % k)
    if p.global_pooling and (max(pad) or s != [1, 1]):
        raise ValueError('global_pooling takes pad 0 and stride 1, got pad %s stride %s' % (pad, s))
    if max(pad):
        if p.pool not in (p.MAX, p.AVE):
            raise ValueError('padding works only with pool: MAX or AVE')
        for i in range(2):
            if k is not None and pad[i] >= k[i]:
                raise ValueError('pad %d must be smaller than the kernel %d' % (pad[i], k[i]))
    return k, s, pad


def _pool_shapes(layer, bottoms):
    p = layer.pooling_param
    b = bottoms[0]
    if len(layer.top) == 2 and p.pool != p.MAX:
        raise ValueError('a second top (the argmax mask) needs pool: MAX')
    k, s, pad = _pool_settings(p)
    if b is None:
        return [None] * len(layer.top)
    if len(b) != 4:
        raise ValueError('needs a 4-axis bottom, got %s' % (b,))
    k = list(b[2:]) if k is None else k
    if min(s) < 1:
        raise ValueError('stride %s must be positive' % s)
    out = []
    for i in range(2):
        if b[2 + i] + 2 * pad[i] < k[i]:
            raise ValueError('kernel %d is larger than its padded input %d (pad %d) on spatial '
                             'axis %d' % (k[i], b[2 + i], pad[i], i))
        span = b[2 + i] + 2 * pad[i] - k[i]
        o = (-(-span // s[i]) if p.round_mode == p.CEIL else span // s[i]) + 1
        if pad[i] and (o - 1) * s[i] >= b[2 + i] + pad[i]:
            o -= 1  # the last window must start inside the image
        out.append(o)
    top = b[:2] + tuple(out)
    return [top] * len(layer.top)


def _crop_shapes(layer, bottoms):
    a, ref = bottoms
    if a is None or ref is None:
        return [None]
    p = layer.crop_param
    if len(a) != len(ref):
        raise ValueError('bottoms have %d and %d axes' % (len(a), len(ref)))
    axis = _axis(p.axis, len(a))
    n = len(a) - axis
    if len(p.offset) not in (0, 1, n):
        raise ValueError('%d offsets for %d cropped axes' % (len(p.offset), n))
    offsets = list(p.offset) * n if len(p.offset) == 1 else (list(p.offset) or [0] * n)
    for i in range(n):
        if a[axis + i] < ref[axis + i] + offsets[i]:
            raise ValueError('cannot crop %s to %s at offset %d on axis %d'
                             % (a, ref, offsets[i], axis + i))
    return [a[:axis] + ref[axis:]]


def _concat_shapes(layer, bottoms):
    if None in bottoms:
        return [None]
    p = layer.concat_param
    axis = _axis(p.concat_dim if p.HasField('concat_dim') else p.axis, len(bottoms[0]))
    for b in bottoms[1:]:
        if len(b) != len(bottoms[0]) or b[:axis] + b[axis + 1:] != bottoms[0][:axis] + bottoms[0][axis + 1:]:
            raise ValueError('bottoms %s and %s differ off axis %d' % (bottoms[0], b, axis))
    top = list(bottoms[0])
    top[axis] = sum(b[axis] for b in bottoms)
    return [tuple(top)]


def _eltwise_shapes(layer, bottoms):
    p = layer.eltwise_param
    coeff = p.coeff
    if coeff and p.operation != p.SUM:
        raise ValueError('coeff is only for operation SUM')
    if len(coeff) not in (0, len(bottoms)):
        raise ValueError('%d coeff values for %d bottoms' % (len(coeff), len(bottoms)))
    known = [b for b in bottoms if b is not None]
    if any(b != known[0] for b in known):
        raise ValueError('bottoms differ in shape: %s' % ', '.join(map(str, known)))
    return [known[0] if len(known) == len(bottoms) else None]


def _inner_product_shapes(layer, bottoms):
    p = layer.inner_product_param
    if p.num_output < 1:
        raise ValueError('num_output must be positive, got %d' % p.num_output)
    _check_fillers(layer, ('weight_filler', p.weight_filler), ('bias_filler', p.bias_filler))
    _check_params(layer, 2 if p.bias_term else 1)
    b = bottoms[0]
    if b is None:
        return [None]
    axis = _axis(p.axis, len(b))
    if p.num_output * _count(b[axis:]) > INT_MAX:
        raise TooLargeError('its weights would hold %d values, %s'
                            % (p.num_output * _count(b[axis:]), LIMIT))
    return [b[:axis] + (p.num_output,)]


def _scale_shapes(layer, bottoms):
    p = layer.scale_param
    _check_fillers(layer, ('filler', p.filler), ('bias_filler', p.bias_filler))
    if None in bottoms:
        return [None]
    b = bottoms[0]
    axis = _axis(p.axis, len(b)) if b else 0
    if len(bottoms) == 2:
        scale = bottoms[1]
        if b[axis:axis + len(scale)] != scale:
            raise ValueError('scale bottom %s does not match %s from axis %d' % (scale, b, axis))
    elif p.num_axes < -1 or (p.num_axes > 0 and axis + p.num_axes > len(b)):
        raise ValueError('num_axes %d does not fit the bottom %s from axis %d' % (p.num_axes, b, axis))
    return [b]


def _reshape_shapes(layer, bottoms):
    p = layer.reshape_param
    dims = list(p.shape.dim)
    if dims.count(-1) > 1 or any(d < -1 for d in dims):
        raise ValueError('shape %s: at most one -1 and no other negative value' % dims)
    b = bottoms[0]
    if b is None:
        return [None]
    start = _axis(p.axis, len(b) + 1) if p.axis < 0 else p.axis
    end = len(b) if p.num_axes == -1 else start + p.num_axes
    if start > len(b) or end > len(b):
        raise ValueError('axis %d / num_axes %d do not fit the bottom %s' % (p.axis, p.num_axes, b))
    new = [b[start + i] if d == 0 else d for i, d in enumerate(dims)]
    top = list(b[:start]) + new + list(b[end:])
    if -1 in top:
        rest = _count(d for d in top if d != -1)
        if not rest or _count(b) % rest:
            raise ValueError('cannot reshape %s to %s' % (b, dims))
        top[top.index(-1)] = _count(b) // rest
    if _count(top) != _count(b):
        raise ValueError('cannot reshape %s (%d values) to %s' % (b, _count(b), tuple(top)))
    return [tuple(top)]


def _slice_shapes(layer, bottoms):
    b, p = bottoms[0], layer.slice_param
    if b is None:
        return [None] * len(layer.top)
    axis = _axis(p.slice_dim if p.HasField('slice_dim') else p.axis, len(b))
    points = list(p.slice_point)
    if points:
        if len(points) != len(layer.top) - 1 or points != sorted(set(points)) or \
                points[0] < 1 or points[-1] >= b[axis]:
            raise ValueError('slice_point %s does not cut axis %d (size %d) into %d tops'
                             % (points, axis, b[axis], len(layer.top)))
        sizes = [e - s for s, e in zip([0] + points, points + [b[axis]])]
    elif b[axis] % len(layer.top):
        raise ValueError('axis %d (size %d) does not split evenly into %d tops'
                         % (axis, b[axis], len(layer.top)))
    else:
        sizes = [b[axis] // len(layer.top)] * len(layer.top)
    return [b[:axis] + (n,) + b[axis + 1:] for n in sizes]


def _loss_shapes(layer, bottoms):
    """SoftmaxWithLoss / Accuracy: one label per prediction (outer x inner values)."""
    score, label = bottoms[0], bottoms[1]
    axis_param = layer.softmax_param.axis if layer.type == 'SoftmaxWithLoss' else layer.accuracy_param.axis
    if score is None or label is None:
        return [()] + [None] * (len(layer.top) - 1)
    axis = _axis(axis_param, len(score))
    predictions = _count(score[:axis]) * _count(score[axis + 1:])
    if _count(label) != predictions:
        raise ValueError('%s has %d values but %s predicts %d (one label per prediction)'
                         % (layer.bottom[1], _count(label), layer.bottom[0], predictions))
    if layer.type == 'Accuracy' and layer.accuracy_param.top_k > score[axis]:
        raise ValueError('top_k %d exceeds the %d classes' % (layer.accuracy_param.top_k, score[axis]))
    second = score if layer.type == 'SoftmaxWithLoss' else (score[axis],)
    return [()] + [second] * (len(layer.top) - 1)


def _input_shapes(layer, given):
    """Input / DummyData tops: one shape for all tops or one each; `given` overrides by name."""
    declared = [tuple(s.dim) for s in (layer.input_param.shape if layer.type == 'Input'
                                       else layer.dummy_data_param.shape)]
    if len(declared) not in (1, len(layer.top)):
        raise ValueError('%d shapes for %d tops' % (len(declared), len(layer.top)))
    declared = declared * len(layer.top) if len(declared) == 1 else declared
    out = [tuple(given.get(t, d)) for t, d in zip(layer.top, declared)]
    for t, s in zip(layer.top, out):
        if not s or min(s) < 1:
            raise ValueError('top %r has shape %s; every dimension must be positive' % (t, s))
    return out


def _python_layer(layer):
    """Import the layer's module and class as Caffe will, and let the module check its
    param_str and top count (its `check_layer(class_name, param_str, ntop)`, if it has one)."""
    import importlib
    caffe = import_caffe()
    p = layer.python_param
    try:
        module = importlib.import_module(p.module)
    except Exception as e:
        raise ValueError('python module %r cannot be imported (%s: %s)' % (p.module, type(e).__name__, e))
    cls = getattr(module, p.layer, None)
    if not (isinstance(cls, type) and issubclass(cls, caffe.Layer)):
        raise ValueError('module %r has no Python layer class %r' % (p.module, p.layer))
    check = getattr(module, 'check_layer', None)
    if check:
        check(p.layer, p.param_str, len(layer.top))
    return [None] * len(layer.top)


def _top_shapes(layer, bottoms, given):
    """The top shapes of `layer` (None where only known at run time); ValueError explains."""
    kind = layer.type
    rules = {
        'Convolution': lambda: _conv_shapes(layer, bottoms, False),
        'Deconvolution': lambda: _conv_shapes(layer, bottoms, True),
        'Pooling': lambda: _pool_shapes(layer, bottoms),
        'Crop': lambda: _crop_shapes(layer, bottoms),
        'Concat': lambda: _concat_shapes(layer, bottoms),
        'Eltwise': lambda: _eltwise_shapes(layer, bottoms),
        'InnerProduct': lambda: _inner_product_shapes(layer, bottoms),
        'Scale': lambda: _scale_shapes(layer, bottoms),
        'Reshape': lambda: _reshape_shapes(layer, bottoms),
        'Slice': lambda: _slice_shapes(layer, bottoms),
        'SoftmaxWithLoss': lambda: _loss_shapes(layer, bottoms),
        'Accuracy': lambda: _loss_shapes(layer, bottoms),
        'Input': lambda: _input_shapes(layer, given),
        'DummyData': lambda: _input_shapes(layer, given),
        'Python': lambda: _python_layer(layer),
        'Split': lambda: bottoms * len(layer.top),
        'Silence': lambda: [],
    }
    if kind in rules:
        return rules[kind]()
    if kind == 'LRN' and layer.lrn_param.local_size % 2 == 0:
        raise ValueError('local_size must be odd, got %d' % layer.lrn_param.local_size)
    if kind == 'Dropout' and not 0 <= layer.dropout_param.dropout_ratio < 1:
        raise ValueError('dropout_ratio must be in [0, 1), got %g' % layer.dropout_param.dropout_ratio)
    if kind == 'BatchNorm':
        _check_params(layer, 3)
    if kind in SAME_SHAPE:
        return [bottoms[0]] * len(layer.top)
    b = bottoms[0] if bottoms else None
    if kind == 'Tile':
        tiles = layer.tile_param.tiles
        if tiles < 1:
            raise ValueError('tiles must be positive, got %d' % tiles)
        if b is None:
            return [None]
        axis = _axis(layer.tile_param.axis, len(b))
        return [b[:axis] + (b[axis] * tiles,) + b[axis + 1:]]
    if kind == 'Flatten':
        if b is None:
            return [None]
        start = _axis(layer.flatten_param.axis, len(b))
        end = _axis(layer.flatten_param.end_axis, len(b))
        return [b[:start] + (_count(b[start:end + 1]),) + b[end + 1:]]
    return None  # no rule: see check_net


def layer_active(layer, phase, state=None):
    """Whether Caffe keeps `layer` in `phase` ('train' or 'test'), as Net::FilterNet does:
    any include rule met, else no exclude rule met. `state`: the net's NetState (its
    level and stages; default level 0, no stages)."""
    caffe = import_caffe()
    want = caffe.proto.caffe_pb2.TRAIN if phase == 'train' else caffe.proto.caffe_pb2.TEST
    level = state.level if state is not None else 0
    stages = set(state.stage) if state is not None else set()

    def met(r):
        return ((not r.HasField('phase') or r.phase == want)
                and (not r.HasField('min_level') or level >= r.min_level)
                and (not r.HasField('max_level') or level <= r.max_level)
                and set(r.stage) <= stages and not set(r.not_stage) & stages)
    if layer.include:
        return any(met(r) for r in layer.include)
    return not any(met(r) for r in layer.exclude)


def _net_inputs(param, given):
    """Shapes of the legacy net-level inputs (`input:` with input_shape or input_dim)."""
    shapes = {}
    dims = list(param.input_dim)
    for i, name in enumerate(param.input):
        if i < len(param.input_shape):
            shape = tuple(param.input_shape[i].dim)
        elif len(dims) >= 4 * (i + 1):
            shape = tuple(dims[4 * i:4 * i + 4])
        else:
            raise ValueError('input %r has no input_shape or input_dim' % name)
        shapes[name] = tuple(given.get(name, shape))
    return shapes


def check_net(param, path, phase='test', input_shapes=None, probe=True):
    """Walk the layers of NetParameter `param` (read from `path`) that are active in
    `phase` as Caffe's Net::Init does and infer every blob's shape; anything Init would
    abort on is an InputError '<path>: layer <name> (<type>): <problem>'.

    input_shapes: {input top: shape} used instead of the declared shapes (e.g. a photo's
    1 x 3 x H x W). Layers of a type Caffe knows but this check has no rule for: with
    `probe`, the net is built once in a subprocess (see probe_net). Returns {blob: shape
    tuple, or None where it is known only at run time (after a Python data layer)}."""
    caffe = import_caffe()
    known = set(caffe.layer_type_list())
    given = dict(input_shapes or {})
    try:
        shapes = _net_inputs(param, given)
    except ValueError as e:
        raise InputError('%s: %s' % (path, e))
    unruled = []
    for layer in param.layer:
        if not layer_active(layer, phase, param.state if param.HasField('state') else None):
            continue
        where = '%s: layer %r (%s)' % (path, layer.name, layer.type)
        if layer.type not in known:
            raise InputError('%s: unknown layer type; this Caffe knows %s'
                             % (where, ', '.join(sorted(known))))
        lo, hi, tlo, thi = ARITY.get(layer.type, (1, 1, 1, 1) if layer.type in SAME_SHAPE
                                     else (0, None, 0, None))
        for what, n, a, b in (('bottoms', len(layer.bottom), lo, hi), ('tops', len(layer.top), tlo, thi)):
            if n < a or (b is not None and n > b):
                raise InputError('%s: has %d %s, needs %s' % (where, n, what, a if a == b else
                                 'at least %d' % a if b is None else '%d to %d' % (a, b)))
        for field, n, what in (('loss_weight', len(layer.top), 'top'),
                               ('propagate_down', len(layer.bottom), 'bottom')):
            if len(getattr(layer, field)) not in (0, n):
                raise InputError('%s: %d %s values for %d %ss (none, or one per %s)'
                                 % (where, len(getattr(layer, field)), field, n, what, what))
        for i, name in enumerate(layer.bottom):
            if name not in shapes:
                raise InputError('%s: bottom %r is not a top of any layer above it' % (where, name))
        for name in layer.top:
            if name in shapes and name not in layer.bottom:
                raise InputError('%s: top %r is already produced by a layer above it' % (where, name))
        try:
            tops = _top_shapes(layer, [shapes[b] for b in layer.bottom], given)
        except (ValueError, InputError) as e:  # TooLargeError stays one (infer.py's hint)
            raise (TooLargeError if isinstance(e, TooLargeError) else InputError)('%s: %s' % (where, e))
        if tops is None:
            unruled.append(layer.type)
            tops = [None] * len(layer.top)
        for name, shape in zip(layer.top, tops):
            if shape is not None and _count(shape) > INT_MAX:
                raise TooLargeError('%s: top %r would be %s = %d values, %s'
                                 % (where, name, ' x '.join(map(str, shape)), _count(shape), LIMIT))
            shapes[name] = shape
    if unruled and probe:
        probe_net(path, phase, given)
    return shapes


_PROBED = set()  # (path, mtime, phase, input shapes) that built and reshaped fine


def probe_net(path, phase='test', input_shapes=None):
    """Build net `path` once in a subprocess, so that a Caffe abort there is an InputError
    here (with Caffe's own reason), for nets with layers check_net has no rule for. With
    `input_shapes` ({input: shape}) the net built at its declared shapes is then reshaped
    to them, as a command running it at an image's size does (a layer such as SPP may
    take the declared size and abort at another). Successes are remembered."""
    import subprocess
    shapes = tuple(sorted((k, tuple(int(d) for d in v)) for k, v in (input_shapes or {}).items()))
    key = (os.path.abspath(str(path)), os.path.getmtime(str(path)), phase, shapes)
    if key in _PROBED:
        return
    code = ('import sys, caffe; caffe.set_mode_cpu(); '
            'net = caffe.Net(sys.argv[1], caffe.TRAIN if sys.argv[2] == "train" else caffe.TEST)\n'
            'for name, shape in %r:\n'
            '    net.blobs[name].reshape(*shape)\n'
            'if %r:\n'
            '    net.reshape()' % (shapes, bool(shapes)))
    env = dict(os.environ, GLOG_minloglevel='2', PYTHONPATH=os.pathsep.join(
        [REPO] + [p for p in os.environ.get('PYTHONPATH', '').split(os.pathsep) if p]))
    r = subprocess.run([sys.executable, '-c', code, str(path), phase], capture_output=True,
                       text=True, env=env)
    if r.returncode != 0:
        lines = [l for l in r.stderr.splitlines() if l.strip()]
        reason = next((l for l in lines if 'Check failed' in l or l[:1] == 'F'), lines[-1] if lines
                      else 'exit status %d' % r.returncode)
        at = ' at input %s' % ', '.join('%s %s' % (k, 'x'.join(map(str, v))) for k, v in shapes) \
            if shapes else ''
        raise InputError('%s: Caffe cannot build this net%s: %s' % (path, at, reason.strip()))
    _PROBED.add(key)


def param_shapes(param, path, phase='test', input_shapes=None):
    """{layer: [parameter blob shapes]} of the layers whose parameter shapes follow their
    bottom's size (InnerProduct: num_output x the values per item; Scale over the spatial
    axes), for a net of NetParameter `param` at `input_shapes` (default the declared)."""
    shapes = check_net(param, path, phase, input_shapes, probe=False)
    out = {}
    for layer in param.layer:
        if not layer_active(layer, phase, param.state if param.HasField('state') else None):
            continue
        b = shapes.get(layer.bottom[0]) if layer.bottom else None
        if b is None:
            continue
        if layer.type == 'InnerProduct':
            p = layer.inner_product_param
            weight = (p.num_output, _count(b[_axis(p.axis, len(b)):]))
            out[layer.name] = [weight[::-1] if p.transpose else weight]
        elif layer.type == 'Scale' and len(layer.bottom) == 1:
            p = layer.scale_param
            axis = _axis(p.axis, len(b))
            out[layer.name] = [tuple(b[axis:] if p.num_axes == -1 else b[axis:axis + p.num_axes])]
    return out


def check_resize(param, path, input_shapes, phase='test'):
    """InputError unless a net built from `param` (read from `path`) at its declared input
    shapes can be reshaped to `input_shapes` ({input: shape}, e.g. an image's 1 x 3 x H x
    W) and run: every blob checked at the new size (check_net), layers without a shape
    rule probed at it (probe_net), and no parameter whose shape follows the input size
    (an InnerProduct's weights): Caffe aborts reshaping those ("Input size incompatible
    with inner product parameters")."""
    check_net(param, path, phase, input_shapes)
    built, wanted = param_shapes(param, path, phase), param_shapes(param, path, phase, input_shapes)
    for name, shapes in built.items():
        if wanted.get(name) != shapes:
            layer = next(l for l in param.layer if l.name == name)
            raise InputError('%s: layer %r (%s): its parameters are %s for the declared input, '
                             'an input of %s needs %s: this net takes only its declared size'
                             % (path, name, layer.type, ' x '.join(map(str, shapes[0])),
                                ', '.join('x'.join(map(str, v)) for v in input_shapes.values()),
                                ' x '.join(map(str, wanted[name][0]))))


_OPENED = weakref.WeakKeyDictionary()  # caffe.Net -> [NetParameter, path, phase, sizes checked]


def remember(net, param, path, phase='test'):
    """Note which prototxt caffe.Net `net` was built from, so that check_input can check
    a new input size before the net is reshaped to it (netload.open_net calls this)."""
    _OPENED[net] = [param, str(path), phase, set()]


def check_input(net, input_shapes):
    """check_resize for caffe.Net `net` at {input: shape}, when it was opened through
    netload.open_net (others are not known here: nothing is checked); each size once."""
    record = _OPENED.get(net)
    if record is None:
        return
    param, path, phase, done = record
    key = tuple(sorted((k, tuple(v)) for k, v in input_shapes.items()))
    if key not in done:
        check_resize(param, path, dict(input_shapes), phase)
        done.add(key)


def check_prototxt(path, phase=None, input_shapes=None):
    """Raise InputError (naming `path` and the layer) unless it is an existing, parseable
    net prototxt that Caffe can build in `phase` ('train', 'test', None: both): see
    check_net. Returns the path."""
    param = read_net_param(path)
    for p in ([phase] if phase else ['train', 'test']):
        check_net(param, str(path), p, input_shapes)
    return str(path)


def coarsest_stride(param, phase='test'):
    """The largest step, in input pixels, between neighbouring values of any blob of the
    net (the product of the convolution and pooling strides on the way to it, divided by
    the deconvolutions'): 32 for FCN's pool5. A window smaller than
    this holds less than one cell of the net's coarsest layer."""
    state = param.state if param.HasField('state') else None
    strides = {name: 1.0 for name in param.input}
    for layer in param.layer:
        if not layer_active(layer, phase, state):
            continue
        s = max([strides.get(b, 1.0) for b in layer.bottom] or [1.0])
        if layer.type in ('Convolution', 'Deconvolution'):
            p = layer.convolution_param
            step = p.stride_h if p.HasField('stride_h') else (p.stride[0] if len(p.stride) else 1)
            s = s / step if layer.type == 'Deconvolution' else s * step
        elif layer.type == 'Pooling' and not layer.pooling_param.global_pooling:
            p = layer.pooling_param
            s *= p.stride_h if p.HasField('stride_h') else p.stride
        for top in layer.top:
            strides[top] = s
    return max(1, int(round(max(strides.values() or [1.0]))))
