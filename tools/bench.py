"""CPU speed and memory of this project's Caffe beside PyTorch, ONNX Runtime and OpenVINO
on the same nets with the same weights (`make bench`).

    .venv/bin/python tools/bench.py                   # full run: 5 nets x 5 peers + training
    .venv/bin/python tools/bench.py --quick           # smoke run: FCN-8s at 256 x 256, 2 passes
    .venv/bin/python tools/bench.py --nets fcn8s,pspnet101 --peers caffe,openvino --repeats 10
    .venv/bin/python tools/bench.py --nets fcn8s --no-train --profile   # + Caffe's per-layer times
    .venv/bin/python tools/bench.py --peers caffe,caffe-direct --nets fcn8s  # Winograd vs direct
    .venv/bin/python tools/bench.py --markdown out/bench.json   # the README's tables from a run

Nets (--nets): fcn8s, fcn32s (voc-fcn8s / voc-fcn32s, 500 x 500 or --sizes), pspnet101
(pspnet101-voc2012, 473 x 473), deeplabv2 (deeplabv2-voc12, 513 x 513: three scale branches)
and deeplabv3 (deeplabv3-voc12, 513 x 513; -trainval has the same deploy net): each model's
deploy.prototxt, the FCNs reshaped to the size asked (the others only run at their size).
Weights: random (benchwork.fill_random, seed 0), written once as a caffemodel into --work
(default out/bench-nets, about 4 GB for all five) and exported from the prototxt and that
caffemodel by `python export.py MODEL --weights W --out O` (BatchNorm folded), so every
peer runs the same net with the same weights; both files are reused by later runs (their
names hash the prototxt, and the export also export.py itself).

Peers (--peers; benchpeers.py says how each is opened and threaded): caffe (the default
build), torch, onnxruntime, openvino (f32), openvino-default (OpenVINO's own precision on
this CPU: bf16 where it has AVX-512 BF16; reported apart, never the fastest fp32 peer),
and on request caffe-direct (FCN_CAFFE_WINOGRAD=0). A peer that is not installed is
skipped with one line saying how to install it. Every peer uses all the CPUs this process
may run on.

Each (net, peer) runs in a fresh Python subprocess (benchwork.task_forward): it opens the
net, runs one pass ("first", which allocates), saves the output, then runs --repeats
passes (default 5), each right after one timed 4096^3 sgemm through Caffe's BLAS (one
InnerProduct layer), so that every pass and its reference see the machine in the same
state (a shared VM drifts by 10-20% over minutes). Reported: min and median seconds, the
ratio of the median to the fastest fp32 peer's median, the median sgemm GFLOP/s of that
process, peak memory (VmHWM of the process: loading included; "pass MB": the high-water
mark of one pass counted from the loaded state, /proc/self/clear_refs), and the output's
largest |difference| to Caffe's divided by the largest |Caffe output| (flagged above 1e-4
for the fp32 peers, export.py's bound, and above 5e-2 for reduced precision). GFLOP:
2 x weights x output positions of every Convolution (input positions for Deconvolution;
InnerProduct on every position before its axis). Also measured: the sgemm alone (and
numpy's), one FCN-8s training iteration (--no-train skips it), and with --profile Caffe's
per-layer times on the first net. Each timed call records how much of the CPUs other
processes used ("others"); above 5% the report warns. JSON in --out (default out/bench.json).

Run time: the full run took 28 minutes on a 2-core VM whose other processes took up to 76%
of the CPUs (sgemm 46-201 GFLOP/s instead of 230-450); the first run also writes each net's
caffemodel and ONNX file (about a minute per net on that machine). --repeats 3 or --nets
shorten it.
"""
import argparse
import hashlib
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
import benchpeers  # noqa: E402
import benchwork  # noqa: E402
import cli  # noqa: E402
import guard  # noqa: E402
import models  # noqa: E402
import netinit  # noqa: E402
from jsonfile import read_json  # noqa: E402
from project import REPO, InputError  # noqa: E402
from safewrite import atomic_write  # noqa: E402

NETS = benchwork.NETS
TITLES = {'fcn8s': 'FCN-8s', 'fcn32s': 'FCN-32s', 'pspnet101': 'PSPNet-101',
          'deeplabv2': 'DeepLab v2', 'deeplabv3': 'DeepLabv3'}
# The FCNs take any size (their Crop layers read the reference blob's shape); PSPNet's pyramid
# and DeepLab's align-corners zooms are made for their deploy net's size (docs/export.md).
DYNAMIC = ('fcn8s', 'fcn32s')
BOUND_F32, BOUND_REDUCED = 1e-4, 5e-2  # max |peer - Caffe| / max |Caffe| before a flag
WEIGHTS_KEY = b'benchwork.fill_random seed 0, v1'  # change when the weights change


# --- running the workers ------------------------------------------------------------------

def run_worker(spec):
    """Run one measurement in a fresh interpreter; its JSON result (or an error record)."""
    env = dict(os.environ)
    env.setdefault('GLOG_minloglevel', '2')
    cmd = [sys.executable, os.path.abspath(__file__), '--worker', json.dumps(spec)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=REPO)
    wall = time.perf_counter() - t0
    for line in proc.stdout.splitlines():
        if line.startswith(benchwork.MARK):
            result = json.loads(line[len(benchwork.MARK):])
            result['spec'], result['wall_s'] = spec, wall
            return result
    tail = '\n'.join((proc.stderr or proc.stdout).strip().splitlines()[-8:])
    return {'spec': spec, 'error': 'exit %d: %s' % (proc.returncode, tail)}


def _digest(*parts):
    h = hashlib.sha1()
    for p in parts:
        h.update(p if isinstance(p, bytes) else open(p, 'rb').read())
    return h.hexdigest()[:10]


def prepare(name, sizes, workdir, onnx):
    """The files every peer of net `name` opens: {'prototxt', 'caffemodel', 'onnx'} (onnx
    only when asked; None where export.py failed: then 'error'), and {size: GFLOP}."""
    model = models.get(NETS[name])
    prototxt = os.path.join(models.model_dir(model), 'deploy.prototxt')
    caffemodel = os.path.join(workdir, '%s-%s.caffemodel' % (model.name, _digest(prototxt, WEIGHTS_KEY)))
    files = {'prototxt': prototxt, 'caffemodel': caffemodel, 'onnx': None}
    r = run_worker({'task': 'prepare', 'model': model.name, 'prototxt': prototxt,
                    'caffemodel': caffemodel, 'sizes': sizes})
    if 'error' in r:
        return files, {}, 'random weights: %s' % r['error']
    if onnx:
        export = os.path.join(REPO, 'export.py')
        path = os.path.join(workdir, '%s-%s.onnx' % (model.name, _digest(caffemodel.encode(), export)))
        if not os.path.isfile(path):
            proc = subprocess.run([sys.executable, export, model.name, '--weights', caffemodel,
                                   '--out', path], capture_output=True, text=True, cwd=REPO)
            if proc.returncode:
                return files, r['gflop'], 'export.py: %s' % (proc.stderr or proc.stdout).strip()[-400:]
        files['onnx'] = path
    return files, r['gflop'], None


def deploy_size(name):
    """(H, W) of the deploy net's data input."""
    model = models.get(NETS[name])
    param = netinit.read_net_param(os.path.join(models.model_dir(model), 'deploy.prototxt'))
    for layer in param.layer:
        if layer.type == 'Input' and layer.top[0] == 'data':
            return tuple(layer.input_param.shape[0].dim[2:4])
    raise InputError('%s: no Input layer named data' % name)


def available(peers, log=print):
    """The peers whose runtime is installed; one line for each that is not."""
    found = []
    for p in peers:
        module, how = benchpeers.NEEDS.get(p, (None, None))
        needed = ([module] if module else []) + (['onnx', 'onnxruntime']  # export.py's
                                                 if p in benchpeers.ONNX_PEERS else [])
        missing = [m for m in dict.fromkeys(needed) if importlib.util.find_spec(m) is None]
        if missing:
            log('skipped %s: %s not installed in %s (%s)' % (p, ', '.join(missing), sys.prefix, how))
        else:
            found.append(p)
    return found


# --- the header: machine, threads, BLAS ---------------------------------------------------

def environment():
    caffe = guard.import_caffe()
    info = guard.build_info()
    return {'cpu': cli.cpu_name() or platform.processor(), 'nproc': os.cpu_count(),
            'affinity_cpus': benchwork.cores(),
            'OPENBLAS_NUM_THREADS': os.environ.get('OPENBLAS_NUM_THREADS'),
            'OMP_NUM_THREADS': os.environ.get('OMP_NUM_THREADS'),
            'OPENBLAS_CORETYPE': os.environ.get('OPENBLAS_CORETYPE'),
            'python': platform.python_version(), 'numpy': np.__version__,
            'caffe': os.path.dirname(caffe.__file__), 'caffe_patches': info.get('project_patches'),
            'caffe_build': info.get('patches'), 'cuda_build': info.get('cuda'),
            'load_before': os.getloadavg()}


def blas_line(facts):
    """One library as it reports itself: version, core (the kernel family in use), threads."""
    if not facts.get('config'):
        return facts.get('path') or 'not found'
    return 'OpenBLAS %s, core %s, %d threads (%s)' % (
        facts['version'], facts['corename'], facts['threads'], facts['path'])


def blas_info(env, sg):
    """One line: the BLAS Caffe runs (library, version, kernel: read from the loaded library
    itself, guard.caffe_blas) and its sgemm beside numpy's own OpenBLAS."""
    if not sg or 'error' in sg:
        return 'BLAS: unknown (the sgemm worker failed)'
    blas = sg.get('blas', {})
    return ("Caffe's BLAS: %s; numpy's: %s (OPENBLAS_CORETYPE=%s); sgemm %d^3 through Caffe "
            '%.0f GFLOP/s best, numpy %.0f' % (
                blas_line(blas.get('caffe', {})), blas_line(blas.get('numpy', {})),
                env['OPENBLAS_CORETYPE'] or 'unset', sg['sgemm_n'], sg['gflops_best'],
                sg['numpy_gflops_best']))


# --- figures ------------------------------------------------------------------------------

def summarize(r):
    """Min/median seconds and GFLOP/s (with r['flops']) and the paired sgemm's GFLOP/s."""
    if 'error' in r:
        return r
    times = r['times_s']
    r['min_s'], r['median_s'] = min(times), statistics.median(times)
    if r.get('flops'):
        r['gflop'] = r['flops'] / 1e9
        r['gflops_best'] = r['gflop'] / r['min_s']
    if r.get('sgemm_times_s'):
        rates = [r['sgemm_flops'] / 1e9 / t for t in r['sgemm_times_s']]
        r['sgemm_gflops_best'], r['sgemm_gflops_median'] = max(rates), statistics.median(rates)
    busy = r.get('others_busy') or []
    r['others_busy_max'] = max(busy) if busy else None
    return r


def output_difference(reference, got):
    """max |got - reference| / max |reference| (float64), or None for another shape."""
    if got.shape != reference.shape:
        return None
    scale = max(float(np.abs(reference).max()), 1e-30)
    return float(np.abs(got.astype(np.float64) - reference).max() / scale)


def bound(peer, precision):
    """The largest difference to Caffe a peer may show before it is flagged."""
    return BOUND_F32 if peer in benchpeers.FP32 and precision == 'f32' else BOUND_REDUCED


def rank(rows):
    """Add to each row of one net: ratio (median / the fastest fp32 peer's median) and
    sgemm_ratio (the same with each time in units of its own process's sgemm: drift-free).
    Returns the fastest fp32 peer's name (None if none ran)."""
    fp32 = [r for r in rows if 'error' not in r and r['peer'] in benchpeers.FP32]
    if not fp32:
        return None
    best = min(fp32, key=lambda r: r['median_s'])
    for r in rows:
        if 'error' not in r:
            r['ratio'] = r['median_s'] / best['median_s']
            r['sgemm_ratio'] = (r['median_s'] * r['sgemm_gflops_median']
                                / (best['median_s'] * best['sgemm_gflops_median']))
    return best['peer']


def fmt(v, spec='%.2f'):
    return '-' if v is None else spec % v


def pct(v):
    return '-' if v is None else '%.0f%%' % (100 * v)


# --- one net, every peer ------------------------------------------------------------------

ROW = '%-17s %-22s %5s %7s %7s %8s %6s %6s %8s %7s %8s %6s'


def measure_net(name, size, peers, files, gflop, args, outdir, profile):
    """Run every peer on net `name` at `size`: (rows, one per peer with its figures, the
    output checked against the first Caffe peer's and the ratio to the fastest fp32 peer;
    that peer's name)."""
    h, w = size
    output = models.get(NETS[name]).outputs[0].score
    rows = []
    for peer in peers:
        spec = {'task': 'forward', 'peer': peer, 'net': name, 'height': h, 'width': w,
                'files': files, 'output': output, 'repeats': args.repeats, 'sgemm': args.gemm,
                'save': os.path.join(outdir, '%s-%dx%d-%s.npy' % (name, h, w, peer)),
                'profile': profile and peer.startswith('caffe')}
        r = run_worker(spec) if files.get('onnx') or peer not in benchpeers.ONNX_PEERS else \
            {'spec': spec, 'error': files.get('error') or 'no ONNX file'}
        r['peer'], r['flops'] = peer, gflop.get('%dx%d' % size, 0) * 1e9
        rows.append(summarize(r))
        print_row(name, size, r, rows)
    first = next((r for r in rows if r['peer'].startswith('caffe') and 'error' not in r), None)
    ref = None if first is None else np.load(first['spec']['save'])
    for r in (r for r in rows if 'error' not in r):
        r['bound'] = bound(r['peer'], r['precision'])
        if r is first:
            r['reference'] = True
        elif ref is not None:
            r['difference'] = output_difference(ref, np.load(r['spec']['save']))
        os.unlink(r['spec']['save'])
    return rows, rank(rows)


def print_row(name, size, r, rows):
    if len(rows) == 1:
        print('\n%s %dx%d, %s GFLOP' % (TITLES[name], size[0], size[1], fmt(r['flops'] / 1e9, '%.0f')))
        print(ROW % ('peer', 'runtime', 'prec', 'first s', 'min s', 'median s', 'GF/s',
                     'sgemm', 'peak MB', 'pass MB', 'others', 'wall s'))
    if 'error' in r:
        print('%-17s failed: %s' % (r['peer'], r['error']))
        return
    print(ROW % (r['peer'], r['runtime'], r['precision'], fmt(r['first_s']), fmt(r['min_s'], '%.3f'),
                 fmt(r['median_s'], '%.3f'), fmt(r.get('gflops_best'), '%.0f'),
                 fmt(r['sgemm_gflops_median'], '%.0f'), fmt(r['peak_rss_mb'], '%.0f'),
                 fmt(r['pass_peak_mb'], '%.0f'), pct(r['others_busy_max']), fmt(r['wall_s'], '%.0f')),
          flush=True)


def print_summary(name, size, rows):
    """Per peer: ratio to the fastest fp32 peer and the output check."""
    ok = [r for r in rows if 'error' not in r]
    if not ok:
        return
    print('  %s %dx%d: median / fastest fp32 peer\'s (sgemm-normalised), output vs Caffe:'
          % (TITLES[name], size[0], size[1]))
    for r in ok:
        diff = r.get('difference')
        flag = '' if diff is None or diff <= r['bound'] else '  MISMATCH (bound %g)' % r['bound']
        print('  %-17s %5.2fx (%5.2fx)  %s%s' % (r['peer'], r['ratio'], r['sgemm_ratio'],
              'the reference' if r.get('reference') else
              'no Caffe output to compare' if 'difference' not in r else
              'other output shape %s' % r['output_shape'] if diff is None else '%.1e' % diff, flag))


def print_profile(rows, repeats):
    for r in rows:
        if not r.get('layers'):
            continue
        print('\nper-layer forward, %s %dx%d, %s (each layer alone, best of %d):' % (
            r['spec']['net'], r['spec']['height'], r['spec']['width'], r['peer'], max(2, repeats)))
        total = sum(l['time_s'] for l in r['layers'])
        for l in r['layers']:
            if l['time_s'] >= 0.002:
                gf = l['flops'] / 1e9
                print('  %-24s %-14s %7.3f s %5.1f%%  %s' % (
                    l['layer'], l['type'], l['time_s'], 100 * l['time_s'] / total,
                    '%6.1f GFLOP %6.1f GFLOP/s' % (gf, gf / l['time_s']) if gf else ''))
        print('  %-39s %7.3f s' % ('sum', total))


# --- the README's tables from a run (--markdown) ------------------------------------------

def peer_title(rows, peer):
    """'OpenVINO 2026.4 (bf16)' etc.: the runtime of the first row of `peer` that ran."""
    r = next((r for r in rows if r['peer'] == peer and 'error' not in r), None)
    if r is None:
        return peer
    return r['runtime'] + ('' if r['precision'] == 'f32' else ' (%s, default)' % r['precision'])


def net_row(net, peer):
    """The row of `peer` in one net's results (None when it did not run)."""
    return next((r for r in net['rows'] if r['peer'] == peer), None)


def time_cell(net, r):
    """'median s, ratio x, peak GB', bold for the net's fastest fp32 peer."""
    if r is None or 'error' in r:
        return '' if r is None else 'failed'
    cell = '%.2f s, %.2fx, %.2f GB' % (r['median_s'], r['ratio'], r['peak_rss_mb'] / 1024)
    return '**%s**' % cell if r['peer'] == net['fastest'] else cell


def difference_cell(r):
    """max |difference| / max |Caffe| of one peer's output, flagged over its bound."""
    d = r.get('difference')
    return ('reference' if r.get('reference') else '-' if d is None else
            '%.1e%s' % (d, ' (over %g)' % r['bound'] if d > r['bound'] else ''))


def markdown(results):
    """The performance section's tables (Markdown) from a bench JSON's `results`."""
    env, sg = results['environment'], results.get('sgemm') or {}
    rows = [r for net in results['nets'] for r in net['rows']]
    peers = [p for p in benchpeers.PEERS if any(r['peer'] == p for r in rows)]
    out = ['%s, %s threads per peer; %s; %s, medians of %d passes after a warm-up%s.' % (
        env['cpu'], env['affinity_cpus'], env.get('blas') or blas_info(env, sg), results['time'],
        results['repeats'], ', ' + results['label'] if results.get('label') else ''), '',
        '| net (GFLOP) | ' + ' | '.join(peer_title(rows, p) for p in peers) + ' |',
        '|---' * (len(peers) + 1) + '|']
    for net in results['nets']:
        gflop = next((r['flops'] / 1e9 for r in net['rows'] if r.get('flops')), None)
        out.append('| %s %d x %d (%s) | %s |' % (
            TITLES[net['net']], net['size'][0], net['size'][1], fmt(gflop, '%.0f'),
            ' | '.join(time_cell(net, net_row(net, p)) for p in peers)))
    out += ['', 'Each cell: median time, ratio to the fastest fp32 peer (bold), peak memory '
            '(VmHWM of its process). Output against Caffe\'s, max |difference| / max |Caffe|:', '',
            '| net | ' + ' | '.join(peer_title(rows, p) for p in peers) + ' |',
            '|---' * (len(peers) + 1) + '|']
    for net in results['nets']:
        out.append('| %s | %s |' % (TITLES[net['net']], ' | '.join(
            difference_cell(net_row(net, p) or {}) for p in peers)))
    busy = [r.get('others_busy_max') or 0 for r in rows if 'error' not in r]
    if busy and max(busy) > 0.05:
        out += ['', 'Other processes used up to %.0f%% of the CPUs during timed passes: the times '
                'are not this machine\'s best.' % (100 * max(busy))]
    t = results.get('train')
    if t and 'error' not in t:
        out += ['', 'FCN-8s training iteration %s (Caffe): %.2f s median, %.2f GB.'
                % ('x'.join(map(str, t['size'])), t['median_s'], t['peak_rss_mb'] / 1024)]
    return '\n'.join(out)


# --- the command --------------------------------------------------------------------------

def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--quick', action='store_true',
                        help='smoke run: fcn8s at 256 x 256, 2 passes, 2048^3 sgemm')
    parser.add_argument('--repeats', type=int, help='timed passes per measurement (default 5, quick 2)')
    parser.add_argument('--nets', help='comma-separated, of %s (default all; quick fcn8s)' % ', '.join(NETS))
    parser.add_argument('--peers', default=','.join(benchpeers.DEFAULT_PEERS),
                        help='comma-separated, of %s (default %%(default)s)' % ', '.join(benchpeers.PEERS))
    parser.add_argument('--sizes', help='HxW inputs of the FCNs (default 500x500; quick 256x256)')
    parser.add_argument('--no-train', action='store_true', help='skip the training iteration')
    parser.add_argument('--profile', action='store_true', help="Caffe's per-layer times on the first net")
    parser.add_argument('--work', default=os.path.join(REPO, 'out', 'bench-nets'),
                        help='folder of the random-weights caffemodels and their ONNX exports')
    parser.add_argument('--label', default='', help='a note stored in the JSON (e.g. which build)')
    parser.add_argument('--out', default=os.path.join(REPO, 'out', 'bench.json'), help='JSON output')
    parser.add_argument('--markdown', metavar='JSON', help='print the README tables of a run and stop')
    parser.add_argument('--worker', help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.repeats = args.repeats or (2 if args.quick else 5)
    if args.repeats < 1:
        parser.error('--repeats must be at least 1')
    args.nets = [n.strip() for n in (args.nets or ('fcn8s' if args.quick else ','.join(NETS))).split(',')
                 if n.strip()]
    args.peers = [p.strip() for p in args.peers.split(',') if p.strip()]
    for kind, given, known in (('net', args.nets, NETS), ('peer', args.peers, benchpeers.PEERS)):
        for v in given:
            if v not in known:
                parser.error('unknown %s %r (known: %s)' % (kind, v, ', '.join(known)))
    args.sizes_hw = []
    for s in (args.sizes or ('256x256' if args.quick else '500x500')).split(','):
        try:
            h, w = (int(v) for v in s.lower().split('x'))
            assert h > 0 and w > 0
        except (ValueError, AssertionError):
            parser.error('--sizes wants HxW items like 500x500, got %r' % s)
        args.sizes_hw.append((h, w))
    args.gemm = 2048 if args.quick else 4096
    return args


def run_sgemm(args, env):
    sg = summarize(run_worker({'task': 'sgemm', 'n': args.gemm, 'repeats': max(3, args.repeats)}))
    if 'error' in sg:
        print('sgemm failed: %s' % sg['error'])
        return sg
    sg['sgemm_n'] = args.gemm
    sg['gflops_best'] = sg['flops'] / 1e9 / sg['min_s']
    sg['numpy_gflops_best'] = sg['flops'] / 1e9 / min(sg['numpy_times_s'])
    env['blas'] = blas_info(env, sg)
    print(env['blas'])
    return sg


def run_train(args, peers):
    h, w = next(s for s in args.sizes_hw)
    peer = next((p for p in peers if p.startswith('caffe')), None)
    if args.no_train or peer is None or 'fcn8s' not in args.nets:
        return None
    r = summarize(run_worker({'task': 'train', 'peer': peer, 'height': h, 'width': w,
                              'repeats': max(2, args.repeats // 2)}))
    r['size'] = [h, w]
    if 'error' in r:
        print('\ntrain fcn8s %dx%d failed: %s' % (h, w, r['error']))
    else:
        print('\ntrain fcn8s %dx%d (%s), one SGD iteration (forward + backward + update, %.0f GFLOP): '
              'first %.2f s, min %.2f s, median %.2f s; peak %.0f MB; others %s' % (
                  h, w, peer, r['gflop'], r['first_s'], r['min_s'], r['median_s'], r['peak_rss_mb'],
                  pct(r['others_busy_max'])))
    return r


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        return benchwork.worker(args.worker)
    if args.markdown:
        results = read_json(args.markdown)
        missing = [k for k in ('environment', 'nets', 'repeats', 'time') if k not in results]
        if missing:
            raise InputError('%s: not a run of this bench (no %s)' % (args.markdown, ', '.join(missing)))
        print(markdown(results))
        return 0
    t0 = time.time()
    env = environment()
    print('CPU: %s; nproc %s, %s CPUs for this process (every peer\'s threads); OPENBLAS_NUM_THREADS=%s '
          'OMP_NUM_THREADS=%s; load average %.1f' % (env['cpu'], env['nproc'], env['affinity_cpus'],
          env['OPENBLAS_NUM_THREADS'] or 'unset', env['OMP_NUM_THREADS'] or 'unset', env['load_before'][0]))
    print('Caffe: %s (project patches: %s)' % (env['caffe'], ', '.join(env['caffe_patches'] or []) or 'none'))
    print('Threads (N = %d, the CPUs this process may use): %s.' % (env['affinity_cpus'], benchpeers.THREADS))
    peers = available(args.peers)
    results = {'label': args.label, 'quick': args.quick, 'repeats': args.repeats, 'environment': env,
               'peers': peers, 'time': time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime()), 'nets': []}
    results['sgemm'] = run_sgemm(args, env)
    onnx = any(p in benchpeers.ONNX_PEERS for p in peers)
    with tempfile.TemporaryDirectory() as outdir:
        for i, name in enumerate(args.nets):
            sizes = args.sizes_hw if name in DYNAMIC else [deploy_size(name)]
            files, gflop, error = prepare(name, sizes, args.work, onnx)
            if error:
                print('%s: %s' % (name, error))
                files['error'] = error
            for j, size in enumerate(sizes):
                rows, fastest = measure_net(name, size, peers, files, gflop, args, outdir,
                                            args.profile and i == j == 0)
                results['nets'].append({'net': name, 'size': list(size), 'fastest': fastest, 'rows': rows})
                print_summary(name, size, rows)
    results['train'] = run_train(args, peers)
    print_profile([r for n in results['nets'] for r in n['rows']], args.repeats)
    finish(results, args, t0)
    failed = [r for n in results['nets'] for r in n['rows'] if 'error' in r]
    failed += [r for r in (results['sgemm'], results['train']) if r and 'error' in r]
    return 1 if failed else 0


def finish(results, args, t0):
    """The closing lines (load, warnings), the JSON."""
    rows = [r for n in results['nets'] for r in n['rows'] if 'error' not in r]
    mismatched = [r for r in rows if r.get('difference') is not None and r['difference'] > r['bound']]
    for r in mismatched:
        print('MISMATCH: %s on %s differs from Caffe by %.1e of the largest output (bound %g)'
              % (r['peer'], r['spec']['net'], r['difference'], r['bound']))
    busy = [r.get('others_busy_max') or 0 for r in rows + [results['sgemm'] or {}, results['train'] or {}]]
    results['wall_s'] = time.time() - t0
    results['environment']['load_after'] = os.getloadavg()
    print('\nwall time %.0f s; load average %.1f before, %.1f after' % (
        results['wall_s'], results['environment']['load_before'][0], results['environment']['load_after'][0]))
    if busy and max(busy) > 0.05:
        print('WARNING: other processes used up to %s of the CPUs during timed runs: times '
              'are slower than this machine can do; rerun on a quiet machine.' % pct(max(busy)))
    with atomic_write(args.out, 'w') as f:
        json.dump(results, f, indent=1)
    out = os.path.relpath(args.out)
    print('wrote %s (tables: tools/bench.py --markdown %s)' % (out, out))


if __name__ == '__main__':
    cli.run_cli(main)
