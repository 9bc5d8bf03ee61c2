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

Relative paths are taken from the current directory; the defaults live under
<repo>/ilsvrc-nets/ wherever the command is run from.
"""
import argparse
import dataclasses
import glob
import os
import tempfile

import numpy as np

import common


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


# ----------------------------------------------------------------------------- bilinear

def upsample_filt(size):
    """The size x size bilinear interpolation kernel (float64).

    factor = (size + 1) // 2; center = factor - 1 (odd size) or factor - 0.5 (even);
    filt[i, j] = (1 - |i - center| / factor) * (1 - |j - center| / factor).
    E.g. size 4 (factor 2, upsampling x2): the 1-D profile is [.25, .75, .75, .25].
    """
    size = int(size)
    if size < 1:
        raise ValueError('upsample_filt: size must be >= 1, got %d' % size)
    factor = (size + 1) // 2
    center = factor - 1 if size % 2 == 1 else factor - 0.5
    og = np.ogrid[:size, :size]
    return (1 - abs(og[0] - center) / factor) * (1 - abs(og[1] - center) / factor)


def interp(net, layers):
    """Set each named layer's weights (m x k x h x w) to bilinear interpolation.

    m == k: weights[i, i] = upsample_filt(h) for every class i, zero elsewhere (each
    class upsampled on its own). k == 1 (e.g. grouped deconvolution, one filter per
    output channel): weights[i, 0] = upsample_filt(h). ValueError for an unknown layer,
    a blob that is not 4-D, m != k with k != 1, or a non-square kernel.
    """
    params = net.params
    for name in layers:
        if name not in params:
            raise ValueError('interp: no layer %r with parameters in the net' % name)
        weights = params[name][0].data
        if weights.ndim != 4:
            raise ValueError('interp: layer %r weights have shape %s, expected m x k x h x w'
                             % (name, weights.shape))
        m, k, h, w = weights.shape
        if m != k and k != 1:
            raise ValueError('interp: layer %r weights have shape %s: input and output '
                             'channels must be equal, or 1 output per group'
                             % (name, weights.shape))
        if h != w:
            raise ValueError('interp: layer %r weights have shape %s: the kernel must be '
                             'square' % (name, weights.shape))
        filt = upsample_filt(h)
        weights[...] = 0
        weights[range(m), range(k) if k == m else 0, :, :] = filt


def deconv_layers(net):
    """Names of the net's layers whose type is Deconvolution, in net order."""
    return [name for name, layer in zip(net._layer_names, net.layers)
            if layer.type == 'Deconvolution']


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


# ----------------------------------------------------------------------------- cast command

ARCHS = {
    # arch: (classifier prototxt, classifier weights, output, where to get the weights)
    'vgg16': ('vgg16-deploy.prototxt', 'VGG_ILSVRC_16_layers.caffemodel', 'vgg16-fcn.caffemodel',
              'the Caffe Model Zoo model VGG_ILSVRC_16_layers (528 MB): '
              'python weights.py vgg16'),
    'caffenet': ('caffenet-deploy.prototxt', 'bvlc_reference_caffenet.caffemodel',
                 'caffenet-fcn.caffemodel',
                 'the Caffe Model Zoo model bvlc_reference_caffenet (233 MB): '
                 'python weights.py caffenet'),
}
# the FCN whose deploy net gives each trunk, and the trunk's last layer
TRUNK_MODEL = {'vgg16': 'voc-fcn32s', 'caffenet': 'voc-fcn-alexnet'}
TRUNK_END = 'relu7'


def ilsvrc_dir():
    return os.path.join(common.REPO, 'ilsvrc-nets')


def fcn_trunk_param(arch, widths=None):
    """NetParameter of the fully convolutional trunk of `arch` ('vgg16': conv1_1 .. fc7
    of the FCN-32s deploy net, 'caffenet': conv1 .. fc7 of FCN-AlexNet) from net.py, without
    the head, with a 1 x 3 x 1 x 1 input: parameter shapes do not depend on the input
    size (pad 100 leaves fc6 one position), and a tiny input keeps activations small.
    widths: net.py channel widths (narrow test nets); default the paper's."""
    caffe = common.import_caffe()
    import net as fcn_net
    kwargs = {'widths': tuple(widths)} if widths else {}
    try:
        param = fcn_net.build_net(TRUNK_MODEL[arch], 'deploy', **kwargs)
    except ValueError as e:
        raise common.InputError('--widths: %s' % e)
    trunk = caffe.proto.caffe_pb2.NetParameter()
    trunk.CopyFrom(param)
    del trunk.layer[:]
    for layer in param.layer:
        trunk.layer.add().CopyFrom(layer)
        if layer.name == TRUNK_END:
            break
    else:
        raise common.InputError('net.py deploy net %s has no layer %r'
                                % (TRUNK_MODEL[arch], TRUNK_END))
    for layer in trunk.layer:
        if layer.type == 'Input':
            for shape in layer.input_param.shape:
                del shape.dim[2:]
                shape.dim.extend([1, 1])
    return trunk


def save_net(net, path, protect=()):
    """net.save(path) through a temporary file beside it, renamed on success.

    Caffe's own write aborts the whole process on a full disk (glog CHECK on
    SerializeToOstream) and leaves its temporary file, so the free space the parameters
    need is checked first (float32 values plus a margin for the layer definitions), and
    temporary files of an earlier save of `path` that was killed are removed. `protect`:
    inputs `path` must not replace (e.g. the weights it was cast from)."""
    path = os.path.abspath(str(path))
    common.check_not_input(path, protect)
    directory, prefix = os.path.dirname(path), '.' + os.path.basename(path) + '.'
    os.makedirs(directory, exist_ok=True)
    for stale in glob.glob(os.path.join(glob.escape(directory), glob.escape(prefix) + '*.part')):
        os.unlink(stale)
    nbytes = sum(b.data.size * 4 for blobs in net.params.values() for b in blobs)
    common.check_free_space(directory, nbytes + nbytes // 100 + (1 << 20), 'the weights ' + path)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=prefix, suffix='.part')
    os.close(fd)
    try:
        net.save(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a saved model is a normal file
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def cast(prototxt, weights, out, trunk_param, quiet=False):
    """Load classifier `prototxt` + `weights`, transplant it into the net `trunk_param`
    (a NetParameter, or a function returning one, called once the classifier has
    loaded), save that net's weights to `out`. Returns the report."""
    caffe = common.import_caffe()
    classifier = common.open_net(prototxt, 'test', weights)
    if callable(trunk_param):
        trunk_param = trunk_param()
    with tempfile.NamedTemporaryFile('w', suffix='.prototxt', delete=False) as f:
        f.write(str(trunk_param))
    try:
        fcn = caffe.Net(f.name, caffe.TEST)
    finally:
        os.unlink(f.name)
    try:
        report = transplant(fcn, classifier, quiet=True)
    except ValueError as e:  # e.g. a classifier of other widths than the trunk
        raise common.InputError('%s does not fit the FCN trunk: %s' % (weights, e))
    if not quiet:
        print(report)
    if not report.copied and not report.coerced:
        raise common.InputError('%s: no layer of the classifier matches the FCN trunk' % weights)
    save_net(fcn, out, protect=(weights, prototxt))
    return report


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest='command', required=True)
    c = sub.add_parser('cast', help='classifier (fc6/fc7 InnerProduct) -> FCN trunk weights')
    c.add_argument('--arch', choices=sorted(ARCHS), default='vgg16')
    c.add_argument('--prototxt', help='classifier deploy net (default ilsvrc-nets/<arch>-deploy.prototxt)')
    c.add_argument('--weights', help='classifier weights (default: the Model Zoo file in ilsvrc-nets/)')
    c.add_argument('--out', help='output caffemodel (default ilsvrc-nets/<arch>-fcn.caffemodel)')
    c.add_argument('--widths', help='comma-separated net.py channel widths, for narrow test '
                   'nets (default: the paper\'s)')
    c.add_argument('--quiet', action='store_true', help='do not list every blob')
    args = parser.parse_args(argv)

    proto_name, weights_name, out_name, source = ARCHS[args.arch]
    prototxt = args.prototxt or os.path.join(ilsvrc_dir(), proto_name)
    weights = args.weights or os.path.join(ilsvrc_dir(), weights_name)
    out = args.out or os.path.join(ilsvrc_dir(), out_name)
    if not os.path.isfile(weights):
        raise common.InputError('%s: not found; get %s, or pass --weights' % (weights, source))
    common.check_prototxt(prototxt)
    common.check_writable(out, '--out')  # before the long load, not after it
    common.check_not_input(out, (weights, prototxt))
    widths = None
    if args.widths:
        try:
            widths = [int(w) for w in args.widths.split(',')]
        except ValueError:
            widths = []
        if not widths or min(widths) < 1:
            raise common.InputError('--widths: expected positive integers like 8,8,16,16,16,32, '
                                    'got %r' % args.widths)
    report = cast(prototxt, weights, out, lambda: fcn_trunk_param(args.arch, widths),
                  quiet=args.quiet)
    print('%s: %d copied, %d coerced, %d dropped' % (out, len(report.copied),
                                                     len(report.coerced), len(report.dropped)))
    return 0


if __name__ == '__main__':
    common.run_cli(main)
