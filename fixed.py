"""The fixed layers: weights set from a formula of the net's shapes, never learned.

Stock Caffe computes the FCNs' bilinear upsampling, PSPNet's and DeepLab's align-corners
interpolation and their zooms with ordinary layers (Deconvolution, InnerProduct +
Reshape) whose weights are fixed (lr_mult 0) and set here from the formula. A model's
`finish` steps (models.FINISH_STEPS, spec.finish) run once its start weights are in
(trainsetup.start_fresh); the formula-only ones (FORMULA: 'bilinear', 'align-corners')
also fill, in every net the project opens (netload.open_net with the model's finish;
trainsetup for the solver's test nets), the fixed layers that the weights do not hold:
a val or deploy net may zoom to a size the train net never does (DeepLabv3's OS 8
logits_interp_x8, DeepLab v2's fc1_interp in the deploy net), so a snapshot of the
train net has no weights for them. Layers the weights hold are never touched, so what
an FCN or PSPNet computes from its caffemodel does not change.

    fixed.finish(net, spec.finish)                      # all of it, after the start weights
    fixed.fill(net, spec.finish, missing)   # the formula's, only on `missing` layers

Caffe-free: the nets passed in are caffe.Net objects (params, layers, blobs)."""
import numpy as np


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

# ----------------------------------------------------------------------------- align corners

def align_corners_matrix(size_in, size_out):
    """A (size_out x size_in, float64): the PSPNet fork's Interp along one axis, y = A x.

    Output j reads input position s = j r, r = (size_in - 1) / (size_out - 1) (0 when
    size_out is 1): A[j, i0] = 1 - l, A[j, i0 + 1] = l, i0 = floor(s), l = s - i0, the
    neighbour clamped at the border (corners aligned; the same size gives the identity)."""
    if size_in < 1 or size_out < 1:
        raise ValueError('align_corners_matrix: sizes must be >= 1, got %d, %d' % (size_in, size_out))
    r = (size_in - 1) / (size_out - 1) if size_out > 1 else 0.0
    a = np.zeros((size_out, size_in))
    for j in range(size_out):
        s = r * j
        i0 = min(int(np.floor(s)), size_in - 1)
        lam = s - i0
        a[j, i0] += 1 - lam
        a[j, min(i0 + 1, size_in - 1)] += lam
    return a


def layer_types(net):
    """{layer name: Caffe type} of `net`."""
    return dict(zip(net._layer_names, (layer.type for layer in net.layers)))


def interp_layers(net):
    """The fixed interpolation layers of a PSPNet (net.align_corners_interp, net.pspnet):
    {name: ((H1, W1), (H2, W2))} for every InnerProduct whose top feeds a Reshape to 4-D
    (H1 x W1 from its bottom, H2 x W2 from the Reshape's top) and every Deconvolution
    (H1 x W1 its bottom, H2 x W2 its top). Sizes read from the net's blobs, never typed."""
    types, found = layer_types(net), {}
    shape = lambda blob: tuple(net.blobs[blob].shape)  # noqa: E731  (allocates nothing)
    for name, kind in types.items():
        if kind not in ('InnerProduct', 'Deconvolution'):
            continue
        bottom, top = shape(net.bottom_names[name][0]), shape(net.top_names[name][0])
        if kind == 'InnerProduct':
            after = [l for l, t in types.items() if t == 'Reshape'
                     and net.bottom_names[l][0] == net.top_names[name][0]]
            if len(bottom) != 4 or len(after) != 1:
                continue
            top = shape(net.top_names[after[0]][0])
        found[name] = (bottom[2:], top[2:])
    return found


def pspnet_interp(net, only=None):
    """Set the fixed weights of every interp layer (interp_layers; those named in `only`
    when given) to the fork's Interp.

    InnerProduct (H2 W2 x H1 W1): kron(A_h, A_w) (align_corners_matrix), so the flat
    N x C x H1 W1 input becomes the N x C x H2 W2 interpolation. Deconvolution (zoom by f,
    C x 1 x (2f - 1) x (2f - 1), grouped per channel, stride f, pad f - 1): the output
    must be (H1 - 1) f + 1; upsample_filt(2f - 1) (factor f, centre f - 1) is exactly
    that zoom's align-corners kernel. ValueError naming the layer otherwise. Returns the
    names set."""
    layers = {k: v for k, v in interp_layers(net).items() if only is None or k in only}
    for name, ((h1, w1), (h2, w2)) in sorted(layers.items()):
        weights = net.params[name][0].data
        if weights.ndim == 2:
            if weights.shape != (h2 * w2, h1 * w1):
                raise ValueError('pspnet_interp: %s weights %s, expected %s for %dx%d -> %dx%d'
                                 % (name, weights.shape, (h2 * w2, h1 * w1), h1, w1, h2, w2))
            weights[...] = np.kron(align_corners_matrix(h1, h2), align_corners_matrix(w1, w2))
            continue
        k = weights.shape[-1]
        f = (k + 1) // 2
        if (weights.ndim != 4 or weights.shape[1] != 1 or k % 2 == 0
                or (h2, w2) != ((h1 - 1) * f + 1, (w1 - 1) * f + 1)):
            raise ValueError('pspnet_interp: Deconvolution %s (weights %s, %dx%d -> %dx%d) is not '
                             'an align-corners zoom (grouped, kernel 2f - 1, stride f, pad f - 1)'
                             % (name, weights.shape, h1, w1, h2, w2))
        interp(net, [name])
    return sorted(layers)


def pspnet_init_bn(net):
    """Frozen BatchNorm layers that hold no statistics yet (factor blob 0: nothing copied
    in) become the identity: mean 0, variance 1, factor 1. Caffe would otherwise divide
    by sqrt(eps) at every layer of a net trained from fresh weights. Returns their names."""
    done = []
    for name, kind in layer_types(net).items():
        blobs = net.params.get(name) if kind == 'BatchNorm' else None
        if blobs and blobs[2].data[0] == 0:
            blobs[0].data[...], blobs[1].data[...], blobs[2].data[...] = 0, 1, 1
            done.append(name)
    return done


# A model's finish steps (models.FINISH_STEPS; spec.finish says which, in order), run once
# its start weights are in: no start weights hold these fixed layers' values. Each takes
# `only`: the layer names it may set (None: all of its kind).
FINISH = {
    'bilinear': lambda net, only=None: interp(  # the FCNs' fixed upsampling
        net, [n for n in deconv_layers(net) if only is None or n in only]),
    'align-corners': pspnet_interp,  # PSPNet's and DeepLab's interpolation, the fork's formula
    'bn-identity': lambda net, only=None: pspnet_init_bn(net),  # BN without statistics: identity
}
# The steps whose values depend on the net's shapes alone (not on statistics a trained
# net holds): they fill a fixed layer wherever weights leave it out.
FORMULA = ('bilinear', 'align-corners')


def finish(net, steps):
    """Run `steps` (names of FINISH, e.g. spec.finish) on `net` in order. PSPNet's BN
    statistics then stay frozen while training (use_global_stats in its train net): stock
    Caffe has no synchronised BN, and 1-2 images per GPU are too few to estimate them."""
    for step in steps:
        if step not in FINISH:
            raise ValueError('finish: unknown step %r (known: %s)' % (step, ', '.join(FINISH)))
        FINISH[step](net)


def _frozen(param):
    """{layer name: True when every param spec of it has lr_mult 0} of NetParameter `param`
    (a layer without param specs learns: Caffe's default lr_mult is 1)."""
    return {l.name: bool(l.param) and all(p.lr_mult == 0 for p in l.param) for l in param.layer}


def formula_layers(net, steps, param):
    """Names of the layers of `net` that the formula steps among `steps` (FORMULA) set:
    Deconvolution ('bilinear') and interpolation layers ('align-corners', interp_layers)
    that are fixed (lr_mult 0 in NetParameter `param`, the net's prototxt)."""
    frozen, names = _frozen(param), set()
    if 'bilinear' in steps:
        names |= set(deconv_layers(net))
    if 'align-corners' in steps:
        names |= set(interp_layers(net))
    return {n for n in names if frozen.get(n)}


def fill(net, steps, names):
    """Run the formula steps among `steps` (in their order) on the layers `names` only
    (formula_layers the weights did not hold). Returns the names filled, sorted."""
    names = set(names)
    if names:
        for step in steps:
            if step in FORMULA:
                FINISH[step](net, names)
    return sorted(names)
