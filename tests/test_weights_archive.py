"""weights.py: weights published as a member of a zip archive (DeepLab v2's release).

Real zips (zipfile) of small generated caffemodels, fetched through file:// URLs and a
local HTTP server on 127.0.0.1 (Range, a transfer cut once); the member extracted with
its CRC checked, content-checked, the archive kept for the next member (the registry's
deeplabv2-voc12 and its COCO start, init.caffemodel); a missing member, a '..' or
absolute member, a damaged zip, a full disk and a cut download resumed."""
import dataclasses
import http.server
import os
import shutil
import types
import zipfile

import pytest

import guard
import models
import net
import surgery
import trainsetup
import weights
from datasets import http_server, random_weights  # tests/datasets.py
from project import InputError

DEEPLAB = models.get('deeplabv2-voc12')
RELEASE = ('init.caffemodel', 'train_iter_20000.caffemodel', 'train2_iter_20000.caffemodel')
FCN_NARROW = (2, 2, 2, 2, 2, 4)  # net.py widths of a tiny FCN-32s


def make_zip(path, members, compression=zipfile.ZIP_DEFLATED):
    """A zip at `path` holding {name: bytes} (names as given: '..' and absolute ones too)."""
    with zipfile.ZipFile(str(path), 'w', compression) as zf:
        for name, data in members.items():
            zf.writestr(zipfile.ZipInfo(name), data, compress_type=compression)
    return str(path)


def file_url(path):
    return 'file://' + os.path.abspath(str(path))


@pytest.fixture(scope='module')
def deeplab_files(tmp_path_factory):
    """A narrow DeepLab v2 deploy net and three caffemodels of it named like the release's
    (different seeds), as {name: bytes}, plus the deploy prototxt's path."""
    folder = tmp_path_factory.mktemp('deeplab')
    deploy = folder / 'deploy.prototxt'
    deploy.write_text(str(net.deeplab_v2('deploy', crop=33, train_crop=33,
                                         widths=(4, 4, 4, 2, 2, 4, 4, 4, 4, 4),
                                         blocks=(1, 1, 1, 1))))
    files = {}
    for seed, name in enumerate(RELEASE):
        files[name] = open(random_weights(deploy, folder / name, seed=seed), 'rb').read()
    return str(deploy), files


@pytest.fixture
def checkout(tmp_path, monkeypatch):
    """A checkout of its own (models.REPO) holding the registry's deeplabv2-voc12 record
    byte for byte, and a folder `src` standing for the release's server (a --mirror)."""
    monkeypatch.setattr(models, 'REPO', str(tmp_path / 'repo'))
    folder = tmp_path / 'repo' / DEEPLAB.folder
    folder.mkdir(parents=True)
    shutil.copyfile(os.path.join(weights.REPO, DEEPLAB.folder, models.RECORD),
                    folder / models.RECORD)
    src = tmp_path / 'src'
    src.mkdir()
    return folder, src


def test_registry_record_names_the_member():
    rec = weights.read_url_record(weights.record_path(DEEPLAB.name))
    assert rec['member'] == 'train_iter_20000.caffemodel' and rec['file'] is None
    assert weights.archive_path(DEEPLAB.name).endswith('deeplabv2-voc12/prototxt_and_model.zip')
    assert weights.weights_path(DEEPLAB.name) == models.weights_file(DEEPLAB)
    assert models.weights_file(DEEPLAB).endswith('deeplabv2-voc12/train_iter_20000.caffemodel')
    assert DEEPLAB.start.member == models.INIT_FILE and DEEPLAB.start.url == DEEPLAB.weights.url
    assert weights.archive_path('voc-fcn8s') is None  # records without a member: as before


def test_release_zip_gives_the_weights_then_the_start_without_a_second_download(
        checkout, deeplab_files, tmp_path, capsys):
    """`weights.py deeplabv2-voc12` (the release's zip from a mirror, its files in a folder
    as the zip's folder layout is UNCONFIRMED) leaves train_iter_20000.caffemodel ready for
    deeplab-convert and keeps the zip; solve.py's start (init.caffemodel) then comes out
    of the kept zip with the source gone."""
    folder, src = checkout
    deploy, files = deeplab_files
    make_zip(src / 'prototxt_and_model.zip',
             dict({'prototxt_and_model/' + n: b for n, b in files.items()},
                  **{'prototxt_and_model/test.prototxt': b'name: "x"\n'}))
    assert weights.main([DEEPLAB.name, '--quiet', '--mirror', file_url(src)]) == 0
    assert 'downloaded' in capsys.readouterr().out
    dest = folder / 'train_iter_20000.caffemodel'
    assert dest.read_bytes() == files['train_iter_20000.caffemodel']
    archive = folder / 'prototxt_and_model.zip'
    assert archive.read_bytes() == (src / 'prototxt_and_model.zip').read_bytes()  # kept
    assert sorted(os.listdir(folder)) == ['caffemodel-url', 'prototxt_and_model.zip',
                                          'train_iter_20000.caffemodel']
    weights.main(['--list', DEEPLAB.name])
    assert 'present' in capsys.readouterr().out
    # ready for deeplab-convert (the narrow net of the same layout)
    out = tmp_path / 'stock.caffemodel'
    surgery.convert_by_name(str(dest), deploy, str(out), quiet=True)
    assert out.stat().st_size > 0
    # the start: no source left, so it can only come from the kept archive
    os.unlink(src / 'prototxt_and_model.zip')
    start = weights.init_file_weights(DEEPLAB)
    assert start == str(folder / 'init.caffemodel')
    assert open(start, 'rb').read() == files['init.caffemodel']
    assert weights.init_file_weights(DEEPLAB) == start  # present: found, not fetched
    assert weights.fetch(DEEPLAB.name, progress=False) == (str(dest), 'present')
    # the weights again, deleted: extracted from the archive, no download
    os.unlink(dest)
    assert weights.fetch(DEEPLAB.name, progress=False) == (str(dest), 'extracted')
    assert not [p for p in os.listdir(folder) if p.endswith('.part')]


def test_training_starts_from_the_zips_init(deeplab_files, tmp_path, capsys):
    """The solving loop's start (trainsetup.init_weights, init 'file') finds init.caffemodel
    missing, takes it out of the release's zip kept in the model's folder and loads it."""
    deploy, files = deeplab_files
    make_zip(tmp_path / 'prototxt_and_model.zip', files)
    spec = dataclasses.replace(DEEPLAB, folder=str(tmp_path))
    solver = types.SimpleNamespace(net=guard.import_caffe().Net(deploy, 0))  # what it reads
    trainsetup.init_weights(spec, solver)
    assert 'starting from %s' % (tmp_path / 'init.caffemodel') in capsys.readouterr().out
    assert (tmp_path / 'init.caffemodel').read_bytes() == files['init.caffemodel']
    want = guard.import_caffe().Net(deploy, str(tmp_path / 'init.caffemodel'), 0)
    for name in ('conv1', 'fc1_voc12_c2'):
        assert (solver.net.params[name][0].data == want.params[name][0].data).all()


def test_start_message_without_a_published_start(tmp_path):
    """init 'file' without a published start (a net.py new model moved, or its file
    deleted): the message says where the file goes and who writes it."""
    spec = dataclasses.replace(DEEPLAB, folder=str(tmp_path), start=None)
    with pytest.raises(InputError, match=r'init.caffemodel: not found; the weights '
                                         r'deeplabv2-voc12 starts from go there'):
        weights.init_file_weights(spec)


@pytest.fixture
def own_model(tmp_path):
    """A folder of one's own with a narrow voc-fcn32s deploy net (so content means full
    coverage), complete weights and weights cut at a layer boundary (they parse)."""
    mdir = tmp_path / 'mine'
    net.write_model_dir(str(mdir), 'voc-fcn32s', widths=FCN_NARROW)
    full = random_weights(mdir / 'deploy.prototxt', tmp_path / 'full.caffemodel')
    param = guard.import_caffe().proto.caffe_pb2.NetParameter()
    param.ParseFromString(open(full, 'rb').read())
    del param.layer[[i for i, l in enumerate(param.layer) if l.blobs][3]:]
    return mdir, open(full, 'rb').read(), param.SerializeToString()


def record(mdir, url, member, extra=''):
    (mdir / models.RECORD).write_text('%s\n%smember: %s\n' % (url, extra, member))


def test_member_is_content_checked_with_full_coverage(own_model, tmp_path):
    mdir, full, cut = own_model
    zipped = make_zip(tmp_path / 'rel.zip', {'w.caffemodel': cut, 'ok.caffemodel': full})
    record(mdir, file_url(zipped), 'w.caffemodel')
    with pytest.raises(InputError) as e:
        weights.fetch(str(mdir), progress=False)
    assert 'member w.caffemodel is not usable weights' in str(e.value)
    assert 'has no weights for' in str(e.value) and '\n' not in str(e.value)
    assert sorted(os.listdir(mdir)) == sorted(['caffemodel-url', 'deploy.prototxt', 'rel.zip',
                                               'solver.prototxt', 'train.prototxt',
                                               'val.prototxt'])  # kept, nothing extracted
    record(mdir, file_url(zipped), 'ok.caffemodel')
    assert weights.fetch(str(mdir), progress=False) == (str(mdir / 'ok.caffemodel'), 'extracted')
    assert (mdir / 'ok.caffemodel').read_bytes() == full
    (mdir / 'ok.caffemodel').write_bytes(cut)  # present but cut: refused, not overwritten
    with pytest.raises(InputError, match='has no weights for.*delete it and run again'):
        weights.fetch(str(mdir), progress=False)


def test_missing_member_is_one_line_listing_the_archive(tmp_path, capsys):
    mdir = tmp_path / 'm'
    mdir.mkdir()
    zipped = make_zip(tmp_path / 'rel.zip', {'a/init.caffemodel': b'x', 'a/readme.txt': b'y'})
    record(mdir, file_url(zipped), 'train_iter_20000.caffemodel')
    assert weights.main([str(mdir), '--quiet']) == 1
    err = capsys.readouterr().err.strip()
    assert err.count('\n') == 0 and 'rel.zip: holds no member train_iter_20000.caffemodel' in err
    assert '(it holds: a/init.caffemodel, a/readme.txt)' in err
    assert (mdir / 'rel.zip').is_file()  # a complete archive is kept


@pytest.mark.parametrize('entry', ['../train_iter_20000.caffemodel',
                                   '/tmp/train_iter_20000.caffemodel',
                                   'a/../../train_iter_20000.caffemodel'])
def test_member_outside_the_folder_is_refused(own_model, tmp_path, entry):
    mdir, full, _ = own_model
    zipped = make_zip(tmp_path / 'rel.zip', {entry: full})
    record(mdir, file_url(zipped), 'train_iter_20000.caffemodel')
    with pytest.raises(InputError, match='has an unsafe path'):
        weights.fetch(str(mdir), progress=False)
    assert not (tmp_path / 'train_iter_20000.caffemodel').exists()
    assert not (mdir / 'train_iter_20000.caffemodel').exists()


def test_record_member_with_dots_or_absolute_is_refused(tmp_path):
    for bad in ('../w.caffemodel', '/w.caffemodel', 'a/./w.caffemodel', 'a//w'):
        (tmp_path / models.RECORD).write_text('file:///x.zip\nmember: %s\n' % bad)
        with pytest.raises(InputError, match='caffemodel-url:2: cannot read'):
            weights.read_url_record(str(tmp_path))
        with pytest.raises(InputError, match='not a relative path'):
            models.Weights('file:///x.zip', member=bad)


def damage(path, member):
    """Flip a byte inside `member`'s stored data in zip `path` (ZIP_STORED): its CRC fails."""
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(member)
    with open(path, 'r+b') as f:
        f.seek(info.header_offset + 26)
        name_len, extra_len = (int.from_bytes(f.read(2), 'little') for _ in range(2))
        at = info.header_offset + 30 + name_len + extra_len + info.file_size // 2
        f.seek(at)
        byte = f.read(1)
        f.seek(at)
        f.write(bytes([byte[0] ^ 0xFF]))


def test_damaged_zip_is_found_by_its_crc(own_model, tmp_path):
    """Downloaded and damaged: deleted (run again); already there and damaged (a copy put
    there by hand): kept and named, never deleted."""
    mdir, full, _ = own_model
    zipped = make_zip(tmp_path / 'rel.zip', {'w.caffemodel': full}, zipfile.ZIP_STORED)
    damage(zipped, 'w.caffemodel')
    with pytest.raises(zipfile.BadZipFile, match='CRC'):  # the zip itself says so
        zipfile.ZipFile(zipped).read('w.caffemodel')
    record(mdir, file_url(zipped), 'w.caffemodel')
    with pytest.raises(InputError, match=r'member w.caffemodel is damaged \(Bad CRC-32.*'
                                         r'the download was deleted, run again'):
        weights.fetch(str(mdir), progress=False)
    assert not [p for p in os.listdir(mdir) if p.startswith(('rel.zip', 'w.caffemodel'))]
    shutil.copyfile(zipped, mdir / 'rel.zip')
    with pytest.raises(InputError, match='is damaged .*; delete it and run again'):
        weights.fetch(str(mdir), progress=False)
    assert (mdir / 'rel.zip').read_bytes() == open(zipped, 'rb').read()
    assert not [p for p in os.listdir(mdir) if p.startswith('w.caffemodel')]


def test_not_a_zip_download_is_deleted(tmp_path):
    mdir = tmp_path / 'm'
    mdir.mkdir()
    (tmp_path / 'rel.zip').write_bytes(b'<html>moved</html>')
    record(mdir, file_url(tmp_path / 'rel.zip'), 'w.caffemodel')
    with pytest.raises(InputError, match='not a zip archive'):
        weights.fetch(str(mdir), progress=False)
    assert os.listdir(mdir) == [models.RECORD]


def test_member_bigger_than_the_free_space_is_refused(own_model, tmp_path, monkeypatch):
    mdir, full, _ = own_model
    zipped = make_zip(tmp_path / 'rel.zip', {'w.caffemodel': full})
    record(mdir, file_url(zipped), 'w.caffemodel')
    usage = shutil.disk_usage(str(mdir))
    monkeypatch.setattr(shutil, 'disk_usage', lambda p: usage._replace(free=len(full) - 1))
    with pytest.raises(InputError, match='not enough free space for w.caffemodel'):
        weights.fetch(str(mdir), progress=False)
    assert not [p for p in os.listdir(mdir) if p.startswith('w.caffemodel')]
    monkeypatch.undo()
    assert weights.fetch(str(mdir), progress=False)[1] == 'extracted'  # the zip was kept


# ----------------------------------------------------------------------------- cut download

class ZipHandler(http.server.BaseHTTPRequestHandler):
    """GET /rel.zip: `body`, honouring Range; the first request is cut in the middle when
    `cut` is set. Range headers are recorded."""
    body, cut, ranges = b'', False, []

    def log_message(self, *args):
        pass

    def do_GET(self):
        ZipHandler.ranges.append(self.headers.get('Range'))
        if self.path != '/rel.zip':
            self.send_error(404)
            return
        start = int(self.headers['Range'].split('=')[1].split('-')[0]) if self.headers.get('Range') else 0
        self.send_response(206 if start else 200)
        if start:
            self.send_header('Content-Range', 'bytes %d-%d/%d'
                             % (start, len(self.body) - 1, len(self.body)))
        body = self.body[start:]
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        if ZipHandler.cut:
            ZipHandler.cut = False
            body = body[:len(body) // 2]
            self.close_connection = True
        self.wfile.write(body)


@pytest.fixture
def server():
    ZipHandler.ranges = []
    with http_server(ZipHandler) as url:
        yield url


def test_cut_archive_download_resumes(own_model, tmp_path, server):
    mdir, full, _ = own_model
    ZipHandler.body = open(make_zip(tmp_path / 'rel.zip', {'x/w.caffemodel': full}), 'rb').read()
    ZipHandler.cut = True
    record(mdir, server + '/rel.zip', 'w.caffemodel', extra='size: %d\n# size: test\n'
           % len(ZipHandler.body))
    with pytest.raises(InputError, match='run again to resume'):
        weights.fetch(str(mdir), progress=False)
    part = mdir / 'rel.zip.part'
    assert 0 < part.stat().st_size < len(ZipHandler.body)
    assert not (mdir / 'rel.zip').exists() and not (mdir / 'w.caffemodel').exists()
    assert weights.fetch(str(mdir), progress=False) == (str(mdir / 'w.caffemodel'), 'downloaded')
    assert ZipHandler.ranges == [None, 'bytes=%d-' % (len(ZipHandler.body) // 2)]
    assert (mdir / 'w.caffemodel').read_bytes() == full
    assert (mdir / 'rel.zip').read_bytes() == ZipHandler.body and not part.exists()
