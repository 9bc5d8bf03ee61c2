"""Net surgery: moving weights between nets and setting up the upsampling layers.

The pieces of the original FCN release's surgery.py, checked and without globals:

- `transplant(new_net, net, suffix='')`: copy every parameter of `net` into the
  same-named (+ `suffix`) parameter of `new_net`; a parameter whose shape differs but
  whose element count matches is copied flat ("coerced"): this turns a classifier's
  fc6 InnerProduct matrix (4096 x 25088) into the FCN's 7x7 convolution kernel
  (4096 x 512 x 7 x 7), because Caffe flattens an InnerProduct input in C, H, W order,
  exactly the order of a convolution kernel's trailing dims.
- `upsample_filt(size)` / `interp(net, layers)` / `deconv_layers(net)`: bilinear
  interpolation kernels for the fixed `Deconvolution` layers, found by layer type.
- `expand_score(new_net, new_layer, net, layer)`: copy a score layer into one with more
  outputs (first C' outputs).
- `init_bgrd(new_net, vgg_net)`: NYUD color-d early fusion, VGG conv1_1 on B, G, R and
  the mean of those on the depth channel.

The command casts an ImageNet classifier into the fully convolutional trunk the FCN
solvers start from (fc6/fc7 coerced to convolutions, fc8 dropped). The trunk is net.py's
deploy FCN-32s (vgg16) or FCN-AlexNet (caffenet) up to relu7; only the trunk is saved, so
the file loads by name into every FCN whatever its number of classes (score layers keep
their zero start):

    .venv/bin/python surgery.py cast --arch vgg16
    .venv/bin/python surgery.py cast --arch vgg16 \\
        --prototxt ilsvrc-nets/vgg16-deploy.prototxt \\
        --weights ilsvrc-nets/VGG_ILSVRC_16_layers.caffemodel \\
        --out ilsvrc-nets/vgg16-fcn.caffemodel
    .venv/bin/python surgery.py cast --arch caffenet      # -> ilsvrc-nets/caffenet-fcn.caffemodel

DeepLabv3 (net.deeplab_v3) starts from Kaiming He's ImageNet ResNet-101 (MSRA naming),
copied by name into its trunk (fc1000 dropped; ASPP and the head start at their fillers):

    .venv/bin/python surgery.py resnet-cast      # ilsvrc-nets/ResNet-101-model.caffemodel
                                                 # -> deeplab/deeplabv3-voc12/init.caffemodel

DeepLab v2 (net.deeplab_v2): its release's caffemodels hold stock BatchNorm + Scale
blobs and load by name; `convert_by_name` copies one into the deploy net (every layer
accounted for, the multi-scale copies included) and adds the interpolation weights:

    .venv/bin/python surgery.py deeplab-convert --model deeplabv2-voc12
    .venv/bin/python surgery.py deeplab-convert --model deeplabv2-voc12 \\
        --weights train2_iter_20000.caffemodel --out train2_iter_20000-stock.caffemodel

PSPNet (net.pspnet): `pspnet_interp(net)` sets the fixed weights of the stock layers
that compute the fork's align-corners Interp; `convert_fork_bn` turns a caffemodel of the
PSPNet fork (its BN layers) into BatchNorm + Scale weights that load by name:

    .venv/bin/python surgery.py pspnet-convert --model pspnet101-voc2012
    .venv/bin/python surgery.py pspnet-convert --model pspnet50-ade20k \\
        --weights pspnet50_ADE20K.caffemodel --out pspnet50-stock.caffemodel

Relative paths are taken from the current directory; the defaults live under
<repo>/ilsvrc-nets/ wherever the command is run from.
"""
import argparse
import dataclasses
import glob
import json
import os
import tempfile

import numpy as np

import cli
import guard
import models
import netinit
import netload
import project
import safewrite
import net
import weights
# The fixed layers' formulas live in fixed.py (netload fills them too); surgery's names
# for them stay.
from fixed import (FINISH, align_corners_matrix, deconv_layers, finish, interp,  # noqa: F401
                   interp_layers, layer_types, pspnet_init_bn, pspnet_interp, upsample_filt)


# ----------------------------------------------------------------------------- transplant

@dataclasses.dataclass
class TransplantReport:
    """What `transplant` did. Each entry is a tuple:

    copied:  (src_layer, dst_layer, blob_index, shape)
    coerced: (src_layer, dst_layer, blob_index, src_shape, dst_shape)
    dropped: (src_layer, blob_index or None, reason)  -- None: the whole layer
    """
    copied: list = dataclasses.field(default_factory=list)
    coerced: list = dataclasses.field(default_factory=list)
    dropped: list = dataclasses.field(default_factory=list)

    def lines(self):
        """Human-readable lines, one per blob (or per dropped layer)."""
        out = []
        for src, dst, i, shape in self.copied:
            out.append('copying %s[%d] -> %s[%d] %s' % (src, i, dst, i, shape))
        for src, dst, i, s, d in self.coerced:
            out.append('coercing %s[%d] -> %s[%d] from %s to %s' % (src, i, dst, i, s, d))
        for src, i, why in self.dropped:
            out.append('dropping %s%s (%s)' % (src, '' if i is None else '[%d]' % i, why))
        return out

    def __str__(self):
        return '\n'.join(self.lines())


def transplant(new_net, net, suffix='', quiet=False):
    """Copy the parameters of `net` into `new_net` by layer name (+ `suffix`).

    For each layer p of `net.params` and each of its blobs i:
    - `new_net.params[p + suffix][i]` has the same shape: copied;
    - same element count, other shape: copied flat ("coerced"), e.g. fc6 weights
      (4096, 25088) -> (4096, 512, 7, 7) and fc7 (4096, 4096) -> (4096, 4096, 1, 1);
    - layer p + suffix absent from `new_net`, or blob i beyond its blobs: dropped;
    - element counts differ: ValueError naming the layer and both shapes.

    Everything is checked before anything is written, so a ValueError leaves `new_net`
    untouched. Blobs of `new_net` that `net` has no counterpart for are left as they are.
    Returns a `TransplantReport`; prints it unless `quiet`.
    """
    report = TransplantReport()
    plan = []
    new_params = new_net.params  # pycaffe builds this dict on every access
    for p, blobs in net.params.items():
        p_new = p + suffix
        if p_new not in new_params:
            report.dropped.append((p, None, 'no layer %r in the new net' % p_new))
            continue
        new_blobs = new_params[p_new]
        for i, blob in enumerate(blobs):
            if i >= len(new_blobs):
                report.dropped.append((p, i, '%r has only %d parameter blob(s)'
                                       % (p_new, len(new_blobs))))
                continue
            src, dst = blob.data, new_blobs[i].data
            if src.shape == dst.shape:
                report.copied.append((p, p_new, i, src.shape))
            elif src.size == dst.size:
                report.coerced.append((p, p_new, i, src.shape, dst.shape))
            else:
                raise ValueError('transplant: %s[%d] has shape %s (%d values) but %s[%d] has '
                                 'shape %s (%d values)' % (p, i, src.shape, src.size, p_new, i,
                                                           dst.shape, dst.size))
            plan.append((src, dst))
    for src, dst in plan:
        dst.flat = src.flat
    if not quiet:
        print(report)
    return report


# ----------------------------------------------------------------------------- score layers

def expand_score(new_net, new_layer, net, layer):
    """Copy score layer `layer` of `net` (C' outputs) into the first C' outputs of
    `new_layer` of `new_net` (C >= C' outputs). Weights: C x K x h x w (or C x K for
    InnerProduct); bias: C. The rest of `new_layer` is left as it is.

    ValueError when either layer is missing, the blob counts differ, the new layer has
    fewer outputs, or any other dimension differs.
    """
    for n, name, what in ((net, layer, 'source'), (new_net, new_layer, 'new')):
        if name not in n.params:
            raise ValueError('expand_score: no layer %r in the %s net' % (name, what))
    old, new = net.params[layer], new_net.params[new_layer]
    if len(old) != len(new):
        raise ValueError('expand_score: %r has %d parameter blobs, %r has %d'
                         % (layer, len(old), new_layer, len(new)))
    old_cl = old[0].data.shape[0]
    for i, (o, n) in enumerate(zip(old, new)):
        os_, ns = o.data.shape, n.data.shape
        if len(os_) != len(ns) or os_[1:] != ns[1:] or ns[0] < os_[0] or os_[0] != old_cl:
            raise ValueError('expand_score: cannot copy %s[%d] %s into the first outputs of '
                             '%s[%d] %s' % (layer, i, os_, new_layer, i, ns))
    for o, n in zip(old, new):
        n.data[:old_cl] = o.data


# ----------------------------------------------------------------------------- NYUD color-d

def init_bgrd(new_net, vgg_net, layer='conv1_1_bgrd', vgg_layer='conv1_1'):
    """Initialise the 4-channel first conv of NYUD color-d (early fusion) from VGG.

    new weights (64, 4, 3, 3): [:, :3] = VGG conv1_1 (64, 3, 3, 3) on B, G, R;
    [:, 3] = their mean over the 3 colour channels (depth); bias (64,) copied.
    """
    for n, name, what in ((new_net, layer, 'new'), (vgg_net, vgg_layer, 'VGG')):
        if name not in n.params or len(n.params[name]) != 2:
            raise ValueError('init_bgrd: the %s net has no layer %r with weights and bias'
                             % (what, name))
    w_new, b_new = (b.data for b in new_net.params[layer])
    w_vgg, b_vgg = (b.data for b in vgg_net.params[vgg_layer])
    if (w_vgg.ndim != 4 or w_vgg.shape[1] != 3 or w_new.shape[1] != 4
            or w_new.shape[:1] + w_new.shape[2:] != w_vgg.shape[:1] + w_vgg.shape[2:]
            or b_new.shape != b_vgg.shape):
        raise ValueError('init_bgrd: %s %s / %s cannot take %s %s / %s (expected N x 4 x h x w '
                         'from N x 3 x h x w)' % (layer, w_new.shape, b_new.shape,
                                                  vgg_layer, w_vgg.shape, b_vgg.shape))
    w_new[:, :3] = w_vgg
    w_new[:, 3] = w_vgg.mean(axis=1)
    b_new[...] = b_vgg


# ----------------------------------------------------------------------------- PSPNet

@dataclasses.dataclass
class ForkReport:
    """What convert_fork_bn did with each layer of the fork's caffemodel (layer names)."""
    copied: list = dataclasses.field(default_factory=list)     # same blobs, same shapes
    bn: list = dataclasses.field(default_factory=list)         # BN -> BatchNorm + Scale
    interp: list = dataclasses.field(default_factory=list)     # our fixed layers, set by formula
    no_params: dict = dataclasses.field(default_factory=dict)  # fork type -> count (Interp, ReLU...)

    def __str__(self):
        other = ', '.join('%d %s' % (n, t) for t, n in sorted(self.no_params.items()))
        return ('%d layers copied, %d BN -> BatchNorm + Scale, %d fixed interpolation layers set '
                'from the formula (%s); without weights: %s'
                % (len(self.copied), len(self.bn), len(self.interp), ', '.join(self.interp), other))


def _fork_layers(path):
    caffe = guard.import_caffe()
    if not os.path.isfile(path) or os.path.getsize(path) == 0:
        raise project.InputError('%s: weights file not found or empty' % path)
    param = netload.read_proto(path, caffe.proto.caffe_pb2.NetParameter())
    if not param.layer:
        raise project.InputError('%s: holds no layers (a V1 or empty file, not the PSPNet fork\'s)'
                                % path)
    return param.layer


def _blob_array(path, layer, i, blob):
    """Blob `i` of caffemodel layer `layer` as a float32 array of its stored shape, from
    `data` or, where the file holds doubles, `double_data`. InputError (naming the file,
    the layer and the blob) unless it holds exactly the values its shape needs: a short
    blob would otherwise be repeated to fill the net's, a long one cut."""
    shape = netload._blob_shape(blob)
    want = netinit._count(shape)
    if len(blob.data) and len(blob.double_data):
        raise project.InputError('%s: layer %r blob %d holds both float and double values'
                                % (path, layer.name, i))
    values = blob.data if len(blob.data) else blob.double_data
    if len(values) != want:
        raise project.InputError('%s: layer %r blob %d holds %d values, its shape %s needs %d'
                                % (path, layer.name, i, len(values), shape, want))
    return np.asarray(values, np.float32).reshape(shape)


def _plan_fork_bn(path, layer, params, types):
    """[(source array, destination array)] for one fork BN layer `<conv>/bn` (blobs slope,
    bias, mean, var, each 1 x C x 1 x 1) -> BatchNorm `<conv>/bn` [mean, var, 1] and Scale
    `<conv>/scale` [slope, bias]."""
    name = layer.name
    if not name.endswith('/bn'):
        raise project.InputError('%s: BN layer %r is not named <conv>/bn as in the release'
                                % (path, name))
    shapes = [netload._blob_shape(b) for b in layer.blobs]
    channels = shapes[0][1] if shapes and len(shapes[0]) == 4 else None
    if len(shapes) != 4 or any(s != (1, channels, 1, 1) for s in shapes):
        raise project.InputError('%s: BN layer %r has blobs %s, expected 4 of shape (1, C, 1, 1)'
                                % (path, name, shapes))
    scale = net.psp_scale_name(name)
    if types.get(name) != 'BatchNorm' or types.get(scale) != 'Scale':
        raise project.InputError('%s: BN layer %r has no BatchNorm %r + Scale %r in the net'
                                % (path, name, name, scale))
    want = [tuple(b.data.shape) for b in params[name]] + [tuple(b.data.shape) for b in params[scale]]
    if want != [(channels,), (channels,), (1,), (channels,), (channels,)]:
        raise project.InputError('%s: BN layer %r has %d channels, the net\'s %s / %s have %s'
                                % (path, name, channels, name, scale, want))
    slope, bias, mean, var = (_blob_array(path, layer, i, b).ravel()
                              for i, b in enumerate(layer.blobs))
    if (var < 0).any() or not all(np.isfinite(v).all() for v in (slope, bias, mean, var)):
        raise project.InputError('%s: BN layer %r holds a negative variance or a non-finite value'
                                % (path, name))
    return [(mean, params[name][0].data), (var, params[name][1].data),
            (np.ones(1, np.float32), params[name][2].data),
            (slope, params[scale][0].data), (bias, params[scale][1].data)]


def convert_fork_bn(src, target, out, quiet=False):
    """Convert a caffemodel of the PSPNet fork into the project's layout, saved at `out`.

    src: the fork's weights (BN layers with blobs slope, bias, mean, var; `Interp` layers
    without blobs). target: a NetParameter (net.build_net(model, 'deploy', aux=True)) or a
    prototxt path. Layers are matched by name and blobs, never by their type string: the
    released files name the types as the training fork did (`BN`, `BNData`,
    `ConvolutionData`, `HoleConvolutionData`, ...). Every fork layer is accounted for: a
    layer of 4 blobs named like one of the net's BatchNorm layers -> BatchNorm + Scale
    (the factor blob 1), any other layer with blobs copied into the same-named layer
    (same number and shapes of blobs), layers without blobs counted; every blob must hold
    the values its shape needs (data, or double_data); the net's fixed interpolation
    layers are set by pspnet_interp. InputError (one line naming the file and the layer) for an
    unknown layer with blobs, a shape mismatch, a net layer the file lacks, or `out` being
    `src`. Nothing is written unless all checks pass; `out` is written atomically.
    Returns the ForkReport (printed unless quiet)."""
    return _convert(src, target, out, quiet, fork_bn=True)


def _target_net(target):
    """caffe.Net (TEST) of a NetParameter or a prototxt path."""
    caffe = guard.import_caffe()
    if isinstance(target, (str, os.PathLike)):
        return netload.open_net(target)
    with tempfile.NamedTemporaryFile('w', suffix='.prototxt', delete=False) as f:
        f.write(str(target))
    try:
        return caffe.Net(f.name, caffe.TEST)
    finally:
        os.unlink(f.name)


def pspnet_convert_main(args):
    """surgery.py pspnet-convert: the released caffemodel of args.model (weights.py's
    record) -> pspnet/<model>/<release>-stock.caffemodel, loadable by name."""
    src = args.weights or weights.weights_path(args.model)
    if not os.path.isfile(src):
        raise project.InputError('%s: not found; python weights.py %s, or pass --weights'
                                % (src, args.model))
    out = args.out or os.path.join(os.path.dirname(weights.record_path(args.model)),
                                   models.get(args.model).weights.stock_file)
    convert_fork_bn(src, net.build_net(args.model, 'deploy', aux=not args.no_aux), out)
    print('%s: converted into %s' % (src, out))
    return 0


# ----------------------------------------------------------------------------- DeepLab v2

def _shared_with(net, names):
    """{layer: the first layer of `names` whose blobs it shares} for the net's layers
    whose every parameter blob is the memory of another's (Caffe's sharing by param name:
    DeepLab's _res075 / _res05 branches use the 1x branch's parameters)."""
    params = net.params
    owner, shared = {}, {}
    for name in names:
        for blob in params[name]:
            owner.setdefault(blob.data.ctypes.data, name)
    for name, blobs in params.items():
        owners = {owner.get(b.data.ctypes.data) for b in blobs}
        if len(owners) == 1 and None not in owners and owners != {name}:
            shared[name] = owners.pop()
    return shared


def convert_by_name(src, target, out, quiet=False):
    """Copy a caffemodel written by a stock-layout Caffe (DeepLab v2's release: BatchNorm
    with blobs mean, var, factor and Scale with slope, bias, as stock Caffe writes them)
    into net `target` (a NetParameter or a prototxt path) by layer name, fill the net's
    fixed interpolation layers from the formula (pspnet_interp) and save it at `out`.

    Every layer of the file is accounted for: one with blobs must be a layer of the net
    with the same number and shapes of blobs, each blob whole; one without blobs (data,
    Interp, ReLU, loss ...) is counted. Every parameter layer of the net must come from
    the file, share its blobs with one that does (the multi-scale copies of a file that
    lacks them), or be an interpolation layer. InputError (one line, naming the file and
    the layer) otherwise; nothing is written unless every check passes; `out` may not be
    `src`. Returns the ForkReport (printed unless quiet)."""
    return _convert(src, target, out, quiet, fork_bn=False)


def _convert(src, target, out, quiet, fork_bn):
    """convert_fork_bn (fork_bn: 4-blob BN layers of the net's BatchNorm names become
    BatchNorm + Scale) and convert_by_name: every layer of `src` accounted for, every
    parameter layer of `target` filled from it, shared with one that is, or fixed
    interpolation; `out` written only when all of that holds."""
    src, out = os.path.abspath(str(src)), os.path.abspath(str(out))
    layers = _fork_layers(src)
    if src == out or os.path.exists(out) and os.path.samefile(src, out):
        raise project.InputError('%s: the converted weights would replace the release\'s '
                                 'file; give another --out' % out)
    target_net = _target_net(target)
    params, types = target_net.params, layer_types(target_net)
    report, plan, seen = ForkReport(), [], set()
    for layer in layers:
        if layer.name in seen:
            raise project.InputError('%s: layer %r appears twice' % (src, layer.name))
        seen.add(layer.name)
        if not layer.blobs:
            report.no_params[layer.type] = report.no_params.get(layer.type, 0) + 1
        elif fork_bn and types.get(layer.name) == 'BatchNorm' and len(layer.blobs) == 4:
            plan += _plan_fork_bn(src, layer, params, types)
            report.bn.append(layer.name)
            seen.add(net.psp_scale_name(layer.name))
        elif layer.name in params:
            stored = [netload._blob_shape(b) for b in layer.blobs]
            wanted = [tuple(b.data.shape) for b in params[layer.name]]
            if len(stored) != len(wanted) or not all(map(netload._shapes_match, stored, wanted)):
                raise project.InputError('%s: layer %r has blobs %s but the net expects %s'
                                         % (src, layer.name, stored, wanted))
            plan += [(_blob_array(src, layer, i, b), d.data)
                     for i, (b, d) in enumerate(zip(layer.blobs, params[layer.name]))]
            report.copied.append(layer.name)
        else:
            raise project.InputError('%s: layer %r (%s) carries weights but the net has no such '
                                     'layer' % (src, layer.name, layer.type))
    fixed = interp_layers(target_net)
    shared = _shared_with(target_net, report.copied)
    for name in params:
        if name not in seen and name not in fixed and name not in shared:
            raise project.InputError('%s: the net\'s layer %r (%s) is missing from the file'
                                     % (src, name, types[name]))
    for data, dst in plan:
        dst[...] = data.reshape(dst.shape)  # counts checked: nothing repeated or cut
    report.interp = pspnet_interp(target_net)
    save_net(target_net, out, protect=(src,))
    if not quiet:
        print(report)
    return report


def convert_main(args):
    """surgery.py deeplab-convert: the released caffemodel of args.model (its Weights
    record) -> <its folder>/<release name>-stock.caffemodel, with the interpolation
    weights, loadable by name into the deploy net with every layer covered."""
    src = args.weights or weights.weights_path(args.model)
    if not os.path.isfile(src):
        raise project.InputError('%s: not found; get it with `python weights.py %s` (it '
                                 'extracts it from the release\'s archive), or pass --weights'
                                 % (src, args.model))
    out = args.out or models.stock_file(args.model)
    convert_by_name(src, net.build_net(args.model, 'deploy'), out)
    print('%s: converted into %s' % (src, out))
    return 0


def _converted_by(command):
    """The registry's models whose released weights surgery.py `command` converts."""
    return [n for n in models.names()
            if models.get(n).weights is not None and models.get(n).weights.convert == command]


# ----------------------------------------------------------------------------- DeepLabv3

# torchvision's deeplabv3_resnet101 (and _resnet50) state_dict: torchvision module paths
# -> this project's layer names (net.deeplab_v3, variant 'torchvision', MSRA names).
TORCHVISION_HEAD = {'classifier.0.convs.0.0': 'aspp0', 'classifier.0.convs.1.0': 'aspp1',
                    'classifier.0.convs.2.0': 'aspp2', 'classifier.0.convs.3.0': 'aspp3',
                    'classifier.0.convs.4.1': 'image_pool_conv',
                    'classifier.0.project.0': 'concat_projection', 'classifier.1': 'head_conv',
                    'classifier.4': 'logits'}
TORCHVISION_SIZE = 520  # the deploy net's input: torchvision's evaluation resize, 8 x 65
TORCH_HINT = 'pip install "torch>=2.0" (or pip install ".[torch]")'


def _torch_blocks(state):
    """Blocks of layer1..4 counted from the keys backbone.layerL.B.conv1.weight."""
    counts = []
    for stage in range(1, 5):
        b = 0
        while 'backbone.layer%d.%d.conv1.weight' % (stage, b) in state:
            b += 1
        counts.append(b)
    return tuple(counts)


def torchvision_map(state, blocks, depth):
    """{torchvision conv or BN prefix: (kind, this net's layer)} for the state_dict's
    trunk and head; kind 'conv' (weight[, bias]) or 'bn' (-> BatchNorm + Scale)."""
    names = {'backbone.conv1': ('conv', 'conv1'), 'backbone.bn1': ('bn', 'conv1')}
    for stage, count in zip(range(1, 5), blocks):
        for b, block in enumerate(net.block_names(stage + 1, count, 'msra', depth)):
            pre = 'backbone.layer%d.%d.' % (stage, b)
            for i, part in enumerate('abc', 1):
                names[pre + 'conv%d' % i] = ('conv', block + '_branch2' + part)
                names[pre + 'bn%d' % i] = ('bn', block + '_branch2' + part)
            if b == 0:
                names[pre + 'downsample.0'] = ('conv', block + '_branch1')
                names[pre + 'downsample.1'] = ('bn', block + '_branch1')
    for key, layer in TORCHVISION_HEAD.items():
        names[key] = ('conv', layer)
        if layer != 'logits':  # each conv's BN is the next module of its Sequential
            head, index = key.rsplit('.', 1)
            names['%s.%d' % (head, int(index) + 1)] = ('bn', layer)
    return names


def read_torch_state(path):
    """The {key: float64 numpy array} state_dict of a PyTorch checkpoint (torch.save of a
    state_dict, or of a dict holding one under 'model' / 'state_dict'); InputError when
    torch is missing or the file is not such a checkpoint."""
    try:
        import torch  # third-party, optional: this command only
    except ImportError:
        raise project.InputError('surgery.py deeplabv3-from-torchvision needs PyTorch: %s'
                                 % TORCH_HINT)
    try:
        state = torch.load(str(path), map_location='cpu', weights_only=True)
    except Exception as e:  # torch raises many types for a file that is not its format
        raise project.InputError('%s: not a PyTorch checkpoint (%s)' % (path, str(e).splitlines()[0]
                                                                         if str(e) else type(e).__name__))
    for key in ('model', 'state_dict'):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(hasattr(v, 'numpy') for v in state.values()):
        raise project.InputError('%s: not a state_dict of tensors' % path)
    return {k: v.detach().double().numpy() for k, v in state.items()}


def torchvision_spec(name, folder, checkpoint, classes, widths, blocks, depth, size):
    """The model.json ModelSpec of a converted torchvision DeepLabv3: VOC's classes, the
    deploy net at `size`, padded evaluation, ImageNet normalisation on RGB in 0-1."""
    data = 'voc12aug'
    return models.ModelSpec(
        name=name, folder=os.path.abspath(folder), family='deeplab', dataset=data,
        trunk='resnet%d' % depth, head='aspp-v3', builder='deeplab_v3',
        builder_args=(('crop', size), ('train_crop', size), ('widths', tuple(widths)),
                      ('blocks', tuple(blocks)), ('variant', 'torchvision'),
                      ('test_stride', 8), ('train_stride', 8), ('train_bn', False)),
        init='file', parents=(),
        solver=models.Solver(0.001, momentum=0.9, weight_decay=1e-4, lr_policy='poly',
                             power=0.9, max_iter=30000),
        schedule=models.Schedule(15, 2000),
        title="torchvision's deeplabv3_resnet%d, converted" % depth,
        outputs=(models.Output('logits_interp', 'label'),),
        weights=models.Weights('file://' + os.path.abspath(str(checkpoint)),
                               file_name=os.path.basename(str(checkpoint)),
                               convert='deeplabv3-from-torchvision'),
        evaluation=models.Protocol(windows='padded'), finish=('bilinear',),
        preprocessing=models.Preprocess(mean=(0.485, 0.456, 0.406), order='RGB',
                                        scale=1 / 255.0, std=(0.229, 0.224, 0.225)),
        note='converted by surgery.py deeplabv3-from-torchvision from %s'
             % os.path.basename(str(checkpoint)))


def from_torchvision(checkpoint, out_dir, size=TORCHVISION_SIZE, quiet=False):
    """Convert torchvision's DeepLabv3 checkpoint into `out_dir`: deploy.prototxt (the
    net at size x size, a multiple of 8), model.json (a user's model: infer.py --model
    DIR) and <checkpoint>-stock.caffemodel. Every key of the state_dict is used or
    reported (aux_classifier: training only; num_batches_tracked: a counter); a key of
    another architecture, a shape that differs or a net layer left unfilled is an
    InputError naming the file. Returns the ModelSpec."""
    if size % 8:
        raise project.InputError('--size %d: the converted net is exact for inputs that are '
                                 'multiples of 8' % size)
    out_dir = os.path.abspath(str(out_dir))
    if os.path.exists(os.path.join(out_dir, models.SPEC_FILE)):
        raise project.InputError('%s: already holds a model; give another --out'
                                 % os.path.join(out_dir, models.SPEC_FILE))
    state = read_torch_state(checkpoint)
    blocks = _torch_blocks(state)
    try:
        layer_w = [state['backbone.layer%d.0.conv1.weight' % i].shape[0] for i in range(1, 5)]
        head_w = [state[k + '.weight'].shape[0] for k in
                  ('classifier.0.convs.0.0', 'classifier.0.project.0', 'classifier.1')]
        widths = (state['backbone.conv1.weight'].shape[0], 64, 128) + tuple(layer_w) + tuple(head_w)
        classes = state['classifier.4.weight'].shape[0]
    except KeyError as e:
        raise project.InputError('%s: no key %s: not a torchvision deeplabv3_resnet checkpoint'
                                 % (checkpoint, e))
    depth = 50 if blocks == net.RESNET_BLOCKS[50] else 101
    wanted = len(models.dataset('voc12aug').classes)
    if classes != wanted:
        raise project.InputError('%s: %d classes; the converted model scores VOC\'s %d'
                                 % (checkpoint, classes, wanted))
    param = net.deeplab_v3('deploy', depth, classes, crop=size, widths=widths, blocks=blocks,
                            variant='torchvision', test_stride=8)
    netinit.check_net(param, 'the converted DeepLabv3', probe=False)
    converted = _target_net(param)
    params = converted.params
    mapping = torchvision_map(state, blocks, depth)
    report = TransplantReport()
    filled = set()

    def put(key, layer, i, value):
        dst = params[layer][i].data
        if dst.shape != value.shape:
            raise project.InputError('%s: %s has shape %s but %s[%d] expects %s'
                                     % (checkpoint, key, value.shape, layer, i, dst.shape))
        dst[...] = value
        report.copied.append((key, layer, i, value.shape))
        filled.add((layer, i))

    for key, value in state.items():
        prefix, field = key.rsplit('.', 1)
        if key.startswith('aux_classifier.') or field == 'num_batches_tracked':
            report.dropped.append((key, None, 'training only' if field != 'num_batches_tracked'
                                   else 'a counter'))
            continue
        if prefix not in mapping:
            raise project.InputError('%s: key %r is not part of torchvision\'s DeepLabv3'
                                     % (checkpoint, key))
        kind, layer = mapping[prefix]
        if kind == 'conv':
            put(key, layer, {'weight': 0, 'bias': 1}[field], value)
            continue
        bn, scale, _ = net.bn_names(layer, 'msra')
        target = {'running_mean': (bn, 0), 'running_var': (bn, 1), 'weight': (scale, 0),
                  'bias': (scale, 1)}[field]
        put(key, target[0], target[1], value)
        if field == 'running_mean':
            params[bn][2].data[...] = 1  # BatchNorm's scale factor
            filled.add((bn, 2))
    fixed = {name for name in deconv_layers(converted)} | {'pool1_size'}
    for name, blobs in params.items():
        missing = [i for i in range(len(blobs)) if (name, i) not in filled]
        if missing and name not in fixed:
            raise project.InputError('%s: nothing in the checkpoint for %s[%s]'
                                     % (checkpoint, name, ', '.join(map(str, missing))))
    params['pool1_size'][0].data[...] = 0  # only its size is used
    interp(converted, deconv_layers(converted))  # Caffe's bilinear kernel: half-pixel inside
    name = os.path.basename(out_dir)
    spec = torchvision_spec(name, out_dir, checkpoint, classes, widths, blocks, depth, size)
    os.makedirs(out_dir, exist_ok=True)
    with safewrite.atomic_write(os.path.join(out_dir, 'deploy.prototxt'), 'w') as f:
        f.write(str(param))
    save_net(converted, os.path.join(out_dir, spec.weights.stock_file), protect=(str(checkpoint),))
    with safewrite.atomic_write(os.path.join(out_dir, models.SPEC_FILE), 'w') as f:
        f.write(json.dumps(models.to_dict(spec), indent=1) + '\n')
    if not quiet:
        print(report)
    return spec


def from_torchvision_main(args):
    spec = from_torchvision(args.checkpoint, args.out, args.size, quiet=not args.verbose)
    print('%s: converted into %s (python infer.py photo.jpg --model %s)'
          % (args.checkpoint, spec.folder, spec.folder))
    return 0


# ----------------------------------------------------------------------------- cast command

# The classifiers (models.CLASSIFIERS: deploy net, weights, cast file, the FCN whose
# deploy net gives the trunk) and the trunk's last layer.
TRUNK_END = 'relu7'


def fcn_trunk_param(arch, widths=None):
    """NetParameter of the fully convolutional trunk of `arch` ('vgg16': conv1_1 .. fc7
    of the FCN-32s deploy net, 'caffenet': conv1 .. fc7 of FCN-AlexNet) from net.py, without
    the head, with a 1 x 3 x 1 x 1 input: parameter shapes do not depend on the input
    size (pad 100 leaves fc6 one position), and a tiny input keeps activations small.
    widths: net.py channel widths (narrow test nets); default the paper's."""
    caffe = guard.import_caffe()
    kwargs = {'widths': tuple(widths)} if widths else {}
    try:
        param = net.build_net(models.CLASSIFIERS[arch].trunk_model, 'deploy', **kwargs)
    except ValueError as e:
        raise project.InputError('--widths: %s' % e)
    trunk = caffe.proto.caffe_pb2.NetParameter()
    trunk.CopyFrom(param)
    del trunk.layer[:]
    for layer in param.layer:
        trunk.layer.add().CopyFrom(layer)
        if layer.name == TRUNK_END:
            break
    else:
        raise project.InputError('net.py deploy net %s has no layer %r'
                                % (models.CLASSIFIERS[arch].trunk_model, TRUNK_END))
    for layer in trunk.layer:
        if layer.type == 'Input':
            for shape in layer.input_param.shape:
                del shape.dim[2:]
                shape.dim.extend([1, 1])
    return trunk


def save_net(net, path, protect=()):
    """net.save(path) through safewrite.staged: Caffe writes a temporary file beside
    `path`, which takes its name when complete (a device or FIFO at `path` is written
    through, a symbolic link refused: safewrite.output_kind).

    Caffe's own write aborts the whole process on a full disk (glog CHECK on
    SerializeToOstream) and leaves its temporary file, so the free space (bytes and
    inodes) the parameters need is checked first (float32 values plus a margin for the
    layer definitions), and temporary files of an earlier save of `path` that was killed
    are removed. `protect`: inputs `path` must not replace (e.g. the weights it was cast
    from)."""
    path = os.path.abspath(str(path))
    safewrite.check_not_input(path, protect)
    safewrite.output_kind(path)
    directory, prefix = os.path.dirname(path), '.' + os.path.basename(path) + '.'
    os.makedirs(directory, exist_ok=True)
    for stale in glob.glob(os.path.join(glob.escape(directory), glob.escape(prefix) + '*.part')):
        os.unlink(stale)
    nbytes = sum(b.data.size * 4 for blobs in net.params.values() for b in blobs)
    safewrite.check_free_space(directory, nbytes + nbytes // 100 + (1 << 20), 'the weights ' + path)
    with safewrite.staged(path, protect) as tmp:
        net.save(tmp)


def cast(prototxt, weights, out, trunk_param, quiet=False):
    """Load classifier `prototxt` + `weights`, transplant it into the net `trunk_param`
    (a NetParameter, or a function returning one, called once the classifier has
    loaded), save that net's weights to `out`. The trunk is checked as Caffe would build
    it (netinit.check_net: e.g. a blob over INT_MAX values from --widths), an InputError
    instead of an abort. Returns the report."""
    classifier = netload.open_net(prototxt, 'test', weights)
    if callable(trunk_param):
        trunk_param = trunk_param()
    netinit.check_net(trunk_param, 'the FCN trunk', probe=False)
    fcn = _target_net(trunk_param)
    try:
        report = transplant(fcn, classifier, quiet=True)
    except ValueError as e:  # e.g. a classifier of other widths than the trunk
        raise project.InputError('%s does not fit the FCN trunk: %s' % (weights, e))
    if not quiet:
        print(report)
    if not report.copied and not report.coerced:
        raise project.InputError('%s: no layer of the classifier matches the FCN trunk' % weights)
    save_net(fcn, out, protect=(weights, prototxt))
    return report



# ----------------------------------------------------------------------------- ResNet cast

# The cast trunk's input side: parameter shapes do not depend on it, and a small one keeps
# the activations small (33: conv1 17, pool1 9 (Caffe rounds up), res3 on 5).
RESNET_CAST_SIDE = 33


def resnet_trunk_param(model, widths=None, blocks=None):
    """NetParameter of the ResNet trunk of `model`'s deploy net (net.py; MSRA naming):
    its layers up to the last one named res<stage>..., with a 1 x 3 x RESNET_CAST_SIDE^2
    input. widths / blocks: net.py's, for narrow test nets (default the model's)."""
    caffe = guard.import_caffe()
    kwargs = {k: tuple(v) for k, v in (('widths', widths), ('blocks', blocks)) if v}
    try:
        param = net.build_net(model, 'deploy', **kwargs)
    except ValueError as e:
        raise project.InputError('--widths / --blocks: %s' % e)
    ends = [i for i, layer in enumerate(param.layer) if layer.name.startswith('res')
            and layer.name[3:4].isdigit()]
    if not ends:
        raise project.InputError('net.py deploy net of %s has no ResNet trunk (res2a ...)' % model)
    trunk = caffe.proto.caffe_pb2.NetParameter()
    trunk.CopyFrom(param)
    del trunk.layer[:]
    for layer in param.layer[:ends[-1] + 1]:
        trunk.layer.add().CopyFrom(layer)
        if layer.type == 'Input':
            for shape in trunk.layer[-1].input_param.shape:
                shape.dim[2:] = [RESNET_CAST_SIDE, RESNET_CAST_SIDE]
    return trunk, param


@dataclasses.dataclass
class ResNetCastReport:
    """What resnet_cast did (layer names): copied into the trunk by name, dropped (the
    classifier's own: fc1000), new (the model's layers beyond the trunk, which start at
    their fillers and the finish steps when training starts)."""
    copied: list
    dropped: list
    new: list

    def __str__(self):
        return '\n'.join(['copying %s' % n for n in self.copied] +
                         ['dropping %s (not in the trunk)' % n for n in self.dropped] +
                         ['new %s (its filler when training starts)' % n for n in self.new])


def resnet_cast(weights_path, out, model='deeplabv3-voc12', widths=None, blocks=None, quiet=False):
    """Kaiming He's ImageNet ResNet caffemodel (MSRA naming: conv1, bn_conv1, scale_conv1,
    res2a_branch1, bn2a_branch1, ..., fc1000; BatchNorm + Scale) copied by name into the
    trunk of `model`'s nets (resnet_trunk_param), saved at `out`: every trunk layer must
    be in the file with the same blob shapes (netload.check_weights: an InputError naming
    the file, never a Caffe abort); the file's layers outside the trunk (fc1000) are
    dropped; the trunk only is saved, so the file loads by name into the train nets.
    Returns a ResNetCastReport (printed unless `quiet`)."""
    caffe = guard.import_caffe()
    trunk_param, full = resnet_trunk_param(model, widths, blocks)
    netinit.check_net(trunk_param, 'the ResNet trunk', probe=False)
    trunk = _target_net(trunk_param)
    copied = netload.check_weights(weights_path, trunk)
    trunk.copy_from(str(weights_path))
    stored = netload.read_proto(str(weights_path), caffe.proto.caffe_pb2.NetParameter())
    dropped = [l.name for l in list(stored.layer) or list(stored.layers)
               if l.blobs and l.name not in trunk.params]
    in_trunk = {l.name for l in trunk_param.layer}
    new = [l.name for l in full.layer if l.name not in in_trunk and (l.param or l.type in (
        'Convolution', 'Deconvolution', 'InnerProduct', 'BatchNorm', 'Scale'))]
    report = ResNetCastReport(copied, dropped, new)
    if not quiet:
        print(report)
    save_net(trunk, out, protect=(weights_path,))
    return report


def _resnet_cast_models():
    """The registry's models that start from the cast ImageNet ResNet (init 'file' with
    the DeepLabv3 builder: their init.caffemodel is the cast trunk)."""
    return [n for n in models.names() if isinstance(models.get(n), models.ModelSpec)
            and models.get(n).builder == 'deeplab_v3' and models.get(n).init == 'file']


def _int_list(text, flag):
    try:
        values = [int(w) for w in text.split(',')]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise project.InputError('%s: expected positive integers like 4,4,8, got %r' % (flag, text))
    return values


def resnet_cast_main(args):
    spec = models.get(args.model)
    weights_path = args.weights or os.path.join(project.REPO, 'ilsvrc-nets',
                                                models.IMAGENET_RESNET101.file)
    out = args.out or os.path.join(models.model_dir(spec), models.INIT_FILE)
    if not os.path.isfile(weights_path):
        raise project.InputError('%s: not found; %s (or pass --weights)'
                                 % (weights_path, ' '.join(models.IMAGENET_RESNET101.note)))
    safewrite.check_writable(out, '--out')  # before the long load, not after it
    safewrite.check_not_input(out, (weights_path,))
    widths = _int_list(args.widths, '--widths') if args.widths else None
    blocks = _int_list(args.blocks, '--blocks') if args.blocks else None
    report = resnet_cast(weights_path, out, spec.name, widths, blocks, quiet=args.quiet)
    print('%s: %d layers copied, %d dropped (%s), %d new at their fillers'
          % (out, len(report.copied), len(report.dropped), ', '.join(report.dropped),
             len(report.new)))
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest='command', required=True)
    c = sub.add_parser('cast', help='classifier (fc6/fc7 InnerProduct) -> FCN trunk weights')
    c.add_argument('--arch', choices=sorted(models.CLASSIFIERS), default='vgg16')
    c.add_argument('--prototxt', help='classifier deploy net (default ilsvrc-nets/<arch>-deploy.prototxt)')
    c.add_argument('--weights', help='classifier weights (default: the Model Zoo file in ilsvrc-nets/)')
    c.add_argument('--out', help='output caffemodel (default ilsvrc-nets/<arch>-fcn.caffemodel)')
    c.add_argument('--widths', help='comma-separated net.py channel widths, for narrow test '
                   'nets (default: the paper\'s)')
    c.add_argument('--quiet', action='store_true', help='do not list every blob')
    p = sub.add_parser('pspnet-convert', help='a released PSPNet caffemodel (the fork\'s BN '
                       'layers) -> stock BatchNorm + Scale weights')
    p.add_argument('--model', required=True, choices=('pspnet50-ade20k', 'pspnet101-voc2012',
                                                      'pspnet101-cityscapes'))
    p.add_argument('--weights', help='the fork\'s caffemodel (default: where weights.py puts it)')
    p.add_argument('--out', help='converted caffemodel (default: <release>-stock.caffemodel '
                   'beside it in pspnet/<model>/)')
    p.add_argument('--no-aux', action='store_true', help='the file has no auxiliary branch '
                   '(conv4_24 / conv4_7, conv6_1: their names are inferred)')
    d = sub.add_parser('deeplab-convert', help='a released DeepLab v2 caffemodel (stock '
                       'BatchNorm + Scale) -> the same weights with the interpolation layers')
    d.add_argument('--model', required=True, choices=_converted_by('deeplab-convert'))
    d.add_argument('--weights', help='the release\'s caffemodel (default: where its record '
                   'puts it, e.g. deeplab/deeplabv2-voc12/train_iter_20000.caffemodel)')
    d.add_argument('--out', help='converted caffemodel (default: <release>-stock.caffemodel '
                   'beside it)')
    t = sub.add_parser('deeplabv3-from-torchvision', help="torchvision's deeplabv3_resnet101 "
                       'checkpoint (.pth) -> a stock-Caffe model folder (needs torch)')
    t.add_argument('checkpoint', help='the state_dict file, e.g. deeplabv3_resnet101_coco-586e9e4e.pth')
    t.add_argument('--out', required=True, help='the model folder to write (model.json, '
                   'deploy.prototxt, the caffemodel)')
    t.add_argument('--size', type=int, default=TORCHVISION_SIZE,
                   help='the deploy net\'s input side, a multiple of 8 (default %(default)s)')
    t.add_argument('--verbose', action='store_true', help='list every tensor copied')
    r = sub.add_parser('resnet-cast', help="Kaiming He's ImageNet ResNet-101 caffemodel -> "
                       "the trunk of DeepLabv3's nets (its init.caffemodel)")
    r.add_argument('--model', default='deeplabv3-voc12', choices=_resnet_cast_models())
    r.add_argument('--weights', help='the ImageNet caffemodel (default ilsvrc-nets/%s)'
                   % models.IMAGENET_RESNET101.file)
    r.add_argument('--out', help='output caffemodel (default: the model\'s %s)' % models.INIT_FILE)
    r.add_argument('--widths', help='comma-separated net.py channel widths (narrow test nets)')
    r.add_argument('--blocks', help='comma-separated bottleneck counts of stages 2-5 (narrow '
                   'test nets)')
    r.add_argument('--quiet', action='store_true', help='do not list every layer')
    args = parser.parse_args(argv)
    if args.command == 'resnet-cast':
        return resnet_cast_main(args)
    if args.command == 'deeplabv3-from-torchvision':
        return from_torchvision_main(args)
    if args.command == 'pspnet-convert':
        return pspnet_convert_main(args)
    if args.command == 'deeplab-convert':
        return convert_main(args)

    clf = models.CLASSIFIERS[args.arch]
    prototxt = args.prototxt or os.path.join(project.REPO, clf.deploy)
    weights = args.weights or models.weights_file(clf)
    out = args.out or os.path.join(project.REPO, clf.folder, clf.cast)
    if not os.path.isfile(weights):
        raise project.InputError('%s: not found; get it with python weights.py %s (%s), or pass '
                                '--weights' % (weights, clf.name, clf.source))
    netinit.check_prototxt(prototxt)
    safewrite.check_writable(out, '--out')  # before the long load, not after it
    safewrite.check_not_input(out, (weights, prototxt))
    widths = None
    if args.widths:
        try:
            widths = [int(w) for w in args.widths.split(',')]
        except ValueError:
            widths = []
        if not widths or min(widths) < 1:
            raise project.InputError('--widths: expected positive integers like 8,8,16,16,16,32, '
                                    'got %r' % args.widths)
    trunk = fcn_trunk_param(args.arch, widths)
    try:  # before the long load: widths Caffe cannot build (a blob over INT_MAX values)
        netinit.check_net(trunk, 'the FCN trunk', probe=False)
    except project.InputError as e:
        raise project.InputError('--widths %s: %s' % (args.widths, e) if widths else str(e))
    report = cast(prototxt, weights, out, trunk, quiet=args.quiet)
    print('%s: %d copied, %d coerced, %d dropped' % (out, len(report.copied),
                                                     len(report.coerced), len(report.dropped)))
    return 0


if __name__ == '__main__':
    cli.run_cli(main)
