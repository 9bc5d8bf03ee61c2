"""Small pieces every script of this project shares.

- `REPO`: the repository root; every default path is resolved from it, never from
  the current directory.
- `import_caffe()`: imports pycaffe with Caffe's INFO logging silenced (set
  FCN_VERBOSE=1 to see it).
- `check_prototxt(path)` / `check_net(param, path, phase)` / `check_weights(path, net)` /
  `open_net(...)`: inputs are checked in Python before Caffe sees them, because Caffe
  aborts the whole process (glog FATAL) on a net it cannot build (unknown layer type or
  bottom, a kernel larger than its input, a blob over INT_MAX values, ...) and on
  weights whose shapes do not fit. Weights must cover every layer with parameters
  unless the caller asks for partial loading (a parent's weights into its child).
- `set_mode(gpu)`: CPU by default; a GPU id only when this pycaffe was built with CUDA
  and the CUDA runtime sees that GPU (set_device aborts in a CPU build and, in a CUDA
  build, on a machine without the GPU): `gpu_problem(gpu)` says why one is unusable.
- `atomic_write(path, protect=...)`: write to a temporary file beside `path`, every
  write checked complete (size on disk compared) before the rename, so an interrupted
  run or a full disk never leaves a half-written output; never over an input.
- `run_cli(main)`: the one place a command turns an input error into a one-line
  message and exit status 1 (FCN_DEBUG=1 shows the traceback instead).
- `progress_bar(total, desc)`: the tqdm bar long work shows.
"""
import contextlib
import errno
import io
import json
import os
import shutil
import sys
import tempfile

import tqdm

REPO = os.path.dirname(os.path.abspath(__file__))


class InputError(ValueError):
    """Bad user input (a file, a flag, a dataset): the message names it and the problem."""


def import_caffe():
    """Import and return pycaffe, with Caffe's INFO/WARNING log lines off unless FCN_VERBOSE=1."""
    if 'caffe' not in sys.modules and not os.environ.get('FCN_VERBOSE'):
        os.environ.setdefault('GLOG_minloglevel', '2')
    import caffe
    return caffe


def build_info():
    """The record the project's Caffe build left beside pycaffe ({'cuda': bool, ...}); {} if none."""
    caffe = import_caffe()
    path = os.path.join(os.path.dirname(caffe.__file__), 'fcn_build.json')
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def cuda_runtime():
    """The CUDA runtime library (ctypes) that this CUDA pycaffe loaded, None in a CPU build."""
    import ctypes
    import_caffe()
    with open('/proc/self/maps') as f:
        cudart = sorted(set(line.split()[-1] for line in f if '/libcudart.so' in line))
    if not cudart:
        return None
    lib = ctypes.CDLL(cudart[0])  # the loaded one: dlopen finds it by its path
    lib.cudaGetErrorString.restype = ctypes.c_char_p
    return lib


def gpu_problem(gpu):
    """Why GPU `gpu` cannot be used by this pycaffe (one line), or None when it can.

    Caffe's set_device aborts the process on a GPU the CUDA runtime does not see, so the
    runtime is asked first: cudaGetDeviceCount of the libcudart that pycaffe loaded."""
    import ctypes
    if not build_info().get('cuda'):
        return ('--gpu %d: this pycaffe was built without CUDA (CPU only); rebuild on a '
                'machine with nvcc (make caffe) or drop --gpu' % gpu)
    lib = cuda_runtime()
    if lib is None:
        return '--gpu %d: pycaffe is a CUDA build but no libcudart is loaded' % gpu
    count = ctypes.c_int(0)
    err = lib.cudaGetDeviceCount(ctypes.byref(count))
    if err != 0:
        return ('--gpu %d: no usable CUDA GPU (CUDA runtime: %s); run on CPU without --gpu'
                % (gpu, lib.cudaGetErrorString(err).decode()))
    if not 0 <= gpu < count.value:
        return '--gpu %d: this machine has %d CUDA GPU(s), numbered from 0' % (gpu, count.value)
    return None


def set_mode(gpu=None):
    """CPU mode when `gpu` is None, else GPU `gpu`; InputError (gpu_problem) when this
    pycaffe or this machine cannot use it."""
    caffe = import_caffe()
    if gpu is None:
        caffe.set_mode_cpu()
        return 'cpu'
    problem = gpu_problem(gpu)
    if problem:
        raise InputError(problem)
    caffe.set_device(int(gpu))
    caffe.set_mode_gpu()
    return 'gpu %d' % gpu


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


# --- nets checked before Caffe sees them ------------------------------------------------
#
# Caffe's Net::Init aborts the process (glog CHECK) on a layer type it does not know, a
# bottom no layer produces, a top two layers produce, a wrong number of bottoms or tops,
# a kernel larger than its padded input, a zero num_output, a blob of more than INT_MAX
# values (the im2col buffer of a big photo), ... `check_net` walks the layers as Init
# does and infers every blob's shape, so each of these is an InputError naming the
# prototxt and the layer instead.

INT_MAX = 2 ** 31 - 1  # Caffe's limit on the values one blob holds
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
    or of its _h/_w pair; `default` when unset (None: required)."""
    if has_hw:
        if n != 2:
            raise ValueError('%s_h/%s_w need 2 spatial axes, the bottom has %d' % (what, what, n))
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
            raise ValueError('its %s would hold %d values (%s), %s'
                             % (what, _count(shape), ' x '.join(map(str, shape)), LIMIT))
    top = b[:axis] + (p.num_output,) + tuple(out)
    return [top] * len(layer.top)


def _pool_shapes(layer, bottoms):
    p = layer.pooling_param
    b = bottoms[0]
    if len(layer.top) == 2 and p.pool != p.MAX:
        raise ValueError('a second top (the argmax mask) needs pool: MAX')
    if p.global_pooling and (p.HasField('kernel_size') or p.HasField('kernel_h')):
        raise ValueError('global_pooling takes no kernel size')
    if not p.global_pooling and not (p.HasField('kernel_size') or
                                     (p.HasField('kernel_h') and p.HasField('kernel_w'))):
        raise ValueError('kernel_size (or kernel_h and kernel_w) is not set')
    if b is None:
        return [None] * len(layer.top)
    if len(b) != 4:
        raise ValueError('needs a 4-axis bottom, got %s' % (b,))
    def hw(stem, name, default):  # e.g. kernel_size, or kernel_h and kernel_w
        if p.HasField(stem + '_h') or p.HasField(stem + '_w'):
            return [getattr(p, stem + '_h'), getattr(p, stem + '_w')]
        return [getattr(p, name) if p.HasField(name) else default] * 2
    k = list(b[2:]) if p.global_pooling else hw('kernel', 'kernel_size', 0)
    s, pad = hw('stride', 'stride', 1), hw('pad', 'pad', 0)
    if min(k) < 1 or min(s) < 1:
        raise ValueError('kernel %s and stride %s must be positive' % (k, s))
    out = []
    for i in range(2):
        if pad[i] >= k[i]:
            raise ValueError('pad %d must be smaller than the kernel %d' % (pad[i], k[i]))
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
        raise ValueError('its weights would hold %d values, %s'
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
        except (ValueError, InputError) as e:
            raise InputError('%s: %s' % (where, e))
        if tops is None:
            unruled.append(layer.type)
            tops = [None] * len(layer.top)
        for name, shape in zip(layer.top, tops):
            if shape is not None and _count(shape) > INT_MAX:
                raise InputError('%s: top %r would be %s = %d values, %s'
                                 % (where, name, ' x '.join(map(str, shape)), _count(shape), LIMIT))
            shapes[name] = shape
    if unruled and probe:
        probe_net(path, phase)
    return shapes


def probe_net(path, phase='test'):
    """Build net `path` once in a subprocess, so that a Caffe abort there is an InputError
    here (with Caffe's own reason), for nets with layers check_net has no rule for."""
    import subprocess
    code = ('import sys, caffe; caffe.set_mode_cpu(); '
            'caffe.Net(sys.argv[1], caffe.TRAIN if sys.argv[2] == "train" else caffe.TEST)')
    env = dict(os.environ, GLOG_minloglevel='2', PYTHONPATH=os.pathsep.join(
        [REPO] + [p for p in os.environ.get('PYTHONPATH', '').split(os.pathsep) if p]))
    r = subprocess.run([sys.executable, '-c', code, str(path), phase], capture_output=True,
                       text=True, env=env)
    if r.returncode != 0:
        lines = [l for l in r.stderr.splitlines() if l.strip()]
        reason = next((l for l in lines if 'Check failed' in l or l[:1] == 'F'), lines[-1] if lines
                      else 'exit status %d' % r.returncode)
        raise InputError('%s: Caffe cannot build this net: %s' % (path, reason.strip()))


def check_prototxt(path, phase=None, input_shapes=None):
    """Raise InputError (naming `path` and the layer) unless it is an existing, parseable
    net prototxt that Caffe can build in `phase` ('train', 'test', None: both): see
    check_net. Returns the path."""
    param = read_net_param(path)
    for p in ([phase] if phase else ['train', 'test']):
        check_net(param, str(path), p, input_shapes)
    return str(path)


def _blob_shape(blob):
    """Shape of a caffe_pb2.BlobProto, handling the legacy num/channels/height/width fields."""
    if blob.HasField('shape'):
        return tuple(blob.shape.dim)
    return (blob.num, blob.channels, blob.height, blob.width)


def _shapes_match(stored, wanted):
    if stored == wanted:
        return True
    # Legacy 4-D blobs are padded on the left with 1s, as Caffe's ShapeEquals does.
    if len(stored) == 4 and len(wanted) <= 4:
        return stored == (1,) * (4 - len(wanted)) + tuple(wanted)
    return False


def _blob_values(blob):
    return len(blob.data) or len(blob.double_data)


def read_proto(path, message, error=InputError, text='%s: not a Caffe weights file (%s)'):
    """`message` (an empty protobuf message: caffe_pb2.NetParameter(), SolverState(), ...)
    parsed from the binary file `path`; error(text % (path, why)) when it cannot be read
    or does not parse."""
    try:
        with open(path, 'rb') as f:
            message.ParseFromString(f.read())
    except Exception as e:  # protobuf raises DecodeError or RuntimeError by backend
        raise error(text % (path, e))
    return message


def check_weights(path, net, partial=False):
    """Raise InputError unless caffemodel `path` parses, every layer it shares with `net`
    (by name) has the same number and shapes of parameter blobs with all their values,
    and, unless `partial`, it covers every layer of `net` that has parameters (weights of
    another model or a file cut short would leave layers at their random fill). partial:
    copying by name on purpose (a parent net's weights into its child). Returns the
    names of the layers copied."""
    caffe = import_caffe()
    path = str(path)
    if not os.path.isfile(path):
        raise InputError('%s: weights file not found' % path if not os.path.exists(path)
                         else '%s: not a weights file (a folder?)' % path)
    if os.path.getsize(path) == 0:
        raise InputError('%s: weights file is empty' % path)
    param = read_proto(path, caffe.proto.caffe_pb2.NetParameter())
    layers = list(param.layer) or list(param.layers)  # V1 models use `layers`
    if not layers:
        raise InputError('%s: weights file holds no layers' % path)
    shared = []
    for layer in layers:
        if layer.name not in net.params or not layer.blobs:
            continue
        wanted = [tuple(b.data.shape) for b in net.params[layer.name]]
        stored = [_blob_shape(b) for b in layer.blobs]
        if len(wanted) != len(stored) or not all(map(_shapes_match, stored, wanted)):
            raise InputError('%s: layer %r has parameter shapes %s but the net expects %s'
                             % (path, layer.name, stored, wanted))
        for i, b in enumerate(layer.blobs):
            if _blob_values(b) != _count(wanted[i]):
                raise InputError('%s: layer %r blob %d holds %d values, its shape %s needs %d'
                                 % (path, layer.name, i, _blob_values(b), wanted[i], _count(wanted[i])))
        shared.append(layer.name)
    if not shared:
        raise InputError('%s: no layer name matches the net (%s...)'
                         % (path, ', '.join(list(net.params)[:3])))
    missing = [name for name in net.params if name not in shared]
    if missing and not partial:
        raise InputError('%s: has no weights for %d of the net\'s %d layers with parameters '
                         '(%s%s): weights of another model, or a file cut short? (partial '
                         'loading only when asked for)' % (path, len(missing), len(net.params),
                         ', '.join(missing[:4]), ', ...' if len(missing) > 4 else ''))
    return shared


def open_net(prototxt, phase='test', weights=None, partial=False):
    """caffe.Net for `prototxt` in phase 'train' or 'test', with `weights` copied in
    (every parameter layer covered unless `partial`: see check_weights), every input
    checked first so bad input is an InputError, never a Caffe abort."""
    caffe = import_caffe()
    check_prototxt(prototxt, phase)
    net = caffe.Net(str(prototxt), caffe.TRAIN if phase == 'train' else caffe.TEST)
    if weights:
        check_weights(weights, net, partial)
        net.copy_from(str(weights))
    return net


def check_free_space(directory, nbytes, what):
    """InputError unless the file system of `directory` has `nbytes` free for `what`
    (a snapshot, a cast net): checked before Caffe writes, since a full disk during
    Caffe's own write aborts the process (glog CHECK on SerializeToOstream)."""
    free = shutil.disk_usage(str(directory)).free
    if free < nbytes:
        raise InputError('%s: not enough free space for %s (%.1f MB needed, %.1f MB free)'
                         % (directory, what, nbytes / 1e6, free / 1e6))
    return free


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_not_input(path, protect=()):
    """InputError (naming both paths) when writing `path` would replace one of `protect`
    (a file: the same file, also through a symlink or a hard link) or land inside one of
    them (a folder, e.g. a dataset's: its files are inputs too)."""
    path = str(path)
    real = os.path.realpath(path)
    for keep in protect:
        keep = str(keep)
        if os.path.isdir(keep):
            inside = os.path.commonpath([real, os.path.realpath(keep)]) == os.path.realpath(keep)
            if inside:
                raise InputError('%s: refusing to write inside %s (an input folder)' % (path, keep))
        elif real == os.path.realpath(keep) or (
                os.path.exists(path) and os.path.exists(keep) and os.path.samefile(path, keep)):
            raise InputError('%s: refusing to write: it would replace the input %s' % (path, keep))


def check_writable(path, what='output', folder=False):
    """InputError (naming `what` and the path) unless `path` can be created or replaced:
    a file output must not be a folder, a folder output (`folder`) not a file, and the
    nearest existing folder above it must be a writable folder. Checked before long work
    so its results are not lost at the end."""
    path = os.path.abspath(str(path))
    if os.path.isdir(path) != folder and os.path.exists(path):
        raise InputError('%s %s: is a %s, expected a %s' % (
            what, path, 'folder' if os.path.isdir(path) else 'file',
            'folder' if folder else 'file'))
    parent = path if folder and os.path.isdir(path) else os.path.dirname(path)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise InputError('%s %s: cannot be created, %s is a file' % (what, path, parent))
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError('%s %s: cannot be written, %s is not writable' % (what, path, parent))
    return path


class _CheckedWriter(io.RawIOBase):
    """A raw binary file on `fd` whose every write is complete or an OSError: a short
    os.write is retried, one that writes nothing is ENOSPC. It has no fileno(), so
    libraries that would write behind Python's back (Pillow's encoders) call write()."""

    def __init__(self, fd, path):
        super().__init__()
        self.fd, self.path, self.written = fd, path, 0

    def writable(self):
        return True

    def fileno(self):
        raise io.UnsupportedOperation('fileno')

    def write(self, data):
        if self.fd is None:
            raise ValueError('%s: write after the file was closed' % self.path)
        view = memoryview(data).cast('B')
        done = 0
        while done < len(view):
            try:
                n = os.write(self.fd, view[done:])
            except OSError as e:  # name the file: ENOSPC alone says not which
                raise OSError(e.errno, e.strerror, self.path) from None
            if not n:
                raise OSError(errno.ENOSPC, 'write incomplete (%d of %d bytes)'
                              % (done, len(view)), self.path)
            done += n
        self.written += done
        return done


@contextlib.contextmanager
def atomic_write(path, mode='wb', protect=()):
    """Open a temporary file beside `path`; on success it replaces `path` in one rename.

    mode 'wb' yields a binary file, 'w' a UTF-8 text file. Before the rename the data is
    flushed and fsynced and the file's size is compared with the bytes written, so a
    full disk is an OSError naming `path` and never a truncated file under its final
    name. `protect`: inputs `path` must not replace (see check_not_input)."""
    path = str(path)
    check_not_input(path, protect)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix='.' + os.path.basename(path) + '.', suffix='.part')
    raw = _CheckedWriter(fd, path)
    try:
        f = raw if 'b' in mode else io.TextIOWrapper(io.BufferedWriter(raw), encoding='utf-8')
        yield f
        try:
            f.flush()
            os.fsync(fd)  # a full disk may only show here (delayed allocation, NFS)
        except OSError as e:
            raise OSError(e.errno, e.strerror, path) if e.filename is None else e
        size = os.fstat(fd).st_size
        if size != raw.written:
            raise OSError(errno.EIO, 'written incompletely (%d of %d bytes on disk)'
                          % (size, raw.written), path)
        os.close(fd)
        fd = raw.fd = None
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual mode
        os.replace(tmp, path)
    except BaseException:
        if fd is not None:
            raw.fd = None  # a buffer flushed later must not write to a reused descriptor
            os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def run_cli(main, argv=None):
    """Run `main(argv)` as a command: input errors become one line on stderr and exit 1."""
    try:
        code = main(argv)
    except (InputError, OSError) as e:
        if os.environ.get('FCN_DEBUG'):
            raise
        print('error: %s' % e, file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        print('interrupted', file=sys.stderr)
        code = 130
    sys.exit(code or 0)


def cpu_name():
    """The processor's model name from /proc/cpuinfo ('' where there is none)."""
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return ''


def label_palette(palette=None):
    """256 x 3 uint8: `palette` (K x 3 RGB colours of classes 0..K-1) over the VOC colour
    map, which gives every other index (void 255 included) its colour."""
    import numpy as np
    out = voc_palette()
    if palette is not None:
        palette = np.asarray(palette, np.uint8).reshape(-1, 3)[:256]
        out[:len(palette)] = palette
    return out


def voc_palette(n=256):
    """The PASCAL VOC colour map: n x 3 uint8, class k's RGB colour in row k.

    Each class index's bits are spread over the high bits of R, G and B in turn, so the
    first classes get well separated colours; index 255 (void) is the usual cream colour."""
    import numpy as np
    palette = np.zeros((n, 3), np.uint8)
    for k in range(n):
        c, r, g, b = k, 0, 0, 0
        for shift in range(7, -1, -1):
            r |= ((c >> 0) & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        palette[k] = (r, g, b)
    return palette


def save_label_png(path, label, protect=(), palette=None):
    """Write an H x W array of class indices (0-255) as a palette PNG, atomically, never
    over one of `protect` (see check_not_input). palette: the dataset's colours, K x 3
    RGB for classes 0..K-1 (ADE20K's, Cityscapes'); the VOC colour map for the rest and
    by default."""
    import numpy as np
    from PIL import Image
    label = np.asarray(label)
    if label.ndim != 2:
        raise ValueError('label must be H x W, got shape %s' % (label.shape,))
    img = Image.fromarray(label.astype(np.uint8), mode='P')
    img.putpalette(label_palette(palette).ravel().tolist())
    with atomic_write(path, protect=protect) as f:
        img.save(f, format='PNG')


def progress_bar(total, desc, enabled=True, unit='image'):
    """A tqdm bar on stderr for long work (count, rate, time left); none unless `enabled`.
    Redrawn in place on a terminal; into a log file a line at most every 30 s. Print
    beside it with bar.write(text)."""
    tty = sys.stderr.isatty()
    graphic = ' |{bar:20}|' if tty else ''
    return tqdm.tqdm(total=total, desc=desc, unit=unit, file=sys.stderr,
                     disable=not enabled or total <= 0, mininterval=0.1 if tty else 30,
                     bar_format='{desc} {n_fmt}/{total_fmt}%s {percentage:.0f}%%, '
                                '{rate_fmt}, {remaining} left' % graphic)
