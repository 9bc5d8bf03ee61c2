"""Segment your own images with a trained FCN.

    python infer.py photo.jpg                          # VOC FCN-8s, released weights
    python infer.py photos/ --out seg/                 # every image in a folder
    python infer.py photo.jpg --model pascalcontext-fcn8s --max-side 800 --gpu 0
    python infer.py photo.jpg --model voc-fcn32s --weights voc-fcn32s/snapshot/train_iter_100000.caffemodel

Get the released weights first with `python weights.py voc-fcn8s` (or train them).

For every image IMG.ext this writes, atomically, into --out (default: `fcn-out/` in the
current directory, the place a user running the command looks for its results):

- `IMG.png`: the predicted class index of every pixel (0 .. C-1) as a palette PNG in the
  PASCAL VOC colours, at the image's displayed size (EXIF orientation applied);
- `IMG-overlay.jpg`: the class colours blended half-and-half onto the image; pixels of
  class `background` (VOC, PASCAL-Context) are left as they are;

and prints the classes found with their share of the pixels.

Preprocessing is exactly the data layers': RGB -> BGR, float32, minus the dataset's
mean, C x H x W; the net's input is reshaped to each image's size (any size works: the
100-pixel padding and the crop layers align the output). Image modes: grayscale,
palette, CMYK and 16-bit images become 8-bit RGB (16-bit values are divided by 257);
images with transparency are composited on white first (transparent areas read as
empty paper rather than as black objects). `--max-side N` shrinks larger
images (aspect kept) before the net and scales the labels back (nearest neighbour).

Only models that take one RGB image are supported: VOC, PASCAL-Context, SIFT Flow (its
semantic head, `score_sem`) and NYUDv2 color. A bad image (missing, not an image,
truncated, empty) gets a one-line error naming it; the other images are still done and
the exit status is 1 at the end.
"""
import argparse
import os
import sys

import numpy as np

from common import InputError, Progress, REPO, atomic_write, open_net, run_cli, \
    save_label_png, set_mode, voc_palette

IMAGE_EXTS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.tif', '.tiff', '.webp', '.ppm',
              '.pgm', '.pnm', '.jpe')

# models whose input is not a single RGB image
NOT_RGB = {
    'nyud-fcn32s-hha': 'HHA (depth-derived) input',
    'nyud-fcn32s-color-d': 'color + depth input',
    'nyud-fcn32s-color-hha': 'color + HHA input',
    'nyud-fcn16s-color-hha': 'color + HHA input',
}
# dataset -> (mean, class names): the names of the constants in layers.py
DATASET_CONSTANTS = {
    'voc': ('VOC_MEAN', 'VOC_CLASSES'),
    'pascalcontext': ('CONTEXT_MEAN', 'CONTEXT_CLASSES'),
    'siftflow': ('SIFTFLOW_MEAN', 'SIFTFLOW_SEM_CLASSES'),
    'nyud': ('NYUD_COLOR_MEAN', 'NYUD_CLASSES'),
}


def model_info(model):
    """(dataset, score blob) of a model of net.MODELS that takes one RGB image, e.g.
    ('voc', 'score') or ('siftflow', 'score_sem'); InputError for any other model."""
    import net as nets
    if model not in nets.MODELS:
        raise InputError('%s: unknown model; known: %s' % (model, ', '.join(sorted(nets.MODELS))))
    if model in NOT_RGB:
        raise InputError('%s: takes %s; infer.py only runs models with one RGB input '
                         '(voc-*, pascalcontext-*, siftflow-*, nyud-fcn32s-color)'
                         % (model, NOT_RGB[model]))
    m = nets.MODELS[model]
    return m['dataset'], m['outputs'][0][0]


def dataset_info(dataset):
    """(mean, class names) of 'voc', 'pascalcontext', 'siftflow' or 'nyud' from layers.py:
    mean is a float32 array of 3, (B, G, R), subtracted after the switch to BGR (NYUD:
    the color images' mean); names are in output order (SIFT Flow: semantic classes)."""
    import layers
    mean_name, names_name = DATASET_CONSTANTS[dataset]
    mean = np.asarray(getattr(layers, mean_name), np.float32).reshape(3)
    return mean, list(getattr(layers, names_name, None) or [])


def load_image(path):
    """Open `path` as H x W x 3 uint8 RGB at its displayed size (EXIF orientation applied).

    Grayscale / palette / CMYK convert to RGB; 16-bit and 32-bit integer or float
    images are scaled to 8 bits (16-bit: value / 257); transparency is composited on
    white. Raises InputError naming `path` for anything that is not a readable image."""
    from PIL import Image, ImageOps
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
    from PIL import Image
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


def segment(net, image, mean, blob=None):
    """Labels of one image: H x W uint8 class indices (argmax of the score blob).

    net: a caffe.Net with one input (1 x 3 x h x w, reshaped here to the image size);
    image: H x W x 3 uint8, RGB; mean: 3 floats, (B, G, R) order, subtracted after the
    RGB -> BGR swap; blob: the score blob, default 'score' (or 'score_sem' for SIFT Flow)."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError('image must be H x W x 3 RGB, got shape %s' % (image.shape,))
    in_ = image.astype(np.float32)[:, :, ::-1]  # RGB -> BGR
    in_ = in_ - np.asarray(mean, np.float32).reshape(1, 1, 3)
    in_ = in_.transpose((2, 0, 1))  # C x H x W
    name = net.inputs[0]
    net.blobs[name].reshape(1, *in_.shape)
    net.blobs[name].data[...] = in_
    net.forward()
    blob = blob or score_blob(net)
    score = net.blobs[blob].data[0]
    if score.shape[1:] != image.shape[:2]:
        raise ValueError('%s is %s but the image is %s: the net does not crop its output '
                         'to the input' % (blob, score.shape[1:], image.shape[:2]))
    return score.argmax(axis=0).astype(np.uint8)


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


def overlay(image, label, background=None, alpha=0.5):
    """H x W x 3 uint8: the class colours (VOC palette) blended onto `image` with weight
    `alpha`; pixels of class `background` (and void, 255) keep the image's colours."""
    colours = voc_palette()[label].astype(np.float32)
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
    from PIL import Image
    s = float(max_side) / max(h, w)
    size = (max(1, int(round(w * s))), max(1, int(round(h * s))))
    return np.asarray(Image.fromarray(image).resize(size, Image.LANCZOS))


def resize_label(label, size):
    """H x W uint8 label map resized to size=(height, width) with nearest neighbour."""
    if label.shape == tuple(size):
        return label
    from PIL import Image
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
    """Class names from a text file, one per line (blank lines skipped)."""
    try:
        with open(path) as f:
            names = [line.strip() for line in f if line.strip()]
    except UnicodeDecodeError:
        raise InputError('%s: not a text file of class names' % path)
    if not names:
        raise InputError('%s: no class names in it (expected one per line)' % path)
    return names


def main(argv=None):
    parser = argparse.ArgumentParser(
        description='Segment images with an FCN: writes OUT/<name>.png (class indices, '
                    'palette PNG) and OUT/<name>-overlay.jpg.')
    parser.add_argument('images', nargs='+', metavar='IMAGE_OR_DIR',
                        help='image files and/or folders of images')
    parser.add_argument('--model', default='voc-fcn8s',
                        help='model directory name (default: voc-fcn8s); sets the net, '
                             'the mean and the class names')
    parser.add_argument('--weights', help="caffemodel (default: the model's released "
                                          'weights in its directory)')
    parser.add_argument('--deploy', help="net prototxt (default: the model's deploy.prototxt)")
    parser.add_argument('--classes', metavar='FILE',
                        help="class names, one per line in output order (default: the "
                             "model's dataset's); for nets trained on your own data")
    parser.add_argument('--out', default='fcn-out',
                        help='output folder (default: fcn-out in the current directory)')
    parser.add_argument('--gpu', type=int, default=None, help='GPU id (default: CPU)')
    parser.add_argument('--max-side', type=int, default=None, metavar='N',
                        help='shrink images whose longer side exceeds N pixels before the '
                             'net; labels are scaled back to the full size')
    args = parser.parse_args(argv)
    if args.max_side is not None and args.max_side < 1:
        parser.error('--max-side must be a positive number of pixels')

    model = os.path.basename(os.path.normpath(args.model))  # 'voc-fcn8s/' works too
    dataset, blob = model_info(model)
    mean, names = dataset_info(dataset)
    if args.classes:
        names = read_classes(args.classes)
    background = names.index('background') if 'background' in names else None
    model_dir = os.path.join(REPO, model)
    deploy = args.deploy or os.path.join(model_dir, 'deploy.prototxt')
    if not os.path.isfile(deploy):
        raise InputError('%s: net prototxt not found; write it with `python net.py %s`'
                         % (deploy, model))
    weights = args.weights
    if weights is None:
        import weights as weights_mod
        weights = weights_mod.weights_path(model)
        if not os.path.isfile(weights):
            raise InputError('%s: weights not found; get them with `python weights.py %s` '
                             '(or pass --weights FILE)' % (weights, model))
    set_mode(args.gpu)
    net = open_net(deploy, 'test', weights)
    check_rgb_net(net, deploy)
    if blob not in net.blobs:
        raise InputError('%s: the net has no blob %r' % (deploy, blob))

    paths, errors = list_images(args.images)
    for message in errors:
        print('error: %s' % message, file=sys.stderr)
    try:
        os.makedirs(args.out, exist_ok=True)
    except OSError as e:
        raise InputError('--out %s: cannot create the output folder (%s)'
                         % (args.out, e.strerror or e))
    failed = 0
    used = {}
    progress = Progress(len(paths), 'segmenting', enabled=sys.stderr.isatty() and len(paths) > 1)
    for i, path in enumerate(paths):
        progress.update(i)
        try:
            image = load_image(path)
            small = resize_for_net(image, args.max_side)
            try:
                label = segment(net, small, mean, blob)
            except ValueError as e:
                raise InputError('%s: %s' % (path, e))
            label = resize_label(label, image.shape[:2])
            stem = os.path.splitext(os.path.basename(path))[0]
            used[stem] = used.get(stem, 0) + 1
            if used[stem] > 1:  # same name from another folder: keep both
                stem = '%s-%d' % (stem, used[stem])
            png = os.path.join(args.out, stem + '.png')
            save_label_png(png, label)
            jpg = os.path.join(args.out, stem + '-overlay.jpg')
            from PIL import Image
            with atomic_write(jpg) as f:
                Image.fromarray(overlay(image, label, background)).save(f, format='JPEG',
                                                                         quality=90)
        except (InputError, OSError) as e:
            progress.clear()
            message = str(e) if path in str(e) else '%s: %s' % (path, e)
            print('error: %s' % message, file=sys.stderr)
            failed += 1
            continue
        progress.clear()
        print('%s (%dx%d) -> %s: %s' % (path, image.shape[1], image.shape[0], png,
                                        shares_line(label, names)), flush=True)
    progress.clear()
    if len(paths) > 1 or failed or errors:
        print('%d of %d images segmented into %s%s'
              % (len(paths) - failed, len(paths), args.out,
                 '; %d error%s' % (failed + len(errors), 's' * (failed + len(errors) > 1))
                 if failed or errors else ''))
    return 1 if failed or errors else 0


if __name__ == '__main__':
    run_cli(main)
