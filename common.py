"""Small pieces every script of this project shares.

- `REPO`: the repository root; every default path is resolved from it, never from
  the current directory.
- `import_caffe()`: imports pycaffe with Caffe's INFO logging silenced (set
  FCN_VERBOSE=1 to see it).
- `check_prototxt(path)` / `check_weights(path, net)` / `open_net(...)`: inputs are
  checked in Python before Caffe sees them, because Caffe aborts the whole process
  (glog FATAL) on a prototxt that does not parse or weights whose shapes do not fit.
- `set_mode(gpu)`: CPU by default; a GPU id only when this pycaffe was built with CUDA
  (set_device in a CPU build aborts).
- `atomic_write(path)`: write to a temporary file beside `path`, rename on success,
  so an interrupted run never leaves a half-written output.
- `run_cli(main)`: the one place a command turns an input error into a one-line
  message and exit status 1 (FCN_DEBUG=1 shows the traceback instead).
"""
import contextlib
import json
import os
import sys
import tempfile
import time

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


def set_mode(gpu=None):
    """CPU mode when `gpu` is None, else GPU `gpu`; InputError when this Caffe has no CUDA."""
    caffe = import_caffe()
    if gpu is None:
        caffe.set_mode_cpu()
        return 'cpu'
    if not build_info().get('cuda'):
        raise InputError('--gpu %d: this pycaffe was built without CUDA (CPU only); '
                         'rebuild on a machine with nvcc (make caffe) or drop --gpu' % gpu)
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


def check_prototxt(path):
    """Raise InputError (naming `path`) unless it is an existing, parseable net prototxt."""
    read_net_param(path)
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


def check_weights(path, net):
    """Raise InputError unless caffemodel `path` parses and every layer it shares with `net`
    (by name) has the same number and shapes of parameter blobs. Returns the names copied."""
    caffe = import_caffe()
    path = str(path)
    if not os.path.isfile(path):
        raise InputError('%s: weights file not found' % path)
    if os.path.getsize(path) == 0:
        raise InputError('%s: weights file is empty' % path)
    param = caffe.proto.caffe_pb2.NetParameter()
    try:
        with open(path, 'rb') as f:
            param.ParseFromString(f.read())
    except Exception as e:  # protobuf raises DecodeError or RuntimeError by backend
        raise InputError('%s: not a Caffe weights file (%s)' % (path, e))
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
        shared.append(layer.name)
    if not shared:
        raise InputError('%s: no layer name matches the net (%s...)'
                         % (path, ', '.join(list(net.params)[:3])))
    return shared


def open_net(prototxt, phase='test', weights=None):
    """caffe.Net for `prototxt` in phase 'train' or 'test', with `weights` copied in,
    every input checked first so bad input is an InputError, never a Caffe abort."""
    caffe = import_caffe()
    check_prototxt(prototxt)
    net = caffe.Net(str(prototxt), caffe.TRAIN if phase == 'train' else caffe.TEST)
    if weights:
        check_weights(weights, net)
        net.copy_from(str(weights))
    return net


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


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


@contextlib.contextmanager
def atomic_write(path, mode='wb'):
    """Open a temporary file beside `path`; on success it replaces `path` in one rename."""
    path = str(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix='.' + os.path.basename(path) + '.', suffix='.part')
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual mode
        os.replace(tmp, path)
    except BaseException:
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


def save_label_png(path, label):
    """Write an H x W array of class indices (0-255) as a palette PNG, atomically."""
    import numpy as np
    from PIL import Image
    label = np.asarray(label)
    if label.ndim != 2:
        raise ValueError('label must be H x W, got shape %s' % (label.shape,))
    img = Image.fromarray(label.astype(np.uint8), mode='P')
    img.putpalette(voc_palette().ravel().tolist())
    with atomic_write(path) as f:
        img.save(f, format='PNG')


class Progress:
    """A one-line progress indicator on stderr: count, rate and time left. Redrawn in
    place on a terminal, otherwise a line every ~10%."""

    def __init__(self, total, label='scoring', stream=None, enabled=True):
        self.total, self.label, self.enabled = total, label, enabled and total > 0
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, 'isatty') and self.stream.isatty()
        self.start = time.time()
        self.last_decile = 0
        self.open = False  # a partial line is on the terminal

    def close(self):
        """End a partial terminal line (after an error part way)."""
        if self.open:
            self.stream.write('\n')
            self.stream.flush()
            self.open = False

    def clear(self):
        """Erase a partial terminal line, so other output can be printed in its place."""
        if self.open:
            self.stream.write('\r\033[K')
            self.stream.flush()
            self.open = False

    def update(self, done):
        if not self.enabled:
            return
        elapsed = time.time() - self.start
        rate = elapsed / done if done else 0.0
        msg = '%s %d/%d (%.0f%%) %.2f s/image, %s left' % (
            self.label, done, self.total, 100.0 * done / self.total, rate,
            _duration(rate * (self.total - done)))
        if self.tty:
            self.stream.write('\r' + msg + ('\n' if done == self.total else ''))
            self.stream.flush()
            self.open = done != self.total
        else:
            decile = 10 * done // self.total
            if decile > self.last_decile or done == self.total:
                self.last_decile = decile
                print(msg, file=self.stream, flush=True)


def _duration(seconds):
    seconds = int(round(seconds))
    return '%d:%02d:%02d' % (seconds // 3600, seconds // 60 % 60, seconds % 60)
