"""Segment your own images with a trained FCN.

    python infer.py photo.jpg                          # VOC FCN-8s, released weights
    python infer.py photos/ --out seg/                 # every image in a folder
    python infer.py photo.jpg --full-res               # at the photo's own size, tiled
    python infer.py photo.jpg --model pascalcontext-fcn8s --max-side 800 --gpu 0
    python infer.py photo.jpg --model voc-fcn32s --weights voc-fcn32s/snapshot/train_iter_100000.caffemodel
    python infer.py photo.jpg --model pspnet101-voc2012        # PSPNet, the release's protocol
    python infer.py street.png --model pspnet101-cityscapes --multi-scale

The model's released weights are fetched on first use, as torch.hub does, into the
place `python weights.py MODEL` puts them (size and checksum checked when the record
has them); offline, the error names the URL and the path to put the file at.
`--no-download` never fetches. Weights that cover only part of the net (another
model's, a file cut short) are an error unless `--allow-partial`.

For every image IMG.ext this writes, atomically, into --out (default: `fcn-out/` in the
current directory, the place a user running the command looks for its results):

- `IMG.png`: the predicted class index of every pixel (0 .. C-1) as a palette PNG in the
  PASCAL VOC colours, at the image's displayed size (EXIF orientation applied);
- `IMG-overlay.jpg`: the class colours blended half-and-half onto the image; pixels of
  class `background` (VOC, PASCAL-Context) are left as they are;

and prints the classes found with their share of the pixels. Where a name is taken by
another image of the run (two folders' a.jpg, a real input a-2.png) or is one of the
inputs (`--out` the input folder), IMG-2, IMG-3, ... is used instead: no result
replaces another, and nothing replaces an input.

Scale: by default an image whose longer side exceeds 500 pixels is shrunk to 500 (aspect
kept, Lanczos) before the net and the labels are scaled back to its own size (nearest
neighbour): the nets were trained on PASCAL images, at most 500 px a side, so that is
the scale their receptive fields fit (NYUDv2 models: 640, SIFT Flow: 256; TRAINED_SIDE),
and it keeps one pass at about 1.7 s and 1.3 GB on CPU where a 1920 x 1080 pass takes
31 s and 4.6 GB and a photo over about 3.7 Mpx cannot run at all (FCN-8s's conv1_2
buffer would pass Caffe's 2^31 - 1 values per blob). `--max-side N` picks another scale; one too large for the net is a one-line
error naming the largest that fits. `--full-res` keeps the photo's size and runs the
net on overlapping `--tile` x `--tile` windows (default 500, stride ceil(2/3 tile),
logits averaged where they overlap: sliding_logits, which PSPNet's evaluation uses too).

Preprocessing is exactly the data layers': RGB -> BGR, float32, minus the dataset's
mean, C x H x W; the net's input is reshaped to each image's size (any size works: the
100-pixel padding and the crop layers align the output). Image modes: grayscale,
palette, CMYK and 16-bit images become 8-bit RGB (16-bit values are divided by 257);
images with transparency are composited on white first (transparent areas read as
empty paper rather than as black objects).

PSPNet models (pspnet50-ade20k, pspnet101-voc2012, pspnet101-cityscapes) segment each
image with the release's evaluation instead (release_logits: resized so the longer side
is 512, or 2048 for Cityscapes, crop x crop windows at stride ceil(2/3 crop), flipped
windows added; --multi-scale sums the six scales 0.5 .. 1.75), PSPNet's mean, and write
in the dataset's palette with its class names (ADE20K's 150, Cityscapes' 19, VOC's 21).
Their default weights are the release's converted for this Caffe (python weights.py
MODEL && python surgery.py pspnet-convert --model MODEL); --max-side, --full-res and
--tile do not apply.

Only models that take one RGB image are supported: VOC, PASCAL-Context, SIFT Flow (its
semantic head, `score_sem`) and NYUDv2 color. A bad image (missing, not an image,
truncated, empty, too large for the chosen scale) or an output that cannot be written
completely (a full disk) gets a one-line error naming it; the other images are still
done and the exit status is 1 at the end. A --classes file must name as many classes as
the net has.
"""
import argparse
import itertools
import os
import sys

import numpy as np
from PIL import Image, ImageOps

import layers
import models
import weights
from cli import gpu_flag, progress_bar, run_cli
from guard import set_mode
from layers import label_palette, save_label_png
from netinit import LIMIT, check_net, read_net_param
from netload import open_net
from project import REPO, InputError
from safewrite import atomic_write

# The longer side of the images each dataset's nets were trained on, the default scale:
# PASCAL VOC and PASCAL-Context images are at most 500 px a side, NYUDv2's 640 x 480,
# SIFT Flow's 256 x 256.
TRAINED_SIDE = {'voc': 500, 'pascalcontext': 500, 'nyud': 640, 'siftflow': 256}
TILE = 500  # --full-res window side

IMAGE_EXTS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.tif', '.tiff', '.webp', '.ppm',
              '.pgm', '.pnm', '.jpe')

def model_info(model):
    """(dataset, score blob) of a model of the registry (models.py) that takes one RGB
    image, e.g. ('voc', 'score') or ('siftflow', 'score_sem'); InputError for any other."""
    spec = models.get(model)
    inputs = tuple(getattr(spec, 'inputs', ()))
    if inputs != ('color',):
        raise InputError('%s: takes %s input; infer.py only runs models with one RGB input '
                         '(voc-*, pascalcontext-*, siftflow-*, nyud-fcn32s-color)'
                         % (model, ' + '.join(inputs) or 'a classifier\'s'))
    return spec.dataset, spec.outputs[0].score


def dataset_info(dataset):
    """(mean, class names) of a dataset of the registry: mean a float32 array of 3,
    (B, G, R), subtracted after the switch to BGR (NYUD: the color images' mean); names
    in output order (SIFT Flow: the semantic classes)."""
    d = models.dataset(dataset)
    return np.asarray(d.mean, np.float32).reshape(3), list(d.classes)


def load_image(path):
    """Open `path` as H x W x 3 uint8 RGB at its displayed size (EXIF orientation applied).

    Grayscale / palette / CMYK convert to RGB; 16-bit and 32-bit integer or float
    images are scaled to 8 bits (16-bit: value / 257); transparency is composited on
    white. Raises InputError naming `path` for anything that is not a readable image."""
    path = str(path)
    if not os.path.exists(path):
        raise InputError('%s: no such file' % path)
    if not os.path.isfile(path):
        raise InputError('%s: not a file' % path)
    if os.path.getsize(path) == 0:
        raise InputError('%s: empty file' % path)
    try:
        with Image.open(path) as im:
            im.load()
            im = ImageOps.exif_transpose(im) or im
            return _to_rgb(im)
    except Image.UnidentifiedImageError:
        raise InputError('%s: not an image (or a format Pillow cannot read)' % path)
    except Image.DecompressionBombError as e:
        raise InputError('%s: image too large (%s)' % (path, e))
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError,
            TypeError, MemoryError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if 'truncated' in reason.lower() or isinstance(e, EOFError):
            reason = 'truncated or corrupt image (%s)' % reason
        raise InputError('%s: cannot read image: %s' % (path, reason))


def _to_rgb(im):
    """PIL image of any mode -> H x W x 3 uint8 RGB array (see load_image)."""
    if im.mode in ('I;16', 'I;16L', 'I;16B', 'I;16N', 'I', 'F'):
        a = np.asarray(im).astype(np.float64)
        if im.mode.startswith('I;16'):
            a = a / 257.0
        else:  # 32-bit int or float holding 8-bit, 16-bit or [0, 1] data
            top = a.max() if a.size else 0
            if im.mode == 'F' and top <= 1.0:
                a = a * 255.0
            elif 255 < top <= 65535:
                a = a / 257.0
            elif top > 65535:
                a = a * (255.0 / top)
        gray = np.clip(np.rint(a), 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    has_alpha = im.mode in ('RGBA', 'LA', 'La', 'RGBa', 'PA') or \
        (im.mode in ('P', 'L', 'RGB') and 'transparency' in im.info)
    if has_alpha:
        rgba = im.convert('RGBA')
        white = Image.new('RGBA', rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(white, rgba)
    rgb = np.asarray(im.convert('RGB'), dtype=np.uint8)
    return np.ascontiguousarray(rgb)


def preprocess(image, mean):
    """H x W x 3 uint8 RGB -> 3 x H x W float32, BGR, minus `mean` (B, G, R): the data
    layers' preprocessing."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError('image must be H x W x 3 RGB, got shape %s' % (image.shape,))
    in_ = image.astype(np.float32)[:, :, ::-1] - np.asarray(mean, np.float32).reshape(1, 1, 3)
    return np.ascontiguousarray(in_.transpose((2, 0, 1)))


def forward_logits(net, image, blob=None):
    """K x H x W float32 class scores of one C x H x W float32 input (already
    preprocessed): the net's input is reshaped to 1 x C x H x W, blob `blob` (default
    score_blob) must come out at the input's size (FCN crops it there)."""
    name = net.inputs[0]
    net.blobs[name].reshape(1, *image.shape)
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


def _window_starts(size, crop, stride):
    """Window offsets along one axis: every `stride`, the last flush with the end."""
    n = -(-max(size - crop, 0) // stride) + 1
    return [min(i * stride, size - crop) for i in range(n)]


def sliding_logits(net, image, crop, stride=None, flip=False, blob=None):
    """K x H x W float32 class scores of `image` (C x H x W float32, already mean
    subtracted) from overlapping crop x crop windows, so any image size runs in the
    memory of one window.

    The image is padded bottom/right with zeros (the mean) to at least `crop`; windows
    start every `stride` pixels (default ceil(2/3 crop)), the last one flush with the
    padded edge; the net's input is reshaped to 1 x C x crop_h x crop_w; every pixel gets
    the mean of the logits of the windows covering it. flip: each window's logits plus
    those of its horizontal mirror (mirrored back), summed before that mean, as PSPNet's
    evaluation does. crop, stride: int or (h, w); blob: the score blob (see
    score_blob)."""
    c, h, w = image.shape
    ch, cw = _pair(crop)
    sh, sw = _pair(stride) if stride is not None else (-(-2 * ch // 3), -(-2 * cw // 3))
    if min(ch, cw, sh, sw) < 1:
        raise ValueError('crop %s and stride %s must be positive' % ((ch, cw), (sh, sw)))
    ph, pw = max(h, ch), max(w, cw)
    padded = np.zeros((c, ph, pw), np.float32)
    padded[:, :h, :w] = image
    total, count = None, np.zeros((ph, pw), np.float32)
    for y in _window_starts(ph, ch, sh):
        for x in _window_starts(pw, cw, sw):
            window = padded[:, y:y + ch, x:x + cw]
            logits = forward_logits(net, window, blob)
            if flip:
                logits += forward_logits(net, np.ascontiguousarray(window[:, :, ::-1]), blob)[:, :, ::-1]
            if total is None:
                total = np.zeros((logits.shape[0], ph, pw), np.float32)
            total[:, y:y + ch, x:x + cw] += logits
            count[y:y + ch, x:x + cw] += 1
    return total[:, :h, :w] / count[:h, :w]


def segment(net, image, mean, blob=None, tile=None):
    """Labels of one image: H x W uint8 class indices (argmax of the score blob).

    net: a caffe.Net with one input (1 x 3 x h x w, reshaped here); image: H x W x 3
    uint8, RGB; mean: 3 floats, (B, G, R) order, subtracted after the RGB -> BGR swap;
    blob: the score blob, default 'score' (or 'score_sem' for SIFT Flow); tile: None for
    one forward pass at the image's size, else images larger than tile x tile go through
    sliding_logits in tile x tile windows."""
    in_ = preprocess(image, mean)
    if tile and max(in_.shape[1:]) > tile:
        score = sliding_logits(net, in_, tile, blob=blob)
    else:
        score = forward_logits(net, in_, blob)
    return score.argmax(axis=0).astype(np.uint8)


# --- PSPNet's evaluation, as its release scores an image ----------------------------------
#
# The PSPNet release (Zhao et al., CVPR 2017; its evaluation is a MATLAB script) scores
# one image thus: for each scale s, resize it (bilinear) so its longer side is
# base_size * s; slide crop x crop windows over it (mean padding bottom/right, stride
# ceil(2/3 crop), overlapping logits averaged, each window's horizontally flipped logits
# added: sliding_logits); resize those logits back to the label's size and sum them over
# the scales; the prediction is their argmax. Single scale is s = 1; multi-scale the six
# PSP_SCALES. Base sizes: 512 for ADE20K and VOC 2012, 2048 for Cityscapes.
PSP_BASE_SIZE = {'ade20k': 512, 'voc2012': 512, 'cityscapes': 2048}
PSP_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)


def release_logits(net, image, mean, base_size, crop, scales=(1.0,), flip=True, size=None,
                   blob=None):
    """K x H x W float32: the class scores of PSPNet's evaluation of one image, summed
    over `scales` (see above).

    net: a deploy net whose input takes crop x crop (reshaped per window); image: H x W
    x 3 RGB (uint8 or float); mean: (B, G, R), subtracted after the switch to BGR;
    base_size: the longer side at scale 1; size: (H, W) of the result, default the
    image's (the label's); blob: the score blob (default score_blob)."""
    out = tuple(size or image.shape[:2])
    image = np.asarray(image, np.float32)
    total = None
    for s in scales:
        scaled = layers.resize_bilinear(image, layers.scaled_size(image.shape, base_size * s))
        logits = sliding_logits(net, preprocess(scaled, mean), crop, flip=flip, blob=blob)
        back = layers.resize_bilinear(logits.transpose((1, 2, 0)), out)
        total = back if total is None else total + back
    return np.ascontiguousarray(total.transpose((2, 0, 1)))


def score_blob(net):
    """The class-score blob: 'score', else 'score_sem' (SIFT Flow), else the first output."""
    for name in ('score', 'score_sem'):
        if name in net.blobs:
            return name
    return net.outputs[0]


def check_rgb_net(net, prototxt):
    """InputError unless `net` has exactly one 4-D input with 3 channels."""
    if len(net.inputs) != 1:
        raise InputError('%s: the net has %d inputs (%s); infer.py needs one RGB input'
                         % (prototxt, len(net.inputs), ', '.join(net.inputs)))
    shape = net.blobs[net.inputs[0]].data.shape
    if len(shape) != 4 or shape[1] != 3:
        raise InputError('%s: input %r has shape %s; infer.py needs 1 x 3 x H x W'
                         % (prototxt, net.inputs[0], shape))


def overlay(image, label, background=None, alpha=0.5, palette=None):
    """H x W x 3 uint8: the class colours (the dataset's `palette`, K x 3 RGB, over the VOC
    palette; see layers.label_palette) blended onto `image` with weight `alpha`; pixels
    of class `background` (and void, 255) keep the image's colours."""
    colours = label_palette(palette)[label].astype(np.float32)
    out = image.astype(np.float32) * (1 - alpha) + colours * alpha
    keep = label == 255
    if background is not None:
        keep |= label == background
    out[keep] = image[keep]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def resize_for_net(image, max_side):
    """`image` (H x W x 3 uint8) scaled down so its longer side is at most `max_side`
    (aspect kept, Lanczos); unchanged when already small enough or max_side is None."""
    if not max_side:
        return image
    h, w = image.shape[:2]
    if max(h, w) <= max_side:
        return image
    s = float(max_side) / max(h, w)
    size = (max(1, int(round(w * s))), max(1, int(round(h * s))))
    return np.asarray(Image.fromarray(image).resize(size, Image.LANCZOS))


def resize_label(label, size):
    """H x W uint8 label map resized to size=(height, width) with nearest neighbour."""
    if label.shape == tuple(size):
        return label
    return np.asarray(Image.fromarray(label).resize((size[1], size[0]), Image.NEAREST))


def list_images(args):
    """Expand the command line: files as given, directories to their images (sorted,
    not recursive). Returns (paths, errors) where errors are one-line messages."""
    paths, errors = [], []
    for arg in args:
        if os.path.isdir(arg):
            found = sorted(os.path.join(arg, n) for n in os.listdir(arg)
                           if n.lower().endswith(IMAGE_EXTS) and not n.startswith('.')
                           and os.path.isfile(os.path.join(arg, n)))
            if not found:
                errors.append('%s: no images in this folder (%s)' % (arg, ' '.join(IMAGE_EXTS)))
            paths += found
        else:
            paths.append(arg)
    unique, seen = [], set()  # the same file named twice is done once
    for path in paths:
        if os.path.realpath(path) not in seen:
            seen.add(os.path.realpath(path))
            unique.append(path)
    return unique, errors


def shares_line(label, names):
    """'person 41.2%, background 38.0%, ...': classes present, largest share first."""
    counts = np.bincount(label.ravel(), minlength=256)
    total = float(label.size)
    parts = []
    for k in np.argsort(-counts, kind='stable'):
        if counts[k] == 0:
            break
        name = names[k] if k < len(names) else ('void' if k == 255 else 'class %d' % k)
        parts.append('%s %.1f%%' % (name, 100.0 * counts[k] / total))
    return ', '.join(parts)


def read_classes(path):
    """Class names from a text file, one per line: line k names class k (UTF-8, a byte
    order mark dropped, blank lines at the end ignored). A blank line before the last
    name is an InputError naming the file and the line: skipping it would shift every
    later name onto the wrong class."""
    try:
        with open(path, encoding='utf-8-sig') as f:
            lines = [line.strip() for line in f.read().splitlines()]
    except UnicodeDecodeError:
        raise InputError('%s: not a text file of class names' % path)
    except OSError as e:
        raise InputError('%s: cannot read the class names (%s)' % (path, e.strerror or e))
    while lines and not lines[-1]:
        lines.pop()
    if not lines:
        raise InputError('%s: no class names in it (expected one per line)' % path)
    if '' in lines:
        raise InputError('%s line %d: blank, but line k names class k: remove it, or name the '
                         'class' % (path, lines.index('') + 1))
    return lines


def check_classes(names, net, blob, source):
    """InputError unless there is one class name per channel of the score blob."""
    channels = net.blobs[blob].data.shape[1]
    if len(names) != channels:
        raise InputError('%s: %d class names, but the net\'s %r has %d classes'
                         % (source, len(names), blob, channels))


def fit_error(param, deploy, input_name, size):
    """None when a 1 x 3 x H x W input (size = (H, W)) keeps every blob of the net under
    Caffe's limit, else the reason (one line)."""
    try:
        check_net(param, deploy, 'test', {input_name: (1, 3) + tuple(size)}, probe=False)
    except InputError as e:
        return str(e)
    return None


def largest_side(param, deploy, input_name, size):
    """The largest long side (pixels) an image of size (H, W) can be scaled to and still
    fit the net (see fit_error); bisection, as the blob sizes grow with the side."""
    lo, hi = 1, max(size)
    scaled = lambda side: tuple(max(1, int(round(d * float(side) / max(size)))) for d in size)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fit_error(param, deploy, input_name, scaled(mid)) is None else (lo, mid - 1)
    return lo


def output_names(paths, out):
    """(label PNG, overlay JPEG) paths in `out` for each of `paths`: IMG.png and
    IMG-overlay.jpg, or IMG-2, IMG-3, ... where a name is an input of the run or already
    an output of it (two folders' a.png, or a real input called a-2.png), so one result
    never replaces another or an input."""
    # compared without case: A.png and a.png are one file on macOS and Windows
    inputs = {os.path.realpath(p).lower() for p in paths}
    taken, names = set(), []
    for path in paths:
        stem = os.path.splitext(os.path.basename(path))[0]
        for k in itertools.count(1):
            name = stem if k == 1 else '%s-%d' % (stem, k)
            pair = (os.path.join(out, name + '.png'), os.path.join(out, name + '-overlay.jpg'))
            real = {os.path.realpath(p).lower() for p in pair}
            if not real & (inputs | taken):
                break
        taken |= real
        names.append(pair)
    return names


def parse_args(argv):
    parser = argparse.ArgumentParser(
        parents=[gpu_flag()],
        description='Segment images with an FCN: writes OUT/<name>.png (class indices, '
                    'palette PNG) and OUT/<name>-overlay.jpg.')
    parser.add_argument('images', nargs='+', metavar='IMAGE_OR_DIR',
                        help='image files and/or folders of images')
    parser.add_argument('--model', default='voc-fcn8s',
                        help='model id or folder (default: voc-fcn8s; see models.py); sets '
                             'the net, the mean and the class names')
    parser.add_argument('--weights', help="caffemodel (default: the model's released "
                                          'weights, fetched on first use; for a model never '
                                          'released, its latest good snapshot)')
    parser.add_argument('--no-download', action='store_true',
                        help='never fetch the released weights; an error when they are missing')
    parser.add_argument('--allow-partial', action='store_true',
                        help='accept weights that cover only some layers of the net (the '
                             'rest keep their random fill); off: such weights are an error')
    parser.add_argument('--deploy', help="net prototxt (default: the model's deploy.prototxt)")
    parser.add_argument('--classes', metavar='FILE',
                        help="class names, one per line in output order (default: the "
                             "model's dataset's); for nets trained on your own data")
    parser.add_argument('--out', default='fcn-out',
                        help='output folder (default: fcn-out in the current directory)')
    parser.add_argument('--max-side', type=int, default=None, metavar='N',
                        help='shrink images whose longer side exceeds N pixels before the '
                             'net (default: the scale the model was trained at, 500 for VOC '
                             'and PASCAL-Context, 640 NYUDv2, 256 SIFT Flow); labels are '
                             'scaled back to the full size')
    parser.add_argument('--full-res', action='store_true',
                        help='segment at the photo\'s own size, in overlapping --tile '
                             'windows (averaged logits) instead of shrinking it')
    parser.add_argument('--tile', type=int, default=TILE, metavar='N',
                        help='window side for --full-res (default %d)' % TILE)
    parser.add_argument('--multi-scale', action='store_true',
                        help='PSPNet models: sum the release\'s six scales (%s) instead of '
                             'scale 1 only' % ' '.join('%g' % x for x in PSP_SCALES))
    args = parser.parse_args(argv)
    if (args.max_side is not None and args.max_side < 1) or args.tile < 1:
        parser.error('--max-side and --tile must be positive numbers of pixels')
    return args


def open_pspnet(args, model):
    """open_model for PSPNet `model` (net.PSPNET): its deploy net in pspnet/<model>/, the
    converted release weights beside it (surgery.py pspnet-convert) unless --weights,
    PSPNet's mean, the dataset's class names; the last item is the release's protocol
    (base size, crop = the net's input, scales, the dataset's palette)."""
    dataset = models.get(model).dataset
    folder = models.model_dir(model)
    deploy = args.deploy or os.path.join(folder, 'deploy.prototxt')
    if not os.path.isfile(deploy):
        raise InputError('%s: net prototxt not found; write it with `python net.py`' % deploy)
    path = args.weights or weights.pspnet_stock_path(folder, model)
    if not os.path.isfile(path):
        raise InputError('%s: weights not found; get and convert the released ones with '
                         '`python weights.py %s && python surgery.py pspnet-convert --model %s` '
                         '(or pass --weights FILE)' % (path, model, model))
    info = layers.DATASETS[dataset]
    names = read_classes(args.classes) if args.classes else list(info['classes'])
    set_mode(args.gpu)
    net = open_net(deploy, 'test', path, partial=args.allow_partial)
    check_rgb_net(net, deploy)
    blob = score_blob(net)
    check_classes(names, net, blob, args.classes or '%s (the %s classes; pass --classes FILE)'
                  % (deploy, dataset))
    background = names.index('background') if 'background' in names else None
    protocol = dict(base_size=PSP_BASE_SIZE[dataset], crop=tuple(net.blobs[net.inputs[0]].shape[2:]),
                    scales=PSP_SCALES if args.multi_scale else (1.0,),
                    palette=info.get('palette'))
    return (net, read_net_param(deploy), deploy, blob,
            np.asarray(layers.PSP_MEAN, np.float32), names, background, protocol)


def open_model(args):
    """(net, its NetParameter, deploy path, score blob, mean, class names, background
    index or None, PSPNet's protocol or None) for the command line, every input checked."""
    if models.pspnet(args.model):
        return open_pspnet(args, models.pspnet(args.model).name)
    if args.multi_scale:
        raise InputError('--multi-scale is for PSPNet models (%s)' % ', '.join(models.names('pspnet')))
    model = models.get(args.model).name  # an id, or a model's folder ('voc-fcn8s/')
    dataset, blob = model_info(model)
    mean, names = dataset_info(dataset)
    if args.max_side is None:
        args.max_side = TRAINED_SIDE.get(dataset, TILE)
    deploy = args.deploy or os.path.join(models.model_dir(model), 'deploy.prototxt')
    if not os.path.isfile(deploy):
        raise InputError('%s: net prototxt not found; write it with `python net.py %s`'
                         % (deploy, model))
    names = read_classes(args.classes) if args.classes else names
    path = args.weights or weights.default_weights(models.get(model), not args.no_download, args.allow_partial)
    set_mode(args.gpu)
    net = open_net(deploy, 'test', path, partial=args.allow_partial)
    check_rgb_net(net, deploy)
    if blob not in net.blobs:
        raise InputError('%s: the net has no blob %r' % (deploy, blob))
    check_classes(names, net, blob, args.classes or '%s (the %s classes; pass --classes FILE)'
                  % (deploy, dataset))
    background = names.index('background') if 'background' in names else None
    return net, read_net_param(deploy), deploy, blob, mean, names, background, None


def segment_file(path, names, model, args, paths):
    """Segment image `path` and write its label PNG and overlay JPEG (`names`), neither
    replacing an input; returns (image, label). InputError / OSError name the file."""
    net, param, deploy, blob, mean, _, background, protocol = model
    image = load_image(path)
    if protocol:
        return segment_pspnet(path, image, names, model, paths)
    small = image if args.full_res else resize_for_net(image, args.max_side)
    tiled = args.full_res and max(image.shape[:2]) > args.tile  # windows checked in main
    reason = None if tiled else fit_error(param, deploy, net.inputs[0], small.shape[:2])
    if reason:
        hint = ''
        if LIMIT in reason:  # too large: say which scale fits
            hint = ('; the largest that fits is --max-side %d, or use --full-res (tiled)'
                    % largest_side(param, deploy, net.inputs[0], image.shape[:2]))
        raise InputError('%s: %dx%d cannot go through this net in one pass (%s)%s'
                         % (path, small.shape[1], small.shape[0], reason, hint))
    try:
        label = segment(net, small, mean, blob, args.tile if args.full_res else None)
    except ValueError as e:
        raise InputError('%s: %s' % (path, e))
    except MemoryError:
        raise InputError('%s: out of memory at %dx%d; use a smaller --max-side or --tile'
                         % (path, small.shape[1], small.shape[0]))
    label = resize_label(label, image.shape[:2])
    png, jpg = names
    save_label_png(png, label, protect=paths)
    with atomic_write(jpg, protect=paths) as f:
        Image.fromarray(overlay(image, label, background)).save(f, format='JPEG', quality=90)
    return image, label


def segment_pspnet(path, image, names, model, paths):
    """segment_file for a PSPNet: the release's evaluation of the whole image
    (release_logits: resized to the base size, sliding crops, flipped windows added),
    written in the dataset's palette."""
    net, _, _, blob, mean, _, background, protocol = model
    try:
        logits = release_logits(net, image, mean, protocol['base_size'], protocol['crop'],
                                protocol['scales'], blob=blob)
    except MemoryError:
        raise InputError('%s: out of memory at %dx%d' % (path, image.shape[1], image.shape[0]))
    label = logits.argmax(0).astype(np.uint8)
    png, jpg = names
    save_label_png(png, label, protect=paths, palette=protocol['palette'])
    with atomic_write(jpg, protect=paths) as f:
        Image.fromarray(overlay(image, label, background, palette=protocol['palette'])).save(
            f, format='JPEG', quality=90)
    return image, label


def main(argv=None):
    args = parse_args(argv)
    model = open_model(args)
    net, param, deploy = model[:3]
    if args.full_res:
        reason = fit_error(param, deploy, net.inputs[0], (args.tile, args.tile))
        if reason:
            raise InputError('--tile %d: too large for this net (%s); the largest that fits is '
                             '--tile %d' % (args.tile, reason, largest_side(
                                 param, deploy, net.inputs[0], (args.tile, args.tile))))
    paths, errors = list_images(args.images)
    for message in errors:
        print('error: %s' % message, file=sys.stderr)
    try:
        os.makedirs(args.out, exist_ok=True)
    except OSError as e:
        raise InputError('--out %s: cannot create the output folder (%s)'
                         % (args.out, e.strerror or e))
    failed = 0
    bar = progress_bar(len(paths), 'segmenting', enabled=sys.stderr.isatty() and len(paths) > 1)
    for path, names in zip(paths, output_names(paths, args.out)):
        try:
            image, label = segment_file(path, names, model, args, paths)
        except (InputError, OSError) as e:
            message = str(e) if path in str(e) else '%s: %s' % (path, e)
            bar.write('error: %s' % message, file=sys.stderr)
            failed += 1
        else:
            bar.write('%s (%dx%d) -> %s: %s' % (path, image.shape[1], image.shape[0], names[0],
                                                shares_line(label, model[5])), file=sys.stdout)
        bar.update(1)
    bar.close()
    if len(paths) > 1 or failed or errors:
        print('%d of %d images segmented into %s%s'
              % (len(paths) - failed, len(paths), args.out,
                 '; %d error%s' % (failed + len(errors), 's' * (failed + len(errors) > 1))
                 if failed or errors else ''))
    return 1 if failed or errors else 0


if __name__ == '__main__':
    run_cli(main)
