"""weights.py: URL records, and downloads against a local HTTP server on 127.0.0.1.

The server runs in a thread of the test process, serves a generated file, supports
Range (or ignores it, or cuts the transfer short, on request) and is shut down by the
fixture; nothing leaves the machine."""
import dataclasses
import hashlib
import http.server
import os
import socket
import subprocess
import sys

import pytest

import models
import weights
from datasets import http_server  # tests/datasets.py
from project import REPO, InputError

PAYLOAD = os.urandom(300 * 1024 + 17)
SHA256 = hashlib.sha256(PAYLOAD).hexdigest()
SHA1 = hashlib.sha1(PAYLOAD).hexdigest()


class Handler(http.server.BaseHTTPRequestHandler):
    """GET /file.bin (honours Range), /norange.bin (ignores Range), /cut.bin (sends half
    of the body then closes), the paths of `files` (whole, no Range), anything else 404.
    Requests' Range headers are recorded."""
    ranges = []
    files = {}  # path -> bytes, set by a test

    def log_message(self, *args):
        pass

    def do_GET(self):
        Handler.ranges.append(self.headers.get('Range'))
        if self.path in Handler.files:
            self.send_response(200)
            self.send_header('Content-Length', str(len(Handler.files[self.path])))
            self.end_headers()
            self.wfile.write(Handler.files[self.path])
            return
        if self.path not in ('/file.bin', '/norange.bin', '/cut.bin'):
            self.send_error(404)
            return
        start = 0
        rng = self.headers.get('Range')
        if rng and self.path == '/file.bin':
            start = int(rng.split('=')[1].split('-')[0])
            if start >= len(PAYLOAD):
                self.send_response(416)
                self.send_header('Content-Range', 'bytes */%d' % len(PAYLOAD))
                self.send_header('Content-Length', '0')
                self.end_headers()
                return
            self.send_response(206)
            self.send_header('Content-Range', 'bytes %d-%d/%d'
                             % (start, len(PAYLOAD) - 1, len(PAYLOAD)))
        else:
            self.send_response(200)
        body = PAYLOAD[start:]
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        if self.path == '/cut.bin':
            body = body[:len(body) // 2]
            self.close_connection = True
        self.wfile.write(body)


@pytest.fixture
def server():
    Handler.ranges = []
    with http_server(Handler) as url:
        yield url


def dead_url():
    """A URL on 127.0.0.1 where nothing listens."""
    s = socket.socket()
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
    s.close()
    return 'http://127.0.0.1:%d/file.bin' % port


def test_full_download_with_checksums(server, tmp_path):
    dest = tmp_path / 'sub' / 'w.caffemodel'
    out = weights.download(server + '/file.bin', dest, size=len(PAYLOAD), sha256=SHA256,
                           sha1=SHA1, progress=False)
    assert out == str(dest)
    assert dest.read_bytes() == PAYLOAD
    assert not os.path.exists(str(dest) + '.part')
    assert Handler.ranges == [None]


def test_progress_on_stderr(server, tmp_path, capsys):
    weights.download(server + '/file.bin', tmp_path / 'w', progress=True)
    err = capsys.readouterr().err
    assert '100%' in err and '/s' in err and 'KB' in err


def test_resume_partial(server, tmp_path):
    dest = tmp_path / 'w.caffemodel'
    (tmp_path / 'w.caffemodel.part').write_bytes(PAYLOAD[:100000])
    weights.download(server + '/file.bin', dest, sha256=SHA256, progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert Handler.ranges == ['bytes=100000-']


def test_resume_when_server_ignores_range(server, tmp_path):
    dest = tmp_path / 'w.caffemodel'
    (tmp_path / 'w.caffemodel.part').write_bytes(b'x' * 5000)  # would corrupt if appended to
    weights.download(server + '/norange.bin', dest, sha256=SHA256, progress=False)
    assert dest.read_bytes() == PAYLOAD


def test_part_already_complete(server, tmp_path):
    dest = tmp_path / 'w.caffemodel'
    (tmp_path / 'w.caffemodel.part').write_bytes(PAYLOAD)
    weights.download(server + '/file.bin', dest, sha256=SHA256, progress=False)  # size unknown
    assert dest.read_bytes() == PAYLOAD
    weights.download(server + '/file.bin', tmp_path / 'v', size=len(PAYLOAD), progress=False)


def test_interrupted_keeps_part_then_resumes(server, tmp_path):
    dest = tmp_path / 'w.caffemodel'
    with pytest.raises(InputError) as e:
        weights.download(server + '/cut.bin', dest, progress=False)
    assert 'run again to resume' in str(e.value)
    part = tmp_path / 'w.caffemodel.part'
    assert 0 < part.stat().st_size < len(PAYLOAD) and not dest.exists()
    weights.download(server + '/file.bin', dest, sha256=SHA256, progress=False)
    assert dest.read_bytes() == PAYLOAD and not part.exists()
    assert Handler.ranges[-1] == 'bytes=%d-' % (len(PAYLOAD) // 2)


@pytest.mark.parametrize('kind', ['sha256', 'size', 'sha1'])
def test_checksum_mismatch_leaves_nothing(server, tmp_path, kind):
    dest = tmp_path / 'w.caffemodel'
    bad = {'sha256': {'sha256': '0' * 64}, 'size': {'size': len(PAYLOAD) + 1},
           'sha1': {'sha1': 'f' * 40}}[kind]
    with pytest.raises(InputError) as e:
        weights.download(server + '/file.bin', dest, progress=False, **bad)
    assert 'mismatch' in str(e.value) and kind in str(e.value)
    assert '\n' not in str(e.value)
    assert os.listdir(str(tmp_path)) == []


def test_server_down_names_url_and_path(tmp_path):
    url = dead_url()
    dest = tmp_path / 'w.caffemodel'
    with pytest.raises(InputError) as e:
        weights.download(url, dest, progress=False)
    msg = str(e.value)
    assert url in msg and str(dest) in msg and '\n' not in msg
    assert not dest.exists()


def test_http_error_names_url_and_path(server, tmp_path):
    with pytest.raises(InputError) as e:
        weights.download(server + '/missing.bin', tmp_path / 'w', progress=False)
    assert '404' in str(e.value) and server + '/missing.bin' in str(e.value)


def run_cli(*args):
    env = dict(os.environ, PYTHONPATH=REPO)
    return subprocess.run([sys.executable, os.path.join(REPO, 'weights.py')] + list(args),
                          capture_output=True, text=True, timeout=60, env=env, cwd='/')


def test_cli_server_down_one_line(tmp_path):
    url = dead_url()
    (tmp_path / 'caffemodel-url').write_text(url + '\n')
    r = run_cli(str(tmp_path), '--quiet')
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and url in lines[0] and str(tmp_path / 'file.bin') in lines[0]
    assert 'Traceback' not in r.stderr


def test_cli_downloads_into_dir_and_lists(server, tmp_path):
    (tmp_path / 'caffemodel-url').write_text('%s/file.bin\nsize: %d\nsha256: %s\n'
                                             % (server, len(PAYLOAD), SHA256))
    r = run_cli(str(tmp_path), '--quiet')
    assert r.returncode == 0, r.stderr
    assert (tmp_path / 'file.bin').read_bytes() == PAYLOAD
    r = run_cli(str(tmp_path))  # present: nothing fetched again
    assert r.returncode == 0 and 'present' in r.stdout
    r = run_cli(str(tmp_path), '--list')
    assert 'present' in r.stdout and server in r.stdout


def test_records_of_every_model():
    expected = ['voc-fcn32s', 'voc-fcn16s', 'voc-fcn8s', 'voc-fcn8s-atonce', 'voc-fcn-alexnet',
                'nyud-fcn32s-color', 'nyud-fcn32s-hha', 'nyud-fcn32s-color-d',
                'nyud-fcn32s-color-hha', 'nyud-fcn16s-color-hha', 'siftflow-fcn32s',
                'siftflow-fcn16s', 'siftflow-fcn8s', 'pascalcontext-fcn32s',
                'pascalcontext-fcn16s', 'pascalcontext-fcn8s']
    psp = ['pspnet50-ade20k', 'pspnet101-voc2012', 'pspnet101-cityscapes']  # test_pspnet_net
    deeplab = ['deeplabv2-voc12', 'deeplabv3-voc12', 'deeplabv3-voc12-trainval']  # test_deeplab*.py
    assert sorted(expected + psp + deeplab) == weights.recorded_models()
    for model in expected:
        rec = weights.read_url_record(models.model_dir(model))
        if model == 'nyud-fcn16s-color-hha':
            assert rec['url'] is None and 'solve.py' in rec['note']
            with pytest.raises(InputError, match='no released weights; train it with solve.py'):
                weights.weights_path(model)
            continue
        assert rec['url'].startswith('http://dl.caffe.berkeleyvision.org/')
        assert rec['url'].endswith('.caffemodel')
        path = weights.weights_path(model)
        assert path == os.path.join(models.model_dir(model), os.path.basename(rec['url']))
    # the original release's one-line format: the first line is the URL
    with open(os.path.join(REPO, 'voc-fcn8s', 'caffemodel-url')) as f:
        assert f.readline().strip() == \
            'http://dl.caffe.berkeleyvision.org/fcn8s-heavy-pascal.caffemodel'
    assert weights.weights_path('vgg16') == \
        os.path.join(REPO, 'ilsvrc-nets', 'VGG_ILSVRC_16_layers.caffemodel')
    assert weights.weights_path('caffenet') == \
        os.path.join(REPO, 'ilsvrc-nets', 'bvlc_reference_caffenet.caffemodel')


def test_cli_no_release_and_unknown():
    r = run_cli('nyud-fcn16s-color-hha')
    assert r.returncode == 1 and 'no released weights; train it with solve.py' in r.stderr
    r = run_cli('no-such-model')
    assert r.returncode == 1 and 'no-such-model' in r.stderr and 'Traceback' not in r.stderr
    r = run_cli('--list')
    assert r.returncode == 0 and 'voc-fcn8s' in r.stdout and 'vgg16' in r.stdout


def test_bad_record(tmp_path):
    (tmp_path / 'caffemodel-url').write_text('http://x/y.caffemodel\nsha256: nothex\n')
    with pytest.raises(InputError, match='caffemodel-url:2'):
        weights.read_url_record(str(tmp_path))


# ----------------------------------------------------------------------------- complete files

NARROW = (2, 2, 2, 2, 2, 4)  # net.py widths of a tiny FCN-32s


@pytest.fixture
def model_dir(tmp_path):
    """A narrow voc-fcn32s model directory with random released-style weights, its record
    naming no size or checksum (as most of the release's)."""
    net = pytest.importorskip('net')
    from datasets import random_weights  # tests/datasets.py
    mdir = tmp_path / 'voc-fcn32s'
    net.write_model_dir(str(mdir), 'voc-fcn32s', widths=NARROW)
    weights_file = random_weights(str(mdir / 'deploy.prototxt'), mdir / 'fcn32s-heavy-pascal.caffemodel')
    return mdir, weights_file


def cut_at_layer(path, keep):
    """The caffemodel `path` holding only its first `keep` layers with parameters: a file
    cut at a layer boundary still parses."""
    import guard
    caffe = guard.import_caffe()
    param = caffe.proto.caffe_pb2.NetParameter()
    with open(path, 'rb') as f:
        param.ParseFromString(f.read())
    with_blobs = [i for i, layer in enumerate(param.layer) if layer.blobs]
    del param.layer[with_blobs[keep]:]
    return param.SerializeToString()


def test_verify_finds_a_truncated_caffemodel(model_dir, server):
    """No FCN record has a size, so the content decides whether a download is present. A file cut at
    a layer boundary or mid-blob is refused, naming it; a complete one is present; a
    checksum that does not match is found by --verify."""
    mdir, path = model_dir
    (mdir / 'caffemodel-url').write_text(server + '/fcn32s-heavy-pascal.caffemodel\n')
    full = open(path, 'rb').read()
    r = run_cli(str(mdir), '--verify')
    assert r.returncode == 0 and 'present' in r.stdout, r.stderr
    for cut, words in ((cut_at_layer(path, 10), 'has no weights for'),
                       (full[:len(full) // 2], 'not a Caffe weights file')):
        open(path, 'wb').write(cut)
        for flags in ((), ('--verify',)):
            r = run_cli(str(mdir), *flags)
            assert r.returncode == 1 and 'present' not in r.stdout, (r.stdout, r.stderr)
            lines = r.stderr.strip().splitlines()
            assert len(lines) == 1 and path in lines[0] and words in lines[0], lines
            assert 'delete it and run again' in lines[0]
    open(path, 'wb').write(full)
    (mdir / 'caffemodel-url').write_text('%s/x.caffemodel\nfile: fcn32s-heavy-pascal.caffemodel\n'
                                         'sha1: %s\n' % (server, '0' * 40))
    assert run_cli(str(mdir)).returncode == 0  # checksums only with --verify
    r = run_cli(str(mdir), '--verify')
    assert r.returncode == 1 and 'sha1 does not match' in r.stderr


def test_truncated_download_is_not_kept(model_dir, server):
    """A download with no size, checksum or Content-Length to check that stops at a layer
    boundary is deleted, never renamed into place."""
    mdir, path = model_dir
    Handler.files = {'/w.caffemodel': cut_at_layer(path, 5)}
    (mdir / 'caffemodel-url').write_text(server + '/w.caffemodel\n')
    try:
        r = run_cli(str(mdir), '--quiet')
    finally:
        Handler.files = {}
    assert r.returncode == 1 and 'not a complete model' in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and 'has no weights for' in r.stderr
    assert not [p for p in os.listdir(mdir) if p.startswith('w.caffemodel')]


def test_published_checksums_cite_their_source():
    """Every size or checksum in a record has a comment line saying where it comes from."""
    for model in weights.recorded_models() + sorted(weights.ILSVRC):
        with open(weights.record_path(model)) as f:
            lines = [line.strip() for line in f if line.strip()]
        for i, line in enumerate(lines):
            key = line.partition(':')[0]
            if key in ('size',) + tuple(weights.DIGESTS):
                sources = [l for l in lines[:i] if l.startswith('# %s:' % key)]
                assert sources, '%s: %s has no source comment' % (model, key)
    assert weights.read_url_record(weights.record_path('voc-fcn8s'))['md5'] == \
        'c03b2953ebd846c270da1a8e8f200c09'


def test_release_file_names_found_in_the_card_folders(tmp_path, monkeypatch):
    """Weights a user places by the release's file name in the model's folder of the
    card's layout (nyud-fcn/fcn32s-color/nyud-fcn32s-color-heavy.caffemodel) are found by
    the model id, and fetch takes a complete one as present (no download)."""
    for model, rel in (('voc-fcn8s', 'voc-fcn8s/fcn8s-heavy-pascal.caffemodel'),
                       ('nyud-fcn32s-color', 'nyud-fcn/fcn32s-color/nyud-fcn32s-color-heavy.caffemodel'),
                       ('siftflow-fcn16s', 'siftflow-fcn/fcn16s/siftflow-fcn16s-heavy.caffemodel'),
                       ('pascalcontext-fcn8s',
                        'pascalcontext-fcn/fcn8s/pascalcontext-fcn8s-heavy.caffemodel')):
        assert weights.weights_path(model) == os.path.join(REPO, rel)
    net = pytest.importorskip('net')
    from datasets import random_weights  # tests/datasets.py
    record = models.record_file('nyud-fcn32s-color')
    monkeypatch.setattr(models, 'REPO', str(tmp_path))  # a checkout of its own, same layout
    mdir = tmp_path / 'nyud-fcn' / 'fcn32s-color'
    net.write_model_dir(str(mdir), 'nyud-fcn32s-color', widths=NARROW)
    (mdir / 'caffemodel-url').write_bytes(open(record, 'rb').read())
    placed = random_weights(str(mdir / 'deploy.prototxt'), mdir / 'nyud-fcn32s-color-heavy.caffemodel')
    assert weights.fetch('nyud-fcn32s-color', progress=False) == (str(placed), 'present')


# ----------------------------------------------------------------------------- own files, sources

def test_part_symlink_is_never_followed(server, tmp_path):
    """A `<dest>.part` that is a symbolic link (to a file elsewhere) is refused: the file
    it points to is neither overwritten nor appended to, nor renamed into place."""
    victim = tmp_path / 'elsewhere.txt'
    victim.write_bytes(b'keep me')
    dest = tmp_path / 'w.caffemodel'
    os.symlink(victim, str(dest) + '.part')
    with pytest.raises(InputError, match=r'w\.caffemodel\.part: .*symbolic link'):
        weights.download(server + '/file.bin', dest, size=len(PAYLOAD), progress=False)
    os.unlink(str(dest) + '.part')
    os.symlink(tmp_path / 'dangling', str(dest) + '.part')  # would be created through it
    with pytest.raises(InputError, match='symbolic link'):
        weights.download(server + '/file.bin', dest, progress=False)
    assert victim.read_bytes() == b'keep me' and not (tmp_path / 'dangling').exists()
    assert not dest.exists()
    os.symlink(victim, str(dest) + '.gdown')
    with pytest.raises(InputError, match=r'\.gdown: .*symbolic link'):
        weights.download_gdown('https://drive.google.com/uc?id=x', dest, progress=False,
                               fetch_file=lambda **kw: pytest.fail('gdown was called'))
    assert victim.read_bytes() == b'keep me'


def test_non_utf8_record_is_a_one_line_error(tmp_path):
    (tmp_path / 'caffemodel-url').write_bytes(b'http://x/w.caffemodel\n# caf\xe9 \xff\n')
    with pytest.raises(InputError, match=r'caffemodel-url: not UTF-8 text'):
        weights.read_url_record(str(tmp_path))
    r = run_cli(str(tmp_path), '--quiet')
    assert r.returncode == 1 and 'Traceback' not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and 'not UTF-8' in r.stderr


def test_verify_without_a_deploy_net_parses_the_file(model_dir, tmp_path):
    """A folder with a caffemodel-url and no deploy net (a fork-layout PSPNet file, a
    user's own folder): a file cut in the middle is not "present"."""
    _, path = model_dir
    own = tmp_path / 'own'
    own.mkdir()
    (own / 'caffemodel-url').write_text('http://127.0.0.1:9/w.caffemodel\n')
    full = open(path, 'rb').read()
    (own / 'w.caffemodel').write_bytes(full)
    r = run_cli(str(own), '--verify')
    assert r.returncode == 0 and 'present' in r.stdout, r.stderr
    (own / 'w.caffemodel').write_bytes(full[:len(full) // 2])
    for flags in (('--verify',), ()):
        r = run_cli(str(own), *flags)
        assert r.returncode == 1 and 'present' not in r.stdout, (r.stdout, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1
        assert str(own / 'w.caffemodel') in r.stderr and 'not a Caffe weights file' in r.stderr


def test_several_urls_tried_in_order(server, tmp_path):
    """A dead link, then a server error, then a file that fails its checksum: each is
    passed over for the next URL; the file kept is the one that checks out."""
    Handler.files = {'/bad/file.bin': b'not the weights'}
    dead = dead_url()
    try:
        (tmp_path / 'caffemodel-url').write_text(
            '%s\n%s/missing/file.bin\n%s/bad/file.bin\n%s/file.bin\nsha256: %s\n'
            % (dead, server, server, server, SHA256))
        rec = weights.read_url_record(str(tmp_path))
        assert rec['url'] == dead and rec['urls'][1:] == [
            server + '/missing/file.bin', server + '/bad/file.bin', server + '/file.bin']
        path, state = weights.fetch(str(tmp_path), progress=False)
    finally:
        Handler.files = {}
    assert state == 'downloaded' and open(path, 'rb').read() == PAYLOAD
    assert os.path.basename(path) == 'file.bin'


def test_mirror_flag_and_setting_tried_first(server, tmp_path):
    dead = dead_url()
    (tmp_path / 'caffemodel-url').write_text('%s\nsha256: %s\n' % (dead, SHA256))
    r = run_cli(str(tmp_path), '--quiet')  # the release's link is dead
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1
    r = run_cli(str(tmp_path), '--quiet', '--mirror', server)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / 'file.bin').read_bytes() == PAYLOAD
    os.unlink(tmp_path / 'file.bin')
    env = dict(os.environ, PYTHONPATH=REPO, FCN_WEIGHTS_MIRROR=server + '/nothing-here ' + server)
    r = subprocess.run([sys.executable, os.path.join(REPO, 'weights.py'), str(tmp_path), '--quiet'],
                       capture_output=True, text=True, timeout=60, env=env, cwd='/')
    assert r.returncode == 0, r.stderr
    assert (tmp_path / 'file.bin').read_bytes() == PAYLOAD
    # a mirror's file is checked like the release's: a wrong one is not kept
    os.unlink(tmp_path / 'file.bin')
    Handler.files = {'/m/file.bin': b'tampered'}
    try:
        r = run_cli(str(tmp_path), '--quiet', '--mirror', server + '/m/')
    finally:
        Handler.files = {}
    assert r.returncode == 1 and 'sha256 mismatch' in r.stderr and dead in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / 'file.bin').exists()
    r = run_cli(str(tmp_path), '--mirror', 'not-a-url')
    assert r.returncode == 2 and 'not a URL' in r.stderr


def test_record_with_mirrors_keeps_the_release_url_first():
    net = pytest.importorskip('net')
    spec = models.get('voc-fcn8s')
    w = dataclasses.replace(spec.weights, mirrors=('https://mirror.example/fcn8s-heavy-pascal.caffemodel',))
    text = net.url_record(dataclasses.replace(spec, weights=w))
    lines = text.splitlines()
    assert lines[0] == spec.weights.url and lines[1] == w.mirrors[0]
    assert net.url_record(spec).splitlines()[0] == spec.weights.url


def test_missing_start_file_names_the_command_the_spec_gives(tmp_path):
    """init 'file' with no published start: the message names the command that writes
    init.caffemodel, from the model's spec (start_made_by), never a guess."""
    v3 = dataclasses.replace(models.get('deeplabv3-voc12'), folder=str(tmp_path / 'v3'))
    with pytest.raises(InputError) as e:
        weights.init_file_weights(v3)
    text = str(e.value)
    assert text.startswith(os.path.join(str(tmp_path), 'v3', models.INIT_FILE) + ': not found')
    assert '`python surgery.py resnet-cast' in text and 'ResNet-101-model.caffemodel' in text
    assert 'net.py new' not in text
    # a user's model (net.py new writes its start) keeps the default command
    own = dataclasses.replace(v3, start_made_by=models.ModelSpec.start_made_by)
    with pytest.raises(InputError, match='make them with `python net.py new`'):
        weights.init_file_weights(own)
