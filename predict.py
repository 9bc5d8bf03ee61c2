"""The protocol engine: a model's class scores of one image, as its evaluation spec says.

infer.py (your photos), score.py (a split) and reproduce.py (the papers' tables) all get
their scores here, driven by the registry's `models.Protocol` (spec.evaluation) and
`models.Preprocess` (spec.preprocess); docs/evaluation.md describes both protocols.

    import models, predict
    spec = models.get('pspnet50-ade20k')
    probs = predict.scores(net, rgb, spec.evaluation, spec.preprocess)   # K x H x W
    label = predict.labels(net, rgb, spec.evaluation, spec.preprocess)   # H x W class ids

- 'whole' (the FCNs, CVPR 2015 section 4): one forward pass at the image's size, the
  net's logits (its crop layers align the output to the input); optionally tiled
  (sliding_logits: windows averaged in logit space, padded with the mean), so a photo of
  any size runs in the memory of one window.
- 'sliding' (PSPNet, Zhao et al. CVPR 2017): exactly its release's MATLAB evaluation
  (evaluation/eval_sub.m, scale_process.m, caffe_process.m, pre_img.m): per scale s the
  uint8 image is resized with MATLAB's bilinear imresize (antialiased when shrinking,
  rounded back to uint8) so its longer side is base_size * s + 1; crop x crop windows
  every ceil(2/3 crop) pixels (the last flush with the edge); each window's logits plus
  its mirror image's mirrored-back logits go through a softmax; the probabilities are
  averaged where windows overlap, resized to the label's size with imresize, renormalised
  to sum to 1 per pixel, and averaged over the scales. Padding: an image whose longer
  side fits the crop is one window, padded bottom/right with 0 after the mean is
  subtracted (pre_img.m); otherwise only a side shorter than the crop is padded, on the
  uint8 image with the mean rounded to uint8 (scale_process.m), so padded pixels are
  e.g. (0.32, 0.221, 0.061) after subtraction for PSPNet's mean.
- 'padded' (DeepLab v2, Chen et al. TPAMI 2017, as its release tests): the image padded
  bottom/right with the mean to the deploy net's fixed input (513), one pass, the logits
  cropped back to the image (padded_logits); with several scales and/or flip
  (DeepLabv3, Chen et al. 2017, section 4.3) the logits of each rescaled and mirrored
  copy, resized back to the image, are averaged.

Imports no application module: apps -> predict -> netinit (a new input size checked
before the net is reshaped to it) -> models. Nothing here imports Caffe; the nets passed
in are caffe.Net objects (or anything with their `inputs`, `blobs`, `forward`).
"""
import dataclasses

import numpy as np

import cli
import models
import netinit


# ----------------------------------------------------------------------------- MATLAB's imresize

def _triangle(x):
    """The bilinear kernel of MATLAB's imresize: 1 - |x| on [-1, 1], 0 elsewhere."""
    return np.clip(1.0 - np.abs(x), 0.0, None)


def resize_taps(n_in, n_out, antialias=True):
    """(weights, indices), both n_out x taps: MATLAB's imresize(..., 'bilinear') along one
    axis; output i is sum over t of weights[i, t] * input[indices[i, t]] (0-based).

    Output pixel i (1-based) samples the input at u = i / scale + (1 - 1 / scale) / 2
    (half-pixel centres), scale = n_out / n_in. Shrinking with antialias, the triangle is
    widened by 1 / scale (and scaled by scale), so each output averages its footprint.
    Each row's weights are normalised to sum 1; taps beyond the edges are mirrored
    (MATLAB's index list 1..n, n..1, repeated), which for the plain 2-tap kernel is
    edge replication."""
    scale = float(n_out) / n_in
    width, kernel = 2.0, _triangle
    if scale < 1 and antialias:
        width = 2.0 / scale
        kernel = lambda x: scale * _triangle(scale * x)  # noqa: E731
    u = np.arange(1, n_out + 1) / scale + 0.5 * (1 - 1 / scale)
    left = np.floor(u - width / 2)
    taps = int(np.ceil(width)) + 2
    index = left[:, None] + np.arange(taps)[None, :]  # 1-based
    w = kernel(u[:, None] - index)
    total = w[:, 0].copy()
    for t in range(1, taps):  # summed tap by tap, in order, as MATLAB's loop does
        total += w[:, t]
    mirror = np.concatenate([np.arange(n_in), np.arange(n_in)[::-1]])
    return w / total[:, None], mirror[np.mod(index - 1, 2 * n_in).astype(np.int64)]


def resize_weights(n_in, n_out, antialias=True):
    """The n_out x n_in matrix of resize_taps (for reading the weights)."""
    w, index = resize_taps(n_in, n_out, antialias)
    matrix = np.zeros((n_out, n_in))
    np.add.at(matrix, (np.repeat(np.arange(n_out), w.shape[1]), index.ravel()), w.ravel())
    return matrix


def _resize_axis(a, n_out, antialias):
    """float64 `a` resized along axis 0: the taps accumulated in order (exact .5 values of
    a uint8 image then round as MATLAB's accumulation makes them)."""
    w, index = resize_taps(a.shape[0], n_out, antialias)
    shape = (n_out,) + (1,) * (a.ndim - 1)
    out = np.zeros((n_out,) + a.shape[1:])
    for t in range(w.shape[1]):
        out += w[:, t].reshape(shape) * a[index[:, t]]
    return out


def imresize(image, size, antialias=True):
    """`image` (H x W or H x W x C; uint8 or float) resized to size = (h, w) as MATLAB's
    imresize(image, [h w], 'bilinear') does: one axis after the other, the one shrunk
    most first (rows first on a tie); a uint8 image is rounded (half up) and saturated
    back to uint8 after each axis, as MATLAB returns each pass in the input's class.
    Float input gives float32. Vectorised over the pixels, a loop over the few taps."""
    image = np.asarray(image)
    h, w = int(size[0]), int(size[1])
    if h < 1 or w < 1:
        raise ValueError('imresize: size must be positive, got %s' % ((h, w),))
    is_uint8 = image.dtype == np.uint8
    out = image.astype(np.float64)
    scales = (float(h) / image.shape[0], float(w) / image.shape[1])
    for axis in sorted((0, 1), key=lambda a: scales[a]):  # stable: rows first on a tie
        n_out = (h, w)[axis]
        if out.shape[axis] == n_out:
            continue  # the identity
        out = np.moveaxis(_resize_axis(np.moveaxis(out, axis, 0), n_out, antialias), 0, axis)
        if is_uint8:
            out = np.clip(np.floor(out + 0.5), 0, 255)
    return out.astype(np.uint8) if is_uint8 else out.astype(np.float32)


def matlab_round(x):
    """MATLAB's round: halves away from zero (numpy's rounds them to even)."""
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


def release_size(shape, long_side):
    """(h, w) of the release's rescale of an image of `shape` (H, W, ...): the longer side
    `long_side`, the other round(long_side / long * short), in single precision as
    eval_sub.m computes it (a square image: both sides long_side)."""
    h, w = shape[:2]
    ratio = np.float32(long_side) / np.float32(max(h, w)) * np.float32(min(h, w))
    short = max(1, int(matlab_round(ratio)))
    return (long_side, short) if h > w else (short, long_side)


# ----------------------------------------------------------------------------- input

def preprocess(image, prep):
    """H x W x 3 uint8 (or float) RGB -> 3 x H x W float32: times prep.scale, channels in
    prep.order ('BGR' or 'RGB'), minus prep.mean, divided by prep.std when given (both
    in that order): the data layers' preprocessing, or a PyTorch model's normalisation."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError('image must be H x W x 3 RGB, got shape %s' % (image.shape,))
    if prep.order not in ('BGR', 'RGB'):
        raise ValueError('preprocess: channel order %r is not an RGB image\'s' % prep.order)
    in_ = image.astype(np.float32)
    if prep.scale != 1:
        in_ = in_ * np.float32(prep.scale)
    if prep.order == 'BGR':
        in_ = in_[:, :, ::-1]
    in_ = in_ - np.asarray(prep.mean, np.float32).reshape(1, 1, 3)
    if prep.std is not None:
        in_ = in_ / np.asarray(prep.std, np.float32).reshape(1, 1, 3)
    return np.ascontiguousarray(in_.transpose((2, 0, 1)))


def mean_pixel(prep):
    """The uint8 RGB pixel whose preprocessing is nearest 0: the mean rounded to uint8,
    what scale_process.m pads the image with (124, 117, 104 for PSPNet's mean)."""
    mean = np.asarray(prep.mean, np.float64) / prep.scale
    rgb = mean[::-1] if prep.order == 'BGR' else mean
    return np.clip(matlab_round(rgb), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------- forward passes

def score_blob(net):
    """The class-score blob: 'score', else 'score_sem' (SIFT Flow), else the first output."""
    for name in ('score', 'score_sem'):
        if name in net.blobs:
            return name
    return net.outputs[0]


def forward_logits(net, image, blob=None):
    """K x H x W float32 class scores of one C x H x W float32 input (already
    preprocessed): the net's input is reshaped to 1 x C x H x W (a new size checked first
    by netinit.check_input: an InputError, never a Caffe abort), blob `blob` (default
    score_blob) must come out at the input's size (FCN crops it there)."""
    name = net.inputs[0]
    shape = (1,) + tuple(image.shape)
    if tuple(net.blobs[name].data.shape) != shape:  # Caffe aborts on a size the net cannot take
        netinit.check_input(net, {name: shape})
        net.blobs[name].reshape(*shape)
        net.reshape()  # every blob now: shared memory (netload.share_memory) sized for it
    net.blobs[name].data[...] = image
    net.forward()
    blob = blob or score_blob(net)
    score = net.blobs[blob].data[0]
    if score.shape[1:] != image.shape[1:]:
        raise ValueError('%s is %s but the input is %s: the net does not crop its output '
                         'to the input' % (blob, score.shape[1:], image.shape[1:]))
    return score.copy()


def _pair(value):
    return (int(value), int(value)) if np.isscalar(value) else tuple(int(v) for v in value)


def window_starts(size, crop, stride):
    """Window offsets along one axis: every `stride`, the last flush with the end."""
    n = -(-max(size - crop, 0) // stride) + 1
    return [min(i * stride, size - crop) for i in range(n)]


def release_stride(crop):
    """The release's window stride: ceil(crop * 2 / 3), in integers (scale_process.m)."""
    return -(-2 * crop // 3)


def _windows(net, padded, crop, stride, flip, blob, window_scores):
    """Mean of window_scores(net, window, flip, blob) over the crop x crop windows of
    C x H x W `padded` (H, W >= crop) covering each pixel: K x H x W float32."""
    c, ph, pw = padded.shape
    ch, cw = crop
    total, count = None, np.zeros((ph, pw), np.float32)
    for y in window_starts(ph, ch, stride[0]):
        for x in window_starts(pw, cw, stride[1]):
            window = np.ascontiguousarray(padded[:, y:y + ch, x:x + cw])
            s = window_scores(net, window, flip, blob)
            if total is None:
                total = np.zeros((s.shape[0], ph, pw), np.float32)
            total[:, y:y + ch, x:x + cw] += s
            count[y:y + ch, x:x + cw] += 1
    return total / count


def window_logits(net, window, flip=False, blob=None):
    """K x h x w: the window's logits, plus its mirror image's mirrored back with `flip`."""
    logits = forward_logits(net, window, blob)
    if flip:
        logits += forward_logits(net, np.ascontiguousarray(window[:, :, ::-1]), blob)[:, :, ::-1]
    return logits


def window_probabilities(net, window, flip=False, blob=None):
    """K x h x w float32: softmax over the classes of window_logits (caffe_process.m)."""
    logits = window_logits(net, window, flip, blob).astype(np.float64)
    e = np.exp(logits - logits.max(axis=0, keepdims=True))
    return (e / e.sum(axis=0, keepdims=True)).astype(np.float32)


def sliding_logits(net, image, crop, stride=None, flip=False, blob=None):
    """K x H x W float32 class scores of `image` (C x H x W float32, already mean
    subtracted) from overlapping crop x crop windows, so any image size runs in the
    memory of one window (infer.py --full-res).

    The image is padded bottom/right with zeros (the mean) to at least `crop`; windows
    start every `stride` pixels (default ceil(2/3 crop)), the last one flush with the
    padded edge; every pixel gets the mean of the logits of the windows covering it.
    flip: each window's logits plus those of its horizontal mirror (mirrored back).
    crop, stride: int or (h, w); blob: the score blob (see score_blob)."""
    c, h, w = image.shape
    ch, cw = _pair(crop)
    sh, sw = _pair(stride) if stride is not None else (release_stride(ch), release_stride(cw))
    if min(ch, cw, sh, sw) < 1:
        raise ValueError('crop %s and stride %s must be positive' % ((ch, cw), (sh, sw)))
    padded = np.zeros((c, max(h, ch), max(w, cw)), np.float32)
    padded[:, :h, :w] = image
    return _windows(net, padded, (ch, cw), (sh, sw), flip, blob, window_logits)[:, :h, :w]


# ----------------------------------------------------------------------------- the protocols

def net_crop(net):
    """(h, w) of the net's input: the window of a sliding evaluation."""
    return tuple(int(d) for d in net.blobs[net.inputs[0]].data.shape[2:])


def scale_scores(net, scaled, prep, crop, size, flip=True, blob=None, combine='probabilities'):
    """K x size[0] x size[1] float32: one scale of the sliding protocol (scale_process.m)
    on `scaled` (h x w x 3 uint8 RGB, already resized), resized to `size` and, for
    probabilities, renormalised to sum 1 per pixel."""
    h, w = scaled.shape[:2]
    ch, cw = crop
    window = window_probabilities if combine == 'probabilities' else window_logits
    if h <= ch and w <= cw:  # one window; pre_img.m pads with 0 after the mean
        padded = np.zeros((3, ch, cw), np.float32)
        padded[:, :h, :w] = preprocess(scaled, prep)
        out = window(net, padded, flip, blob)
    else:  # only a side below the crop is padded, with the uint8 mean
        ph, pw = max(h, ch), max(w, cw)
        image = np.empty((ph, pw, 3), np.uint8)
        image[...] = mean_pixel(prep)
        image[:h, :w] = scaled
        stride = (release_stride(ch), release_stride(cw))
        out = _windows(net, preprocess(image, prep), crop, stride, flip, blob, window)
    out = imresize(out[:, :h, :w].transpose((1, 2, 0)), size).transpose((2, 0, 1))
    if combine == 'probabilities':
        out = out / out.sum(axis=0, keepdims=True)
    return np.ascontiguousarray(out, np.float32)


def sliding_scores(net, image, protocol, prep, scales=None, size=None, blob=None, crop=None):
    """K x H x W float32: the sliding protocol (eval_sub.m) on `image` (H x W x 3 uint8
    RGB), averaged over `scales` (default protocol.scales); size: (H, W) of the result,
    default the image's (the label's); crop: default the net's input (net_crop)."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError('the sliding protocol takes a uint8 RGB image, got %s' % image.dtype)
    size = tuple(size or image.shape[:2])
    crop = _pair(crop) if crop is not None else net_crop(net)
    scales = tuple(scales or protocol.scales)
    total = None
    for s in scales:
        long_side = int(matlab_round(protocol.base_size * s)) + 1
        scaled = imresize(image, release_size(image.shape, long_side))
        out = scale_scores(net, scaled, prep, crop, size, protocol.flip, blob, protocol.combine)
        total = out if total is None else total + out
    return total / np.float32(len(scales))


def whole_logits(net, image, prep, blob=None, tile=None):
    """K x H x W float32 logits of one pass over `image` (H x W x 3 RGB) at its size; with
    `tile`, an image larger than tile x tile goes through sliding_logits instead."""
    in_ = preprocess(image, prep)
    if tile and max(in_.shape[1:]) > tile:
        return sliding_logits(net, in_, tile, blob=blob)
    return forward_logits(net, in_, blob)


def padded_logits(net, image, prep, blob=None, scales=(1.0,), flip=False):
    """K x H x W float32 logits of `image` (H x W x 3 RGB) through a net of fixed input
    size (net_crop): the preprocessed image padded bottom/right with 0 (the mean) to that
    size, one pass, the logits cropped back to the image (DeepLab v2's test); an image
    larger than the input goes through windows of it (sliding_logits, logits averaged).
    scales: per scale s the uint8 image is first resized to round(H s) x round(W s)
    (imresize, bilinear) and its logits resized back to H x W (bilinear without
    antialiasing); flip adds the mirror image's logits, mirrored back; the logits of all
    scales and flips are averaged (DeepLabv3's evaluation, section 4.3; the resize
    method is this project's choice). Scale 1 without flip is the plain pass."""
    image = np.asarray(image)
    h, w = image.shape[:2]
    total = None
    for s in scales:
        size = (max(1, int(matlab_round(h * s))), max(1, int(matlab_round(w * s))))
        scaled = image if size == (h, w) else imresize(image, size)
        for mirror in (False, True) if flip else (False,):
            one = np.ascontiguousarray(scaled[:, ::-1]) if mirror else scaled
            out = sliding_logits(net, preprocess(one, prep), net_crop(net), blob=blob)
            if mirror:
                out = out[:, :, ::-1]
            if size != (h, w):
                out = imresize(out.transpose((1, 2, 0)), (h, w), antialias=False).transpose((2, 0, 1))
            total = out.astype(np.float32) if total is None else total + out
    return np.ascontiguousarray(total / np.float32(len(scales) * (2 if flip else 1)))


def scores(net, image, protocol, prep, blob=None, scales=None, size=None, tile=None):
    """K x H x W float32 class scores of `image` (H x W x 3 uint8 RGB) under `protocol`
    (models.Protocol): logits of the whole image (tile: see whole_logits), of the image
    padded to the net's input ('padded': padded_logits), or the sliding protocol's
    scores at `size` (default the image's), averaged over `scales`."""
    if protocol.windows == 'whole':
        return whole_logits(net, image, prep, blob, tile)
    if protocol.windows == 'padded':
        return padded_logits(net, image, prep, blob, tuple(scales or protocol.scales), protocol.flip)
    return sliding_scores(net, image, protocol, prep, scales, size, blob)


def label_dtype(num_classes):
    """The smallest unsigned dtype holding class indices 0..num_classes-1: uint8 up to 256
    classes, uint16 up to 65536 (never a cast that wraps class 299 to 43), else uint32."""
    return np.uint8 if num_classes <= 256 else np.uint16 if num_classes <= 65536 else np.uint32


def labels(net, image, protocol, prep, blob=None, scales=None, size=None, tile=None,
           progress=False):
    """H x W class indices (label_dtype of the class count: uint8 up to 256 classes): the
    argmax over the classes of `scores`; a whole-image protocol tiled (`tile`) runs
    band by band (tiled_labels: memory K x tile x W, not K x H x W)."""
    if protocol.windows == 'whole' and tile and max(np.shape(image)[:2]) > tile:
        return tiled_labels(net, image, prep, tile, blob, progress)
    s = scores(net, image, protocol, prep, blob, scales, size, tile)
    return s.argmax(axis=0).astype(label_dtype(s.shape[0]))


WINDOW_PROGRESS = 50  # a tiled image of more windows than this shows their progress


def tiled_labels(net, image, prep, tile, blob=None, progress=False):
    """H x W class indices of `image` (H x W x 3 RGB): exactly the argmax of
    sliding_logits(preprocess(image, prep), tile) (the same sums in the same order), but
    the logits are kept only for the band of rows the current row of windows covers:
    rows above it are final and are reduced to their argmax. Memory: K x tile x W
    float32 for the band (K classes) instead of K x H x W for the whole image (a 100 Mpx
    photo of 21 classes: 8.4 GB), and each window is preprocessed on its own.
    progress: a bar over the windows when there are more than WINDOW_PROGRESS."""
    image = np.asarray(image)
    h, w = image.shape[:2]
    step = release_stride(tile)
    ys = window_starts(max(h, tile), tile, step)
    xs = window_starts(max(w, tile), tile, step)
    width = max(w, tile)
    label, total, count, top = None, None, np.zeros((tile, width), np.float32), 0

    def finish(rows):  # rows top .. top + rows of the band are final
        end = min(top + rows, h)
        if end > top:
            part = total[:, :end - top, :w] / count[:end - top, :w]
            label[top:end] = part.argmax(axis=0)

    bar = cli.progress_bar(len(ys) * len(xs), 'windows', progress and len(ys) * len(xs) > WINDOW_PROGRESS,
                           unit='window')
    try:
        for y in ys:
            if total is not None and y > top:  # no window below starts above y
                shift = y - top
                finish(shift)
                total[:, :tile - shift] = total[:, shift:].copy()
                total[:, tile - shift:] = 0
                count[:tile - shift] = count[shift:].copy()
                count[tile - shift:] = 0
                top = y
            for x in xs:
                part = image[y:y + tile, x:x + tile]
                window = np.zeros((3, tile, tile), np.float32)
                window[:, :part.shape[0], :part.shape[1]] = preprocess(part, prep)
                s = window_logits(net, window, False, blob)
                if total is None:
                    total = np.zeros((s.shape[0], tile, width), np.float32)
                    label = np.empty((h, w), label_dtype(s.shape[0]))
                total[:, :, x:x + tile] += s
                count[:, x:x + tile] += 1
                bar.update(1)
    finally:
        bar.close()
    finish(tile)
    return label


def with_options(protocol, base_size=None, flip=None, scales=None):
    """`protocol` with a command line's overrides (None: keep the spec's)."""
    changes = {k: v for k, v in (('base_size', base_size), ('flip', flip),
                                 ('scales', tuple(scales) if scales else None)) if v is not None}
    return dataclasses.replace(protocol, **changes)


def segment(net, image, mean, blob=None, tile=None):
    """Labels of one image through the whole-image protocol with the data layers'
    preprocessing (RGB -> BGR, minus `mean` given (B, G, R)): H x W (see labels)."""
    return labels(net, image, models.Protocol(), models.Preprocess(tuple(mean)), blob, tile=tile)
