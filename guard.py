"""The Caffe guard: pycaffe imported quietly and the process put on a device it can use.

- `import_caffe()`: imports pycaffe with Caffe's INFO logging silenced (set
  FCN_VERBOSE=1 to see it).
- `caffe_blas()`: the BLAS library pycaffe actually calls and, for OpenBLAS, its version,
  core (kernel family) and thread count, read from the loaded library itself.
- `set_mode(gpu)`: CPU by default; a GPU id only when this pycaffe was built with CUDA
  and the CUDA runtime sees that GPU (set_device aborts in a CPU build and, in a CUDA
  build, on a machine without the GPU): `gpu_problem(gpu)` says why one is unusable.

Nets and weights are checked before Caffe sees them one level up: netinit.py (a net
prototxt, walked as Caffe's Net::Init does) and netload.py (a caffemodel against its
net, and open_net, which does both).
"""
import os
import sys

import jsonfile
from project import InputError


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
        return jsonfile.read_json(path)
    except InputError:
        return {}


def mapped_files():
    """(start, end, path) of every file mapped into this process (/proc/self/maps)."""
    out = []
    with open('/proc/self/maps') as f:
        for line in f:
            parts = line.split(None, 5)
            if len(parts) == 6 and parts[5].startswith('/'):
                start, end = (int(x, 16) for x in parts[0].split('-'))
                out.append((start, end, parts[5].rstrip('\n')))
    return out


def openblas_report(path):
    """What the OpenBLAS library file `path` says of itself: {'path', 'version', 'config',
    'corename', 'threads'}; just {'path'} for another BLAS. numpy's bundled OpenBLAS names
    its functions scipy_openblas_get_config64_ etc., hence the prefixes and suffixes."""
    import ctypes
    lib = ctypes.CDLL(path)  # already loaded: dlopen returns it
    for prefix, suffix in (('', ''), ('scipy_', '64_'), ('scipy_', '')):
        try:
            config, corename, threads = (getattr(lib, '%sopenblas_get_%s%s' % (prefix, name, suffix))
                                         for name in ('config', 'corename', 'num_threads'))
        except AttributeError:
            continue
        config.restype = corename.restype = ctypes.c_char_p
        text = config().decode()
        return {'path': path, 'version': text.split()[1] if text.startswith('OpenBLAS ') else None,
                'config': text, 'corename': corename().decode(), 'threads': int(threads())}
    return {'path': path}


def caffe_blas():
    """The BLAS pycaffe calls, as openblas_report gives it: the mapped file that holds the
    cblas_sgemm libcaffe resolves (whatever the file's name or how the loader found it);
    {} where no libcaffe is mapped."""
    import ctypes
    import_caffe()
    maps = mapped_files()
    libcaffe = [p for _, _, p in maps if os.path.basename(p).startswith('libcaffe.so')]
    if not libcaffe:
        return {}
    # dlsym on libcaffe's handle searches libcaffe and then its dependencies, as its calls do
    sgemm = ctypes.cast(ctypes.CDLL(libcaffe[0]).cblas_sgemm, ctypes.c_void_p).value
    return openblas_report(next(p for start, end, p in maps if start <= sgemm < end))


def cuda_runtime():
    """The CUDA runtime library (ctypes) that this CUDA pycaffe loaded, None in a CPU build."""
    import ctypes
    import_caffe()
    cudart = sorted(set(p for _, _, p in mapped_files() if '/libcudart.so' in p))
    if not cudart:
        return None
    lib = ctypes.CDLL(cudart[0])  # the loaded one: dlopen finds it by its path
    lib.cudaGetErrorString.restype = ctypes.c_char_p
    return lib


def gpu_problem(gpu):
    """Why GPU `gpu` cannot be used by this pycaffe (one line), or None when it can.

    Caffe's set_device aborts the process on a GPU the CUDA runtime does not see, so the
    runtime is asked first: cudaGetDeviceCount of the libcudart that pycaffe loaded."""
    import ctypes
    if not build_info().get('cuda'):
        return ('--gpu %d: this pycaffe was built without CUDA (CPU only); rebuild on a '
                'machine with nvcc (make caffe) or drop --gpu' % gpu)
    lib = cuda_runtime()
    if lib is None:
        return '--gpu %d: pycaffe is a CUDA build but no libcudart is loaded' % gpu
    count = ctypes.c_int(0)
    err = lib.cudaGetDeviceCount(ctypes.byref(count))
    if err != 0:
        return ('--gpu %d: no usable CUDA GPU (CUDA runtime: %s); run on CPU without --gpu'
                % (gpu, lib.cudaGetErrorString(err).decode()))
    if not 0 <= gpu < count.value:
        return '--gpu %d: this machine has %d CUDA GPU(s), numbered from 0' % (gpu, count.value)
    return None


def set_mode(gpu=None):
    """CPU mode when `gpu` is None, else GPU `gpu`; InputError (gpu_problem) when this
    pycaffe or this machine cannot use it."""
    caffe = import_caffe()
    if gpu is None:
        caffe.set_mode_cpu()
        return 'cpu'
    problem = gpu_problem(gpu)
    if problem:
        raise InputError(problem)
    caffe.set_device(int(gpu))
    caffe.set_mode_gpu()
    return 'gpu %d' % gpu
