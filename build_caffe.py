"""Build pycaffe (Caffe 1.0) for this project's Python, cache it, and link it into the venv.

    .venv/bin/python build_caffe.py              # build if needed, link into the running venv
    .venv/bin/python build_caffe.py --selftest   # then run Caffe's own Python test suite
    .venv/bin/python build_caffe.py --info       # print the cache key and prefix, build nothing

`make caffe` and `make test` run this; you rarely need to call it by hand.

What it does, in order:
1. Source. Debian's `caffe` source package from bullseye (1.0.0+git20180821.99bd997-8),
   fetched by `apt-get source` through a private apt configuration: a temporary
   sources.list and lists directory inside the cache, with the Debian mirror read from
   this machine's own apt configuration (the system's sources are never edited; apt
   checks the package against the archive's signed index). Off Debian, point
   CAFFE_SOURCE at a Caffe tree or tarball instead, or CAFFE_DEBIAN_MIRROR at a mirror.
2. Patches. Debian's patch series, then the small fixes a current system needs (FIXES
   below, each with the reason), then any `caffe-patches/*.patch` of this project.
3. Build packages. Missing Debian build packages are installed with apt-get (sudo when
   not root); if that is impossible the exact command is printed and the build stops.
4. Build. CMake, CPU with OpenBLAS, Python layers on, against this Python and numpy;
   OpenCV/LevelDB/LMDB off. Where `nvcc` exists and a GPU's compute capability can be
   read (or FCN_CUDA_ARCH is set, e.g. 90), a CUDA build instead, USE_CUDNN off.
   FCN_CAFFE_CPU=1 forces the CPU build.
5. Cache. Installed under ${XDG_CACHE_HOME:-~/.cache}/fcn-caffe/<key>, where the key
   holds the source version, a digest of the patch set, the Python version, numpy's
   major version and cpu/cuda-arch. The install is staged elsewhere and renamed into
   place only when complete, so an interrupted build leaves nothing a later run trusts.
6. Link. A `fcn-caffe.pth` file in the venv's site-packages puts the cached pycaffe on
   sys.path; its libraries find each other by RUNPATH, so `import caffe` needs no
   LD_LIBRARY_PATH or PYTHONPATH.

On 2 cores the first build takes about 5 minutes (plus a minute for build packages).
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

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE_PACKAGE = 'caffe'
SOURCE_VERSION = '1.0.0+git20180821.99bd997-8'
SOURCE_SUITE = 'bullseye'  # the last Debian release with caffe

# Debian (bookworm) names of what the build needs.
BUILD_PACKAGES = [
    'cmake', 'g++', 'make', 'libboost-filesystem-dev', 'libboost-system-dev',
    'libboost-thread-dev', 'libboost-python-dev', 'libgflags-dev', 'libgoogle-glog-dev',
    'libhdf5-dev', 'libopenblas-dev', 'libprotobuf-dev', 'protobuf-compiler',
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


def project_patches():
    return sorted(glob.glob(os.path.join(HERE, 'caffe-patches', '*.patch')))


def patch_digest(cuda):
    h = hashlib.sha256()
    h.update(repr([f for f in FIXES if f[4] == 'all' or cuda]).encode())
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
    return 'caffe-%s-py%s-np%s-%s-%s' % (
        version.replace('+', '_'), py, numpy.__version__.split('.')[0], mode,
        patch_digest(bool(arch)))


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
    # boost-python must match this Python's minor version.
    lib = 'libboost_python%d%d.so' % sys.version_info[:2]
    if not glob.glob('/usr/lib/*/%s' % lib) and 'libboost-python-dev' not in missing:
        raise BuildError('%s not found: Debian\'s boost-python is built for its own python3; '
                         'make the venv with that Python version (PYTHON=python3.X make test)' % lib)
    return missing


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


def fetch_debian_source(downloads):
    """Download caffe's .dsc/.orig/.debian files into `downloads` (kept for later builds)."""
    dsc = os.path.join(downloads, '%s_%s.dsc' % (SOURCE_PACKAGE, SOURCE_VERSION))
    if os.path.exists(dsc) and glob.glob(os.path.join(downloads, '*.debian.tar.*')):
        return downloads
    apt = os.path.join(downloads, 'apt')
    os.makedirs(os.path.join(apt, 'lists', 'partial'), exist_ok=True)
    with open(os.path.join(apt, 'sources.list'), 'w') as f:
        f.write('deb-src %s %s main\n' % (debian_mirror(), SOURCE_SUITE))
    opts = ['-o', 'Dir::Etc::SourceList=%s' % os.path.join(apt, 'sources.list'),
            '-o', 'Dir::Etc::SourceParts=/dev/null',
            '-o', 'Dir::State::Lists=%s' % os.path.join(apt, 'lists'),
            '-o', 'Dir::Cache=%s' % os.path.join(apt, 'cache')]
    if os.geteuid() == 0:  # apt's _apt sandbox user cannot write into root's cache
        opts += ['-o', 'APT::Sandbox::User=root']
    run(['apt-get', '-q'] + opts + ['update'])
    tmp = tempfile.mkdtemp(dir=downloads, prefix='.fetch-')
    run(['apt-get', '-q'] + opts + ['source', '--download-only',
                                    '%s=%s' % (SOURCE_PACKAGE, SOURCE_VERSION)], cwd=tmp)
    for name in os.listdir(tmp):  # move into place only once all files arrived
        os.replace(os.path.join(tmp, name), os.path.join(downloads, name))
    os.rmdir(tmp)
    return downloads


def unpack(archive, dest):
    with tarfile.open(archive) as t:
        t.extractall(dest, filter='data') if hasattr(tarfile, 'data_filter') else t.extractall(dest)


def prepare_source(work, cuda):
    """A patched Caffe tree under `work`; returns its path."""
    src = os.path.join(work, 'source')
    given = os.environ.get('CAFFE_SOURCE')
    if given:
        if os.path.isdir(given):
            shutil.copytree(given, src, symlinks=True)
        elif os.path.isfile(given):
            tmp = os.path.join(work, 'unpack')
            unpack(given, tmp)
            tops = os.listdir(tmp)
            shutil.move(os.path.join(tmp, tops[0]) if len(tops) == 1 else tmp, src)
        else:
            raise BuildError('CAFFE_SOURCE=%s: no such file or directory' % given)
    else:
        downloads = os.path.join(cache_root(), 'downloads')
        os.makedirs(downloads, exist_ok=True)
        fetch_debian_source(downloads)
        orig = glob.glob(os.path.join(downloads, '%s_*.orig.tar.*' % SOURCE_PACKAGE))
        deb = glob.glob(os.path.join(downloads, '%s_%s.debian.tar.*' % (SOURCE_PACKAGE, SOURCE_VERSION)))
        if not orig or not deb:
            raise BuildError('source download incomplete in %s' % downloads)
        tmp = os.path.join(work, 'unpack')
        unpack(orig[0], tmp)
        tops = os.listdir(tmp)
        shutil.move(os.path.join(tmp, tops[0]) if len(tops) == 1 else tmp, src)
        unpack(deb[0], src)
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


def build(prefix, arch):
    import numpy
    work = tempfile.mkdtemp(dir=cache_root(), prefix='.work-')
    try:
        src = prepare_source(work, bool(arch))
        bdir = os.path.join(work, 'build')
        os.makedirs(bdir)
        logfile = os.path.join(cache_root(), 'build.log')
        open(logfile, 'w').close()
        flags = [
            '-DCMAKE_BUILD_TYPE=Release', '-DBLAS=Open', '-Dpython_version=3',
            '-DUSE_OPENCV=OFF', '-DUSE_LEVELDB=OFF', '-DUSE_LMDB=OFF', '-DUSE_NCCL=OFF',
            '-DBUILD_docs=OFF', '-DBUILD_matlab=OFF', '-DBUILD_python=ON', '-DBUILD_python_layer=ON',
            '-DCMAKE_INSTALL_PREFIX=%s' % prefix,
            '-DPYTHON_EXECUTABLE=%s' % sys.executable,
            '-DPYTHON_INCLUDE_DIR=%s' % sysconfig.get_paths()['include'],
            '-DPYTHON_LIBRARY=%s' % python_library(),
            '-DNUMPY_INCLUDE_DIR=%s' % numpy.get_include(),
        ]
        if arch:
            flags += ['-DCPU_ONLY=OFF', '-DUSE_CUDNN=OFF', '-DCUDA_ARCH_NAME=Manual',
                      '-DCUDA_ARCH_BIN=%s' % arch, '-DCUDA_ARCH_PTX=%s' % arch]
        else:
            flags += ['-DCPU_ONLY=ON']
        log('configuring (log: %s)' % logfile)
        run(['cmake', src] + flags, cwd=bdir, logfile=logfile)
        jobs = str(int(os.environ.get('FCN_BUILD_JOBS') or (os.cpu_count() or 1) + 1))
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
        info = {'source': os.environ.get('CAFFE_SOURCE') or '%s %s' % (SOURCE_PACKAGE, SOURCE_VERSION),
                'cuda': bool(arch), 'cuda_arch': arch, 'python': sys.version.split()[0],
                'numpy': numpy.__version__, 'patches': patch_digest(bool(arch)),
                'fixes': [f[3] for f in FIXES if f[4] == 'all' or arch],
                'project_patches': [os.path.basename(p) for p in project_patches()]}
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


def check_import():
    env = dict(os.environ, GLOG_minloglevel='2')
    env.pop('PYTHONPATH', None)
    env.pop('LD_LIBRARY_PATH', None)
    run([sys.executable, '-c', 'import caffe, json, os; '
         'print("pycaffe ok:", caffe.__file__)'], env=env)


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
        print(json.dumps({'prefix': prefix, 'cuda_arch': arch}, indent=1))
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
    check_import()
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
