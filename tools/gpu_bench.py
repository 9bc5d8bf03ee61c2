"""GPU speed and memory of the FCN nets on this project's CUDA Caffe (run by tools/gpu_check.sh).

    python tools/gpu_bench.py                        # GPU 0, writes results/gpu.json
    python tools/gpu_bench.py --gpu 0 --repeats 20 --out results/gpu.json
    python tools/gpu_bench.py --dry                  # CPU, tiny inputs: checks the code paths

Each measurement runs in a fresh Python process (so each memory figure is that process's
own), with random weights (tools/benchwork.py's He-scaled normal) and no data on disk:

- forward: the FCN-8s deploy net (voc-fcn8s/deploy.prototxt) at 500 x 500: one warm-up
  pass, then --repeats passes; ms per image (min and median). A pass ends when pycaffe
  hands back the scores (21 x 500 x 500 floats copied to the host), so it is synchronous.
  The paper reports 175 ms for FCN-8s on a K40c (Table 1, 500 x 500).
- train: one SGD iteration (forward, backward, update) of the FCN-32s and the FCN-8s
  train nets at 500 x 500, Input layers in place of the Python data layer (benchwork.py's
  net_file), random labels; ms per iteration (min and median after a warm-up
  iteration); reading the loss afterwards synchronizes.
- memory: the GPU memory the process took for the net, cudaMemGetInfo's free memory
  right after the CUDA context was made minus the lowest free memory seen after any pass
  (Caffe keeps every buffer it allocates, so this is its peak), in MiB.

results/gpu.json also names the GPU, its driver and the CUDA runtime and driver versions.
"""
import argparse
import ctypes
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
import benchwork  # noqa: E402  (beside this file: the CPU benchmark's net builders and weights)
import cli  # noqa: E402
import guard  # noqa: E402
import project  # noqa: E402
import safewrite  # noqa: E402

MARK = 'GPU-BENCH-RESULT '
PAPER_FCN8S_MS = 175  # FCN-8s forward, 500 x 500, NVIDIA K40c (paper Table 1)


def free_mib():
    """cudaMemGetInfo's free GPU memory in MiB (None on CPU)."""
    lib = guard.cuda_runtime()
    if lib is None:
        return None
    free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
    if lib.cudaMemGetInfo(ctypes.byref(free), ctypes.byref(total)) != 0:
        return None
    return free.value / 2.0 ** 20


def timed(fn, repeats):
    """[ms] of `repeats` calls after one warm-up call, and the lowest free MiB seen after any."""
    fn()
    lowest, times = free_mib(), []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(1000 * (time.perf_counter() - t0))
        f = free_mib()
        lowest = f if lowest is None or f is None else min(lowest, f)
    return times, lowest


def task(spec):
    """One measurement in this process: {'times_ms': [...], 'gpu_mib': ..., ...}."""
    caffe = guard.import_caffe()
    guard.set_mode(spec['gpu'])
    base = free_mib()  # set_mode made the context (Caffe's SetDevice makes cuBLAS handles)
    with tempfile.TemporaryDirectory() as tmp:
        split = 'deploy' if spec['task'] == 'forward' else 'train'
        path = benchwork.net_file(spec['net'], split, spec['size'], spec['size'], tmp)
        if split == 'deploy':
            net = caffe.Net(path, caffe.TEST)
            step = net.forward
        else:
            solver = benchwork.sgd_solver(caffe, path, tmp)
            net = solver.net
            step = lambda: (solver.step(1), float(net.blobs['loss'].data))  # noqa: E731
    benchwork.fill_random(net)
    benchwork.random_inputs(net)
    times, lowest = timed(step, spec['repeats'])
    out = {'times_ms': times, 'min_ms': min(times), 'median_ms': statistics.median(times)}
    if base is not None and lowest is not None:
        out['gpu_mib'] = round(base - lowest, 1)
    if spec['task'] == 'train':
        out['loss'] = float(net.blobs['loss'].data)
    return out


def run_task(spec):
    """`spec` in a fresh interpreter; its result dict, or {'error': ...}."""
    cmd = [sys.executable, os.path.abspath(__file__), '--worker', json.dumps(spec)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO,
                          env=dict(os.environ, GLOG_minloglevel='2'))
    for line in proc.stdout.splitlines():
        if line.startswith(MARK):
            return dict(json.loads(line[len(MARK):]), spec=spec)
    tail = '\n'.join((proc.stderr or proc.stdout).strip().splitlines()[-6:])
    return {'spec': spec, 'error': 'exit %d: %s' % (proc.returncode, tail)}


def environment(gpu):
    """The GPU's name, driver and CUDA versions (nvidia-smi and the CUDA runtime)."""
    env = {'build': guard.build_info()}
    if gpu is None:
        return env
    q = subprocess.run(['nvidia-smi', '-i', str(gpu), '--query-gpu=name,driver_version,memory.total',
                        '--format=csv,noheader'], capture_output=True, text=True)
    if q.returncode == 0 and q.stdout.strip():
        name, driver, memory = [v.strip() for v in q.stdout.strip().splitlines()[0].split(',')]
        env.update(gpu=name, driver=driver, gpu_memory=memory)
    lib = guard.cuda_runtime()
    for key, fn in (('cuda_runtime', 'cudaRuntimeGetVersion'), ('cuda_driver', 'cudaDriverGetVersion')):
        v = ctypes.c_int(0)
        if lib is not None and getattr(lib, fn)(ctypes.byref(v)) == 0:
            env[key] = '%d.%d' % (v.value // 1000, v.value % 1000 // 10)
    return env


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--gpu', type=int, default=0, help='GPU id (default 0)')
    p.add_argument('--repeats', type=int, default=10, help='timed passes (default 10)')
    p.add_argument('--out', default=os.path.join(REPO, 'results', 'gpu.json'))
    p.add_argument('--dry', action='store_true',
                   help='CPU, 64 x 64, 1 repeat, no file written: checks the code paths')
    p.add_argument('--worker', help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(MARK + json.dumps(task(json.loads(args.worker))), flush=True)
        return 0
    gpu, size, repeats = (None, 64, 1) if args.dry else (args.gpu, 500, args.repeats)
    if gpu is not None:
        problem = guard.gpu_problem(gpu)
        if problem:
            raise project.InputError(problem)
    specs = [dict(task='forward', net='fcn8s'), dict(task='train', net='fcn32s'),
             dict(task='train', net='fcn8s')]
    results = []
    for spec in specs:
        spec.update(gpu=gpu, size=size, repeats=repeats)
        r = run_task(spec)
        results.append(r)
        print('%-8s %-7s %dx%d: %s' % (spec['task'], spec['net'], size, size,
                                     r.get('error') or 'median %.1f ms (min %.1f), GPU memory %s MiB'
                                     % (r['median_ms'], r['min_ms'], r.get('gpu_mib'))), flush=True)
    report = {'environment': environment(gpu), 'size': [size, size], 'repeats': repeats,
              'paper_fcn8s_forward_ms_k40c': PAPER_FCN8S_MS, 'results': results}
    if args.dry:
        return 1 if any('error' in r for r in results) else 0
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with safewrite.atomic_write(args.out, 'w') as f:
        json.dump(report, f, indent=1)
    print('wrote %s' % args.out)
    return 1 if any('error' in r for r in results) else 0


if __name__ == '__main__':
    cli.run_cli(main)
