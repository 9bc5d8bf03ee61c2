"""surgery.py on tiny real Caffe nets: bilinear kernels, interp, transplant, expand_score,
init_bgrd and the cast command.

    .venv/bin/python -m pytest tests/test_surgery.py -q
"""
import os
import subprocess
import sys

import numpy as np
import pytest

import cli
import guard
import models
import netload
import project
import surgery

caffe = guard.import_caffe()
L, P = caffe.layers, caffe.params
REPO = project.REPO
PY = sys.executable


def make_net(tmp_path, spec, name='net', phase='test'):
    """caffe.Net of a NetSpec (or NetParameter), through a prototxt in tmp_path."""
    path = tmp_path / ('%s.prototxt' % name)
    proto = spec.to_proto() if hasattr(spec, 'to_proto') else spec
    path.write_text(str(proto))
    return caffe.Net(str(path), caffe.TRAIN if phase == 'train' else caffe.TEST)


def fill_random(net, seed=0):
    rng = np.random.RandomState(seed)
    for blobs in net.params.values():
        for b in blobs:
            b.data[...] = rng.randn(*b.data.shape)


# ----------------------------------------------------------------------------- upsample_filt

def test_upsample_filt_size3():
    profile = np.array([0.5, 1.0, 0.5])  # factor 2, center 1
    np.testing.assert_allclose(surgery.upsample_filt(3), np.outer(profile, profile))
    assert surgery.upsample_filt(3)[1, 1] == 1.0
    assert surgery.upsample_filt(3)[0, 0] == 0.25


def test_upsample_filt_size4():
    profile = np.array([0.25, 0.75, 0.75, 0.25])  # factor 2, center 1.5
    f = surgery.upsample_filt(4)
    np.testing.assert_allclose(f, np.outer(profile, profile))
    assert f[0, 0] == 0.0625 and f[1, 1] == 0.5625 and f[0, 1] == 0.1875


def test_upsample_filt_size64():
    f = surgery.upsample_filt(64)  # factor 32, center 31.5
    assert f.shape == (64, 64)
    assert f[0, 0] == pytest.approx(1 / 4096)        # (0.5/32)^2
    assert f[31, 31] == pytest.approx((63 / 64) ** 2)
    assert f[0, 31] == pytest.approx(63 / 4096)
    assert f[63, 32] == pytest.approx(63 / 4096)
    np.testing.assert_allclose(f, f.T)
    np.testing.assert_allclose(f, f[::-1, ::-1])
    # the 1-D profile: rises by 1/32 per step from 1/64 to 63/64, then falls back
    profile = f[31] / (63 / 64)  # row 31 = profile[31] * profile
    expected = 1 - np.abs(np.arange(64) - 31.5) / 32
    np.testing.assert_allclose(profile, expected)
    np.testing.assert_allclose(np.diff(profile[:32]), 1 / 32)
    # each output pixel of a stride-32 deconvolution gets weights summing to 1
    assert f.sum() == pytest.approx(32 ** 2)


def test_upsample_filt_odd_large():
    f = surgery.upsample_filt(63)  # FCN-AlexNet's k63: factor 32, center 31
    assert f[31, 31] == 1.0
    np.testing.assert_allclose(f, f[::-1, ::-1])


# ----------------------------------------------------------------------------- interp

def deconv_spec(num_output=3, group=1, kernel=4, kernel_w=None):
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 3, 4, 4]))
    conv = dict(num_output=num_output, stride=2, bias_term=False, group=group)
    if kernel_w:
        conv.update(kernel_h=kernel, kernel_w=kernel_w)
    else:
        conv.update(kernel_size=kernel)
    n.up = L.Deconvolution(n.data, convolution_param=conv, param=[dict(lr_mult=0)])
    n.upscore_conv = L.Convolution(n.data, num_output=3, kernel_size=1)  # 'up' in name, not a deconv
    return n


def test_deconv_layers_by_type(tmp_path):
    net = make_net(tmp_path, deconv_spec())
    assert surgery.deconv_layers(net) == ['up']


def test_interp_diagonal(tmp_path):
    net = make_net(tmp_path, deconv_spec())
    net.params['up'][0].data[...] = 7  # stale values must be cleared
    surgery.interp(net, surgery.deconv_layers(net))
    w = net.params['up'][0].data
    assert w.shape == (3, 3, 4, 4)
    for i in range(3):
        for j in range(3):
            np.testing.assert_allclose(w[i, j], surgery.upsample_filt(4) if i == j else 0)
    # bilinear upsampling: a constant channel stays constant away from the border and
    # the classes do not mix
    net.blobs['data'].data[...] = 0
    net.blobs['data'].data[0, 1] = 2.0
    net.forward()
    out = net.blobs['up'].data[0]
    assert out.shape == (3, 10, 10)
    np.testing.assert_allclose(out[1, 2:-2, 2:-2], 2.0, rtol=1e-6)
    np.testing.assert_allclose(out[[0, 2]], 0)


def test_interp_one_output_per_group(tmp_path):
    net = make_net(tmp_path, deconv_spec(num_output=3, group=3))
    surgery.interp(net, ['up'])
    w = net.params['up'][0].data
    assert w.shape == (3, 1, 4, 4)
    for i in range(3):
        np.testing.assert_allclose(w[i, 0], surgery.upsample_filt(4))


def test_interp_bad_shapes(tmp_path):
    net = make_net(tmp_path, deconv_spec(num_output=2), 'mismatch')
    with pytest.raises(ValueError, match=r"'up'.*\(3, 2, 4, 4\)"):
        surgery.interp(net, ['up'])
    net = make_net(tmp_path, deconv_spec(kernel=4, kernel_w=2), 'rect')
    with pytest.raises(ValueError, match=r"'up'.*\(3, 3, 4, 2\).*square"):
        surgery.interp(net, ['up'])
    with pytest.raises(ValueError, match='nope'):
        surgery.interp(net, ['nope'])


# ----------------------------------------------------------------------------- transplant

def classifier_spec():
    """conv1 -> fc6 (InnerProduct, 4) -> fc7 (5) -> fc8 (3): a tiny 'ImageNet classifier'."""
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 2, 3, 3]))
    n.conv1 = L.Convolution(n.data, num_output=2, kernel_size=3, pad=1)
    n.relu1 = L.ReLU(n.conv1, in_place=True)
    n.fc6 = L.InnerProduct(n.relu1, num_output=4)
    n.relu6 = L.ReLU(n.fc6, in_place=True)
    n.fc7 = L.InnerProduct(n.relu6, num_output=5)
    n.relu7 = L.ReLU(n.fc7, in_place=True)
    n.fc8 = L.InnerProduct(n.relu7, num_output=3)
    return n


def fcn_spec(fc6_out=4, suffix='', size=3, fc7_bias=True):
    """The same net fully convolutional: fc6 3x3 conv, fc7 1x1 conv, score_fr, no fc8."""
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 2, size, size]))
    n['conv1' + suffix] = L.Convolution(n.data, num_output=2, kernel_size=3, pad=1)
    n.relu1 = L.ReLU(n['conv1' + suffix], in_place=True)
    n['fc6' + suffix] = L.Convolution(n.relu1, num_output=fc6_out, kernel_size=3)
    n.relu6 = L.ReLU(n['fc6' + suffix], in_place=True)
    n['fc7' + suffix] = L.Convolution(n.relu6, num_output=5, kernel_size=1, bias_term=fc7_bias)
    n.relu7 = L.ReLU(n['fc7' + suffix], in_place=True)
    n.score_fr = L.Convolution(n.relu7, num_output=7, kernel_size=1)
    return n


def test_transplant_copy_coerce_drop(tmp_path, capsys):
    clf = make_net(tmp_path, classifier_spec(), 'clf')
    fill_random(clf)
    fcn = make_net(tmp_path, fcn_spec(), 'fcn')
    report = surgery.transplant(fcn, clf)
    assert [(c[0], c[2]) for c in report.copied] == [('conv1', 0), ('conv1', 1), ('fc6', 1), ('fc7', 1)]
    assert [(c[0], c[2], c[3], c[4]) for c in report.coerced] == [
        ('fc6', 0, (4, 18), (4, 2, 3, 3)), ('fc7', 0, (5, 4), (5, 4, 1, 1))]
    assert [d[:2] for d in report.dropped] == [('fc8', None)]
    out = capsys.readouterr().out
    assert 'coercing fc6[0]' in out and 'dropping fc8' in out
    # coerced values are the reshaped originals
    np.testing.assert_array_equal(fcn.params['fc6'][0].data,
                                  clf.params['fc6'][0].data.reshape(4, 2, 3, 3))
    np.testing.assert_array_equal(fcn.params['fc7'][0].data[:, :, 0, 0], clf.params['fc7'][0].data)
    np.testing.assert_array_equal(fcn.params['conv1'][0].data, clf.params['conv1'][0].data)
    assert not fcn.params['score_fr'][0].data.any()
    # the point of the cast: on a one-position input both nets compute the same thing
    x = np.random.RandomState(1).randn(1, 2, 3, 3)
    clf.blobs['data'].data[...] = x
    fcn.blobs['data'].data[...] = x
    clf.forward()
    fcn.forward()
    assert fcn.blobs['fc7'].data.shape == (1, 5, 1, 1)
    np.testing.assert_allclose(fcn.blobs['fc7'].data[:, :, 0, 0], clf.blobs['fc7'].data, rtol=1e-5)
    assert clf.blobs['fc7'].data.any()


def test_transplant_suffix_and_blob_drop(tmp_path):
    clf = make_net(tmp_path, classifier_spec(), 'clf')
    fill_random(clf)
    fcn = make_net(tmp_path, fcn_spec(suffix='color', fc7_bias=False), 'fcn')
    report = surgery.transplant(fcn, clf, suffix='color', quiet=True)
    assert ('fc7', 1) in [d[:2] for d in report.dropped]
    np.testing.assert_array_equal(fcn.params['conv1color'][1].data, clf.params['conv1'][1].data)
    assert {c[1] for c in report.coerced} == {'fc6color', 'fc7color'}


def test_transplant_count_mismatch_is_an_error(tmp_path):
    clf = make_net(tmp_path, classifier_spec(), 'clf')
    fill_random(clf)
    fcn = make_net(tmp_path, fcn_spec(fc6_out=3), 'fcn')
    with pytest.raises(ValueError, match=r'fc6\[0\].*\(4, 18\).*\(3, 2, 3, 3\)'):
        surgery.transplant(fcn, clf, quiet=True)
    # checked before writing: nothing was copied
    assert not fcn.params['conv1'][0].data.any()


# ----------------------------------------------------------------------------- expand_score

def score_spec(c, kernel=1):
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 4, 3, 3]))
    n.score_fr = L.Convolution(n.data, num_output=c, kernel_size=kernel)
    return n


def test_expand_score(tmp_path):
    old = make_net(tmp_path, score_spec(3), 'old')
    fill_random(old)
    new = make_net(tmp_path, score_spec(5), 'new')
    surgery.expand_score(new, 'score_fr', old, 'score_fr')
    w, b = (x.data for x in new.params['score_fr'])
    np.testing.assert_array_equal(w[:3], old.params['score_fr'][0].data)
    np.testing.assert_array_equal(b[:3], old.params['score_fr'][1].data)
    assert not w[3:].any() and not b[3:].any()


def test_expand_score_errors(tmp_path):
    old = make_net(tmp_path, score_spec(3), 'old')
    with pytest.raises(ValueError, match=r'\(3, 4, 1, 1\).*\(2, 4, 1, 1\)'):
        surgery.expand_score(make_net(tmp_path, score_spec(2), 'fewer'), 'score_fr', old, 'score_fr')
    with pytest.raises(ValueError, match=r'\(5, 4, 3, 3\)'):
        surgery.expand_score(make_net(tmp_path, score_spec(5, 3), 'k3'), 'score_fr', old, 'score_fr')
    with pytest.raises(ValueError, match='missing'):
        surgery.expand_score(old, 'missing', old, 'score_fr')


# ----------------------------------------------------------------------------- init_bgrd

def test_init_bgrd(tmp_path):
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 3, 4, 4]))
    n.conv1_1 = L.Convolution(n.data, num_output=2, kernel_size=3, pad=1)
    vgg = make_net(tmp_path, n, 'vgg')
    fill_random(vgg)
    n = caffe.NetSpec()
    n.color = L.Input(shape=dict(dim=[1, 3, 4, 4]))
    n.depth = L.Input(shape=dict(dim=[1, 1, 4, 4]))
    n.data = L.Concat(n.color, n.depth)
    n.conv1_1_bgrd = L.Convolution(n.data, num_output=2, kernel_size=3, pad=1)
    new = make_net(tmp_path, n, 'bgrd')
    surgery.init_bgrd(new, vgg)
    w, b = (x.data for x in new.params['conv1_1_bgrd'])
    wv, bv = (x.data for x in vgg.params['conv1_1'])
    np.testing.assert_array_equal(w[:, :3], wv)
    np.testing.assert_allclose(w[:, 3], (wv[:, 0] + wv[:, 1] + wv[:, 2]) / 3, rtol=1e-6)
    np.testing.assert_array_equal(b, bv)
    with pytest.raises(ValueError, match='conv1_1_bgrd'):
        surgery.init_bgrd(vgg, vgg)


# ----------------------------------------------------------------------------- cast

def test_cast_saves_a_loadable_fcn(tmp_path, capsys):
    clf = make_net(tmp_path, classifier_spec(), 'clf')
    fill_random(clf, 5)
    clf.save(str(tmp_path / 'clf.caffemodel'))
    trunk = fcn_spec().to_proto()
    out = tmp_path / 'sub' / 'clf-fcn.caffemodel'
    report = surgery.cast(tmp_path / 'clf.prototxt', tmp_path / 'clf.caffemodel', out, trunk,
                          quiet=True)
    assert len(report.coerced) == 2
    assert not [p for p in os.listdir(out.parent) if p.endswith('.part')]
    (tmp_path / 'fcn.prototxt').write_text(str(trunk))
    fcn = netload.open_net(tmp_path / 'fcn.prototxt', 'test', out)
    np.testing.assert_array_equal(fcn.params['fc6'][0].data,
                                  clf.params['fc6'][0].data.reshape(4, 2, 3, 3))


def run_cmd(*args):
    env = dict(os.environ, GLOG_minloglevel='2')
    env.pop('FCN_DEBUG', None)
    return subprocess.run([PY, os.path.join(REPO, 'surgery.py')] + list(args), cwd='/',
                          capture_output=True, text=True, env=env, timeout=120)


def test_cast_cli_missing_weights(tmp_path):
    r = run_cmd('cast', '--arch', 'vgg16', '--weights', str(tmp_path / 'VGG.caffemodel'),
                '--out', str(tmp_path / 'out.caffemodel'))
    assert r.returncode == 1, r.stderr
    assert 'Traceback' not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and 'VGG.caffemodel' in lines[0] and 'VGG_ILSVRC_16_layers' in lines[0]


def test_cast_cli_bad_weights_file(tmp_path):
    (tmp_path / 'clf.prototxt').write_text(str(classifier_spec().to_proto()))
    (tmp_path / 'bad.caffemodel').write_bytes(b'not a caffemodel at all \xff\xfe')
    r = run_cmd('cast', '--prototxt', str(tmp_path / 'clf.prototxt'),
                '--weights', str(tmp_path / 'bad.caffemodel'), '--out', str(tmp_path / 'o.caffemodel'))
    assert r.returncode == 1 and 'Traceback' not in r.stderr
    assert 'bad.caffemodel' in r.stderr and len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize('arch,widths', [('vgg16', (2, 2, 2, 2, 2, 4)),
                                         ('caffenet', (2, 2, 2, 2, 2, 4))])
def test_cast_cli_with_net_py(tmp_path, arch, widths):
    """The command end to end on narrow nets from net.py: the classifier's fc6/fc7
    become the FCN trunk's convolutions, fc8 is dropped, the head is not saved."""
    net = pytest.importorskip('net')
    proto = tmp_path / 'clf.prototxt'
    proto.write_text(str(net.CLASSIFIER_BUILDERS[arch](widths=widths)))
    clf = caffe.Net(str(proto), caffe.TEST)
    fill_random(clf, 7)
    clf.save(str(tmp_path / 'clf.caffemodel'))
    out = tmp_path / 'fcn.caffemodel'
    r = run_cmd('cast', '--arch', arch, '--prototxt', str(proto), '--weights',
                str(tmp_path / 'clf.caffemodel'), '--out', str(out),
                '--widths', ','.join(map(str, widths)), '--quiet')
    assert r.returncode == 0, r.stderr
    assert '2 coerced' in r.stdout
    trunk = surgery.fcn_trunk_param(arch, widths)
    (tmp_path / 'trunk.prototxt').write_text(str(trunk))
    fcn = netload.open_net(tmp_path / 'trunk.prototxt', 'test', out)
    assert 'score_fr' not in fcn.params and 'fc8' not in fcn.params
    np.testing.assert_array_equal(fcn.params['fc6'][0].data,
                                  clf.params['fc6'][0].data.reshape(fcn.params['fc6'][0].data.shape))
    np.testing.assert_array_equal(fcn.params['fc7'][0].data.reshape(4, 4), clf.params['fc7'][0].data)
    first = 'conv1_1' if arch == 'vgg16' else 'conv1'
    np.testing.assert_array_equal(fcn.params[first][0].data, clf.params[first][0].data)
    # the saved weights load into the full FCN (by name, the head stays zero)
    model = models.CLASSIFIERS[arch].trunk_model
    (tmp_path / 'deploy.prototxt').write_text(str(net.build_net(model, 'deploy', widths=widths)))
    full = netload.open_net(tmp_path / 'deploy.prototxt', 'test', out, partial=True)
    np.testing.assert_array_equal(full.params['fc7'][1].data, clf.params['fc7'][1].data)


def narrow_classifier(tmp_path, arch='vgg16', widths=(2, 2, 2, 2, 2, 4)):
    """(prototxt, caffemodel) of net.py's ImageNet classifier `arch` at `widths`, random."""
    net = pytest.importorskip('net')
    proto = tmp_path / 'clf.prototxt'
    proto.write_text(str(net.CLASSIFIER_BUILDERS[arch](widths=widths)))
    clf = caffe.Net(str(proto), caffe.TEST)
    fill_random(clf, 3)
    clf.save(str(tmp_path / 'clf.caffemodel'))
    return proto, tmp_path / 'clf.caffemodel'


def test_cast_cli_mismatched_widths_is_one_line(tmp_path):
    """A classifier of other widths than --widths is a one-line error, no traceback."""
    proto, weights = narrow_classifier(tmp_path)
    r = run_cmd('cast', '--prototxt', str(proto), '--weights', str(weights),
                '--out', str(tmp_path / 'o.caffemodel'), '--widths', '2,2,2,2,2,8', '--quiet')
    assert r.returncode == 1 and 'Traceback' not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and 'clf.caffemodel does not fit the FCN trunk' in lines[0], lines
    assert 'fc6' in lines[0] and not (tmp_path / 'o.caffemodel').exists()
    r = run_cmd('cast', '--prototxt', str(proto), '--weights', str(weights),
                '--out', str(tmp_path / 'o.caffemodel'), '--widths', '2,0,2,2,2,4')
    assert r.returncode == 1 and r.stderr.startswith('error: --widths'), r.stderr


def test_cast_cli_out_is_not_an_input(tmp_path):
    proto, weights = narrow_classifier(tmp_path)
    before = weights.read_bytes()
    r = run_cmd('cast', '--prototxt', str(proto), '--weights', str(weights), '--out', str(weights),
                '--widths', '2,2,2,2,2,4', '--quiet')
    assert r.returncode == 1 and str(weights) in r.stderr and 'Traceback' not in r.stderr
    assert weights.read_bytes() == before


def test_cast_full_disk_is_checked_before_caffe_writes(tmp_path, monkeypatch, capsys):
    """A full disk during Caffe's own write aborts the process and leaves a .part.
    An injected full disk (shutil.disk_usage reports 1 KB free) is a one-line error naming
    the folder, before Caffe writes; a .part an aborted earlier save left is removed."""
    import shutil
    proto, weights = narrow_classifier(tmp_path)
    out_dir = tmp_path / 'out'
    out_dir.mkdir()
    stale = out_dir / '.fcn.caffemodel.abc123.part'
    stale.write_bytes(b'half')
    usage = shutil.disk_usage(str(tmp_path))
    monkeypatch.setattr(shutil, 'disk_usage', lambda p: usage._replace(free=1000))
    with pytest.raises(SystemExit) as e:
        cli.run_cli(surgery.main, ['cast', '--prototxt', str(proto), '--weights', str(weights),
                                      '--out', str(out_dir / 'fcn.caffemodel'),
                                      '--widths', '2,2,2,2,2,4', '--quiet'])
    assert e.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(out_dir) in err[0] and 'free space' in err[0], err
    assert os.listdir(out_dir) == []


def test_cast_on_a_real_full_tmpfs_is_clean(tmp_path):
    """A real 4 KB tmpfs (needs root to mount; skipped otherwise): Caffe would abort
    with `Check failed: SerializeToOstream` (exit 134) and leave a .part."""
    proto, weights = narrow_classifier(tmp_path, widths=(2, 2, 2, 2, 2, 32))
    mnt = tmp_path / 'small'
    mnt.mkdir()
    if subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=4k', 'tmpfs', str(mnt)],
                      capture_output=True).returncode:
        pytest.skip('cannot mount a tmpfs here')
    try:
        r = run_cmd('cast', '--prototxt', str(proto), '--weights', str(weights),
                    '--out', str(mnt / 'fcn.caffemodel'), '--widths', '2,2,2,2,2,32', '--quiet')
        left = os.listdir(mnt)
    finally:
        subprocess.run(['umount', str(mnt)], check=True)
    assert r.returncode == 1, (r.returncode, r.stderr[-500:])
    assert 'Traceback' not in r.stderr and 'Check failed' not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and str(mnt) in r.stderr
    assert left == []


def test_cast_widths_over_caffes_blob_limit_is_refused_before_caffe(tmp_path):
    """--widths ...,70000 makes fc7 a 70000 x 70000 blob (over INT_MAX values): Caffe
    aborts the process building it; the command refuses it in one line instead."""
    proto, weights = narrow_classifier(tmp_path)
    r = run_cmd('cast', '--prototxt', str(proto), '--weights', str(weights),
                '--out', str(tmp_path / 'o.caffemodel'), '--widths', '2,2,2,2,2,70000', '--quiet')
    assert r.returncode == 1 and 'Traceback' not in r.stderr, (r.returncode, r.stderr[-500:])
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and '--widths' in lines[0] and 'fc7' in lines[0], lines
    assert "limit 2^31 - 1" in lines[0] and not (tmp_path / 'o.caffemodel').exists()
