"""build_caffe.py's decisions, without building: mirror discovery, cache keys, trust in a
cached install, and that the installed build is the one the venv imports."""
import json
import os
import re
import sys

import pytest

import build_caffe
import guard


def test_mirror_from_one_line_and_deb822_sources(tmp_path, monkeypatch):
    monkeypatch.delenv('CAFFE_DEBIAN_MIRROR', raising=False)
    one = tmp_path / 'sources.list'
    one.write_text('# comment\ndeb [arch=amd64] http://mirror.example/debian/ bookworm main\n'
                   'deb http://security.example/debian-security bookworm-security main\n')
    assert build_caffe.debian_mirror([str(one)]) == 'http://mirror.example/debian'
    deb822 = tmp_path / 'debian.sources'
    deb822.write_text('Types: deb\nURIs: http://security.example/debian-security\n'
                      'Suites: bookworm-security\n\nTypes: deb\nURIs: http://m2.example/debian\n')
    assert build_caffe.debian_mirror([str(deb822)]) == 'http://m2.example/debian'


def test_no_debian_mirror_says_what_to_set(tmp_path, monkeypatch):
    monkeypatch.delenv('CAFFE_DEBIAN_MIRROR', raising=False)
    ubuntu = tmp_path / 'sources.list'
    ubuntu.write_text('deb http://archive.example/ubuntu jammy main\n')
    with pytest.raises(build_caffe.BuildError, match='CAFFE_DEBIAN_MIRROR.*CAFFE_SOURCE'):
        build_caffe.debian_mirror([str(ubuntu)])
    monkeypatch.setenv('CAFFE_DEBIAN_MIRROR', 'http://given.example/debian/')
    assert build_caffe.debian_mirror([str(ubuntu)]) == 'http://given.example/debian'


def test_cache_key_names_everything_the_build_depends_on(monkeypatch):
    monkeypatch.delenv('CAFFE_SOURCE', raising=False)
    cpu = build_caffe.build_key(None)
    cuda = build_caffe.build_key('90')
    py = '%d.%d' % sys.version_info[:2]
    import numpy
    assert build_caffe.SOURCE_VERSION.replace('+', '_') in cpu
    assert ('py%s' % py) in cpu and ('np%s' % numpy.__version__.split('.')[0]) in cpu
    assert cpu.endswith(build_caffe.patch_digest(False)) and '-cpu-' in cpu
    assert '-cuda90-' in cuda and cuda != cpu
    monkeypatch.setenv('CAFFE_SOURCE', '/somewhere/caffe')
    assert build_caffe.build_key(None) != cpu


def test_patch_digest_changes_with_the_fixes(monkeypatch):
    before = build_caffe.patch_digest(False)
    monkeypatch.setattr(build_caffe, 'FIXES', build_caffe.FIXES + [('x', 'a', 'b', 'why', 'all')])
    assert build_caffe.patch_digest(False) != before


def test_an_install_without_its_record_is_not_trusted(tmp_path):
    prefix = tmp_path / 'caffe-key'
    pkg = prefix / 'lib' / 'python3' / 'dist-packages' / 'caffe'
    pkg.mkdir(parents=True)
    (pkg / '_caffe.so').write_bytes(b'half a build')
    assert not build_caffe.is_complete(str(prefix))
    (pkg / 'fcn_build.json').write_text('{}')
    assert build_caffe.is_complete(str(prefix))


def test_cpu_forced_by_environment(monkeypatch):
    monkeypatch.setenv('FCN_CAFFE_CPU', '1')
    monkeypatch.setenv('FCN_CUDA_ARCH', '90')
    assert build_caffe.gpu_arch() is None


def test_venv_imports_the_cached_build():
    caffe = guard.import_caffe()
    info = guard.build_info()
    assert info, 'pycaffe has no fcn_build.json: not built by build_caffe.py'
    assert caffe.__file__.startswith(build_caffe.cache_root())
    assert info['python'].rsplit('.', 1)[0] == '%d.%d' % sys.version_info[:2]
    assert json.dumps(info['fixes'])


def test_cuda_digest_holds_the_pinned_libraries_and_cuda_fixes_leave_cpu_alone(monkeypatch):
    cpu, cuda = build_caffe.patch_digest(False), build_caffe.patch_digest(True)
    monkeypatch.setattr(build_caffe, 'CUDA_WHEELS', build_caffe.CUDA_WHEELS + [('x', 'x==1')])
    assert build_caffe.patch_digest(True) != cuda and build_caffe.patch_digest(False) == cpu
    monkeypatch.setattr(build_caffe, 'FIXES', build_caffe.FIXES + [('x', 'a', 'b', 'why', 'cuda')])
    assert build_caffe.patch_digest(False) == cpu


def test_cuda_toolkit_found_behind_a_wrapper_nvcc(tmp_path, monkeypatch):
    """/usr/local/bin/nvcc may be a script: the toolkit is where the headers are."""
    toolkit = tmp_path / 'cuda-13.0'
    (toolkit / 'include').mkdir(parents=True)
    (toolkit / 'include' / 'cuda_runtime.h').write_text('')
    (toolkit / 'bin').mkdir()
    (toolkit / 'bin' / 'nvcc').write_text('#!/bin/sh\n')
    (toolkit / 'bin' / 'nvcc').chmod(0o755)
    wrapper = tmp_path / 'local' / 'bin'
    wrapper.mkdir(parents=True)
    (wrapper / 'nvcc').write_text('#!/bin/sh\nexec %s/bin/nvcc "$@"\n' % toolkit)
    (wrapper / 'nvcc').chmod(0o755)
    monkeypatch.setenv('PATH', str(wrapper))
    monkeypatch.delenv('CUDA_PATH', raising=False)
    monkeypatch.setenv('CUDA_HOME', str(toolkit))
    assert build_caffe.cuda_toolkit() == str(toolkit)
    monkeypatch.setenv('CUDA_HOME', str(tmp_path / 'nothing'))
    if not os.path.isfile('/usr/local/cuda/include/cuda_runtime.h'):
        with pytest.raises(build_caffe.BuildError, match='CUDA_HOME'):
            build_caffe.cuda_toolkit()


def test_our_boost_python_is_the_component_caffe_asks_for(tmp_path):
    """Caffe (with Debian's cmake-link-correct-python-lib patch) asks Boost for the component
    "python" + the digits of python_version; FindBoost then looks for libboost_<component>.so,
    which for our own Boost.Python is libboost_python3X.so (boost_python_dir), given as the
    library file itself (FindBoost looks for later components only where it found the first)."""
    flags = build_caffe.cmake_flags(str(tmp_path / 'prefix'), None, str(tmp_path))
    version = [f.split('=', 1)[1] for f in flags if f.startswith('-Dpython_version=')]
    assert len(version) == 1
    component = 'python' + re.sub('[^0-9]', '', version[0])
    assert 'libboost_%s.so' % component == 'libboost_python%d%d.so' % sys.version_info[:2]
    # given as the file: FindBoost searches only Debian's directory after the first components
    assert '-DBoost_%s_LIBRARY_RELEASE=%s' % (component.upper(), tmp_path / ('libboost_%s.so' % component)) in flags
    assert '-DBoost_NO_BOOST_CMAKE=ON' in flags
    # Debian's own boost-python: Boost's CMake config maps python3 to it, flags as before
    assert '-Dpython_version=3' in build_caffe.cmake_flags(str(tmp_path / 'prefix'), None)


# /proc/cpuinfo flags (the ones OPENBLAS_TARGETS reads) of real processors
ZEN5 = ('AuthenticAMD', {'fma', 'avx', 'avx2', 'avx512f', 'avx512dq', 'avx512ifma', 'avx512cd',
                         'avx512bw', 'avx512vl', 'avx512_bf16', 'avx512vbmi', 'avx512_vbmi2',
                         'avx512_vnni', 'avx512_bitalg', 'avx512_vpopcntdq'})
SAPPHIRE_RAPIDS = ('GenuineIntel', ZEN5[1] | {'avx512_fp16', 'amx_tile', 'amx_bf16', 'amx_int8'})
ICE_LAKE_SP = ('GenuineIntel', ZEN5[1] - {'avx512_bf16'})
SKYLAKE_SP = ('GenuineIntel', {'fma', 'avx', 'avx2', 'avx512f', 'avx512dq', 'avx512cd',
                               'avx512bw', 'avx512vl'})
ZEN3 = ('AuthenticAMD', {'fma', 'avx', 'avx2'})
HASWELL = ('GenuineIntel', {'fma', 'avx', 'avx2'})
SANDY_BRIDGE = ('GenuineIntel', {'avx'})


def test_openblas_target_for_current_and_older_x86():
    target = build_caffe.openblas_target
    assert target(ZEN5) == 'COOPERLAKE'  # AVX-512 with bf16, no AMX / fp16 (Zen 4 alike)
    assert target(SAPPHIRE_RAPIDS) == 'SAPPHIRERAPIDS'
    assert target(ICE_LAKE_SP) == 'SKYLAKEX' and target(SKYLAKE_SP) == 'SKYLAKEX'
    assert target(ZEN3) == 'ZEN' and target(HASWELL) == 'HASWELL'
    assert target(SANDY_BRIDGE) is None and target(('', set())) is None  # OpenBLAS detects


def test_cpu_flags_read_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / 'cpuinfo'
    cpuinfo.write_text('processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu avx2 fma\n\n'
                       'processor\t: 1\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu avx2 fma\n')
    assert build_caffe.cpu_flags(str(cpuinfo)) == ('AuthenticAMD', {'fpu', 'avx2', 'fma'})
    assert build_caffe.cpu_flags(str(tmp_path / 'none')) == ('', set())


def test_cache_keys_name_the_blas_and_how_it_is_built(monkeypatch):
    key = build_caffe.openblas_key('COOPERLAKE')
    assert key.startswith('openblas0.3.29_ds-3-cooperlake-')
    assert build_caffe.openblas_key(build_caffe.openblas_target()) in build_caffe.build_key(None)
    caffe = build_caffe.build_key(None)
    monkeypatch.setattr(build_caffe, 'OPENBLAS_MAKE', build_caffe.OPENBLAS_MAKE + ['USE_OPENMP=1'])
    assert build_caffe.openblas_key('COOPERLAKE') != key and build_caffe.build_key(None) != caffe
    for arch in (None, '90'):  # a CUDA build's CPU code calls the same OpenBLAS
        monkeypatch.setattr(build_caffe, 'cuda_flags', lambda arch: ['-DCPU_ONLY=OFF'])
        flags = build_caffe.cmake_flags('/prefix', arch, None, '/blas')
        assert '-DOpenBLAS_LIB=/blas/lib/%s' % build_caffe.OPENBLAS_LIB in flags
        assert '-DOpenBLAS_INCLUDE_DIR=/blas/include' in flags
        assert build_caffe.openblas_key(build_caffe.openblas_target()) in build_caffe.build_key(arch)


def test_openblas_source_unavailable_is_one_line(tmp_path, monkeypatch):
    monkeypatch.delenv('CAFFE_OPENBLAS_SOURCE', raising=False)
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path))
    monkeypatch.setenv('PATH', str(tmp_path))  # no apt-get
    with pytest.raises(build_caffe.BuildError) as e:
        build_caffe.openblas_source(str(tmp_path))
    assert '\n' not in str(e.value) and 'CAFFE_OPENBLAS_SOURCE' in str(e.value)
    monkeypatch.setenv('CAFFE_OPENBLAS_SOURCE', str(tmp_path / 'missing.tar.gz'))
    with pytest.raises(build_caffe.BuildError, match='CAFFE_OPENBLAS_SOURCE=.*no such file'):
        build_caffe.openblas_source(str(tmp_path / 'work'))


def test_pycaffe_calls_the_openblas_built_for_this_cpu():
    """The library libcaffe's cblas_sgemm comes from is the cache's OpenBLAS for this CPU's
    target, a single-target build (OPENBLAS_CORETYPE cannot change its kernels): a silent
    fallback to the system's DYNAMIC_ARCH libopenblas fails here."""
    blas = guard.caffe_blas()
    target = build_caffe.openblas_target()
    lib = os.path.join(build_caffe.openblas_prefix(target), 'lib')
    assert os.path.dirname(blas['path']) == os.path.realpath(lib), blas
    assert 'DYNAMIC_ARCH' not in blas['config'].split(), blas['config']
    if target:
        assert blas['corename'].upper() == target, blas
    if not os.environ.get('CAFFE_OPENBLAS_SOURCE'):
        assert blas['version'] == build_caffe.OPENBLAS_SOURCE[1].split('+')[0]
    assert guard.build_info()['blas']['corename'] == blas['corename']
