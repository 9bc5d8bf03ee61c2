"""Segment your own images with a trained FCN.

    python infer.py photo.jpg                          # VOC FCN-8s, released weights
    python infer.py photos/ --out seg/                 # every image in a folder
    python infer.py photo.jpg --full-res               # at the photo's own size, tiled
    python infer.py photo.jpg --model pascalcontext-fcn8s --max-side 800 --gpu 0
    python infer.py photo.jpg --model voc-fcn32s --weights voc-fcn32s/snapshot/train_iter_100000.caffemodel
    python infer.py photo.jpg --model pspnet101-voc2012        # PSPNet, the release's protocol
    python infer.py street.png --model pspnet101-cityscapes --multi-scale
    python infer.py photos/ --out seg/ --ray HEAD:6379    # on a Ray cluster (docs/cluster.md)

The model's released weights are fetched on first use, as torch.hub does, into the
place `python weights.py MODEL` puts them (size and checksum checked when the record
has them); offline, the error names the URL and the path to put the file at.
`--no-download` never fetches. Weights that cover only part of the net (another
model's, a file cut short) are an error unless `--allow-partial`.

For every image IMG.ext this writes, atomically, into --out (default: `fcn-out/` in the
current directory, the place a user running the command looks for its results):

- `IMG.png`: the predicted class index of every pixel (0 .. C-1) as a palette PNG in the
  PASCAL VOC colours, at the image's displayed size (EXIF orientation applied); a net
  of more than 256 classes (more than a palette holds) gets a 16-bit grayscale PNG of
  the indices instead, never indices cut to 8 bits;
- `IMG-overlay.jpg`: the class colours blended half-and-half onto the image; pixels of
  class `background` (VOC, PASCAL-Context) are left as they are;

and prints the classes found with their share of the pixels. Where a name is taken by
another image of the run (two folders' a.jpg, a real input a-2.png) or is one of the
inputs (`--out` the input folder), IMG-2, IMG-3, ... is used instead: no result
replaces another, and nothing replaces an input.

Scale: each model is run the way its registry entry says (spec.evaluation, run by
predict.py; docs/evaluation.md). The FCNs see the whole image in one pass: by default an
image whose longer side exceeds the side the model was trained at (500 pixels for
PASCAL VOC and PASCAL-Context, 640 NYUDv2, 256 SIFT Flow) is shrunk to it (aspect kept,
Lanczos) and the labels are scaled back to its own size (nearest neighbour): that is the
scale their receptive fields fit, and it keeps one pass at about 1.7 s and 1.3 GB on
CPU where a 1920 x 1080 pass takes 31 s and 4.6 GB and a photo over about 3.7 Mpx cannot
run at all (FCN-8s's conv1_2 buffer would pass Caffe's 2^31 - 1 values per blob).
`--max-side N` picks another scale; one too large for the net is a one-line error naming
the largest that fits. `--full-res` keeps the photo's size and runs the net on
overlapping `--tile` x `--tile` windows (default 500, stride ceil(2/3 tile), logits
averaged where they overlap: predict.sliding_logits), kept a band of rows at a time
(predict.tiled_labels: memory classes x tile x width, not classes x height x width); a
tile below the net's coarsest stride (32 for FCN) or one giving an image more than 10,000
windows is refused, and a tiling of many windows shows their progress.

Size. Any size the machine's memory holds: before an image is decoded, the size its
header claims is checked against the memory available (about 40 bytes a pixel besides
the net, plus the --full-res band or, for PSPNet, its class scores at full size:
memory_need); a larger one is a one-line error naming the need and what is available.
This is the project's bound in place of Pillow's "decompression bomb" limit (a warning
from 89 Mpx, a refusal from 179 Mpx on any machine), which infer.py turns off. An
image wider or taller than JPEG's 65,500 pixels gets its overlay as IMG-overlay.png.

Preprocessing is exactly the data layers': RGB -> BGR, float32, minus the dataset's
mean, C x H x W; the net's input is reshaped to each image's size (any size works: the
100-pixel padding and the crop layers align the output). Image modes: grayscale,
palette, CMYK and 16-bit images become 8-bit RGB (16-bit values are divided by 257);
images with transparency are composited on white first (transparent areas read as
empty paper rather than as black objects).

PSPNet models (pspnet50-ade20k, pspnet101-voc2012, pspnet101-cityscapes) are evaluated
in sliding windows, exactly as the release's MATLAB evaluation does (predict.py: longer
side 513, or 2049 for Cityscapes, crop x crop windows with their mirror images,
probabilities averaged; --multi-scale averages the six scales 0.5 .. 1.75), with
PSPNet's mean, and written in the dataset's palette with its class names (ADE20K's 150,
Cityscapes' 19, VOC's 21). Their default weights are the release's converted for this
Caffe (python weights.py MODEL && python surgery.py pspnet-convert --model MODEL);
--max-side, --full-res and --tile do not apply and are refused.

Only models that take one RGB image are supported: VOC, PASCAL-Context, SIFT Flow (its
semantic head, `score_sem`) and NYUDv2 color. A bad image (missing, not an image,
truncated, empty, too large for the chosen scale) or an output that cannot be written
completely (a full disk) gets a one-line error naming it; the other images are still
done and the exit status is 1 at the end. --out is checked writable before the model is
opened. A --classes file must name as many classes as the net has. A net whose
parameters fix its input size (an InnerProduct layer) takes only that size: another is
a one-line error for that image (netinit.check_input), never Caffe's abort.
"""
import argparse
import contextlib
import dataclasses
import itertools
import os
import sys

import numpy as np
from PIL import Image, ImageOps

import cluster
import layers
import models
import predict
import weights
from cli import available_memory, gpu_flag, progress_bar, ray_flags, run_cli
from guard import set_mode
from layers import label_palette, save_label_png
from netinit import check_net, coarsest_stride, read_net_param
from netload import open_net
from project import InputError, TooLargeError
from safewrite import atomic_write, check_writable

TILE = 500  # --full-res window side, and --max-side where the spec gives no side
MAX_WINDOWS = 10000  # --full-res windows per image beyond which the tile is refused as absurd
JPEG_MAX_SIDE = 65500  # libjpeg's largest side: a larger image's overlay is written as PNG
# Peak bytes per image pixel segment_file needs besides the net (see memory_need): the
# decoded image and PIL's copies of it while loading (a 16-bit image is scaled in float64),
# the label at full size, the overlay (blended a band of rows at a time) and its encoder's
# copy. Measured peaks on 25 Mpx photos: 18 (JPEG), 28 (16-bit PNG), 32 (--full-res); with margin:
PIXEL_BYTES = 40

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


@contextlib.contextmanager
def _project_pixel_bound():
    """PIL's decompression-bomb bound off while an image is opened: it warns from 89 Mpx
    and refuses from 179 Mpx whatever the machine. The project's own bound applies instead
    (load_image's `check_size`, from the header, before anything is decoded: infer.py
    refuses an image whose segmentation would not fit the memory available)."""
    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def load_image(path, check_size=None):
    """Open `path` as H x W x 3 uint8 RGB at its displayed size (EXIF orientation applied).

    Grayscale / palette / CMYK convert to RGB; 16-bit and 32-bit integer or float
    images are scaled to 8 bits (16-bit: value / 257); transparency is composited on
    white. check_size(height, width): called with the size the file's header claims
    before any pixel is decoded (PIL opens lazily); it raises InputError (a message
    without the path) for a size the command cannot take. Raises InputError naming
    `path` for anything that is not a readable image: whatever Pillow raises on a broken
    file (OSError, SyntaxError, struct.error from an EXIF tag of the wrong type,
    ValueError, ...) becomes one line, so a batch goes on."""
    path = str(path)
    if not os.path.exists(path):
        raise InputError('%s: no such file' % path)
    if not os.path.isfile(path):
        raise InputError('%s: not a file' % path)
    if os.path.getsize(path) == 0:
        raise InputError('%s: empty file' % path)
    try:
        with _project_pixel_bound(), Image.open(path) as im:
            if check_size:
                check_size(im.size[1], im.size[0])
            im.load()
            im = ImageOps.exif_transpose(im) or im
            return _to_rgb(im)
    except InputError as e:
        raise InputError('%s: %s' % (path, e))
    except Image.UnidentifiedImageError:
        raise InputError('%s: not an image (or a format Pillow cannot read)' % path)
    except MemoryError:
        raise InputError('%s: out of memory decoding it' % path)
    except Exception as e:  # Pillow raises many types on broken files; see the docstring
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


def check_rgb_net(net, prototxt):
    """InputError unless `net` has exactly one 4-D input with 3 channels."""
    if len(net.inputs) != 1:
        raise InputError('%s: the net has %d inputs (%s); infer.py needs one RGB input'
                         % (prototxt, len(net.inputs), ', '.join(net.inputs)))
    shape = net.blobs[net.inputs[0]].data.shape
    if len(shape) != 4 or shape[1] != 3:
        raise InputError('%s: input %r has shape %s; infer.py needs 1 x 3 x H x W'
                         % (prototxt, net.inputs[0], shape))


def overlay(image, label, background=None, alpha=0.5, palette=None, rows=512):
    """H x W x 3 uint8: the class colours (the dataset's `palette`, K x 3 RGB, over the VOC
    palette; see layers.label_palette) blended onto `image` with weight `alpha`; pixels
    of class `background` (and void, 255, in a uint8 label of up to 256 classes) keep the
    image's colours. Blended `rows` rows at a time, so the float temporaries stay small
    whatever the image's size."""
    colours = label_palette(palette, int(label.max()) + 1 if label.size else 0)
    out = np.empty_like(image, dtype=np.uint8)
    for y in range(0, image.shape[0], rows):
        im, lab = image[y:y + rows], label[y:y + rows]
        blend = im.astype(np.float32) * (1 - alpha) + colours[lab].astype(np.float32) * alpha
        keep = lab == 255 if label.dtype == np.uint8 else np.zeros(lab.shape, bool)
        if background is not None:
            keep |= lab == background
        blend[keep] = im[keep]
        out[y:y + rows] = np.clip(np.rint(blend), 0, 255)
    return out


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
    """H x W label map (uint8, or uint16 for more than 256 classes) resized to
    size=(height, width) with nearest neighbour."""
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
    Caffe's limit, else the InputError saying why (TooLargeError: over the limit)."""
    try:
        check_net(param, deploy, 'test', {input_name: (1, 3) + tuple(size)}, probe=False)
    except InputError as e:
        return e
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
    never replaces another or an input. IMG-overlay.png, the overlay of an image too
    large for JPEG (overlay_path), is kept free too."""
    # compared without case: A.png and a.png are one file on macOS and Windows
    inputs = {os.path.realpath(p).lower() for p in paths}
    taken, names = set(), []
    for path in paths:
        stem = os.path.splitext(os.path.basename(path))[0]
        for k in itertools.count(1):
            name = stem if k == 1 else '%s-%d' % (stem, k)
            pair = (os.path.join(out, name + '.png'), os.path.join(out, name + '-overlay.jpg'))
            real = {os.path.realpath(p).lower() for p in pair + (overlay_path(pair[1], JPEG_MAX_SIDE + 1),)}
            if not real & (inputs | taken):
                break
        taken |= real
        names.append(pair)
    return names


def overlay_path(jpg, side):
    """Where the overlay of an image whose longer side is `side` goes: the JPEG name, or
    the same name as PNG beyond JPEG's largest side (libjpeg: 65500 pixels)."""
    return jpg if side <= JPEG_MAX_SIDE else os.path.splitext(jpg)[0] + '.png'


def memory_need(height, width, model, args):
    """Bytes segment_file needs for a height x width image besides the net: PIXEL_BYTES a
    pixel, plus for --full-res the band of summed logits and counts (K + 1) x tile x W
    float32 (predict.tiled_labels) and for sliding-window models (PSPNet) the class
    scores at the image's size, K x H x W float32, three at once (resized, normalised,
    summed over the scales) plus the float64 image resize (24 bytes a pixel)."""
    k, pixels = len(model.names), height * width
    need = pixels * PIXEL_BYTES
    if model.evaluation.windows != 'whole':
        need += pixels * (3 * 4 * k + 24)
    elif args.full_res:
        need += (k + 1) * 4 * min(args.tile, max(height, args.tile)) * max(width, args.tile)
    return need


def image_size_check(model, args):
    """check_size for load_image: refuse, from the header and before any work, an image
    whose segmentation would not fit the memory available now (memory_need) or, with
    --full-res, would take more than MAX_WINDOWS windows."""
    def check(height, width):
        if args.full_res and model.evaluation.windows == 'whole':
            n = windows(height, args.tile) * windows(width, args.tile)
            if n > MAX_WINDOWS:
                raise InputError('%d x %d pixels in --tile %d windows is %d windows (at most %d): '
                                 'use a larger --tile' % (width, height, args.tile, n, MAX_WINDOWS))
        need, free = memory_need(height, width, model, args), available_memory()
        if free is not None and need > free:
            raise InputError('%d x %d pixels (%.0f Mpx) need about %.1f GB to segment with %s%s, '
                             'this machine has %.1f GB available'
                             % (width, height, height * width / 1e6, need / 1e9,
                                '%d classes' % len(model.names),
                                ' in windows' if args.full_res else '', free / 1e9))
    return check


def windows(side, tile):
    """Windows along one side of --full-res tiling (predict.tiled_labels)."""
    return len(predict.window_starts(max(side, tile), tile, predict.release_stride(tile)))


def parse_args(argv):
    parser = argparse.ArgumentParser(
        parents=[gpu_flag(), ray_flags()],
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
    parser.add_argument('--tile', type=int, default=None, metavar='N',
                        help='window side for --full-res (default %d; at least the net\'s '
                             'coarsest stride, 32 for FCN)' % TILE)
    parser.add_argument('--multi-scale', action='store_true',
                        help='models evaluated at several scales (PSPNet): average the '
                             'scales of their evaluation (PSPNet: %s) instead of scale 1 only'
                             % ' '.join('%g' % x for x in models.PSP_SCALES))
    args = parser.parse_args(argv)
    if (args.max_side is not None and args.max_side < 1) or (args.tile is not None and args.tile < 1):
        parser.error('--max-side and --tile must be positive numbers of pixels')
    return args


def check_options(args):
    """Refuse, before any work, options that do not apply to the model and an --out that
    cannot be written: a sliding-window model (PSPNet) runs its own protocol at the
    image's size, so --full-res, --tile and --max-side do not apply to it."""
    spec = models.get(args.model)
    if spec.evaluation.windows != 'whole':
        given = [f for f, v in (('--full-res', args.full_res), ('--tile', args.tile),
                                ('--max-side', args.max_side)) if v]
        if given:
            raise InputError('%s: %s %s not apply: %s is evaluated in sliding windows, its '
                             'release\'s protocol (long side %d, windows of its input size), '
                             'at any image size' % (args.model, ' and '.join(given),
                                                    'does' if len(given) == 1 else 'do',
                                                    spec.name, spec.evaluation.base_size + 1))
    if args.tile is None:
        args.tile = TILE
    check_writable(args.out, '--out', folder=True)


@dataclasses.dataclass
class OpenModel:
    """A model opened for the command line: the net, its NetParameter and prototxt, the
    score blob, the input preprocessing and evaluation (the spec's, scales chosen by
    --multi-scale), class names, the background class (None: none), the palette
    (K x 3 RGB colours, None: the VOC colours), the weights file."""
    net: object
    param: object
    deploy: str
    blob: str
    preprocess: models.Preprocess
    evaluation: models.Protocol
    names: list
    background: object
    palette: object
    weights: str = None


def open_model(args):
    """The OpenModel of the command line, every input checked: the model's deploy net,
    weights (--weights, else the released ones, converted where the release needs it,
    else the latest good snapshot), its spec's preprocessing, evaluation and palette."""
    spec = models.get(args.model)  # an id, or a model's folder ('voc-fcn8s/')
    dataset, blob = model_info(spec.name)
    protocol = spec.evaluation
    if args.multi_scale:
        if not protocol.multi_scales:
            raise InputError('--multi-scale is for models evaluated at several scales (%s)'
                             % ', '.join(n for n in models.names()
                                         if models.get(n).evaluation.multi_scales))
        protocol = predict.with_options(protocol, scales=protocol.multi_scales)
    if args.max_side is None:
        args.max_side = protocol.side or TILE
    deploy = args.deploy or os.path.join(models.model_dir(spec), 'deploy.prototxt')
    if not os.path.isfile(deploy):
        raise InputError('%s: net prototxt not found; write it with `python net.py %s`'
                         % (deploy, spec.name))
    names = read_classes(args.classes) if args.classes else list(spec.data.classes)
    path = args.weights or weights.default_weights(spec, not args.no_download, args.allow_partial)
    set_mode(args.gpu)
    net = open_net(deploy, 'test', path, partial=args.allow_partial, finish=spec.finish,
                   forward_only=True, keep=[o.score for o in spec.outputs])
    check_rgb_net(net, deploy)
    if blob not in net.blobs:
        raise InputError('%s: the net has no blob %r' % (deploy, blob))
    check_classes(names, net, blob, args.classes or '%s (the %s classes; pass --classes FILE)'
                  % (deploy, dataset))
    background = names.index('background') if 'background' in names else None
    return OpenModel(net, read_net_param(deploy), deploy, blob, spec.preprocess, protocol,
                     names, background, layers.PALETTES.get(spec.palette), path)


def segment_image(model, path, args):
    """(image, label) of image file `path` through OpenModel `model`: its H x W x 3 RGB
    pixels and H x W classes (uint8; uint16 past 256 classes). InputError names the file.

    Whole-image models: shrunk to --max-side (Lanczos) unless --full-res (tiled), one
    pass, the labels scaled back (nearest); sliding-window models: the protocol on the
    image as it is (predict.py), the labels at its size."""
    net, param, deploy = model.net, model.param, model.deploy
    image = load_image(path, image_size_check(model, args))
    whole = model.evaluation.windows == 'whole'
    small = image if args.full_res or not whole else resize_for_net(image, args.max_side)
    tiled = args.full_res and max(image.shape[:2]) > args.tile  # windows checked in main
    reason = None if tiled or not whole else fit_error(param, deploy, net.inputs[0], small.shape[:2])
    if reason:
        hint = ''
        if isinstance(reason, TooLargeError):  # say which scale fits
            hint = ('; the largest that fits is --max-side %d, or use --full-res (tiled)'
                    % largest_side(param, deploy, net.inputs[0], image.shape[:2]))
        raise InputError('%s: %dx%d cannot go through this net in one pass (%s)%s'
                         % (path, small.shape[1], small.shape[0], reason, hint))
    try:
        label = predict.labels(net, small, model.evaluation, model.preprocess, model.blob,
                               tile=args.tile if args.full_res else None, progress=True)
    except ValueError as e:
        raise InputError('%s: %s' % (path, e))
    except MemoryError:
        raise InputError('%s: out of memory segmenting %dx%d (about %.1f GB needed besides '
                         'the net)' % (path, small.shape[1], small.shape[0],
                                       memory_need(image.shape[0], image.shape[1], model, args) / 1e9))
    return image, resize_label(label, image.shape[:2])


def write_segmentation(image, label, names, model, paths):
    """Write `label` as its PNG and the overlay on `image` (`names`: a JPEG, or a PNG
    beside it past JPEG's size limit: overlay_path), neither replacing one of the inputs
    `paths`. OSError names the file."""
    png, jpg = names
    save_label_png(png, label, protect=paths, palette=model.palette, num_classes=len(model.names))
    view = overlay_path(jpg, max(image.shape[:2]))
    with atomic_write(view, protect=paths) as f:
        Image.fromarray(overlay(image, label, model.background, palette=model.palette)).save(
            f, format='JPEG' if view == jpg else 'PNG', **({'quality': 90} if view == jpg else {}))


def segment_file(path, names, model, args, paths, label=None):
    """Segment image `path` (segment_image) and write its label PNG and overlay JPEG
    (`names`; write_segmentation); returns (image, label). label: the classes computed
    elsewhere (a cluster.py worker's segment_image), or the error raised there."""
    if isinstance(label, Exception):  # named by the absolute path the worker was given
        raise InputError(str(label).replace(os.path.abspath(path), path))
    if label is None:
        image, label = segment_image(model, path, args)
    else:
        image = load_image(path)
    write_segmentation(image, label, names, model, paths)
    return image, label


def main(argv=None):
    args = parse_args(argv)
    check_options(args)
    model = open_model(args)
    net, param, deploy = model.net, model.param, model.deploy
    if args.full_res:
        stride = coarsest_stride(param)
        if args.tile < stride:
            raise InputError('--tile %d: smaller than the net\'s coarsest stride %d (a window '
                             'would hold less than one cell of its coarsest layer); use --tile '
                             '%d or more' % (args.tile, stride, stride))
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
    outputs = output_names(paths, args.out)
    done = ((i, None) for i in range(len(paths)))  # segmented here, one by one
    if args.ray is not None:  # on the workers: segment_image there, the files written here
        files = dict(weights=model.weights, deploy=deploy, classes=args.classes)
        job = cluster.Job(open_model, (cluster.worker_args(args, files, no_download=True),),
                          segment_image, (args,), files, pick=1, errors=(InputError, OSError))
        done = cluster.imap(args, job, [os.path.abspath(p) for p in paths])
    for i, label in done:  # with --ray, in the order the workers finish
        path, names = paths[i], outputs[i]
        try:
            image, label = segment_file(path, names, model, args, paths, label)
        except (InputError, OSError) as e:
            message = str(e) if path in str(e) else '%s: %s' % (path, e)
            bar.write('error: %s' % message, file=sys.stderr)
            failed += 1
        else:
            bar.write('%s (%dx%d) -> %s: %s' % (path, image.shape[1], image.shape[0], names[0],
                                                shares_line(label, model.names)), file=sys.stdout)
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
