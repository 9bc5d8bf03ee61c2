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
averaged where they overlap: predict.sliding_logits).

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
--max-side, --full-res and --tile do not apply.

Only models that take one RGB image are supported: VOC, PASCAL-Context, SIFT Flow (its
semantic head, `score_sem`) and NYUDv2 color. A bad image (missing, not an image,
truncated, empty, too large for the chosen scale) or an output that cannot be written
completely (a full disk) gets a one-line error naming it; the other images are still
done and the exit status is 1 at the end. A --classes file must name as many classes as
the net has.
"""
import argparse
import dataclasses
import itertools
import os
import sys

import numpy as np
from PIL import Image, ImageOps

import layers
import models
import predict
import weights
from cli import gpu_flag, progress_bar, run_cli
from guard import set_mode
from layers import label_palette, save_label_png
from netinit import check_net, read_net_param
from netload import open_net
from project import InputError, TooLargeError
from safewrite import atomic_write

TILE = 500  # --full-res window side, and --max-side where the spec gives no side

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
                        help='models evaluated at several scales (PSPNet): average the '
                             'scales of their evaluation (PSPNet: %s) instead of scale 1 only'
                             % ' '.join('%g' % x for x in models.PSP_SCALES))
    args = parser.parse_args(argv)
    if (args.max_side is not None and args.max_side < 1) or args.tile < 1:
        parser.error('--max-side and --tile must be positive numbers of pixels')
    return args


@dataclasses.dataclass
class OpenModel:
    """A model opened for the command line: the net, its NetParameter and prototxt, the
    score blob, the input preprocessing and evaluation (the spec's, scales chosen by
    --multi-scale), class names, the background class (None: none), the palette
    (K x 3 RGB colours, None: the VOC colours)."""
    net: object
    param: object
    deploy: str
    blob: str
    preprocess: models.Preprocess
    evaluation: models.Protocol
    names: list
    background: object
    palette: object


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
    net = open_net(deploy, 'test', path, partial=args.allow_partial)
    check_rgb_net(net, deploy)
    if blob not in net.blobs:
        raise InputError('%s: the net has no blob %r' % (deploy, blob))
    check_classes(names, net, blob, args.classes or '%s (the %s classes; pass --classes FILE)'
                  % (deploy, dataset))
    background = names.index('background') if 'background' in names else None
    return OpenModel(net, read_net_param(deploy), deploy, blob, spec.preprocess, protocol,
                     names, background, layers.PALETTES.get(spec.palette))


def segment_file(path, names, model, args, paths):
    """Segment image `path` and write its label PNG and overlay JPEG (`names`), neither
    replacing an input; returns (image, label). InputError / OSError name the file.

    Whole-image models: shrunk to --max-side (Lanczos) unless --full-res (tiled), one
    pass, the labels scaled back (nearest); sliding-window models: the protocol on the
    image as it is (predict.py), the labels at its size."""
    net, param, deploy = model.net, model.param, model.deploy
    image = load_image(path)
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
                               tile=args.tile if args.full_res else None)
    except ValueError as e:
        raise InputError('%s: %s' % (path, e))
    except MemoryError:
        raise InputError('%s: out of memory at %dx%d; use a smaller --max-side or --tile'
                         % (path, small.shape[1], small.shape[0]))
    label = resize_label(label, image.shape[:2])
    png, jpg = names
    save_label_png(png, label, protect=paths, palette=model.palette)
    with atomic_write(jpg, protect=paths) as f:
        Image.fromarray(overlay(image, label, model.background, palette=model.palette)).save(
            f, format='JPEG', quality=90)
    return image, label


def main(argv=None):
    args = parse_args(argv)
    model = open_model(args)
    net, param, deploy = model.net, model.param, model.deploy
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
