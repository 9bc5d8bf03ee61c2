"""What runs inside each fresh process of tools/bench.py (`bench.py --worker SPEC`).

Tasks (spec['task']), each printing one JSON result line after MARK:

    prepare  the bench's random weights for one net, written once as a caffemodel beside
             the deploy prototxt's name (He-scaled normal, seed 0; BatchNorm the
             identity and Scale 1, 0, as random variances could be negative; the fixed
             upsampling and interpolation layers from their formulas, the model's finish
             steps), and the GFLOP of each input size (no pass run)
    forward  one peer (benchpeers.py) on one net: open it, one untimed first pass (the
             peak memory of loading and of a pass are read around it), its output saved
             for the check against Caffe's, then `repeats` passes each right after one
             timed sgemm through Caffe (the same machine state for both)
    sgemm    the machine's sgemm through Caffe (one InnerProduct = one cblas_sgemm), and
             numpy's matmul (numpy bundles its own OpenBLAS)
    train    one SGD iteration of the FCN-8s train net (Input layers for its data layer)
"""
import json
import os
import sys
import tempfile
import time

import numpy as np

import benchpeers
import fixed
import guard
import models
import netinit
from safewrite import staged

MARK = '@@BENCH@@'
# The bench's nets: short name -> model id (models.py).
NETS = {'fcn8s': 'voc-fcn8s', 'fcn32s': 'voc-fcn32s', 'pspnet101': 'pspnet101-voc2012',
        'deeplabv2': 'deeplabv2-voc12', 'deeplabv3': 'deeplabv3-voc12'}
IDLE_S = 0.1  # between an sgemm and a pass: one runtime's spinning threads go quiet first


# --- memory, CPU and timing ---------------------------------------------------------------

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


def peak_rss_mb():
    hwm = _status_kb('VmHWM')
    if hwm is None:  # not Linux: ru_maxrss (kB on Linux, bytes on macOS)
        import resource
        hwm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        if sys.platform == 'darwin':
            hwm //= 1024
    return hwm / 1024.0


def rss_mb():
    rss = _status_kb('VmRSS')
    return None if rss is None else rss / 1024.0


def reset_peak():
    """Start VmHWM again from the current resident set (Linux >= 4.0); False where refused."""
    try:
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')
        return True
    except OSError:
        return False


def blas_facts():
    """The BLAS libraries of this process: {'caffe': the one pycaffe calls, 'numpy': numpy's
    bundled OpenBLAS}, each {'path', 'version', 'config', 'corename', 'threads'} as the
    loaded library reports itself (guard.openblas_report); {} for one not found."""
    numpy_libs = os.path.dirname(np.__file__) + '.libs' + os.sep  # where numpy's wheel puts it
    mine = [p for _, _, p in guard.mapped_files() if p.startswith(numpy_libs) and 'openblas' in p]
    return {'caffe': guard.caffe_blas(), 'numpy': guard.openblas_report(mine[0]) if mine else {}}


def cores():
    """The CPUs this process may run on: every peer's thread count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


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


def timed(fn, repeats, warmup=True):
    """(first, [times]): one call timed alone (unless not warmup: None), then `repeats`
    timed calls of fn; records in OTHERS how busy the machine was with other processes
    during each timed call (0 = quiet, 1 = every CPU taken)."""
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


# --- nets and weights ---------------------------------------------------------------------

def fill_random(net, seed=0):
    """He-scaled normal float32 weights, small biases, written in place (no float64
    temporaries: fc6 alone is 411 MB); BatchNorm the identity, Scale 1 and 0."""
    rng = np.random.default_rng(seed)
    for name, layer in zip(net._layer_names, net.layers):
        for i, blob in enumerate(net.params.get(name, [])):
            a = blob.data
            if layer.type in ('BatchNorm', 'Scale'):
                a[...] = (0, 1, 1)[i] if layer.type == 'BatchNorm' else (1, 0)[i]
                continue
            flat = a.reshape(-1)
            for s in range(0, flat.size, 1 << 22):
                rng.standard_normal(out=flat[s:s + (1 << 22)], dtype=np.float32)
            fan_in = a[0].size if i == 0 and a.ndim > 1 else 0
            a *= np.float32(np.sqrt(2.0 / fan_in) if fan_in else 0.01)


def conv_flops(net):
    """{layer name: FLOPs} of every Convolution / Deconvolution / InnerProduct layer of `net`,
    from its parameter and blob shapes (multiply-add = 2 FLOPs)."""
    flops = {}
    for name, layer in zip(net._layer_names, net.layers):
        kind = layer.type
        if kind not in ('Convolution', 'Deconvolution', 'InnerProduct'):
            continue
        weights = net.params[name][0].data.size
        bottom = net.blobs[net.bottom_names[name][0]].shape
        top = net.blobs[net.top_names[name][0]].shape
        if kind == 'Convolution':
            positions = top[0] * int(np.prod(top[2:]))
        elif kind == 'Deconvolution':
            positions = bottom[0] * int(np.prod(bottom[2:]))
        else:  # every position before the layer's axis (PSPNet's axis-2 interpolation)
            positions = int(np.prod(top)) // top[-1]
        flops[name] = 2 * weights * positions
    return flops


def random_input(shape):
    """The input every peer gets: N(0, 1) x 50 (about a mean-subtracted image's spread)."""
    return np.random.default_rng(1).standard_normal(shape, dtype=np.float32) * 50


def task_prepare(spec):
    """Write spec['caffemodel'] (random weights of spec['model']'s deploy net, unless it
    exists) and count the GFLOP of each of spec['sizes']."""
    caffe = guard.import_caffe()
    caffe.set_mode_cpu()
    model = models.get(spec['model'])
    net = caffe.Net(spec['prototxt'], caffe.TEST)
    if not os.path.isfile(spec['caffemodel']):
        fill_random(net)
        fixed.finish(net, model.finish)
        with staged(spec['caffemodel'], protect=[spec['prototxt']]) as tmp:
            net.save(tmp)
    gflop = {}
    for h, w in spec['sizes']:  # shapes only: reshaping allocates nothing
        net.blobs['data'].reshape(1, 3, h, w)
        net.reshape()
        gflop['%dx%d' % (h, w)] = sum(conv_flops(net).values()) / 1e9
    return {'gflop': gflop}


# --- the measurements ---------------------------------------------------------------------

def sgemm_net(caffe, n, k, m):
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


def task_forward(spec):
    """One peer on one net: peak memory of opening it and of one pass, the output saved
    to spec['save'], then passes paired with sgemms (see the module docstring)."""
    threads = cores()
    data = random_input((1, 3, spec['height'], spec['width']))
    base = rss_mb()
    forward = benchpeers.open_peer(spec['peer'], spec['files'], data, spec['output'], threads)
    loaded, load_peak = rss_mb(), peak_rss_mb()
    reset = reset_peak()
    t0 = time.perf_counter()
    out = forward()
    first = time.perf_counter() - t0
    out = np.array(out, dtype=np.float32, copy=True)
    pass_peak = peak_rss_mb()
    np.save(spec['save'], out)
    result = {'first_s': first, 'rss_base_mb': base, 'rss_loaded_mb': loaded,
              'peak_rss_mb': max(load_peak, pass_peak), 'pass_peak_mb': pass_peak if reset else None,
              'threads': getattr(forward, 'threads', threads), 'output_shape': list(out.shape),
              'output_finite': bool(np.isfinite(out).all()),
              'runtime': benchpeers.version(spec['peer']),
              'precision': getattr(forward, 'precision', 'f32')}
    del out
    caffe = guard.import_caffe()  # the paired sgemm: the same BLAS for every peer
    caffe.set_mode_cpu()
    ref, ref_flops = sgemm_net(caffe, spec['sgemm'], spec['sgemm'], spec['sgemm'])
    ref.forward()
    times, ref_times = [], []
    for _ in range(spec['repeats']):
        ref_times += timed(ref.forward, 1, warmup=False)[1]
        time.sleep(IDLE_S)
        times += timed(forward, 1, warmup=False)[1]
        time.sleep(IDLE_S)
    result.update(times_s=times, sgemm_size=spec['sgemm'], sgemm_flops=ref_flops,
                  sgemm_times_s=ref_times)
    if spec.get('profile'):
        result['layers'] = profile(forward.net, spec['repeats'])
    return result


def profile(net, repeats):
    """Per-layer forward times of caffe.Net `net` (each layer alone, best of `repeats`)."""
    flops, layers = conv_flops(net), []
    for i, (name, layer) in enumerate(zip(net._layer_names, net.layers)):
        ts = []
        for _ in range(max(2, repeats)):
            t0 = time.perf_counter()
            net._forward(i, i)
            ts.append(time.perf_counter() - t0)
        layers.append({'layer': name, 'type': layer.type, 'time_s': min(ts),
                       'flops': flops.get(name, 0)})
    return layers


def task_sgemm(spec):
    """The machine's sgemm through Caffe (one InnerProduct layer), and numpy's matmul."""
    caffe = guard.import_caffe()
    caffe.set_mode_cpu()
    n = spec['n']
    net, flops = sgemm_net(caffe, n, n, n)
    first, times = timed(net.forward, spec['repeats'])
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    _, np_times = timed(lambda: a @ b, spec['repeats'])
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
            'peak_rss_mb': peak_rss_mb()}


def net_file(name, split, height, width, tmpdir):
    """A copy of bench net `name`'s deploy prototxt with a height x width input (split
    'deploy'), or of its train net with Input layers for data (1x3xHxW) and label (1x1xHxW)
    in place of the Python data layer ('train'), written into `tmpdir`; its path."""
    from google.protobuf import text_format
    folder = models.model_dir(models.get(NETS[name]))
    param = netinit.read_net_param(os.path.join(folder, split + '.prototxt'))
    if split == 'deploy':
        for layer in param.layer:
            if layer.type == 'Input' and layer.top[0] == 'data':
                layer.input_param.shape[0].dim[2:] = [height, width]
    else:
        layers = [l for l in param.layer if l.type != 'Python']
        del param.layer[:]
        for top, channels in (('data', 3), ('label', 1)):
            l = param.layer.add(name=top, type='Input', top=[top])
            l.input_param.shape.add(dim=[1, channels, height, width])
        param.layer.extend(layers)
    path = os.path.join(tmpdir, '%s-%s.prototxt' % (name, split))
    with open(path, 'w') as f:
        f.write(text_format.MessageToString(param))
    return path


def sgd_solver(caffe, net_path, tmpdir):
    """An SGDSolver of train net `net_path` for timing only: the paper's momentum and weight
    decay, a learning rate too small to move the weights, no snapshots; its solver
    prototxt is written into `tmpdir` (read once, here)."""
    solver_path = os.path.join(tmpdir, 'solver.prototxt')
    with open(solver_path, 'w') as f:
        f.write('train_net: "%s"\nbase_lr: 1e-14\nlr_policy: "fixed"\nmomentum: 0.99\n'
                'weight_decay: 0.0005\nmax_iter: 100000\ndisplay: 0\nsnapshot: 0\n'
                'snapshot_prefix: "%s/snap"\n' % (net_path, tmpdir))
    return caffe.SGDSolver(solver_path)


def random_inputs(net):
    """random_input written into `net`'s data blob, and, when it has a label blob, labels
    of 21 classes with the first 10 columns void (255)."""
    net.blobs['data'].data[...] = random_input(net.blobs['data'].data.shape)
    if 'label' in net.blobs:
        label = np.random.default_rng(1).integers(0, 21, net.blobs['label'].data.shape)
        label[:, :, :10] = 255
        net.blobs['label'].data[...] = label


def task_train(spec):
    caffe = guard.import_caffe()
    caffe.set_mode_cpu()
    if spec['peer'] == 'caffe-direct':
        os.environ['FCN_CAFFE_WINOGRAD'] = '0'
    with tempfile.TemporaryDirectory() as tmp:
        path = net_file('fcn8s', 'train', spec['height'], spec['width'], tmp)
        param = netinit.read_net_param(path)
        solver = sgd_solver(caffe, path, tmp)
    net = solver.net
    fill_random(net)
    random_inputs(net)
    flops = conv_flops(net)
    # Backward arithmetic: the weight gradient of every layer that learns (lr_mult > 0)
    # and the input gradient of every layer but the first, each as much as the forward.
    learns = {l.name: any(p.lr_mult != 0 for p in l.param) or not l.param
              for l in param.layer}
    backward = sum(f * ((1 if learns.get(name, True) else 0)
                        + (0 if net.bottom_names[name][0] == 'data' else 1))
                   for name, f in flops.items())
    first, times = timed(lambda: solver.step(1), spec['repeats'])
    return {'flops': sum(flops.values()) + backward, 'forward_flops': sum(flops.values()),
            'first_s': first, 'times_s': times,
            'loss': float(net.blobs['loss'].data), 'peak_rss_mb': peak_rss_mb()}


TASKS = {'prepare': task_prepare, 'forward': task_forward, 'sgemm': task_sgemm,
         'train': task_train}


def worker(spec_json):
    spec = json.loads(spec_json)
    result = TASKS[spec['task']](spec)
    result['others_busy'] = OTHERS
    print(MARK + json.dumps(result), flush=True)
    return 0
