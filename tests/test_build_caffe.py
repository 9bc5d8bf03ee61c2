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
