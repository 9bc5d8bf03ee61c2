"""CPU speed and memory of the FCN nets on this project's Caffe (`make bench`).

    .venv/bin/python tools/bench.py                  # full run: about 7 minutes on 2 cores
    .venv/bin/python tools/bench.py --quick          # smoke run: small inputs, 2 repeats
    .venv/bin/python tools/bench.py --repeats 10 --out out/bench.json
    .venv/bin/python tools/bench.py --nets fcn8s --sizes 500x500 --no-train --profile
    .venv/bin/python tools/bench.py --conv direct    # only 02's im2col + sgemm way

Every measurement runs in a fresh Python subprocess, so each peak-memory figure is that
process's own resident-set high-water mark (VmHWM) and nothing carries over:

- sgemm: the machine's single-precision matrix multiply through Caffe: one InnerProduct
  layer (4096 x 4096 times 4096 x 4096, no bias), which is exactly one cblas_sgemm call of
  the BLAS Caffe links (OpenBLAS, both cores). numpy's matmul is shown beside it, but
  numpy bundles its own OpenBLAS build, so it is not the reference. The header names both
  libraries as loaded (file, version, core = the kernel family in use, threads), read
  from the libraries themselves (blas_facts).
- forward: the FCN-8s and FCN-32s deploy nets (voc-fcn8s/, voc-fcn32s/deploy.prototxt with
  the input reshaped) at 500 x 500 (the deploy size) and 375 x 500 (a typical VOC image),
  random weights (He-scaled normal, float32: speed does not depend on the values, and
  nothing is downloaded). One process builds the net and runs one pass: the peak memory
  and the first pass's time (which allocates every buffer). Another runs a warm-up pass
  and then --repeats passes, each right after one timed sgemm of the same size as above,
  so that the forward and its reference see the machine in the same state (a shared
  virtual machine's speed drifts by 10-20% over minutes): min and median seconds,
  GFLOP/s of the best pass, the best sgemm GFLOP/s of that process, their ratio, and the
  floor = GFLOP / sgemm rate. GFLOP are counted from the net's shapes: 2 x weights x
  output positions for each Convolution, 2 x weights x input positions for each
  Deconvolution (bias, ReLU, pooling, crop and sum are not counted: < 0.1%).
- conv: with caffe-patches/05-winograd.patch the 3 x 3 convolutions with 16 or more input
  channels (conv1_2 ... conv5_3: 299 of FCN-8s's 363 GFLOP at 500 x 500) run as Winograd's
  F(2x2, 3x3), which does 2.25 times fewer multiplications; FCN_CAFFE_WINOGRAD=0 turns it
  off. Each net and size is measured both ways ("winograd", "direct"). GFLOP, GFLOP/s, the
  ratio and the floor always count the direct convolution's arithmetic, so for "winograd"
  they compare time with the direct floor (a ratio above 1 is possible), not the
  arithmetic actually done.
- pytorch (when torch is installed in this Python: `pip install torch`): the same deploy
  net translated layer by layer into torch.nn.functional calls that share the Caffe net's
  weight arrays, timed and measured the same way (its own threads), and its scores
  compared with Caffe's.
- pspnet101: PSPNet-101 (pspnet/pspnet101-voc2012/deploy.prototxt) at its 473 x 473 crop,
  measured the same ways; random weights as above, its BatchNorm statistics set to mean 0,
  variance 1 and Scale to 1 (random variances could be negative) and its fixed
  interpolation weights set by surgery.pspnet_interp. Its torch translation adds
  BatchNorm, Scale, dilation, padded max pooling, average pooling, Concat, InnerProduct
  on axis 2, Reshape and Tile.
- train: one SGD iteration (forward, backward, update) of the FCN-8s train net at the
  first size, Input layers in place of its Python data layer, random labels (some 255).

Threads: the header states nproc, the CPU affinity, OPENBLAS_NUM_THREADS and
OMP_NUM_THREADS and OpenBLAS's own configuration and thread count as seen in-process
(plain Caffe is single-threaded except inside the BLAS; with caffe-patches/ its own loops
use OpenMP, at most as many threads as OpenBLAS). Each timed run also records how much
of the CPUs other processes used meanwhile ("others"); above 5% the report warns that
the times are not this machine's best.

Results: a table on stdout, JSON in --out (default out/bench.json).
"""
import argparse
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

# A tool under tools/: the project's modules are the repository's top level, found from this
# file's own place (never the current directory).
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
import cli  # noqa: E402
import guard  # noqa: E402
import netinit  # noqa: E402
import surgery  # noqa: E402
from project import REPO  # noqa: E402
from safewrite import atomic_write  # noqa: E402

NETS = {'fcn8s': 'voc-fcn8s', 'fcn32s': 'voc-fcn32s', 'pspnet101': 'pspnet/pspnet101-voc2012'}
# PSPNet: its pyramid's pooling kernels fix the input to the crop it was built for, and its
# output is the release's conv6_interp (logits at the input size).
FIXED_SIZES = {'pspnet101': [(473, 473)]}
OUTPUT = {'pspnet101': 'conv6_interp'}
MARK = '@@BENCH@@'


# --- helpers run inside the worker --------------------------------------------------------

def _status_kb(field):
    """A field of /proc/self/status in kB (VmHWM: peak resident set, VmRSS: current)."""
    try:
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith(field + ':'):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _peak_rss_mb():
    hwm = _status_kb('VmHWM')
    if hwm is None:  # not Linux: ru_maxrss (kB on Linux, bytes on macOS)
        import resource
        hwm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        if sys.platform == 'darwin':
            hwm //= 1024
    return hwm / 1024.0


def _rss_mb():
    rss = _status_kb('VmRSS')
    return None if rss is None else rss / 1024.0


def blas_facts():
    """The BLAS libraries of this process: {'caffe': the one pycaffe calls, 'numpy': numpy's
    bundled OpenBLAS}, each {'path', 'version', 'config', 'corename', 'threads'} as the
    loaded library reports itself (guard.openblas_report); {} for one not found."""
    numpy_libs = os.path.dirname(np.__file__) + '.libs' + os.sep  # where numpy's wheel puts it
    mine = [p for _, _, p in guard.mapped_files() if p.startswith(numpy_libs) and 'openblas' in p]
    return {'caffe': guard.caffe_blas(), 'numpy': guard.openblas_report(mine[0]) if mine else {}}


def _blas_line(facts):
    if not facts.get('config'):
        return facts.get('path') or 'not found'
    return 'OpenBLAS %s, core %s, %d threads (%s; %s)' % (
        facts['version'], facts['corename'], facts['threads'], facts['config'], facts['path'])


def _fill_random(net, seed=0):
    """He-scaled normal float32 weights, small biases, written in place (no float64 temporaries:
    fc6 alone is 411 MB)."""
    rng = np.random.default_rng(seed)
    for name, blobs in net.params.items():
        for i, blob in enumerate(blobs):
            a = blob.data
            flat = a.reshape(-1)
            chunk = 1 << 22
            for s in range(0, flat.size, chunk):
                rng.standard_normal(out=flat[s:s + chunk], dtype=np.float32)
            if i == 0 and a.ndim == 4:
                fan_in = a.shape[1] * a.shape[2] * a.shape[3]
                a *= np.float32(np.sqrt(2.0 / fan_in))
            else:
                a *= np.float32(0.01)


def conv_flops(net):
    """{layer name: FLOPs} of every Convolution / Deconvolution / InnerProduct layer of `net`,
    from its parameter and blob shapes (multiply-add = 2 FLOPs)."""
    flops = {}
    for name, layer in zip(net._layer_names, net.layers):
        kind = layer.type
        if kind not in ('Convolution', 'Deconvolution', 'InnerProduct'):
            continue
        weights = net.params[name][0].data.size
        bottom = net.blobs[net.bottom_names[name][0]].data
        top = net.blobs[net.top_names[name][0]].data
        if kind == 'Convolution':
            positions = top.shape[0] * int(np.prod(top.shape[2:]))
        elif kind == 'Deconvolution':
            positions = bottom.shape[0] * int(np.prod(bottom.shape[2:]))
        else:  # every position before the layer's axis (PSPNet's axis-2 interpolation)
            positions = int(np.prod(top.shape)) // top.shape[-1]
        flops[name] = 2 * weights * positions
    return flops


def _net_file(model, split, height, width, tmpdir):
    """A copy of `model`'s deploy prototxt with a height x width input (deploy), or its train
    net with Input layers for data (1x3xHxW) and label (1x1xHxW) instead of the Python layer."""
    from google.protobuf import text_format
    if split == 'deploy':
        param = netinit.read_net_param(os.path.join(REPO, NETS[model], 'deploy.prototxt'))
        for layer in param.layer:
            if layer.type == 'Input' and layer.top[0] == 'data':
                layer.input_param.shape[0].dim[2:] = [height, width]
    else:
        param = netinit.read_net_param(os.path.join(REPO, NETS[model], 'train.prototxt'))
        layers = [l for l in param.layer if l.type != 'Python']
        del param.layer[:]
        for top, channels in (('data', 3), ('label', 1)):
            l = param.layer.add(name=top, type='Input', top=[top])
            l.input_param.shape.add(dim=[1, channels, height, width])
        param.layer.extend(layers)
    path = os.path.join(tmpdir, '%s-%s.prototxt' % (model, split))
    with open(path, 'w') as f:
        f.write(text_format.MessageToString(param))
    return path


def _sgd_solver(caffe, net_path, tmpdir):
    """An SGDSolver of train net `net_path` for timing only: the paper's momentum and weight
    decay, a learning rate too small to move the weights, no snapshots; its solver
    prototxt is written into `tmpdir` (read once, here)."""
    solver_path = os.path.join(tmpdir, 'solver.prototxt')
    with open(solver_path, 'w') as f:
        f.write('train_net: "%s"\nbase_lr: 1e-14\nlr_policy: "fixed"\nmomentum: 0.99\n'
                'weight_decay: 0.0005\nmax_iter: 100000\ndisplay: 0\nsnapshot: 0\n'
                'snapshot_prefix: "%s/snap"\n' % (net_path, tmpdir))
    return caffe.SGDSolver(solver_path)


def _random_inputs(net):
    """Random inputs written into `net`: data N(0, 1) x 50 (about a mean-subtracted image's
    spread), and, when it has a label blob, labels of 21 classes with the first 10
    columns void (255)."""
    rng = np.random.default_rng(1)
    net.blobs['data'].data[...] = rng.standard_normal(net.blobs['data'].data.shape,
                                                      dtype=np.float32) * 50
    if 'label' in net.blobs:
        label = rng.integers(0, 21, net.blobs['label'].data.shape)
        label[:, :, :10] = 255
        net.blobs['label'].data[...] = label


def _busy_ticks():
    """System-wide busy CPU ticks (all CPUs) from /proc/stat; None off Linux."""
    try:
        with open('/proc/stat') as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields[:8]) - idle


OTHERS = []  # per timed run: share of all CPUs busy with other processes


def _timed(fn, repeats, warmup=True):
    """(first, [times]): one untimed-as-repeat first call (unless not warmup: None), then
    `repeats` timed calls of fn; records in OTHERS how busy the machine was with other
    processes during each timed call (0 = quiet, 1 = every CPU taken)."""
    first = None
    if warmup:
        t0 = time.perf_counter()
        fn()
        first = time.perf_counter() - t0
    times = []
    hz = os.sysconf('SC_CLK_TCK') if hasattr(os, 'sysconf') else 100
    ncpu = os.cpu_count() or 1
    for _ in range(repeats):
        b0, c0 = _busy_ticks(), os.times()
        t0 = time.perf_counter()
        fn()
        wall = time.perf_counter() - t0
        b1, c1 = _busy_ticks(), os.times()
        times.append(wall)
        if b0 is not None:
            own = (c1.user + c1.system) - (c0.user + c0.system)
            others = (b1 - b0) / hz - own
            OTHERS.append(max(0.0, min(1.0, others / (wall * ncpu))))
    return first, times


def _load_deploy(caffe, spec):
    """The deploy net with random weights and input; for conv = pytorch also a function
    running the same net in PyTorch (see _torch_net)."""
    pytorch = spec.get('conv') == 'pytorch'
    with tempfile.TemporaryDirectory() as tmp:
        path = _net_file(spec['net'], 'deploy', spec['height'], spec['width'], tmp)
        net = caffe.Net(path, caffe.TEST)
        param = netinit.read_net_param(path) if pytorch else None
    _fill_random(net)
    if spec['net'].startswith('pspnet'):
        _pspnet_weights(net)
    _random_inputs(net)
    return net, (_torch_net(net, param, OUTPUT.get(spec['net'], 'score')) if pytorch
                 else net.forward)


def _pspnet_weights(net):
    """Random weights made sane for a PSPNet: BatchNorm mean 0, variance 1, factor 1;
    Scale 1 and bias 0; the fixed interpolation layers as the fork's Interp."""
    for name, layer in zip(net._layer_names, net.layers):
        if layer.type == 'BatchNorm':
            for blob, value in zip(net.params[name], (0, 1, 1)):
                blob.data[...] = value
        elif layer.type == 'Scale':
            for blob, value in zip(net.params[name], (1, 0)):
                blob.data[...] = value
    surgery.pspnet_interp(net)


def _torch_net(net, param, output='score'):
    """The deploy net as PyTorch computes it, for comparison: each layer of the prototxt as
    the torch.nn.functional call that computes the same thing, sharing the Caffe net's
    weight and input arrays (torch.from_numpy: no copies, so the peak memory counts the
    weights once, as for Caffe). Returns a function running one pass (inference mode,
    torch's own threads), its output the `output` tensor."""
    import torch
    import torch.nn.functional as F

    def first(values, default):
        return values[0] if len(values) else default

    def blob(name, i):
        return torch.from_numpy(net.params[name][i].data)

    ops = []  # (function of the blob dict, bottom names, top name)
    for layer in param.layer:
        kind, name = layer.type, layer.name
        if kind == 'Input':
            continue
        if kind in ('Convolution', 'Deconvolution'):
            p = layer.convolution_param
            args = dict(stride=first(p.stride, 1), padding=first(p.pad, 0), groups=p.group,
                        dilation=first(p.dilation, 1))
            w = blob(name, 0)
            b = blob(name, 1) if p.bias_term else None
            # (Caffe's deconvolution weights are in x out/groups x k x k, as torch's are.)
            conv = F.conv2d if kind == 'Convolution' else F.conv_transpose2d
            fn = (lambda conv, w, b, args: lambda x: conv(x, w, b, **args))(conv, w, b, args)
        elif kind == 'ReLU':
            fn = torch.relu_ if layer.relu_param.negative_slope == 0 else (
                lambda s: lambda x: F.leaky_relu_(x, s))(layer.relu_param.negative_slope)
        elif kind == 'Pooling':  # Caffe rounds the output size up
            p = layer.pooling_param
            if p.pool == p.MAX:  # torch's ceil mode keeps a window starting in the padding, as Caffe
                fn = (lambda k, st, pad: lambda x: F.max_pool2d(x, k, st, pad, ceil_mode=True))(
                    p.kernel_size, p.stride, p.pad)
            else:  # PSPNet's pyramid: kernel = stride, dividing the input, no padding
                assert p.pool == p.AVE and p.pad == 0, name
                fn = (lambda k, st: lambda x: F.avg_pool2d(x, k, st))(p.kernel_size, p.stride)
        elif kind == 'BatchNorm':  # Caffe's statistics are stored times the factor blob
            factor = float(net.params[name][2].data[0])
            factor = 1 / factor if factor else 0
            fn = (lambda m, v, eps: lambda x: F.batch_norm(x, m, v, training=False, eps=eps))(
                blob(name, 0) * factor, blob(name, 1) * factor, layer.batch_norm_param.eps)
        elif kind == 'Scale':
            assert layer.scale_param.bias_term, name
            fn = (lambda w, b: lambda x: torch.addcmul(b.view(1, -1, 1, 1), x, w.view(1, -1, 1, 1)))(
                blob(name, 0), blob(name, 1))
        elif kind == 'Concat':
            fn = lambda *xs: torch.cat(xs, 1)
        elif kind == 'InnerProduct':  # on axis 2: PSPNet's bins -> F x F interpolation
            p = layer.inner_product_param
            assert p.axis == 2 and not p.bias_term and not p.transpose, name
            fn = (lambda w: lambda x: F.linear(x.flatten(2), w))(blob(name, 0))
        elif kind == 'Reshape':
            dims = list(layer.reshape_param.shape.dim)
            fn = (lambda dims: lambda x: x.reshape(
                [x.shape[i] if d == 0 else d for i, d in enumerate(dims)]))(dims)
        elif kind == 'Tile':
            p = layer.tile_param
            fn = (lambda axis, t: lambda x: x.repeat(
                [t if i == axis else 1 for i in range(x.dim())]))(p.axis, p.tiles)
        elif kind == 'Dropout':
            fn = lambda x: x
        elif kind == 'Crop':
            p = layer.crop_param
            assert p.axis == 2 and len(p.offset) == 1, name
            fn = (lambda o: lambda x, ref: x[:, :, o:o + ref.shape[2], o:o + ref.shape[3]])(
                p.offset[0])
        elif kind == 'Eltwise':
            assert layer.eltwise_param.operation == layer.eltwise_param.SUM, name
            assert not layer.eltwise_param.coeff, name
            fn = lambda a, b: a + b
        else:
            raise ValueError('bench: no PyTorch mapping for %s layer %s' % (kind, name))
        ops.append((fn, list(layer.bottom), layer.top[0]))
    data = torch.from_numpy(net.blobs['data'].data)

    def forward():
        with torch.inference_mode():
            blobs = {'data': data}
            for fn, bottoms, top in ops:
                blobs[top] = fn(*[blobs[b] for b in bottoms])
            return blobs[output]
    return forward


def _sgemm_net(caffe, n, k, m):
    """One InnerProduct layer, batch n x k input, m outputs, no bias, weights k x m
    (transpose: true): its forward is exactly one cblas_sgemm (n x k times k x m)."""
    from caffe import layers as L
    ns = caffe.NetSpec()
    ns.data = L.Input(shape=dict(dim=[n, k]))
    ns.ip = L.InnerProduct(ns.data, num_output=m, bias_term=False, transpose=True)
    with tempfile.NamedTemporaryFile('w', suffix='.prototxt', delete=False) as f:
        f.write(str(ns.to_proto()))
    try:
        net = caffe.Net(f.name, caffe.TEST)
    finally:
        os.unlink(f.name)
    rng = np.random.default_rng(0)
    net.params['ip'][0].data[...] = rng.standard_normal((k, m), dtype=np.float32)
    net.blobs['data'].data[...] = rng.standard_normal((n, k), dtype=np.float32)
    return net, 2.0 * n * k * m


def task_memory(spec):
    """Peak memory of one forward pass in a fresh process (and that first pass's time,
    which includes allocating every buffer)."""
    caffe = guard.import_caffe()
    caffe.set_mode_cpu()
    if spec.get('conv') == 'pytorch':
        import torch  # noqa: F401  (its libraries count in the base, as Caffe's do)
    base = _rss_mb()
    net, forward = _load_deploy(caffe, spec)
    loaded = _rss_mb()
    t0 = time.perf_counter()
    out = forward()  # PyTorch: the score tensor (Caffe's are read from the net below)
    first = time.perf_counter() - t0
    score = (net.blobs[OUTPUT.get(spec['net'], 'score')].data if spec.get('conv') != 'pytorch'
             else out.numpy())
    return {'first_s': first, 'rss_python_caffe_mb': base, 'rss_net_loaded_mb': loaded,
            'score_shape': list(score.shape), 'score_finite': bool(np.isfinite(score).all()),
            'peak_rss_mb': _peak_rss_mb()}


def task_forward(spec):
    """Forward passes timed in alternation with an sgemm of the same BLAS, so that both
    see the machine in the same state (a shared or throttled machine drifts)."""
    caffe = guard.import_caffe()
    caffe.set_mode_cpu()
    net, forward = _load_deploy(caffe, spec)
    flops = conv_flops(net)
    n = spec['sgemm']
    ref, ref_flops = _sgemm_net(caffe, n, n, n)
    forward()
    ref.forward()
    times, ref_times = [], []
    for _ in range(spec['repeats']):
        ref_times += _timed(ref.forward, 1, warmup=False)[1]
        times += _timed(forward, 1, warmup=False)[1]
    out = {'flops': sum(flops.values()), 'times_s': times, 'sgemm_size': n,
           'sgemm_flops': ref_flops, 'sgemm_times_s': ref_times}
    if spec.get('conv') == 'pytorch':
        # The same net: PyTorch's scores against Caffe's (relative to the largest).
        import torch
        got = forward().numpy().copy()
        net.forward()
        want = net.blobs[OUTPUT.get(spec['net'], 'score')].data
        out['max_rel_diff_to_caffe'] = float(np.abs(got - want).max() / np.abs(want).max())
        out['torch'] = '%s, %d threads' % (torch.__version__, torch.get_num_threads())
        return out
    if spec.get('profile'):
        layers = []
        for i, (name, layer) in enumerate(zip(net._layer_names, net.layers)):
            ts = []
            for _ in range(max(2, spec['repeats'])):
                t0 = time.perf_counter()
                net._forward(i, i)
                ts.append(time.perf_counter() - t0)
            layers.append({'layer': name, 'type': layer.type, 'time_s': min(ts),
                           'flops': flops.get(name, 0)})
        out['layers'] = layers
    return out


def task_sgemm(spec):
    """The machine's sgemm through Caffe (one InnerProduct layer), and numpy's matmul."""
    caffe = guard.import_caffe()
    caffe.set_mode_cpu()
    n = spec['n']
    net, flops = _sgemm_net(caffe, n, n, n)
    first, times = _timed(net.forward, spec['repeats'])
    # numpy's matmul on the same sizes: another OpenBLAS build (numpy bundles its own).
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    _, np_times = _timed(lambda: a @ b, spec['repeats'])
    try:
        np_blas = np.show_config(mode='dicts')['Build Dependencies']['blas']
        np_blas = '%s %s' % (np_blas.get('name'), np_blas.get('version'))
    except Exception:  # older numpy: no dict mode
        np_blas = 'unknown'
    blas = blas_facts()
    return {'flops': flops, 'first_s': first, 'times_s': times,
            'numpy_times_s': np_times, 'numpy_blas': np_blas, 'blas': blas,
            'openblas_config': blas['caffe'].get('config'),
            'openblas_threads': blas['caffe'].get('threads'),
            'peak_rss_mb': _peak_rss_mb()}


def task_train(spec):
    caffe = guard.import_caffe()
    caffe.set_mode_cpu()
    with tempfile.TemporaryDirectory() as tmp:
        net_path = _net_file(spec['net'], 'train', spec['height'], spec['width'], tmp)
        param = netinit.read_net_param(net_path)
        solver = _sgd_solver(caffe, net_path, tmp)
    net = solver.net
    _fill_random(net)
    _random_inputs(net)
    flops = conv_flops(net)
    # Backward arithmetic: the weight gradient of every layer that learns (lr_mult > 0)
    # and the input gradient of every layer but the first, each as much as the forward.
    learns = {l.name: any(p.lr_mult != 0 for p in l.param) or not l.param
              for l in param.layer}
    backward = sum(f * ((1 if learns.get(name, True) else 0)
                        + (0 if net.bottom_names[name][0] == 'data' else 1))
                   for name, f in flops.items())
    first, times = _timed(lambda: solver.step(1), spec['repeats'])
    return {'flops': sum(flops.values()) + backward, 'forward_flops': sum(flops.values()),
            'first_s': first, 'times_s': times,
            'loss': float(net.blobs['loss'].data), 'peak_rss_mb': _peak_rss_mb()}


TASKS = {'forward': task_forward, 'memory': task_memory, 'sgemm': task_sgemm,
         'train': task_train}


def worker(spec_json):
    spec = json.loads(spec_json)
    if spec.get('conv') == 'direct':  # before Caffe runs anything; read at every call
        os.environ['FCN_CAFFE_WINOGRAD'] = '0'
    result = TASKS[spec['task']](spec)
    result['others_busy'] = OTHERS
    print(MARK + json.dumps(result), flush=True)
    return 0


# --- the driver ---------------------------------------------------------------------------

def run_worker(spec):
    """Run one measurement in a fresh interpreter; its JSON result (or an error record)."""
    env = dict(os.environ)
    env.setdefault('GLOG_minloglevel', '2')
    cmd = [sys.executable, os.path.abspath(__file__), '--worker', json.dumps(spec)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=REPO)
    wall = time.perf_counter() - t0
    for line in proc.stdout.splitlines():
        if line.startswith(MARK):
            result = json.loads(line[len(MARK):])
            result['spec'] = spec
            result['wall_s'] = wall
            return result
    tail = '\n'.join((proc.stderr or proc.stdout).strip().splitlines()[-8:])
    return {'spec': spec, 'error': 'exit %d: %s' % (proc.returncode, tail)}


def environment():
    caffe = guard.import_caffe()
    info = guard.build_info()
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = None
    cpu = cli.cpu_name() or platform.processor()
    return {'cpu': cpu, 'nproc': os.cpu_count(), 'affinity_cpus': affinity,
            'OPENBLAS_NUM_THREADS': os.environ.get('OPENBLAS_NUM_THREADS'),
            'OMP_NUM_THREADS': os.environ.get('OMP_NUM_THREADS'),
            'python': platform.python_version(), 'numpy': np.__version__,
            'caffe': os.path.dirname(caffe.__file__),
            'caffe_patches': info.get('project_patches'),
            'caffe_build': info.get('patches'), 'cuda_build': info.get('cuda')}


def summarize(r):
    """Add min/median seconds and GFLOP/s (and, for forward runs, the same-process sgemm
    figures and the ratio) to a worker's result."""
    if 'error' in r:
        return r
    times = r['times_s']
    r['min_s'] = min(times)
    r['median_s'] = statistics.median(times)
    flops = r['flops']
    r['gflop'] = flops / 1e9
    r['gflops_best'] = flops / 1e9 / r['min_s']
    r['gflops_median'] = flops / 1e9 / r['median_s']
    if r.get('sgemm_times_s'):
        rates = [r['sgemm_flops'] / 1e9 / t for t in r['sgemm_times_s']]
        r['sgemm_gflops_best'] = max(rates)
        r['sgemm_gflops_median'] = statistics.median(rates)
        # Best forward over best sgemm: both at their fastest in this process.
        r['ratio_to_sgemm'] = r['gflops_best'] / r['sgemm_gflops_best']
        # Each forward over the sgemm timed just before it (same machine state).
        paired = [flops / 1e9 / t / q for t, q in zip(times, rates)]
        r['ratio_paired_best'] = max(paired)
        r['ratio_paired_median'] = statistics.median(paired)
        r['floor_s'] = r['gflop'] / r['sgemm_gflops_best']
    busy = r.get('others_busy') or []
    r['others_busy_max'] = max(busy) if busy else None
    return r


def fmt(v, spec='%.2f'):
    return '-' if v is None else spec % v


def pct(v):
    return '-' if v is None else '%.0f%%' % (100 * v)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--quick', action='store_true',
                        help='smoke run: 256 x 256 and 192 x 256 inputs, 2 repeats, 2048 sgemm')
    parser.add_argument('--repeats', type=int, help='timed passes per measurement (default 5, quick 2)')
    parser.add_argument('--nets', default='fcn8s,fcn32s,pspnet101',
                        help='comma-separated: fcn8s, fcn32s, pspnet101 (always at 473 x 473)')
    parser.add_argument('--sizes', help='comma-separated HxW inputs (default 500x500,375x500)')
    parser.add_argument('--conv', help='comma-separated: winograd, direct (how Caffe runs the '
                        '3x3 convolutions), pytorch (the same net in PyTorch). Default: all '
                        'this machine has (winograd needs 05-winograd.patch, pytorch an '
                        'installed torch); quick: the default way only')
    parser.add_argument('--no-train', action='store_true', help='skip the training iteration')
    parser.add_argument('--profile', action='store_true', help='per-layer forward times of the first net')
    parser.add_argument('--label', default='', help='a note stored in the JSON (e.g. which build)')
    parser.add_argument('--out', default=os.path.join(REPO, 'out', 'bench.json'), help='JSON output')
    parser.add_argument('--worker', help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args.worker)

    repeats = args.repeats or (2 if args.quick else 5)
    if repeats < 1:
        parser.error('--repeats must be at least 1')
    nets = [n.strip() for n in args.nets.split(',') if n.strip()]
    for n in nets:
        if n not in NETS:
            parser.error('unknown net %r (known: %s)' % (n, ', '.join(NETS)))
    sizes = []
    for s in (args.sizes or ('256x256,192x256' if args.quick else '500x500,375x500')).split(','):
        try:
            h, w = (int(v) for v in s.lower().split('x'))
            assert h > 0 and w > 0
        except (ValueError, AssertionError):
            parser.error('--sizes wants HxW items like 500x500, got %r' % s)
        sizes.append((h, w))
    gemm = 2048 if args.quick else 4096

    env = environment()
    winograd = '05-winograd.patch' in (env['caffe_patches'] or [])
    default_way = 'winograd' if winograd else 'direct'
    torch = importlib.util.find_spec('torch') is not None
    ways = args.conv or ','.join(
        [default_way] if args.quick else
        (['winograd', 'direct'] if winograd else ['direct']) + (['pytorch'] if torch else []))
    ways = [v.strip() for v in ways.split(',') if v.strip()]
    for v in ways:
        if v not in ('winograd', 'direct', 'pytorch'):
            parser.error('--conv wants winograd, direct and/or pytorch, got %r' % v)
        if v == 'pytorch' and not torch:
            parser.error('--conv pytorch: PyTorch is not installed in %s' % sys.prefix)
        if v == 'winograd' and not winograd:
            parser.error('--conv winograd: this Caffe build has no 05-winograd.patch (%s)'
                         % env['caffe'])
    print('CPU: %s; nproc %s, affinity %s CPUs; OPENBLAS_NUM_THREADS=%s OMP_NUM_THREADS=%s'
          % (env['cpu'], env['nproc'], env['affinity_cpus'],
             env['OPENBLAS_NUM_THREADS'] or 'unset', env['OMP_NUM_THREADS'] or 'unset'))
    print('Caffe: %s (project patches: %s)' % (env['caffe'], ', '.join(env['caffe_patches'] or [])
                                               or 'none'))
    results = {'label': args.label, 'quick': args.quick, 'repeats': repeats,
               'environment': env, 'forward': [], 'train': None, 'sgemm': None,
               'time': time.strftime('%Y-%m-%d %H:%M:%S')}

    sg = summarize(run_worker({'task': 'sgemm', 'n': gemm, 'repeats': max(3, repeats)}))
    results['sgemm'] = sg
    if 'error' in sg:
        print('sgemm failed: %s' % sg['error'])
    else:
        sg['numpy_gflops_best'] = sg['flops'] / 1e9 / min(sg['numpy_times_s'])
        env['openblas'] = sg['openblas_config']
        env['openblas_threads'] = sg['openblas_threads']
        env['blas'] = sg['blas']
        print("Caffe's BLAS: %s" % _blas_line(sg['blas']['caffe']))
        print("numpy's BLAS: %s" % _blas_line(sg['blas']['numpy']))
        print('sgemm through Caffe (one InnerProduct, %d^3): best %.1f GFLOP/s, median %.1f; '
              "numpy's matmul (its own BLAS): best %.1f GFLOP/s"
              % (gemm, sg['gflops_best'], sg['gflops_median'], sg['numpy_gflops_best']))
    print()
    profile_way = next((v for v in ways if v != 'pytorch'), None)  # per-layer: Caffe's
    head = '%-9s %-8s %-8s %6s %7s %7s %8s %7s %7s %6s %7s %8s %6s' % (
        'net', 'HxW', 'conv', 'GFLOP', 'first s', 'min s', 'median s', 'GFLOP/s', 'sgemm', 'ratio',
        'floor s', 'peak MB', 'others')
    print(head)
    print('-' * len(head))
    for name in nets:
        for i, (h, w) in enumerate(FIXED_SIZES.get(name, sizes)):
            for way in ways:
                base = {'net': name, 'height': h, 'width': w, 'conv': way}
                mem = run_worker(dict(base, task='memory'))
                r = summarize(run_worker(dict(base, task='forward', repeats=repeats, sgemm=gemm,
                                              profile=bool(args.profile and i == 0
                                                           and way == profile_way
                                                           and name == nets[0]))))
                for key in ('first_s', 'peak_rss_mb', 'rss_python_caffe_mb', 'rss_net_loaded_mb',
                            'score_shape', 'score_finite', 'error'):
                    if key in mem and key not in r:
                        r[key] = mem[key]
                results['forward'].append(r)
                if 'error' in r:
                    print('%-9s %-8s %-8s failed: %s' % (name, '%dx%d' % (h, w), way, r['error']))
                    continue
                print('%-9s %-8s %-8s %6.1f %7.2f %7.3f %8.3f %7.1f %7.1f %6.2f %7.3f %8.0f %6s' % (
                    name, '%dx%d' % (h, w), way, r['gflop'], r['first_s'], r['min_s'],
                    r['median_s'], r['gflops_best'], r['sgemm_gflops_best'], r['ratio_to_sgemm'],
                    r['floor_s'], r['peak_rss_mb'], pct(r['others_busy_max'])))
    for r in results['forward']:
        if 'max_rel_diff_to_caffe' in r:
            print('pytorch (%s), %s %dx%d: scores differ from Caffe\'s by at most %.1e of the '
                  'largest' % (r['torch'], r['spec']['net'], r['spec']['height'],
                               r['spec']['width'], r['max_rel_diff_to_caffe']))
    if not args.no_train:
        h, w = sizes[0]
        way = next((v for v in ways if v != 'pytorch'), default_way)
        r = summarize(run_worker({'task': 'train', 'net': 'fcn8s', 'height': h, 'width': w,
                                  'conv': way, 'repeats': max(2, repeats // 2)}))
        results['train'] = r
        if 'error' in r:
            print('train fcn8s %dx%d failed: %s' % (h, w, r['error']))
        else:
            print('\ntrain fcn8s %dx%d (%s), one SGD iteration (forward + backward + update, %.0f '
                  'GFLOP): first %.2f s, min %.2f s (%.0f GFLOP/s), median %.2f s; peak %.0f MB; '
                  'others %s' % (h, w, way, r['gflop'], r['first_s'], r['min_s'], r['gflops_best'],
                                 r['median_s'], r['peak_rss_mb'], pct(r['others_busy_max'])))
    for r in results['forward']:
        if r.get('layers'):
            print('\nper-layer forward, %s %dx%d, %s (each layer alone, best of %d; ReLUs '
                  'shown here are fused into the convolutions in a whole pass):' % (
                      r['spec']['net'], r['spec']['height'], r['spec']['width'],
                      r['spec']['conv'], max(2, repeats)))
            total = sum(l['time_s'] for l in r['layers'])
            for l in r['layers']:
                if l['time_s'] >= 0.002:
                    gf = l['flops'] / 1e9
                    print('  %-16s %-14s %7.3f s %5.1f%%  %s' % (
                        l['layer'], l['type'], l['time_s'], 100 * l['time_s'] / total,
                        '%6.1f GFLOP %6.1f GFLOP/s' % (gf, gf / l['time_s']) if gf else ''))
            print('  %-31s %7.3f s' % ('sum', total))
    print('\nGFLOP: convolution/deconvolution arithmetic of the direct way (also for '
          'conv = winograd, which does less: GFLOP/s, ratio and floor then compare its time '
          'with the direct floor); first: the first pass (allocates buffers); min/median: of '
          '%d passes; sgemm: best GFLOP/s of a %d^3 sgemm timed '
          'before each pass in the same process; ratio = GFLOP/s / sgemm; floor = GFLOP / '
          'sgemm; peak MB: resident-set high-water mark of a fresh process that builds the '
          'net and runs one pass (Python, numpy and Caffe included); others: the largest '
          'share of all CPUs other processes used during a timed pass.' % (repeats, gemm))
    busy = [r.get('others_busy_max') or 0 for r in results['forward'] + [sg, results['train']]
            if r and 'error' not in r]
    if busy and max(busy) > 0.05:
        print('WARNING: other processes used up to %s of the CPUs during timed runs: times '
              'are slower than this machine can do; rerun on a quiet machine.' % pct(max(busy)))
    with atomic_write(args.out, 'w') as f:
        json.dump(results, f, indent=1)
    print('wrote %s' % os.path.relpath(args.out))
    failed = [r for r in results['forward'] + [sg, results['train']] if r and 'error' in r]
    return 1 if failed else 0


if __name__ == '__main__':
    cli.run_cli(main)
