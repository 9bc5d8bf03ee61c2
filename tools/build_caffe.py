"""Build pycaffe (Caffe 1.0) for this project's Python, cache it, and link it into the venv.

    .venv/bin/python tools/build_caffe.py              # build if needed, link into the running venv
    .venv/bin/python tools/build_caffe.py --selftest   # then run Caffe's own Python test suite
    .venv/bin/python tools/build_caffe.py --info       # print the cache key and prefix, build nothing

`make caffe` and `make test` run this; you rarely need to call it by hand.

What it does, in order:
1. Source. Debian's `caffe` source package from bullseye (1.0.0+git20180821.99bd997-8),
   fetched by `apt-get source` through a private apt configuration: a temporary
   sources.list and lists directory inside the cache, with the Debian mirror read from
   this machine's own apt configuration (the system's sources are never edited; apt
   checks the package against the archive's signed index). Off Debian, point
   CAFFE_SOURCE at a Caffe tree or tarball instead, or CAFFE_DEBIAN_MIRROR at a mirror.
2. Patches. Debian's patch series, then the small fixes a current system needs (FIXES
   below, each with the reason), then any `tools/caffe-patches/*.patch` of this project.
3. Build packages. Missing Debian build packages are installed with apt-get (sudo when
   not root); if that is impossible the exact command is printed and the build stops.
4. BLAS. OpenBLAS built for this CPU alone from Debian trixie's `openblas` source package
   (fetched the same way; CAFFE_OPENBLAS_SOURCE: a tree or tarball instead), one TARGET
   picked from /proc/cpuinfo (OPENBLAS_TARGETS: Zen 4/5 -> COOPERLAKE, Sapphire Rapids
   -> SAPPHIRERAPIDS, other AVX-512 -> SKYLAKEX, AVX2 -> ZEN or HASWELL, else OpenBLAS's
   own detection), not DYNAMIC_ARCH, so OPENBLAS_CORETYPE changes nothing; BLAS only, C
   only, pthreads (OPENBLAS_MAKE says why), into the cache like Caffe. No fallback to the
   system's OpenBLAS: where the source cannot be fetched the build stops with one line.
5. Build. CMake, CPU with that OpenBLAS, Python layers on, against this Python and numpy;
   OpenCV/LevelDB/LMDB off. Where `nvcc` exists and a GPU's compute capability can be
   read (or FCN_CUDA_ARCH is set, e.g. 90), a CUDA build instead: code for that arch plus
   its PTX, USE_CUDNN off, USE_NCCL on; cuBLAS, cuRAND and NCCL (and the CUDA runtime) that
   the toolkit lacks come from NVIDIA's pinned PyPI wheels (CUDA_WHEELS), installed into the
   cache (the CPU code of a CUDA build still calls the OpenBLAS of step 4).
   FCN_CAFFE_CPU=1 forces the CPU build.
6. Cache. Installed under ${XDG_CACHE_HOME:-~/.cache}/fcn-caffe/<key>, where the key
   holds the source version, a digest of the patch set, the Python version, numpy's
   major version, the OpenBLAS entry's name (version, target, build digest) and
   cpu/cuda-arch; OpenBLAS sits beside it under its own key. Both are staged elsewhere
   and renamed into place only when complete, so an interrupted build leaves nothing a
   later run trusts.
7. Link. A `fcn-caffe.pth` file in the venv's site-packages puts the cached pycaffe on
   sys.path; its libraries find each other (and the OpenBLAS) by RUNPATH, so `import
   caffe` needs no LD_LIBRARY_PATH or PYTHONPATH; the check after linking fails if the
   OpenBLAS loaded is not the one built for it.

On 2 cores the first build takes about 4 minutes for OpenBLAS and 5 for Caffe (plus a
minute for build packages).
"""
import argparse
import fcntl
import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile

# The project's patches sit beside this file (tools/caffe-patches), found from its own place,
# never the current directory. The cache key hashes their names and contents, not the path,
# so moving the folder rebuilds nothing.
PATCH_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'caffe-patches')
SOURCE_PACKAGE = 'caffe'
SOURCE_VERSION = '1.0.0+git20180821.99bd997-8'
SOURCE_SUITE = 'bullseye'  # the last Debian release with caffe

# Boost.Python for a Python that Debian's boost-python was not built for (Debian builds it
# for its own python3 only; e.g. 3.12 on bookworm): built from the source package of the
# boost headers the build uses (bookworm's boost1.74), libs/python/src only, with the
# Debian patches to those files, into the cache.
BOOST_SOURCE = ('boost1.74', '1.74.0+ds1-21', 'bookworm')

# The BLAS: OpenBLAS from Debian trixie's source package (Debian's binary packages are
# DYNAMIC_ARCH builds, whose kernels the environment's OPENBLAS_CORETYPE can force down,
# e.g. to AVX2 on an AVX-512 CPU), built here for this CPU alone. Of Debian's patches only
# the upstream fix (blas_server.c thread safety) applies: the others adapt the package to
# Debian's liblapack and libblas.so.3 alternatives, which this build has none of.
OPENBLAS_SOURCE = ('openblas', '0.3.29+ds-3', 'trixie')
OPENBLAS_DEBIAN_PATCHES = ['39eb43d4410d0745ca2c78d1162d973abf3aa35b.patch']

# OpenBLAS's TARGET for this CPU, the first whose /proc/cpuinfo flags (and vendor) all
# match; no match: OpenBLAS's own detection of the build machine (getarch). OpenBLAS
# compiles a target with -march of its CPU, so the AVX-512 rows ask for every AVX-512
# extension that -march turns on. SKYLAKEX, COOPERLAKE and SAPPHIRERAPIDS share one fp32
# and fp64 GEMM kernel (16x4 / 16x2 AVX-512); they differ in bf16 (sbgemm) kernels and in
# -march. Zen 4 and Zen 5 have AVX-512 with bf16 and VNNI but no AMX or fp16: COOPERLAKE.
# AVX2 + FMA: ZEN on AMD (Haswell's kernels, AMD's cache sizes), HASWELL elsewhere.
AVX512 = {'avx512f', 'avx512cd', 'avx512bw', 'avx512dq', 'avx512vl'}
OPENBLAS_TARGETS = [
    ('SAPPHIRERAPIDS', None, AVX512 | {'avx512_vnni', 'avx512_bf16', 'avx512_fp16',
                                       'amx_tile', 'amx_bf16', 'amx_int8'}),
    ('COOPERLAKE', None, AVX512 | {'avx512_vnni', 'avx512_bf16'}),
    ('SKYLAKEX', None, AVX512),
    ('ZEN', 'AuthenticAMD', {'avx2', 'fma'}),
    ('HASWELL', None, {'avx2', 'fma'}),
]

# How OpenBLAS is built (make variables), besides TARGET:
# - NO_LAPACK, NOFORTRAN: Caffe calls only the BLAS (cblas_*), and the Debian source has
#   no LAPACK (+ds: lapack-netlib removed), so no Fortran compiler either.
# - BUILD_SINGLE, BUILD_DOUBLE: Caffe instantiates float and double; no complex kernels
#   (half the compile time).
# - USE_OPENMP=0 (pthreads, as Debian's): GNU OpenMP's threads do not survive fork(), so
#   an OpenMP OpenBLAS hangs in a child forked after its parent multiplied (data loaders,
#   subprocess pools); OpenBLAS's own pthread server re-creates itself after fork.
#   caffe-patches/01 makes the two pools share the cores: inside Caffe's parallel loops
#   OpenBLAS runs on the calling thread (BlasSingleThreaded).
# - LIBNAMESUFFIX: the library is libopenblas_fcn.so.0, a name of its own, so the dynamic
#   loader can never hand Caffe a libopenblas.so.0 some other module loaded first.
OPENBLAS_MAKE = ['NO_LAPACK=1', 'NOFORTRAN=1', 'BUILD_SINGLE=1', 'BUILD_DOUBLE=1',
                 'USE_OPENMP=0', 'USE_THREAD=1', 'NO_AFFINITY=1', 'LIBNAMESUFFIX=_fcn']
OPENBLAS_LIB = 'libopenblas_fcn.so'

# Debian (bookworm) names of what the build needs.
BUILD_PACKAGES = [
    'cmake', 'g++', 'make', 'libboost-filesystem-dev', 'libboost-system-dev',
    'libboost-thread-dev', 'libboost-python-dev', 'libgflags-dev', 'libgoogle-glog-dev',
    'libhdf5-dev', 'libprotobuf-dev', 'protobuf-compiler',
]

# (file, old text, new text, why, applies to 'all' or 'cuda').
# Each is applied exactly once; a file that already holds the new text is left alone.
FIXES = [
    ('src/caffe/util/io.cpp',
     'SetTotalBytesLimit(kProtoReadBytesLimit, 536870912)',
     'SetTotalBytesLimit(kProtoReadBytesLimit)',
     'protobuf >= 3.18 removed the two-argument CodedInputStream::SetTotalBytesLimit', 'all'),
    ('python/caffe/io.py', 'datum.data = arr.tostring()', 'datum.data = arr.tobytes()',
     'numpy 2 removed ndarray.tostring', 'all'),
    ('python/caffe/io.py', 'np.fromstring(datum.data, dtype=np.uint8)',
     'np.frombuffer(datum.data, dtype=np.uint8)',
     'numpy 2 removed the binary mode of np.fromstring', 'all'),
    ('cmake/Cuda.cmake', 'string(COMPARE LESS "${CUDA_VERSION}" "9.0" iscudaolderthan90)',
     'if(CUDA_VERSION VERSION_LESS "9.0")\n    set(iscudaolderthan90 TRUE)\n  else()\n'
     '    set(iscudaolderthan90 FALSE)\n  endif()',
     'compares versions as strings: "13.0" < "9.0", which drops every modern arch', 'cuda'),
    ('src/caffe/common.cpp',
     'LOG(INFO) << "Clock rate:                    " << prop.clockRate;', '',
     'CUDA 13 removed cudaDeviceProp::clockRate', 'cuda'),
    ('src/caffe/common.cpp',
     'LOG(INFO) << "Concurrent copy and execution: "\n      << (prop.deviceOverlap ? "Yes" : "No");', '',
     'CUDA 13 removed cudaDeviceProp::deviceOverlap', 'cuda'),
    ('src/caffe/common.cpp',
     'LOG(INFO) << "Kernel execution timeout:      "\n      << (prop.kernelExecTimeoutEnabled ? "Yes" : "No");', '',
     'CUDA 13 removed cudaDeviceProp::kernelExecTimeoutEnabled', 'cuda'),
    ('src/caffe/common.cpp',
     'LOG(ERROR) << "Cannot create Cublas handle. Cublas won\'t be available.";',
     'LOG(WARNING) << "Cannot create Cublas handle. Cublas won\'t be available.";',
     'a CUDA build without a usable GPU (CPU mode) logged this ERROR in every process, past '
     'GLOG_minloglevel=2, so each one-line error came with three more; GPU mode still fails '
     'loudly (SetDevice makes the handle again with CUBLAS_CHECK)', 'cuda'),
    ('src/caffe/common.cpp',
     'LOG(ERROR) << "Cannot create Curand generator. Curand won\'t be available.";',
     'LOG(WARNING) << "Cannot create Curand generator. Curand won\'t be available.";',
     'the same, for cuRAND (SetDevice makes it again with CURAND_CHECK)', 'cuda'),
    ('src/caffe/common.cpp',
     'LOG(ERROR) <<\n            "Curand not available. Skipping setting the curand seed.";',
     'LOG(WARNING) <<\n            "Curand not available. Skipping setting the curand seed.";',
     'the same, at caffe.set_random_seed in CPU mode without a GPU', 'cuda'),
]


# The CUDA libraries Caffe links besides the runtime, as NVIDIA's PyPI wheels, pinned to the
# CUDA 13.0 release nvcc 13.0 belongs to. A toolkit that lacks them (nvcc-only installs,
# the cuda-nvcc package) gets them from these, installed into the cache with pip, never into
# the system: (library name, wheel). The wheels hold nvidia/cu13/include and
# nvidia/cu13/lib with versioned .so names only, so the cache entry adds the unversioned
# links the linker looks for.
CUDA_WHEELS = [
    ('cudart', 'nvidia-cuda-runtime==13.0.88'),
    ('cublas', 'nvidia-cublas==13.0.2.14'),
    ('curand', 'nvidia-curand==10.4.0.35'),
    ('nccl', 'nvidia-nccl-cu13==2.28.9'),
]


class BuildError(Exception):
    pass


def log(msg):
    print('[build_caffe] %s' % msg, file=sys.stderr, flush=True)


def run(cmd, cwd=None, logfile=None, env=None):
    """Run `cmd`; on failure raise BuildError with the command and the log's last lines."""
    log('$ %s' % ' '.join(cmd))
    if logfile is None:
        rc = subprocess.call(cmd, cwd=cwd, env=env)
    else:
        with open(logfile, 'ab') as f:
            rc = subprocess.call(cmd, cwd=cwd, stdout=f, stderr=subprocess.STDOUT, env=env)
    if rc != 0:
        tail = ''
        if logfile:
            with open(logfile, 'rb') as f:
                tail = '\n'.join(f.read().decode('utf-8', 'replace').splitlines()[-25:])
        raise BuildError('command failed (exit %d): %s\n%s%s' % (
            rc, ' '.join(cmd), tail, '\nfull log: %s' % logfile if logfile else ''))


# --- what we build for ------------------------------------------------------------------

def cache_root():
    base = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
    return os.path.join(base, 'fcn-caffe')


def gpu_arch():
    """'90'-style compute capability of the first GPU, None for a CPU build."""
    if os.environ.get('FCN_CAFFE_CPU', '') not in ('', '0'):
        return None
    if not shutil.which('nvcc'):
        return None
    arch = os.environ.get('FCN_CUDA_ARCH')
    if not arch and shutil.which('nvidia-smi'):
        try:
            out = subprocess.run(['nvidia-smi', '--query-gpu=compute_cap', '--format=csv,noheader'],
                                 capture_output=True, text=True, timeout=60).stdout.split()
            arch = out[0].replace('.', '') if out else None
        except (OSError, subprocess.SubprocessError):
            arch = None
    if not arch:
        log('nvcc found but no GPU compute capability (nvidia-smi failed; set FCN_CUDA_ARCH '
            'to force one): building for CPU')
    return arch or None


def cuda_toolkit():
    """The CUDA toolkit's root (holding bin/nvcc and include/cuda_runtime.h), for a CUDA build.
    `nvcc` on PATH may be a wrapper script (/usr/local/bin/nvcc), so its parent is not trusted
    until it holds the headers."""
    nvcc = shutil.which('nvcc')
    candidates = [os.environ.get('CUDA_HOME'), os.environ.get('CUDA_PATH'),
                  nvcc and os.path.dirname(os.path.dirname(os.path.realpath(nvcc))),
                  '/usr/local/cuda']
    for root in candidates:
        if root and os.path.isfile(os.path.join(root, 'include', 'cuda_runtime.h')) \
                and os.access(os.path.join(root, 'bin', 'nvcc'), os.X_OK):
            return os.path.realpath(root)
    raise BuildError('nvcc found but no CUDA toolkit with include/cuda_runtime.h (tried %s); '
                     'set CUDA_HOME, or FCN_CAFFE_CPU=1 for a CPU build'
                     % ', '.join(c for c in candidates if c))


def toolkit_has(toolkit, lib):
    if lib == 'nccl':  # NCCL is never part of the toolkit; a system install counts
        return bool(glob.glob('/usr/lib/*/libnccl.so') or glob.glob('/usr/local/lib/libnccl.so')) \
            and os.path.isfile('/usr/include/nccl.h')
    return os.path.isfile(os.path.join(toolkit, 'lib64', 'lib%s.so' % lib))


def wheels_needed(toolkit):
    return [wheel for lib, wheel in CUDA_WHEELS if not toolkit_has(toolkit, lib)]


def cuda_wheel_libs(wheels):
    """Install `wheels` (pinned) into the cache once; returns (include dir, lib dir), the lib
    dir holding an unversioned link for each versioned .so. Staged and renamed, like builds.
    (cuBLAS and cuRAND install under nvidia/cu13/, NCCL under nvidia/nccl/.)"""
    digest = hashlib.sha256(repr(sorted(wheels)).encode()).hexdigest()[:12]
    dest = os.path.join(cache_root(), 'cuda-wheels-%s' % digest)
    lib = os.path.join(dest, 'links')
    if os.path.isfile(os.path.join(dest, 'wheels.json')):
        return sorted(glob.glob(os.path.join(dest, 'nvidia', '*', 'include'))), lib
    stage = tempfile.mkdtemp(dir=cache_root(), prefix='.work-wheels-')
    try:
        log('CUDA libraries from PyPI wheels into %s: %s' % (dest, ' '.join(wheels)))
        run([sys.executable, '-m', 'pip', 'install', '-q', '--disable-pip-version-check',
             '--no-deps', '--only-binary=:all:', '--target', stage] + wheels)
        links = os.path.join(stage, 'links')
        os.makedirs(links)
        for so in sorted(glob.glob(os.path.join(stage, 'nvidia', '*', 'lib', 'lib*.so.*'))):
            # libX.so for the linker, libX.so.N (the SONAME) for the loader: the build's
            # RUNPATH names this directory; relative links, since the entry is renamed
            for name in (os.path.basename(so).split('.so.')[0] + '.so', os.path.basename(so)):
                if not os.path.lexists(os.path.join(links, name)):
                    os.symlink(os.path.relpath(so, links), os.path.join(links, name))
        with open(os.path.join(stage, 'wheels.json'), 'w') as f:
            json.dump(wheels, f)
        if os.path.exists(dest):
            shutil.rmtree(dest)  # no wheels.json: incomplete, not ours to trust
        os.replace(stage, dest)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return sorted(glob.glob(os.path.join(dest, 'nvidia', '*', 'include'))), lib


def cuda_flags(arch):
    """CMake flags of a CUDA build: sm_`arch` code plus PTX, cuDNN off, NCCL on, and the
    toolkit and (where it lacks them) the wheels' libraries named explicitly."""
    toolkit = cuda_toolkit()
    flags = ['-DCPU_ONLY=OFF', '-DUSE_CUDNN=OFF', '-DUSE_NCCL=ON', '-DCUDA_ARCH_NAME=Manual',
             '-DCUDA_ARCH_BIN=%s' % arch, '-DCUDA_ARCH_PTX=%s' % arch,
             '-DCUDA_TOOLKIT_ROOT_DIR=%s' % toolkit,
             '-DCUDA_NVCC_EXECUTABLE=%s' % os.path.join(toolkit, 'bin', 'nvcc')]
    wheels = wheels_needed(toolkit)
    if wheels:
        includes, lib = cuda_wheel_libs(wheels)
        # nvcc sees the headers through CUDA_NVCC_FLAGS, g++ through CMAKE_CXX_FLAGS
        flags += ['-DCUDA_NVCC_FLAGS=%s' % ';'.join('-I' + i for i in includes),
                  '-DCMAKE_CXX_FLAGS=%s' % ' '.join('-I' + i for i in includes)]
        # FindCUDA forgets -DCUDA_cublas_LIBRARY=... (it clears its cache entries when it
        # first sees the toolkit), but its searches fall back on CMAKE_LIBRARY_PATH
        flags.append('-DCMAKE_LIBRARY_PATH=%s' % lib)
        if 'nccl' in dict(CUDA_WHEELS) and not toolkit_has(toolkit, 'nccl'):
            flags += ['-DNCCL_INCLUDE_DIR=%s' % [i for i in includes if '/nccl/' in i][0],
                      '-DNCCL_LIBRARIES=%s' % os.path.join(lib, 'libnccl.so')]
    return flags


def project_patches():
    return sorted(glob.glob(os.path.join(PATCH_DIR, '*.patch')))


def patch_digest(cuda):
    h = hashlib.sha256()
    h.update(repr([f for f in FIXES if f[4] == 'all' or cuda]).encode())
    if cuda:  # the pinned libraries and flags are part of what a CUDA build is
        h.update(repr(CUDA_WHEELS).encode() + b'nccl-on')
    for p in project_patches():
        with open(p, 'rb') as f:
            h.update(os.path.basename(p).encode() + f.read())
    return h.hexdigest()[:12]


def build_key(arch):
    import numpy
    py = '%d.%d' % sys.version_info[:2]
    source = os.environ.get('CAFFE_SOURCE')
    version = SOURCE_VERSION if not source else 'src-' + hashlib.sha256(
        os.path.abspath(source).encode()).hexdigest()[:8]
    mode = 'cuda%s' % arch if arch else 'cpu'
    return 'caffe-%s-py%s-np%s-%s-%s-%s' % (
        version.replace('+', '_'), py, numpy.__version__.split('.')[0],
        openblas_key(openblas_target()), mode, patch_digest(bool(arch)))


# --- build packages -----------------------------------------------------------------------

def python_dev_ok():
    return os.path.isfile(os.path.join(sysconfig.get_paths()['include'], 'Python.h'))


def missing_packages():
    if not shutil.which('dpkg-query'):
        return []
    missing = []
    for pkg in BUILD_PACKAGES:
        r = subprocess.run(['dpkg-query', '-W', '-f=${Status}', pkg], capture_output=True, text=True)
        if 'install ok installed' not in r.stdout:
            missing.append(pkg)
    return missing  # boost-python for this Python version: boost_python_dir()


def install_packages(pkgs):
    if not pkgs:
        return
    if os.geteuid() == 0:
        prefix = []
    elif shutil.which('sudo') and subprocess.call(['sudo', '-n', 'true'], stderr=subprocess.DEVNULL) == 0:
        prefix = ['sudo', '-n']
    else:
        prefix = None
    cmd = 'apt-get update && apt-get install -y --no-install-recommends ' + ' '.join(pkgs)
    if prefix is None or not shutil.which('apt-get'):
        raise BuildError('missing build packages; install them, then run again:\n    sudo sh -c "%s"' % cmd)
    env = dict(os.environ, DEBIAN_FRONTEND='noninteractive')
    try:
        run(prefix + ['apt-get', 'update', '-q'], env=env)
        run(prefix + ['apt-get', 'install', '-y', '-q', '--no-install-recommends'] + pkgs, env=env)
    except BuildError as e:
        raise BuildError('%s\ninstalling build packages failed; run this yourself, then again:\n'
                         '    sudo sh -c "%s"' % (str(e).splitlines()[0], cmd))


# --- source -------------------------------------------------------------------------------

def debian_mirror(paths=None):
    """The Debian archive URL this machine's apt already uses (not the security archive),
    read from one-line (`deb URL suite ...`) and deb822 (`URIs: URL`) source files."""
    if os.environ.get('CAFFE_DEBIAN_MIRROR'):
        return os.environ['CAFFE_DEBIAN_MIRROR'].rstrip('/')
    candidates = []
    if paths is None:
        paths = ['/etc/apt/sources.list'] + sorted(glob.glob('/etc/apt/sources.list.d/*'))
    for path in paths:
        if not (path.endswith('.list') or path.endswith('.sources') or path.endswith('sources.list')):
            continue
        try:
            with open(path) as f:
                text = f.read()
        except OSError:
            continue
        for line in text.splitlines():
            line = line.split('#', 1)[0].strip()
            m = re.match(r'^(?:deb|deb-src)\s+(?:\[[^\]]*\]\s+)?(\S+)', line) or re.match(r'^URIs:\s*(.+)$', line)
            if m:
                candidates.extend(m.group(1).split())
    for uri in candidates:
        uri = uri.rstrip('/')
        if re.search(r'/debian$', uri) and 'security' not in uri:
            return uri
    raise BuildError('no Debian mirror found in /etc/apt; set CAFFE_DEBIAN_MIRROR to a Debian '
                     'archive URL, or CAFFE_SOURCE to a Caffe source tree or tarball')


def fetch_debian_source(downloads, package=SOURCE_PACKAGE, version=SOURCE_VERSION,
                        suite=SOURCE_SUITE):
    """Download a source package's .dsc/.orig/.debian files into `downloads` (kept for
    later builds); caffe's by default."""
    dsc = os.path.join(downloads, '%s_%s.dsc' % (package, version))
    if os.path.exists(dsc) and glob.glob(os.path.join(downloads, '%s_%s.debian.tar.*'
                                                      % (package, version))):
        return downloads
    apt = os.path.join(downloads, 'apt')
    os.makedirs(os.path.join(apt, 'lists', 'partial'), exist_ok=True)
    with open(os.path.join(apt, 'sources.list'), 'w') as f:
        f.write('deb-src %s %s main\n' % (debian_mirror(), suite))
    opts = ['-o', 'Dir::Etc::SourceList=%s' % os.path.join(apt, 'sources.list'),
            '-o', 'Dir::Etc::SourceParts=/dev/null',
            '-o', 'Dir::State::Lists=%s' % os.path.join(apt, 'lists'),
            '-o', 'Dir::Cache=%s' % os.path.join(apt, 'cache')]
    if os.geteuid() == 0:  # apt's _apt sandbox user cannot write into root's cache
        opts += ['-o', 'APT::Sandbox::User=root']
    run(['apt-get', '-q'] + opts + ['update'])
    tmp = tempfile.mkdtemp(dir=downloads, prefix='.fetch-')
    run(['apt-get', '-q'] + opts + ['source', '--download-only',
                                    '%s=%s' % (package, version)], cwd=tmp)
    for name in os.listdir(tmp):  # move into place only once all files arrived
        os.replace(os.path.join(tmp, name), os.path.join(downloads, name))
    os.rmdir(tmp)
    return downloads


def unpack(archive, dest):
    with tarfile.open(archive) as t:
        t.extractall(dest, filter='data') if hasattr(tarfile, 'data_filter') else t.extractall(dest)


def source_tree(work, given, variable, package, version):
    """The unpacked source under `work`/source: from `given` (the environment variable
    `variable`: a tree or a tarball) or else from Debian's source package; returns its path."""
    src = os.path.join(work, 'source')
    tmp = os.path.join(work, 'unpack')
    if given:
        if os.path.isdir(given):
            shutil.copytree(given, src, symlinks=True)
            return src
        if not os.path.isfile(given):
            raise BuildError('%s=%s: no such file or directory' % (variable, given))
        unpack(given, tmp)
    else:
        downloads = os.path.join(cache_root(), 'downloads')
        orig = glob.glob(os.path.join(downloads, '%s_%s.orig.tar.*' % (package, version.split('-')[0])))
        deb = glob.glob(os.path.join(downloads, '%s_%s.debian.tar.*' % (package, version)))
        if not orig or not deb:
            raise BuildError('source download incomplete in %s' % downloads)
        unpack(orig[0], tmp)
    tops = os.listdir(tmp)
    shutil.move(os.path.join(tmp, tops[0]) if len(tops) == 1 else tmp, src)
    if not given:
        unpack(deb[0], src)
    return src


def prepare_source(work, cuda):
    """A patched Caffe tree under `work`; returns its path."""
    given = os.environ.get('CAFFE_SOURCE')
    if not given:
        downloads = os.path.join(cache_root(), 'downloads')
        os.makedirs(downloads, exist_ok=True)
        fetch_debian_source(downloads)
    src = source_tree(work, given, 'CAFFE_SOURCE', SOURCE_PACKAGE, SOURCE_VERSION)
    if not os.path.isfile(os.path.join(src, 'CMakeLists.txt')):
        raise BuildError('%s does not look like a Caffe source tree (no CMakeLists.txt)' % src)
    series = os.path.join(src, 'debian', 'patches', 'series')
    if os.path.isfile(series):
        for name in open(series).read().split():
            if not name.startswith('#'):
                log('debian patch %s' % name)
                run(['patch', '-p1', '-s', '-N', '-i', os.path.join(src, 'debian', 'patches', name)], cwd=src)
    for path, old, new, why, when in FIXES:
        if when == 'cuda' and not cuda:
            continue
        full = os.path.join(src, path)
        text = open(full).read()
        if old in text:
            log('fix %s: %s' % (path, why))
            with open(full, 'w') as f:
                f.write(text.replace(old, new, 1))
        elif not new or new not in text:
            raise BuildError('fix does not apply to %s (%s): source differs from %s'
                             % (path, why, SOURCE_VERSION))
    for p in project_patches():
        log('project patch %s' % os.path.basename(p))
        run(['patch', '-p1', '-s', '-N', '-i', p], cwd=src)
    return src


def debian_boost_python():
    """Debian's libboost_python3X.so for this Python, or None."""
    found = glob.glob('/usr/lib/*/libboost_python%d%d.so' % sys.version_info[:2])
    return found[0] if found else None


def src_only_patch(patch_file):
    """The parts of a Debian patch that change libs/python/src/ (the headers it also patches
    are the installed ones, already patched by Debian)."""
    keep, part = [], []
    for line in open(patch_file, encoding='utf-8', errors='replace').read().splitlines(True):
        if line.startswith('--- '):
            if part and part[1].startswith('+++ b/libs/python/src/'):
                keep += part
            part = []
        part.append(line)
    if len(part) > 1 and part[1].startswith('+++ b/libs/python/src/'):
        keep += part
    return ''.join(keep)


def boost_python_dir(jobs):
    """The directory of libboost_python3X.so for this Python: Debian's, else one built here
    from BOOST_SOURCE into the cache (27 files, about a minute; staged and renamed)."""
    if debian_boost_python():
        return None
    package, version, suite = BOOST_SOURCE
    py = '%d%d' % sys.version_info[:2]
    dest = os.path.join(cache_root(), 'boost-python%s-%s' % (py, version.replace('+', '_')))
    lib = os.path.join(dest, 'libboost_python%s.so' % py)
    if os.path.isfile(lib):
        return dest
    downloads = os.path.join(cache_root(), 'downloads')
    os.makedirs(downloads, exist_ok=True)
    fetch_debian_source(downloads, package, version, suite)
    work = tempfile.mkdtemp(dir=cache_root(), prefix='.work-boost-')
    try:
        log('building Boost.Python for Python %s from %s %s (Debian has none for it)'
            % (py, package, version))
        orig = glob.glob(os.path.join(downloads, '%s_%s.orig.tar.*' % (package, version.split('-')[0])))
        run(['tar', '-xf', orig[0], '--wildcards', '*/libs/python/src/*'], cwd=work)
        unpack(glob.glob(os.path.join(downloads, '%s_%s.debian.tar.*' % (package, version)))[0], work)
        top = [d for d in os.listdir(work) if d != 'debian'][0]
        src = os.path.join(work, top)
        for name in open(os.path.join(work, 'debian', 'patches', 'series')).read().split():
            part = src_only_patch(os.path.join(work, 'debian', 'patches', name))
            if part:
                log('boost patch %s (libs/python/src part)' % name)
                subprocess.run(['patch', '-p1', '-s', '-N'], input=part.encode(), cwd=src, check=True)
        cpps = sorted(f for f in glob.glob(os.path.join(src, 'libs', 'python', 'src', '**', '*.cpp'),
                                           recursive=True) if '/numpy/' not in f)
        objs = [os.path.join(work, 'o%03d.o' % i) for i in range(len(cpps))]
        cmds = [['g++', '-c', '-O2', '-fPIC', '-DBOOST_PYTHON_SOURCE', '-DBOOST_PYTHON_DYN_LINK',
                 '-I' + sysconfig.get_paths()['include'], c, '-o', o] for c, o in zip(cpps, objs)]
        import concurrent.futures
        with concurrent.futures.ThreadPoolExecutor(int(jobs)) as pool:
            list(pool.map(run, cmds))
        stage = os.path.join(work, 'stage')
        os.makedirs(stage)
        soname = 'libboost_python%s.so.%s' % (py, version.split('+')[0])
        # no libpython in it, as Debian's: the interpreter provides those symbols
        run(['g++', '-shared', '-Wl,-soname,' + soname, '-o', os.path.join(stage, soname)] + objs)
        os.symlink(soname, os.path.join(stage, 'libboost_python%s.so' % py))
        os.replace(stage, dest)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return dest


# --- the BLAS -----------------------------------------------------------------------------

def cpu_flags(path='/proc/cpuinfo'):
    """(vendor, set of flags) of the first CPU in /proc/cpuinfo; ('', set()) without one
    (non-x86 kernels write no flags line)."""
    vendor = ''
    try:
        with open(path) as f:
            for line in f:
                key, _, value = line.partition(':')
                if key.strip() == 'vendor_id':
                    vendor = value.strip()
                elif key.strip() == 'flags':
                    return vendor, set(value.split())
    except OSError:
        pass
    return vendor, set()


def openblas_target(cpu=None):
    """OpenBLAS's TARGET for `cpu` ((vendor, flags), default this CPU) from OPENBLAS_TARGETS;
    None: OpenBLAS detects the build machine itself."""
    vendor, flags = cpu or cpu_flags()
    for target, need_vendor, need in OPENBLAS_TARGETS:
        if need <= flags and need_vendor in (None, vendor):
            return target
    return None


def openblas_make(target):
    """make's variables for building OpenBLAS for `target` (None: detected)."""
    threads = max(128, os.cpu_count() or 1)  # the most threads it can run (MAX_CPU_NUMBER)
    return OPENBLAS_MAKE + ['NUM_THREADS=%d' % threads] + (['TARGET=%s' % target] if target else [])


def openblas_key(target):
    """The cache entry's name: library, version, target, and a digest of how it is built."""
    given = os.environ.get('CAFFE_OPENBLAS_SOURCE')
    version = OPENBLAS_SOURCE[1] if not given else 'src-' + hashlib.sha256(
        os.path.abspath(given).encode()).hexdigest()[:8]
    digest = hashlib.sha256(repr((openblas_make(target), OPENBLAS_DEBIAN_PATCHES)).encode())
    return 'openblas%s-%s-%s' % (version.replace('+', '_'), (target or 'detected').lower(),
                                 digest.hexdigest()[:8])


def openblas_prefix(target):
    return os.path.join(cache_root(), openblas_key(target))


def openblas_source(work):
    """OpenBLAS's source tree under `work`: CAFFE_OPENBLAS_SOURCE (a tree or tarball), else
    Debian's source package (OPENBLAS_SOURCE) with its upstream fix. No fallback to the
    system's OpenBLAS: that is the DYNAMIC_ARCH build this one replaces."""
    given = os.environ.get('CAFFE_OPENBLAS_SOURCE')
    package, version, suite = OPENBLAS_SOURCE
    if not given:
        downloads = os.path.join(cache_root(), 'downloads')
        os.makedirs(downloads, exist_ok=True)
        try:
            if not shutil.which('apt-get'):
                raise BuildError('no apt-get on this machine')
            fetch_debian_source(downloads, package, version, suite)
        except BuildError as e:
            raise BuildError("cannot fetch Debian's %s %s source (%s); set CAFFE_OPENBLAS_SOURCE "
                             'to an OpenBLAS source tree or tarball (0.3.29 or later)'
                             % (package, version, str(e).splitlines()[0]))
    src = source_tree(work, given, 'CAFFE_OPENBLAS_SOURCE', package, version)
    if not os.path.isfile(os.path.join(src, 'Makefile.rule')):
        raise BuildError('%s does not look like an OpenBLAS source tree (no Makefile.rule)'
                         % (given or src))
    if not given:
        for name in OPENBLAS_DEBIAN_PATCHES:
            log('openblas debian patch %s' % name)
            run(['patch', '-p1', '-s', '-N', '-i', os.path.join(src, 'debian', 'patches', name)],
                cwd=src)
    return src


def openblas_facts(path):
    """{'config', 'corename', 'threads'} of the OpenBLAS library file `path`, read from the
    library itself (its openblas_get_config / _corename / _num_threads)."""
    import ctypes
    lib = ctypes.CDLL(path)
    lib.openblas_get_config.restype = ctypes.c_char_p
    lib.openblas_get_corename.restype = ctypes.c_char_p
    return {'config': lib.openblas_get_config().decode(),
            'corename': lib.openblas_get_corename().decode(),
            'threads': int(lib.openblas_get_num_threads())}


def openblas_dir(jobs):
    """This CPU's OpenBLAS in the cache, built once (about 4 minutes on 2 cores; staged and
    renamed like Caffe); returns its prefix (include/cblas.h, lib/OPENBLAS_LIB)."""
    target = openblas_target()
    dest = openblas_prefix(target)
    record = os.path.join(dest, 'openblas_build.json')
    if os.path.isfile(record):
        return dest
    work = tempfile.mkdtemp(dir=cache_root(), prefix='.work-openblas-')
    try:
        src = openblas_source(work)
        logfile = os.path.join(cache_root(), 'build-openblas.log')
        open(logfile, 'w').close()
        make = ['make', 'MAKE_NB_JOBS=' + jobs] + openblas_make(target)
        log('building OpenBLAS for %s: about 4 minutes on 2 cores (log: %s)'
            % (target or 'the CPU it detects', logfile))
        run(make + ['libs', 'shared'], cwd=src, logfile=logfile)
        stage = os.path.join(work, 'stage')
        run(make + ['PREFIX=' + dest, 'DESTDIR=' + stage, 'NO_STATIC=1', 'install'], cwd=src,
            logfile=logfile)
        staged = stage + dest
        facts = openblas_facts(os.path.join(staged, 'lib', OPENBLAS_LIB))
        if target and facts['corename'].upper() != target:
            raise BuildError('OpenBLAS built for %s reports core %s' % (target, facts['corename']))
        info = {'source': os.environ.get('CAFFE_OPENBLAS_SOURCE') or '%s %s' % OPENBLAS_SOURCE[:2],
                'target': target, 'make': openblas_make(target), 'config': facts['config'],
                'corename': facts['corename'], 'lib': os.path.join(dest, 'lib', OPENBLAS_LIB)}
        with open(os.path.join(staged, 'openblas_build.json'), 'w') as f:
            json.dump(info, f, indent=1)
        if os.path.exists(dest):
            shutil.rmtree(dest)  # no record: incomplete, not ours to trust
        os.replace(staged, dest)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return dest


# --- build --------------------------------------------------------------------------------

def python_library():
    libdir = sysconfig.get_config_var('LIBDIR') or ''
    for name in (sysconfig.get_config_var('LDLIBRARY'), 'libpython%d.%d.so' % sys.version_info[:2]):
        if name and os.path.isfile(os.path.join(libdir, name)) and name.endswith('.so'):
            return os.path.join(libdir, name)
    multiarch = sysconfig.get_config_var('MULTIARCH') or ''
    for cand in glob.glob('/usr/lib/%s/libpython%d.%d*.so*' % ((multiarch,) + sys.version_info[:2])):
        return cand
    raise BuildError('no shared libpython%d.%d found for %s; install python3-dev or use a '
                     'Python built with --enable-shared' % (sys.version_info[:2] + (sys.executable,)))


def cmake_flags(prefix, arch, boost_python=None, openblas=None):
    """CMake's command-line options for installing into `prefix` (CPU when `arch` is None);
    `boost_python`: a directory with our own libboost_python3X.so (boost_python_dir);
    `openblas`: the prefix of our OpenBLAS (openblas_dir), else CMake finds the system's."""
    import numpy
    flags = [
        '-DCMAKE_BUILD_TYPE=Release', '-DBLAS=Open', '-Dpython_version=3',
        '-DUSE_OPENCV=OFF', '-DUSE_LEVELDB=OFF', '-DUSE_LMDB=OFF',
        '-DBUILD_docs=OFF', '-DBUILD_matlab=OFF', '-DBUILD_python=ON', '-DBUILD_python_layer=ON',
        '-DCMAKE_INSTALL_PREFIX=%s' % prefix,
        '-DPYTHON_EXECUTABLE=%s' % sys.executable,
        '-DPYTHON_INCLUDE_DIR=%s' % sysconfig.get_paths()['include'],
        '-DPYTHON_LIBRARY=%s' % python_library(),
        '-DNUMPY_INCLUDE_DIR=%s' % numpy.get_include(),
    ]
    if arch:
        flags += cuda_flags(arch)  # cuBLAS on the GPU; the CPU code still calls OpenBLAS
    else:
        flags += ['-DCPU_ONLY=ON', '-DUSE_NCCL=OFF']
    if openblas:
        # given as files, Caffe's FindOpenBLAS searches nothing; the library's directory
        # lands in the RUNPATH (CMAKE_INSTALL_RPATH_USE_LINK_PATH in Caffe's Misc.cmake)
        flags += ['-DOpenBLAS_INCLUDE_DIR=%s' % os.path.join(openblas, 'include'),
                  '-DOpenBLAS_LIB=%s' % os.path.join(openblas, 'lib', OPENBLAS_LIB)]
    if boost_python:
        # Debian's cmake-link-correct-python-lib patch asks Boost for the component
        # "python${python_version}" without dots: with python_version=3 that is python3, which
        # Boost's own CMake config maps to Debian's python3X but FindBoost looks up as the file
        # libboost_python3.so, absent here. Our file is libboost_python3X.so, so the component
        # must be python3X: python_version=3.X (Caffe reads python_version nowhere else but
        # for the >= 3 test). The file itself is given: FindBoost searches only the directory
        # where it found the earlier components (system, thread, ...: Debian's), not
        # BOOST_LIBRARYDIR, once Boost_LIBRARY_DIR_RELEASE is set.
        py = '%d%d' % sys.version_info[:2]
        flags[flags.index('-Dpython_version=3')] = '-Dpython_version=%d.%d' % sys.version_info[:2]
        flags += ['-DBoost_NO_BOOST_CMAKE=ON', '-DBOOST_LIBRARYDIR=%s' % boost_python,
                  '-DBoost_PYTHON%s_LIBRARY_RELEASE=%s'
                  % (py, os.path.join(boost_python, 'libboost_python%s.so' % py))]
    return flags


def build(prefix, arch):
    import numpy
    work = tempfile.mkdtemp(dir=cache_root(), prefix='.work-')
    try:
        src = prepare_source(work, bool(arch))
        bdir = os.path.join(work, 'build')
        os.makedirs(bdir)
        logfile = os.path.join(cache_root(), 'build.log')
        open(logfile, 'w').close()
        jobs = str(int(os.environ.get('FCN_BUILD_JOBS') or (os.cpu_count() or 1) + 1))
        openblas = openblas_dir(jobs)
        flags = cmake_flags(prefix, arch, boost_python_dir(jobs), openblas)
        log('configuring (log: %s)' % logfile)
        run(['cmake', src] + flags, cwd=bdir, logfile=logfile)
        log('compiling with %s jobs: about 5 minutes on 2 cores' % jobs)
        run(['make', '-j' + jobs, 'caffe', 'pycaffe'], cwd=bdir, logfile=logfile)
        stage = os.path.join(work, 'stage')
        run(['make', 'install', 'DESTDIR=' + stage, '-j' + jobs], cwd=bdir, logfile=logfile)
        staged = stage + prefix
        pkg = os.path.join(staged, 'lib', 'python3', 'dist-packages')
        if not os.path.isfile(os.path.join(pkg, 'caffe', '_caffe.so')):
            raise BuildError('install produced no caffe/_caffe.so under %s' % pkg)
        # Caffe's own Python tests, kept for `make caffe-selftest`.
        shutil.copytree(os.path.join(src, 'python', 'caffe', 'test'), os.path.join(staged, 'selftest'))
        with open(os.path.join(openblas, 'openblas_build.json')) as f:
            blas = json.load(f)
        info = {'source': os.environ.get('CAFFE_SOURCE') or '%s %s' % (SOURCE_PACKAGE, SOURCE_VERSION),
                'cuda': bool(arch), 'cuda_arch': arch, 'python': sys.version.split()[0],
                'numpy': numpy.__version__, 'patches': patch_digest(bool(arch)),
                'fixes': [f[3] for f in FIXES if f[4] == 'all' or arch],
                'project_patches': [os.path.basename(p) for p in project_patches()],
                'blas': blas}
        with open(os.path.join(pkg, 'caffe', 'fcn_build.json'), 'w') as f:
            json.dump(info, f, indent=1)
        os.replace(staged, prefix)  # the only step that makes the build visible
    finally:
        shutil.rmtree(work, ignore_errors=True)


def is_complete(prefix):
    """A cached install is trusted only with the record written last, inside the staged tree."""
    return os.path.isfile(os.path.join(prefix, 'lib', 'python3', 'dist-packages', 'caffe',
                                       'fcn_build.json'))


def site_packages_dir():
    return sysconfig.get_paths()['purelib']


def link_into_env(prefix):
    if sys.prefix == sys.base_prefix:
        raise BuildError('run this with a virtual environment\'s Python (make caffe does), not %s'
                         % sys.executable)
    pth = os.path.join(site_packages_dir(), 'fcn-caffe.pth')
    with open(pth + '.part', 'w') as f:
        f.write(os.path.join(prefix, 'lib', 'python3', 'dist-packages') + '\n')
    os.replace(pth + '.part', pth)
    log('linked %s -> %s' % (pth, prefix))


def check_import(prefix):
    """pycaffe imports in a clean environment and has loaded the OpenBLAS its record names
    (found by RUNPATH), not another libopenblas."""
    env = dict(os.environ, GLOG_minloglevel='2')
    env.pop('PYTHONPATH', None)
    env.pop('LD_LIBRARY_PATH', None)
    with open(os.path.join(prefix, 'lib', 'python3', 'dist-packages', 'caffe', 'fcn_build.json')) as f:
        lib = json.load(f).get('blas', {}).get('lib')
    run([sys.executable, '-c', 'import caffe, os, sys; '
         'maps = open("/proc/self/maps").read(); '
         'lib = sys.argv[1]; '
         'sys.exit("pycaffe did not load " + lib) if lib and os.path.realpath(lib) not in maps else None; '
         'print("pycaffe ok:", caffe.__file__, "BLAS:", lib or "the system\'s")', lib or ''], env=env)


def selftest(prefix):
    """Caffe's Python test suite from the source tree, against the built pycaffe."""
    tmp = tempfile.mkdtemp(prefix='caffe-selftest-')
    try:
        tests = os.path.join(tmp, 'test')
        shutil.copytree(os.path.join(prefix, 'selftest'), tests)
        env = dict(os.environ, GLOG_minloglevel='2')
        deselect = []
        try:
            import pydot  # noqa: F401  (test_draw needs it)
        except ImportError:
            deselect = ['--ignore', os.path.join(tests, 'test_draw.py')]
            log('pydot not installed: skipping test_draw.py (the only test that needs it)')
        run([sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider', tests] + deselect,
            cwd=tmp, env=env)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--selftest', action='store_true', help="run Caffe's Python tests after building")
    parser.add_argument('--info', action='store_true', help='print the cache key and prefix; build nothing')
    args = parser.parse_args(argv)

    arch = gpu_arch()
    prefix = os.path.join(cache_root(), build_key(arch))
    if args.info:
        print(json.dumps({'prefix': prefix, 'cuda_arch': arch, 'openblas_target': openblas_target(),
                          'openblas': openblas_prefix(openblas_target())}, indent=1))
        return 0
    os.makedirs(cache_root(), exist_ok=True)
    with open(os.path.join(cache_root(), '.lock'), 'w') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build at a time per cache
        for stale in glob.glob(os.path.join(cache_root(), '.work-*')):
            shutil.rmtree(stale, ignore_errors=True)  # left by a killed build (we hold the lock)
        if is_complete(prefix):
            log('cached build: %s' % prefix)
        else:
            if os.path.exists(prefix):  # not ours to trust: no marker
                shutil.rmtree(prefix)
            if not python_dev_ok():
                raise BuildError('Python.h not found for %s: install python3-dev' % sys.executable)
            install_packages(missing_packages())
            build(prefix, arch)
            log('built %s' % prefix)
    link_into_env(prefix)
    check_import(prefix)
    if args.selftest:
        selftest(prefix)
    return 0


if __name__ == '__main__':
    try:
        sys.exit(main())
    except BuildError as e:
        log('error: %s' % e)
        sys.exit(1)
    except KeyboardInterrupt:
        log('interrupted; nothing was added to the cache')
        sys.exit(130)
