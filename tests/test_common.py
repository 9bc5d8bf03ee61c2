"""The guards every command relies on: outputs never replace inputs and are complete before they take
their final name, nets are checked before Caffe sees them, weights
must cover the net. Real pycaffe; Caffe is only built in a subprocess where a
wrong check would let it abort."""
import errno
import json
import os
import stat
import subprocess
import sys
import threading

import numpy as np
import pytest
from PIL import Image

import cli
import guard
import layers
import metrics
import net
import netinit
import netload
import project
import safewrite
from project import InputError
from datasets import random_weights  # tests/datasets.py

caffe = guard.import_caffe()
REPO = project.REPO


# --- outputs never replace inputs --------------------------------------------------------

def test_atomic_write_refuses_to_replace_an_input(tmp_path):
    photo = tmp_path / 'photo.png'
    photo.write_bytes(b'the user\'s photo')
    (tmp_path / 'link.png').symlink_to(photo)
    os.link(str(photo), str(tmp_path / 'hard.png'))
    for target in (photo, tmp_path / 'link.png', tmp_path / 'hard.png'):
        with pytest.raises(InputError) as e:
            with safewrite.atomic_write(target, protect=[photo]) as f:
                f.write(b'label map')
        message = str(e.value)
        assert str(target) in message and str(photo) in message and '\n' not in message
    assert photo.read_bytes() == b'the user\'s photo'
    assert os.path.islink(str(tmp_path / 'link.png'))
    assert sorted(os.listdir(str(tmp_path))) == ['hard.png', 'link.png', 'photo.png']  # no .part


def test_atomic_write_refuses_a_protected_folder(tmp_path):
    labels = tmp_path / 'SegmentationClass'
    labels.mkdir()
    (labels / 'a.png').write_bytes(b'ground truth')
    with pytest.raises(InputError, match='SegmentationClass'):
        layers.save_label_png(labels / 'a.png', np.zeros((2, 2), np.uint8), protect=[labels])
    with pytest.raises(InputError, match='SegmentationClass'):
        layers.save_label_png(labels / 'new.png', np.zeros((2, 2), np.uint8), protect=[labels])
    assert (labels / 'a.png').read_bytes() == b'ground truth'
    assert os.listdir(str(labels)) == ['a.png']
    # elsewhere it writes, and replaces its own earlier output
    out = tmp_path / 'out' / 'a.png'
    for value in (1, 2):
        layers.save_label_png(out, np.full((2, 3), value, np.uint8), protect=[labels])
    assert np.asarray(Image.open(out)).tolist() == [[2, 2, 2], [2, 2, 2]]


# --- outputs on special files and symbolic links: written through or refused, never replaced --

def _device(path, minor):
    """A character device node at `path` (1, minor: 3 is /dev/null's, 7 /dev/full's):
    tests write to their own node, so a writer that replaced it could never take the
    machine's /dev/null with it. None where device nodes cannot be made (not root)."""
    try:
        os.mknod(str(path), stat.S_IFCHR | 0o666, os.makedev(1, minor))
    except (PermissionError, OSError):
        return None
    return path


def _read_fifo(path, got):
    with open(path, 'rb') as f:
        got.append(f.read())


def test_writers_write_through_devices_and_fifos_and_never_replace_them(tmp_path):
    """A rename over --out /dev/null, /dev/stdout or a FIFO replaced the device or pipe
    by a regular file; now each is written through, each write checked."""
    null = _device(tmp_path / 'null', 3)
    if null is None:
        pytest.skip('cannot make a device node here (needs root)')
    metrics.write_json(null, {'mean_iu': 0.5})  # score.py / reproduce.py --out
    layers.save_label_png(null, np.zeros((2, 2), np.uint8))  # infer.py, --save-pred
    assert stat.S_ISCHR(os.lstat(null).st_mode)
    full = _device(tmp_path / 'full', 7)
    with pytest.raises(OSError) as e:
        metrics.write_json(full, {'mean_iu': 0.5})
    assert e.value.errno == errno.ENOSPC and str(full) in str(e.value)
    assert stat.S_ISCHR(os.lstat(full).st_mode)
    stdout = tmp_path / 'stdout'  # /dev/stdout: a link to the process's terminal or pipe
    stdout.symlink_to(null)
    metrics.write_json(stdout, {})
    assert os.path.islink(stdout) and stat.S_ISCHR(os.stat(stdout).st_mode)
    fifo = tmp_path / 'fifo'
    os.mkfifo(str(fifo))
    got = []
    reader = threading.Thread(target=_read_fifo, args=(fifo, got))
    reader.start()
    metrics.write_json(fifo, {'mean_iu': 0.5})
    reader.join(30)
    assert json.loads(got[0]) == {'mean_iu': 0.5}
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and sorted(os.listdir(tmp_path)) == [
        'fifo', 'full', 'null', 'stdout']  # no temporary file left


def test_a_symlinked_output_is_refused_and_the_link_kept(tmp_path):
    """A symbolic link at the output's name was replaced by a regular file; it is refused
    (naming its target) before anything is written, the link and its target untouched."""
    target = tmp_path / 'elsewhere.json'
    target.write_text('theirs')
    link = tmp_path / 'scores.json'
    link.symlink_to(target)
    dangling = tmp_path / 'dangling.png'
    dangling.symlink_to(tmp_path / 'nowhere.png')
    for write in (lambda p: metrics.write_json(p, {}),
                  lambda p: layers.save_label_png(p, np.zeros((2, 2), np.uint8)),
                  lambda p: safewrite.check_writable(p, '--out')):
        for path in (link, dangling):
            with pytest.raises(InputError) as e:
                write(path)
            assert str(path) in str(e.value) and 'symbolic link' in str(e.value)
    assert os.path.islink(link) and target.read_text() == 'theirs'
    assert os.path.islink(dangling) and not (tmp_path / 'nowhere.png').exists()
    assert sorted(os.listdir(tmp_path)) == ['dangling.png', 'elsewhere.json', 'scores.json']


def test_save_net_goes_through_the_checked_writer(fcn, tmp_path):
    """surgery.save_net (Caffe's net.save) renamed over a link too; now Caffe writes a
    staged file that takes the name by the one writer's rules."""
    import surgery
    deploy, weights = fcn['32s']
    net = caffe.Net(deploy, weights, caffe.TEST)
    link = tmp_path / 'out.caffemodel'
    link.symlink_to(tmp_path / 'target.caffemodel')
    with pytest.raises(InputError, match='symbolic link'):
        surgery.save_net(net, link)
    assert os.path.islink(link) and os.listdir(tmp_path) == ['out.caffemodel']
    fifo = tmp_path / 'fifo'
    os.mkfifo(str(fifo))
    got = []
    reader = threading.Thread(target=_read_fifo, args=(fifo, got))
    reader.start()
    surgery.save_net(net, fifo)
    reader.join(30)
    assert got[0] == open(weights, 'rb').read() and stat.S_ISFIFO(os.lstat(fifo).st_mode)


def _calls(tree):
    """(enclosing function, line, dotted name, call node) of every call in `tree`."""
    import ast
    found = []

    def walk(node, func):
        for child in ast.iter_child_nodes(node):
            inner = child.name if isinstance(child, ast.FunctionDef) else func
            if isinstance(child, ast.Call):
                f = child.func
                name = (f.value.id + '.' + f.attr if isinstance(f, ast.Attribute) and
                        isinstance(f.value, ast.Name) else getattr(f, 'id', None))
                found.append((func, child.lineno, name, child))
            walk(child, inner)
    walk(tree, None)
    return found


def test_no_module_writes_outside_the_checked_writer():
    """Every output goes through safewrite (atomic_write, staged, place): no project
    module renames files or opens one for writing itself, except the writer and the
    functions named here, each for its reason."""
    import ast
    allowed = {
        ('newmodel.py', 'write_folder'),  # a fresh private folder (mkdtemp), renamed whole
        ('newmodel.py', 'tiny_net'),  # a temporary prototxt in a TemporaryDirectory
        ('score.py', 'open_val_net'),  # the same
        ('trainsetup.py', 'make_solver'),  # the same (a rank other than 0)
    }
    found = []
    for name in sorted(os.listdir(REPO)):
        if not name.endswith('.py') or name == 'safewrite.py':
            continue
        for func, line, called, node in _calls(ast.parse(open(os.path.join(REPO, name)).read())):
            mode = node.args[1] if len(node.args) > 1 else None
            writes = called == 'open' and isinstance(mode, ast.Constant) and \
                any(c in str(mode.value) for c in 'wax+')
            temporary = any(isinstance(a, ast.Attribute) and a.attr == 'name'
                            for a in node.args[:1])  # a NamedTemporaryFile's own name
            if (called in ('os.replace', 'os.rename', 'np.save', 'shutil.move') or writes) \
                    and not temporary and (name, func) not in allowed:
                found.append('%s:%d %s (in %s)' % (name, line, called, func))
    assert not found, found


# --- every write complete before the rename ------------------------------------------------

def _short_writer(real_write, budget):
    """An os.write that, like a disk filling up, writes at most `budget` bytes in all:
    a short count first, then ENOSPC."""
    left = [budget]

    def write(fd, data):
        if left[0] <= 0:
            raise OSError(errno.ENOSPC, 'No space left on device')
        n = real_write(fd, bytes(data[:left[0]]))
        left[0] -= n
        return n
    return write


def _lying_writer(real_write):
    """An os.write that reports every byte written but drops the second half of each
    call (data lost below the file system's reporting)."""
    def write(fd, data):
        real_write(fd, bytes(data[:max(1, len(data) // 2)]))
        return len(data)
    return write


@pytest.mark.parametrize('fault', ['short', 'lying'])
def test_a_full_disk_never_leaves_a_truncated_jpeg(tmp_path, monkeypatch, fault):
    """Pillow's JPEG encoder wrote through the file descriptor, so a short write was not
    seen and the truncated overlay took its final name; now every byte goes through a
    checked write and the size on disk is compared before the rename."""
    rgb = np.random.RandomState(0).randint(0, 256, (64, 80, 3)).astype(np.uint8)
    path = tmp_path / 'photo-overlay.jpg'
    real = os.write
    fake = _short_writer(real, 1000) if fault == 'short' else _lying_writer(real)
    monkeypatch.setattr(os, 'write', fake)
    with pytest.raises(OSError) as e:
        with safewrite.atomic_write(path) as f:
            Image.fromarray(rgb).save(f, format='JPEG', quality=90)
    monkeypatch.setattr(os, 'write', real)
    assert str(path) in str(e.value)
    assert not path.exists()
    assert os.listdir(str(tmp_path)) == []  # the temporary file is gone too
    # a write the kernel cuts short but that can go on is finished, not lost
    monkeypatch.setattr(os, 'write', lambda fd, data: real(fd, bytes(data[:7])))
    with safewrite.atomic_write(path) as f:
        Image.fromarray(rgb).save(f, format='JPEG', quality=90)
    with safewrite.atomic_write(tmp_path / 'a.txt', 'w') as f:
        f.write('x' * 1000 + '\n')
    monkeypatch.setattr(os, 'write', real)
    assert Image.open(path).size == (80, 64)
    assert (tmp_path / 'a.txt').read_text() == 'x' * 1000 + '\n'


# --- nets checked before Caffe sees them ---------------------------------------------

NET = """name: "t"
layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 1 dim: 3 dim: 20 dim: 24 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "score" type: "Convolution" bottom: "pool1" top: "score"
        convolution_param { num_output: 5 kernel_size: 1 } }
layer { name: "up" type: "Deconvolution" bottom: "score" top: "up"
        convolution_param { num_output: 5 kernel_size: 4 stride: 2 bias_term: false } }
layer { name: "crop" type: "Crop" bottom: "up" bottom: "data" top: "out"
        crop_param { axis: 2 offset: 1 } }
"""

# (what is wrong, old text, new text, the layer the error must name)
BAD_NETS = [
    ('kernel larger than its input', 'kernel_size: 1 }', 'kernel_size: 11 }', 'score'),
    ('unknown bottom', 'bottom: "pool1" top: "score"', 'bottom: "pool2" top: "score"', 'score'),
    ('unknown layer type', 'type: "ReLU"', 'type: "Relu"', 'relu1'),
    ('num_output 0', 'num_output: 5 kernel_size: 1', 'num_output: 0 kernel_size: 1', 'score'),
    ('top produced twice', 'top: "pool1"', 'top: "conv1"', 'pool1'),
    ('pooling pad not below the kernel', 'kernel_size: 2 stride: 2', 'kernel_size: 2 stride: 2 pad: 2', 'pool1'),
    ('crop larger than its bottom', 'offset: 1', 'offset: 9', 'crop'),
    ('zero stride', 'kernel_size: 3 pad: 1', 'kernel_size: 3 pad: 1 stride: 0', 'conv1'),
    ('unknown filler', 'kernel_size: 3 pad: 1', 'kernel_size: 3 pad: 1 weight_filler { type: "gauss" }', 'conv1'),
    ('too many param blocks', 'bias_term: false }', 'bias_term: false } param { lr_mult: 0 } param { lr_mult: 0 }', 'up'),
    ('wrong number of bottoms', 'bottom: "up" bottom: "data"', 'bottom: "up"', 'crop'),
    ('a blob over INT_MAX', 'num_output: 4 kernel_size: 3 pad: 1', 'num_output: 4 kernel_size: 3 pad: 24000', 'conv1'),
    ('loss_weight per top', 'bottom: "conv1" top: "conv1" }', 'bottom: "conv1" top: "conv1" loss_weight: 1 loss_weight: 1 }', 'relu1'),
    ('propagate_down per bottom', 'bottom: "conv1" top: "conv1" }', 'bottom: "conv1" top: "conv1" propagate_down: true propagate_down: false }', 'relu1'),
]


def _bad_net(tmp_path, old, new):
    assert old in NET
    path = tmp_path / 'bad.prototxt'
    path.write_text(NET.replace(old, new, 1))
    return path


def caffe_shapes(net):
    """Shapes of a built net's blobs, less the split copies Caffe inserts itself."""
    return {n: tuple(b.data.shape) for n, b in net.blobs.items() if '_split_' not in n}


def test_good_net_shapes_are_caffes(tmp_path):
    path = tmp_path / 'net.prototxt'
    path.write_text(NET)
    shapes = netinit.check_net(netinit.read_net_param(path), str(path), 'test')
    net = caffe.Net(str(path), caffe.TEST)
    assert shapes == caffe_shapes(net)


@pytest.mark.parametrize('what,old,new,layer', BAD_NETS, ids=[b[0] for b in BAD_NETS])
def test_bad_net_is_an_input_error_naming_the_prototxt_and_layer(tmp_path, what, old, new, layer):
    path = _bad_net(tmp_path, old, new)
    with pytest.raises(InputError) as e:
        netinit.check_prototxt(path)
    message = str(e.value)
    assert str(path) in message and repr(layer) in message and '\n' not in message, message


# Convolution and Pooling settings Caffe's LayerSetUp CHECKs (base_conv_layer.cpp,
# pooling_layer.cpp): each aborted Caffe (exit 134) past the check.
SETUP_CHECKS = [
    ('conv pad and pad_w', 'kernel_size: 3 pad: 1', 'kernel_size: 3 pad: 1 pad_w: 1', 'conv1'),
    ('conv kernel_size and kernel_h/w', 'kernel_size: 3 pad: 1', 'kernel_size: 3 kernel_h: 3 kernel_w: 3 pad: 1', 'conv1'),
    ('conv stride and stride_h/w', 'kernel_size: 3 pad: 1', 'kernel_size: 3 pad: 1 stride: 1 stride_h: 1 stride_w: 1', 'conv1'),
    ('pool pad_h alone', 'kernel_size: 2 stride: 2', 'kernel_size: 2 stride: 2 pad_h: 1', 'pool1'),
    ('pool pad and pad_h/w', 'kernel_size: 2 stride: 2', 'kernel_size: 2 stride: 2 pad: 1 pad_h: 1 pad_w: 1', 'pool1'),
    ('pool stride_w alone', 'kernel_size: 2 stride: 2', 'kernel_size: 2 stride_w: 2', 'pool1'),
    ('pool kernel_size and kernel_h/w', 'kernel_size: 2 stride: 2', 'kernel_size: 2 kernel_h: 2 kernel_w: 2 stride: 2', 'pool1'),
    ('pool global with stride', 'kernel_size: 2 stride: 2', 'global_pooling: true stride: 2', 'pool1'),
    ('pool stochastic with pad', 'pool: MAX kernel_size: 2 stride: 2', 'pool: STOCHASTIC kernel_size: 2 stride: 2 pad: 1', 'pool1'),
]


@pytest.mark.parametrize('what,old,new,layer', SETUP_CHECKS, ids=[b[0] for b in SETUP_CHECKS])
def test_conv_and_pool_settings_caffe_checks_are_refused_without_an_abort(tmp_path, what, old, new, layer):
    path = _bad_net(tmp_path, old, new)
    with pytest.raises(InputError) as e:
        netinit.check_prototxt(path)
    assert str(path) in str(e.value) and repr(layer) in str(e.value), str(e.value)
    r = _open_in_subprocess(path)
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, (r.returncode, r.stderr)


@pytest.mark.parametrize('old,new', [
    ('kernel_size: 3 pad: 1', 'kernel_h: 3 kernel_w: 1 pad_h: 1'),  # pad_w 0: Caffe accepts it
    ('kernel_size: 2 stride: 2', 'kernel_size: 2 kernel_h: 3 stride: 2'),  # kernel_size wins
    ('kernel_size: 2 stride: 2', 'kernel_h: 2 kernel_w: 3 stride_h: 2 stride_w: 1 pad_h: 1 pad_w: 0'),
], ids=['conv pad_h alone', 'pool kernel_size and kernel_h', 'pool h/w pairs'])
def test_conv_and_pool_settings_caffe_accepts_pass_with_its_shapes(tmp_path, old, new):
    path = _bad_net(tmp_path, old, new)
    shapes = netinit.check_net(netinit.read_net_param(path), str(path), 'test')
    assert shapes == caffe_shapes(caffe.Net(str(path), caffe.TEST))


def _open_in_subprocess(path, phase='test'):
    code = ('import sys, cli, netload\n'
            'def main(argv): netload.open_net(sys.argv[1], sys.argv[2])\n'
            'cli.run_cli(main)\n')
    env = dict(os.environ, PYTHONPATH=REPO, GLOG_minloglevel='2')
    env.pop('FCN_DEBUG', None)
    return subprocess.run([sys.executable, '-c', code, str(path), phase], cwd=str(path.parent),
                          capture_output=True, text=True, env=env, timeout=120)


@pytest.mark.parametrize('case', [0, 1, 2, 3], ids=[b[0] for b in BAD_NETS[:4]])
def test_bad_net_never_aborts_caffe(tmp_path, case):
    """What a user sees (these four aborted Caffe with exit 134): exit 1, one line."""
    _, old, new, layer = BAD_NETS[case]
    path = _bad_net(tmp_path, old, new)
    r = _open_in_subprocess(path)
    assert r.returncode == 1, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and repr(layer) in lines[0], r.stderr


def test_every_generated_net_passes_and_matches_caffe(tmp_path):
    """No false alarms on the project's nets, and the inferred shapes are Caffe's: the
    narrow FCN-8s, FCN-AlexNet (LRN, grouped convolutions, no pad on pool) and the
    NYUD late fusion net (Eltwise of two towers)."""
    for model in ('voc-fcn8s', 'voc-fcn-alexnet', 'nyud-fcn32s-color-hha', 'siftflow-fcn8s'):
        folder = tmp_path / model
        net.write_model_dir(str(folder), model, widths=(4, 4, 4, 4, 4, 8))
        deploy = folder / 'deploy.prototxt'
        shapes = netinit.check_net(netinit.read_net_param(deploy), str(deploy), 'test')
        caffe_net = caffe.Net(str(deploy), caffe.TEST)
        assert shapes == caffe_shapes(caffe_net), model
        for name in ('train.prototxt', 'val.prototxt'):
            if (folder / name).exists():
                netinit.check_prototxt(folder / name)  # the Python data layers check too


def test_blob_limit_at_a_given_input_size(tmp_path):
    """The check answers for an input size other than the declared one: FCN's conv1_2
    im2col buffer passes INT_MAX at about 3.7 Mpx (where Caffe aborts)."""
    net.write_model_dir(str(tmp_path), 'voc-fcn8s', widths=(64, 4, 4, 4, 4, 8))
    deploy = str(tmp_path / 'deploy.prototxt')
    param = netinit.read_net_param(deploy)
    netinit.check_net(param, deploy, 'test', {'data': (1, 3, 1080, 1920)})
    with pytest.raises(InputError, match=r"conv1_2.*im2col buffer"):
        netinit.check_net(param, deploy, 'test', {'data': (1, 3, 1500, 2000)})


VOC_DATA = """layer { name: "data" type: "Python" top: "data" top: "label"
        python_param { module: "layers" layer: "VOCSegDataLayer"
                       param_str: "{\\"voc_dir\\": \\"x\\", \\"split\\": \\"val\\"}" } }
layer { name: "score" type: "Convolution" bottom: "data" top: "score"
        convolution_param { num_output: 21 kernel_size: 1 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "score" bottom: "label" top: "loss" }
"""

BAD_PYTHON = [
    ('bad param_str', '\\"split\\": \\"val\\"', '\\"splt\\": \\"val\\"', 'splt'),
    ('param_str not a dict', 'param_str: "{\\"voc_dir\\": \\"x\\", \\"split\\": \\"val\\"}"',
     'param_str: "voc_dir=x"', 'param_str'),
    ('unknown class', 'VOCSegDataLayer', 'VOCSegDataLayr', 'VOCSegDataLayr'),
    ('unknown module', 'module: "layers"', 'module: "layerz"', 'layerz'),
    ('wrong top count', 'top: "data" top: "label"', 'top: "data" top: "label" top: "extra"', '3'),
]


@pytest.mark.parametrize('what,old,new,needle', BAD_PYTHON, ids=[b[0] for b in BAD_PYTHON])
def test_bad_python_layer_names_the_prototxt(tmp_path, what, old, new, needle):
    assert old in VOC_DATA
    path = tmp_path / 'train.prototxt'
    path.write_text(VOC_DATA.replace(old, new, 1))
    r = _open_in_subprocess(path, 'train')
    assert r.returncode == 1 and 'Traceback' not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert str(path) in lines[0] and "'data'" in lines[0] and needle in lines[0], lines[0]


# --- weights must cover the net -------------------------------------------------------

@pytest.fixture(scope='module')
def fcn(tmp_path_factory):
    """Narrow FCN-32s and FCN-8s deploy nets and random weights for each."""
    root = tmp_path_factory.mktemp('fcn')
    out = {}
    for head in ('32s', '8s'):
        folder = root / head
        net.write_model_dir(str(folder), 'voc-fcn' + head, widths=(4, 4, 4, 4, 4, 8))
        deploy = folder / 'deploy.prototxt'
        out[head] = (str(deploy), str(random_weights(deploy, folder / 'w.caffemodel')))
    return out


def test_weights_of_another_model_are_refused(fcn):
    deploy8, _ = fcn['8s']
    _, weights32 = fcn['32s']
    with pytest.raises(InputError) as e:
        netload.open_net(deploy8, 'test', weights32)
    message = str(e.value)
    assert weights32 in message and 'score_pool4' in message and '\n' not in message
    # on purpose (a parent's weights into its child) it loads, and the values arrive
    net = netload.open_net(deploy8, 'test', weights32, partial=True)
    parent = caffe.Net(fcn['32s'][0], weights32, caffe.TEST)
    np.testing.assert_array_equal(net.params['fc7'][0].data, parent.params['fc7'][0].data)


def test_weights_cut_short_are_refused(fcn, tmp_path):
    deploy, weights = fcn['8s']
    param = caffe.proto.caffe_pb2.NetParameter()
    param.ParseFromString(open(weights, 'rb').read())
    # cut at a layer boundary: a well-formed file without the last layers
    cut = caffe.proto.caffe_pb2.NetParameter()
    cut.CopyFrom(param)
    while cut.layer[-1].name != 'fc7':
        del cut.layer[-1]
    (tmp_path / 'cut.caffemodel').write_bytes(cut.SerializeToString())
    with pytest.raises(InputError, match=r'cut\.caffemodel.*score_fr'):
        netload.open_net(deploy, 'test', str(tmp_path / 'cut.caffemodel'))
    # a blob holding fewer values than its shape (Caffe's FromProto would abort)
    short = caffe.proto.caffe_pb2.NetParameter()
    short.CopyFrom(param)
    layer = next(l for l in short.layer if l.name == 'fc6')
    del layer.blobs[0].data[-1]
    (tmp_path / 'short.caffemodel').write_bytes(short.SerializeToString())
    with pytest.raises(InputError, match=r"short\.caffemodel: layer 'fc6' blob 0"):
        netload.open_net(deploy, 'test', str(tmp_path / 'short.caffemodel'))
    # the complete file loads
    assert 'score_pool4' in netload.check_weights(weights, caffe.Net(deploy, caffe.TEST))


def _unpacked(param, name):
    """NetParameter `param` serialized with layer `name`'s first blob's data written one
    float at a time (legal protobuf, though Caffe writes packed fields)."""
    def varint(v):
        out = b''
        while v >= 0x80:
            out, v = out + bytes([v & 0x7f | 0x80]), v >> 7
        return out + bytes([v])

    def field(number, payload):
        return varint(number << 3 | 2) + varint(len(payload)) + payload
    out = b''
    for layer in param.layer:
        if layer.name != name:
            out += field(100, layer.SerializeToString())
            continue
        blob = caffe.proto.caffe_pb2.BlobProto()
        blob.CopyFrom(layer.blobs[0])
        data = np.asarray(blob.data, '<f4')
        del blob.data[:]
        raw = blob.SerializeToString() + b''.join(varint(5 << 3 | 5) + v.tobytes() for v in data)
        rest = caffe.proto.caffe_pb2.LayerParameter()
        rest.CopyFrom(layer)
        del rest.blobs[:]
        out += field(100, rest.SerializeToString() + field(7, raw)
                     + b''.join(field(7, b.SerializeToString()) for b in layer.blobs[1:]))
    return out


def test_weights_copied_a_layer_at_a_time_equal_caffes_copy_in_every_encoding(fcn, tmp_path):
    """open_net(forward_only) reads values from the file straight into the blobs (packed
    fields located, not parsed); an unpacked field, and double_data, still arrive exactly."""
    deploy, weights = fcn['8s']
    ref = caffe.Net(deploy, weights, caffe.TEST)
    param = caffe.proto.caffe_pb2.NetParameter()
    param.ParseFromString(open(weights, 'rb').read())
    (tmp_path / 'unpacked.caffemodel').write_bytes(_unpacked(param, 'conv1_1'))
    fc7 = next(l for l in param.layer if l.name == 'fc7').blobs[0]
    fc7.double_data.extend(np.asarray(fc7.data, np.float64))
    del fc7.data[:]
    (tmp_path / 'double.caffemodel').write_bytes(param.SerializeToString())
    for path in (weights, tmp_path / 'unpacked.caffemodel', tmp_path / 'double.caffemodel'):
        got = netload.open_net(deploy, 'test', str(path), forward_only=True)
        for name in ref.params:
            for mine, theirs in zip(got.params[name], ref.params[name]):
                np.testing.assert_array_equal(mine.data, theirs.data, err_msg='%s %s' % (path, name))
    # a file cut inside a blob's values is one line naming it, never a short copy
    cut = tmp_path / 'cut-inside.caffemodel'
    cut.write_bytes(open(weights, 'rb').read()[:-1000])
    with pytest.raises(InputError, match=r'cut-inside\.caffemodel'):
        netload.open_net(deploy, 'test', str(cut), forward_only=True)


def _edit_weights(weights, how):
    """The caffemodel `weights` changed as `how` says, serialized (bytes)."""
    param = caffe.proto.caffe_pb2.NetParameter()
    param.ParseFromString(open(weights, 'rb').read())
    fc6 = next(l for l in param.layer if l.name == 'fc6')
    if how == 'blob-less fc6':  # a second, empty layer named like the parameter layer
        param.layer.add(name='fc6', type='Convolution')
    elif how == 'blobs for relu1_1':  # a layer of the net that has no parameters
        param.layer.add(name='relu1_1', type='ReLU').blobs.add().CopyFrom(fc6.blobs[1])
    elif how == 'extra double_data':
        blob = fc6.blobs[1]
        blob.double_data.extend(list(blob.data) + [0.5])
    elif how == 'extra diff':
        fc6.blobs[1].diff.extend([0.0] * (len(fc6.blobs[1].data) + 1))
    elif how == 'short double_diff':
        fc6.blobs[1].double_diff.extend([0.0] * (len(fc6.blobs[1].data) - 1))
    return param.SerializeToString()


WEIGHT_EDITS = ['blob-less fc6', 'blobs for relu1_1', 'extra double_data', 'extra diff',
                'short double_diff']


@pytest.mark.parametrize('how', WEIGHT_EDITS)
def test_caffemodel_layers_and_value_counts_caffe_aborts_on_are_refused(fcn, tmp_path, how):
    """Caffe copies every layer of a caffemodel whose name is a layer of the net (its
    blob count must match, zero too) and checks the count of each value field; such a
    file aborted infer, score, --weights and resume (exit 134). A one-line error now."""
    deploy, weights = fcn['32s']
    bad = tmp_path / 'bad.caffemodel'
    bad.write_bytes(_edit_weights(weights, how))
    layer = 'relu1_1' if 'relu' in how else 'fc6'
    with pytest.raises(InputError, match=r"bad\.caffemodel: layer %r" % layer):
        netload.check_weights(str(bad), caffe.Net(deploy, caffe.TEST), partial=True)
    code = ('import sys, cli, netload\n'
            'cli.run_cli(lambda argv: netload.open_net(sys.argv[1], "test", sys.argv[2]))\n')
    env = dict(os.environ, PYTHONPATH=REPO, GLOG_minloglevel='2')
    r = subprocess.run([sys.executable, '-c', code, deploy, str(bad)], capture_output=True,
                       text=True, env=env, timeout=120)
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, (r.returncode, r.stderr)
    assert str(bad) in r.stderr and repr(layer) in r.stderr


def test_progress_bar_is_tqdm(capsys):
    bar = cli.progress_bar(3, 'scoring score')
    for _ in range(3):
        bar.update(1)
    bar.close()
    assert type(bar).__module__.startswith('tqdm')
    assert 'scoring score 3/3' in capsys.readouterr().err
    quiet = cli.progress_bar(3, 'x', enabled=False)
    quiet.update(3)
    quiet.close()
    assert capsys.readouterr().err == ''


def test_fsync_failure_names_the_file(tmp_path, monkeypatch):
    """A full disk reported only at fsync is an error naming the file, not a bare
    '[Errno 28] No space left on device'."""
    def no_space(fd):
        raise OSError(errno.ENOSPC, 'No space left on device')
    monkeypatch.setattr(os, 'fsync', no_space)
    with pytest.raises(OSError) as e:
        with safewrite.atomic_write(tmp_path / 'scores.json', 'w') as f:
            f.write('{}')
    monkeypatch.undo()
    assert str(tmp_path / 'scores.json') in str(e.value) and e.value.errno == errno.ENOSPC
    assert os.listdir(str(tmp_path)) == []


def test_layer_without_a_shape_rule_is_probed(tmp_path):
    """A layer type the check has no rule for (ArgMax here, top_k beyond the classes) is
    built once in a subprocess: Caffe's own reason, one line, never an abort here."""
    path = tmp_path / 'argmax.prototxt'
    path.write_text(NET + 'layer { name: "am" type: "ArgMax" bottom: "out" top: "am"\n'
                          '        argmax_param { top_k: 9 axis: 1 } }\n')
    r = _open_in_subprocess(path)
    assert r.returncode == 1, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and 'top_k' in lines[0], r.stderr
    good = tmp_path / 'good.prototxt'
    good.write_text(NET + 'layer { name: "am" type: "ArgMax" bottom: "out" top: "am"\n'
                          '        argmax_param { top_k: 1 axis: 1 } }\n')
    netinit.check_prototxt(good)


def test_layers_filtered_by_phase_stage_and_level_as_caffe_does(tmp_path):
    """Layers Caffe drops from a phase (include / exclude by phase, stage, level) are not
    checked: a second producer of `score` that only a stage would enable is no error,
    and the shapes are those of the net Caffe builds."""
    path = tmp_path / 'net.prototxt'
    path.write_text(NET + """layer { name: "score_big" type: "Convolution" bottom: "pool1" top: "score"
        include { stage: "big" } convolution_param { num_output: 7 kernel_size: 1 } }
layer { name: "train_only" type: "Convolution" bottom: "out" top: "extra"
        include { phase: TRAIN } convolution_param { num_output: 0 kernel_size: 1 } }
layer { name: "low" type: "ReLU" bottom: "out" top: "low" exclude { max_level: 2 } }
""")
    shapes = netinit.check_net(netinit.read_net_param(path), str(path), 'test')
    net = caffe.Net(str(path), caffe.TEST)
    assert shapes == caffe_shapes(net) and 'extra' not in shapes and 'low' not in shapes
    with pytest.raises(InputError, match="'train_only'"):  # in TRAIN it is there, and bad
        netinit.check_net(netinit.read_net_param(path), str(path), 'train')
