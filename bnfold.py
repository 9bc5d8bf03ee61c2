"""BatchNorm (and the Scale after it) folded into the convolution before it: the
arithmetic and the prototxt rewrite, written once for both users (export.py folds into
the ONNX graph, netload.open_net into the nets it opens for inference).

Caffe's BatchNorm with global statistics (every TEST net: use_global_stats defaults to
the phase) computes per channel y = (x - m) / sqrt(v + eps), m and v being its blobs 0
and 1 divided by the moving-average factor in blob 2 (a factor 0 leaves them 0, as
Caffe does); Scale computes y = gamma x + beta. Both are per-channel maps y = a x + b.
Right after a convolution (weights W, out x in/group x kh x kw; bias c, zero without
bias_term) whose output nothing else reads, the pair is one convolution with weights
W a (row o scaled by a[o]) and bias c a + b:

    a, b = bnfold.then(*bnfold.batchnorm_affine(mean, var, factor, eps), gamma, beta)
    w, bias = bnfold.fold_conv(w, bias, a, b)                # float64

plan(param) finds the Convolution -> BatchNorm [-> Scale] chains of a NetParameter that
can fold; folded(param, chains) is the NetParameter without them (the convolution takes
the last folded layer's top and bias_term). Caffe-free: NetParameter messages in,
NetParameter messages out.
"""
import numpy as np

DEFAULT_EPS = 1e-5  # caffe.proto's BatchNormParameter.eps default


def batchnorm_affine(mean, var, factor, eps=DEFAULT_EPS):
    """(a, b), float64 per channel, with a x + b = Caffe's BatchNorm of x under global
    statistics: mean and var are its blobs 0 and 1 (C), factor blob 2's value."""
    factor = float(np.asarray(factor).reshape(-1)[0])
    f = 0.0 if factor == 0 else 1.0 / factor
    mean, var = np.asarray(mean, np.float64) * f, np.asarray(var, np.float64) * f
    a = 1.0 / np.sqrt(var + eps)
    return a, -mean * a


def then(a1, b1, a2, b2=None):
    """(a, b) of y = a2 (a1 x + b1) + b2: two per-channel maps as one (BatchNorm, then
    Scale). float64."""
    a2 = np.asarray(a2, np.float64).reshape(-1)
    b = np.asarray(b1, np.float64) * a2 + (0.0 if b2 is None else np.asarray(b2, np.float64).reshape(-1))
    return np.asarray(a1, np.float64) * a2, b


def fold_conv(w, bias, a, b=None, out=None):
    """(weights, bias) of conv(x; w, bias) followed by the per-output-channel a y + b:
    w * a per output channel (axis 0), bias a + b (bias None: no bias term; b None:
    none), in float64. out: an array of w's shape the weights are written into (e.g. a
    float32 Caffe blob: rounded once), a few output channels at a time, so that no
    float64 copy of a large weight blob is ever made."""
    a = np.asarray(a, np.float64).reshape(-1)
    if out is None:
        out = np.empty(np.shape(w), np.float64)
    rows = max(1, (1 << 21) // max(1, int(np.prod(np.shape(w)[1:]))))  # about 16 MB of float64
    for i in range(0, len(a), rows):
        out[i:i + rows] = np.asarray(w[i:i + rows], np.float64) * a[i:i + rows].reshape(
            (-1,) + (1,) * (np.ndim(w) - 1))
    shift = np.zeros_like(a) if bias is None else np.asarray(bias, np.float64).reshape(-1) * a
    return out, shift + (0.0 if b is None else np.asarray(b, np.float64).reshape(-1))


def _per_channel_scale(layer):
    """True for a Scale with one bottom and a per-channel blob (axis 1, one axis)."""
    p = layer.scale_param
    return len(layer.bottom) == 1 and p.axis in (1, -3) and p.num_axes == 1


def _global_stats(layer):
    p = layer.batch_norm_param
    return not p.HasField('use_global_stats') or p.use_global_stats


def plan(param):
    """[(conv, batchnorm, scale or None)] layer indices of NetParameter `param` (the
    layers of one phase, as Caffe filters them) where a BatchNorm with global statistics
    reads the output of a Convolution that nothing else reads, and a per-channel Scale,
    when the only reader of the BatchNorm's output, follows it. A BatchNorm whose
    convolution output feeds other layers too cannot fold and is left as it is, as is
    one with batch statistics (use_global_stats false)."""
    # Versions as in Caffe's bookkeeping: an in-place layer writes a new version of its
    # blob; readers[(blob, index of the layer that wrote the version)] = layers reading it.
    producer, readers, source = {}, {}, {}
    for i, layer in enumerate(param.layer):
        source[i] = [producer.get(b) for b in layer.bottom]
        for b in layer.bottom:
            readers.setdefault((b, producer.get(b)), []).append(i)
        for t in layer.top:
            producer[t] = i
    chains = []
    for i, layer in enumerate(param.layer):
        if layer.type != 'BatchNorm' or len(layer.bottom) != 1 or len(layer.top) != 1 \
                or not _global_stats(layer) or source[i][0] is None:
            continue
        c = source[i][0]
        conv = param.layer[c]
        if (conv.type != 'Convolution' or len(conv.top) != 1 or conv.top[0] in conv.bottom
                or readers[(layer.bottom[0], c)] != [i]):
            continue
        after = readers.get((layer.top[0], i), [])
        s = after[0] if len(after) == 1 else None
        scale = param.layer[s] if s is not None else None
        fits = (scale is not None and scale.type == 'Scale' and len(scale.top) == 1
                and _per_channel_scale(scale))
        chains.append((c, i, s if fits else None))
    return chains


def _specs_name(conv, bn, scale):
    """The shared parameter name of a folded convolution, or '' when it must own its
    weights: a convolution sharing its weights by name (DeepLab v2's scale branches)
    whose BatchNorm and Scale share theirs by name too folds to the same values in every
    branch, so the folded weights are shared again, named after all the names involved."""
    names = [conv.param[0].name if len(conv.param) else '']
    if conv.convolution_param.bias_term:
        names.append(conv.param[1].name if len(conv.param) > 1 else '')
    for layer, count in ((bn, 3), (scale, 1 + (scale is not None and scale.scale_param.bias_term))):
        if layer is not None:
            got = [p.name for p in layer.param[:count]]
            names += got + [''] * (count - len(got))
    if not all(names):
        return ''
    return '|'.join(names)


def folded(param, chains):
    """A copy of NetParameter `param` with the `chains` of plan(param) folded: their
    BatchNorm and Scale layers gone, each convolution with bias_term and the top of the
    last layer folded into it (in-place layers: its own), its parameter specs named by
    _specs_name (shared) or unnamed (its own weights)."""
    out = type(param)()
    out.CopyFrom(param)
    del out.layer[:]
    into = {c: (bn, s) for c, bn, s in chains}
    gone = {bn for _, bn, _ in chains} | {s for _, _, s in chains if s is not None}
    for i, layer in enumerate(param.layer):
        if i in gone:
            continue
        new = out.layer.add()
        new.CopyFrom(layer)
        if i not in into:
            continue
        bn, s = into[i]
        scale = param.layer[s] if s is not None else None
        new.top[0] = (scale if scale is not None else param.layer[bn]).top[0]
        name = _specs_name(layer, param.layer[bn], scale)
        had_bias = layer.convolution_param.bias_term
        new.convolution_param.bias_term = True
        if len(new.param) or name:
            while len(new.param) < 2:
                new.param.add()
            del new.param[2:]
            new.param[0].name = name
            new.param[1].name = name + '|bias' if name else ''
            if not had_bias and len(layer.param):
                new.param[1].CopyFrom(layer.param[0])
                new.param[1].name = name + '|bias' if name else ''
    return out
