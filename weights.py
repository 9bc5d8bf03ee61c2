"""Fetch the released FCN weights and the ILSVRC nets they start from.

Every model directory holds a `caffemodel-url` record, compatible with the original
release's one-line files. `python net.py` writes the project's records from models.py
(each model's Weights: the one place their URLs, sizes and checksums are written, with
the checksums' sources); a record of your own, in any folder, is read the same way:

    http://dl.caffe.berkeleyvision.org/fcn8s-heavy-pascal.caffemodel   <- line 1: the URL
    https://mirror.example.org/fcn/fcn8s-heavy-pascal.caffemodel       <- optional: more URLs
    # sha1: opencv/opencv_extra testdata/dnn/download_models.py        <- where each is from
    size: N                                                            <- optional, bytes
    sha256: 0123...                                                    <- optional
    sha1: 0123...                                                      <- optional (Model Zoo style)
    md5: 0123...                                                       <- optional
    file: pspnet101_VOC2012.caffemodel                                 <- optional: the saved name
    downloader: gdown                                                  <- optional: see below
    member: train_iter_20000.caffemodel                                <- optional: see below

Lines starting with '#' are comments; further URL lines are other places of the same
file, tried in order when one fails (a dead link, a server error, a file that does not
check out); a record with no URL (nyud-fcn16s-color-hha,
never released) makes the downloader say so. Only sizes and checksums published
somewhere are recorded, each with a comment naming where. The release itself publishes
none for most of its models, so a caffemodel is also checked by its content: it must
parse and hold every learnable layer of the model directory's deploy.prototxt with the
shapes that net expects (netload.check_weights), so a download cut short, even at a
layer boundary, is never "present". That check runs on every download and on a present
file whose size is not recorded; --verify adds the checksums. The weights are saved in
the model directory under
the URL's basename (VGG16 and CaffeNet in ilsvrc-nets/, records
`ilsvrc-nets/vgg16.caffemodel-url` and `ilsvrc-nets/caffenet.caffemodel-url`).

Commands (from anywhere; paths resolve from the repository):

    python weights.py voc-fcn8s                   # one model's released weights
    python weights.py voc-fcn32s voc-fcn16s       # several
    python weights.py vgg16 caffenet              # ILSVRC nets for training from scratch
    python weights.py --all                       # every released FCN model (several GB)
    python weights.py --list                      # what is present, where, and the URLs
    python weights.py path/to/model-dir           # any directory holding a caffemodel-url
    python weights.py --mirror https://my.host/fcn voc-fcn8s   # your own copy, tried first

Dead links: a mirror (--mirror URL, repeatable, or $FCN_WEIGHTS_MIRROR, URLs separated
by spaces) is a folder URL holding the files under the names they are saved as
(<mirror>/fcn8s-heavy-pascal.caffemodel); mirrors are tried first, then the record's
URLs. Whatever the source, the file must pass the same size, checksum and content checks.

PSPNet's three caffemodels (pspnet/<model>/caffemodel-url) were published on Google
Drive, which answers large files with a confirmation page instead of the file: their
records say `downloader: gdown`, and the maintained gdown package (pyproject.toml) fetches
them, resuming its own partial file; the size is checked where one is recorded, and the
file is renamed into place only once complete. They are in the PSPNet fork's layout:
`python surgery.py pspnet-convert --model MODEL` turns them into weights this Caffe loads.

    python weights.py pspnet101-voc2012           # -> pspnet/pspnet101-voc2012/pspnet101_VOC2012.caffemodel

Archives: a record with `member: NAME` (DeepLab v2's) points at a zip holding the weights:
the zip is downloaded like any file (under its saved name, resumed from its .part, size
and checksums, which are the zip's, checked), must open as a zip, and is KEPT beside the
weights, so another member (init.caffemodel, which deeplab/deeplabv2-voc12/solve.py
extracts as its start) needs no second download; delete it once you have what you need.
NAME is the member's path in the zip, or its name alone where that is unique there. The
member is streamed out with Python's zipfile (its CRC checked), after a check of the
free space, into `<weights>.part`, content-checked like a download, then renamed into
place under NAME's basename. A member path with '..' or an absolute one is refused, a
missing one named with what the zip holds; a damaged zip just downloaded is deleted (run
again), one that was already there is kept and named (delete it and run again).

    python weights.py deeplabv2-voc12             # -> deeplab/deeplabv2-voc12/train_iter_20000.caffemodel

A download streams to `<dest>.part` (never through a symbolic link or into anything but
a regular file: a `.part` that is a link or a device is refused, so nothing outside the
folder is overwritten), resumes an existing .part with an HTTP Range
request (starting over when the server ignores Range), shows bytes / % / rate on stderr,
checks size and checksums, then renames the .part into place. An interrupted download
keeps its .part: run the same command again to resume. Offline? The error names the URL
and the path: fetch the file elsewhere and copy it there.
"""
import argparse
import errno
import hashlib
import http.client
import os
import re
import stat
import sys
import time
import urllib.error
import urllib.request
import zipfile
import zlib

import gdown

import guard
import models
import netinit
import netload
import safewrite
import snapshots
from cli import run_cli
from project import REPO, InputError, NotReleasedError

RECORD = models.RECORD
# name on the command line -> URL record of an ILSVRC classification net (models.CLASSIFIERS)
ILSVRC = {name: models.record_file(c) for name, c in models.CLASSIFIERS.items()}
DOWNLOADERS = ('gdown',)  # besides the built-in HTTP one
CHUNK = 1 << 20  # bytes per read
TIMEOUT = 60  # seconds without data before giving up on a connection
NO_RELEASE = 'no released weights; train it with solve.py'
DIGESTS = {'sha256': 64, 'sha1': 40, 'md5': 32}  # checksum -> hex digits
GDRIVE_HOSTS = ('drive.google.com', 'docs.google.com')  # where `downloader: gdown` applies
MIRROR_ENV = 'FCN_WEIGHTS_MIRROR'  # main()'s default for --mirror
URL = re.compile(r'^(https?|ftp|file)://')


def recorded_models():
    """Ids of the registry's models (models.py) whose folder holds a caffemodel-url, sorted."""
    return sorted(n for n in models.names() if os.path.isfile(models.record_file(n)))


def _spec(model):
    """The registry's spec of `model` (an id, 'vgg16', 'caffenet', a model's folder), or None."""
    try:
        return models.get(model)
    except InputError:
        return None


def record_path(model):
    """Path of the URL record for `model`: a model id of the registry, 'vgg16',
    'caffenet', or the path of a directory holding a caffemodel-url (a user's own)."""
    spec = _spec(model)
    candidates = [models.record_file(spec)] if spec else []
    for candidate in candidates + [os.path.join(model, RECORD)]:
        if os.path.isfile(candidate):
            return os.path.abspath(candidate)
    raise InputError('%s: unknown model (no %s); known: %s'
                     % (model, RECORD, ', '.join(recorded_models() + sorted(ILSVRC))))


def read_url_record(model_dir):
    """Parse a URL record: `model_dir` is a directory holding caffemodel-url, or the record file.

    Returns a dict: url (the first URL; None when the model has no release), urls (every
    URL, in order), size (bytes or None), sha256 / sha1 / md5 (lower-case hex or None),
    note (the comment lines, joined), file (the saved name or None), downloader, member
    (the weights' path in the archive the URL gives, or None). A file that is not UTF-8 text, or a line that is
    none of these, is an InputError naming the file (and the line)."""
    path = os.path.join(model_dir, RECORD) if os.path.isdir(model_dir) else model_dir
    if not os.path.isfile(path):
        raise InputError('%s: no URL record' % path)
    rec = {'url': None, 'urls': [], 'size': None, 'note': '', 'file': None, 'downloader': None,
           'member': None}
    rec.update({algo: None for algo in DIGESTS})
    notes = []
    try:
        with open(path, encoding='utf-8-sig') as f:
            lines = f.read().splitlines()
    except UnicodeDecodeError as e:
        raise InputError('%s: not UTF-8 text (%s at byte %d); a URL record is one URL a line '
                         'and key: value lines' % (path, e.reason, e.start))
    for n, line in enumerate(lines, 1):
        line = line.strip()
        if not line:
            continue
        if line.startswith(models.GENERATED):
            continue  # net.py's mark on the records it writes: not a note
        if line.startswith('#'):
            notes.append(line.lstrip('#').strip())
            continue
        key, sep, value = line.partition(':')
        key, value = key.strip().lower(), value.strip()
        if URL.match(line):
            rec['urls'].append(line)
            rec['url'] = rec['urls'][0]
        elif sep and key == 'size' and value.isdigit():
            rec['size'] = int(value)
        elif sep and key in DIGESTS and re.fullmatch(r'[0-9a-fA-F]{%d}' % DIGESTS[key], value):
            rec[key] = value.lower()
        elif (sep and key == 'file' and value and os.path.basename(value) == value
              and value not in ('.', '..')):
            rec['file'] = value
        elif sep and key == 'downloader' and value in DOWNLOADERS:
            rec['downloader'] = value
        elif sep and key == 'member' and models.member_ok(value):
            rec['member'] = value
        else:
            raise InputError('%s:%d: cannot read %r (expected a URL, size: N, sha256: HEX, '
                             'sha1: HEX, md5: HEX, file: NAME, downloader: %s or member: '
                             'PATH in the archive, no \'..\')'
                             % (path, n, line, '|'.join(DOWNLOADERS)))
    rec['note'] = ' '.join(notes)
    return rec


def weights_record(w):
    """The record (read_url_record's dict) of a models.Weights: for published weights
    that have no caffemodel-url of their own (ModelSpec.start)."""
    rec = {'url': w.url, 'urls': [w.url] + list(w.mirrors), 'size': w.size,
           'note': ' '.join(w.note), 'file': w.file_name, 'downloader': w.downloader,
           'member': w.member}
    rec.update({algo: getattr(w, algo) for algo in DIGESTS})
    return rec


def saved_name(rec):
    """The name record `rec`'s download is saved under: its `file:` or the URL's basename
    (the archive's, when the record names a member)."""
    return rec['file'] or os.path.basename(
        urllib.request.url2pathname(rec['url'].split('?')[0].rstrip('/')))


def weights_name(rec):
    """The name the weights of record `rec` are saved under: the download's, or the
    basename of the archive member holding them."""
    return rec['member'].rsplit('/', 1)[-1] if rec['member'] else saved_name(rec)


def weights_path(model):
    """Where `model`'s released weights live: its record's folder + the record's `file:`
    or the URL's basename, or the basename of its `member:` (ilsvrc-nets/ for vgg16 /
    caffenet). The registry's records are generated from models.py, so this is
    models.weights_file(spec) for them; a user's own record is read the same way.
    InputError when the model has no release."""
    record = record_path(model)
    rec = read_url_record(record)
    if not rec['url']:
        raise NotReleasedError('%s: %s' % (model, NO_RELEASE))
    return os.path.join(os.path.dirname(record), weights_name(rec))


def archive_path(model):
    """Where the archive holding `model`'s weights is kept (its record names a member),
    else None."""
    record = record_path(model)
    rec = read_url_record(record)
    return os.path.join(os.path.dirname(record), saved_name(rec)) if rec['member'] else None


def _human(n):
    for unit in ('B', 'KB', 'MB', 'GB'):
        if n < 1000 or unit == 'GB':
            return ('%d %s' if unit == 'B' else '%.1f %s') % (n, unit)
        n /= 1000.0


class _Meter:
    """Progress on stderr: bytes so far, % of the total when known, rate; redrawn <= 4x/s."""

    def __init__(self, start, total, enabled):
        self.start, self.total, self.enabled = start, total, enabled
        self.t0 = self.last = time.time()

    def show(self, done, final=False):
        now = time.time()
        if not self.enabled or (not final and now - self.last < 0.25):
            return
        self.last = now
        rate = (done - self.start) / max(now - self.t0, 1e-6)
        pct = ' %3d%%' % (100 * done // self.total) if self.total else ''
        of = ' / %s' % _human(self.total) if self.total else ''
        sys.stderr.write('\r  %s%s%s  %s/s ' % (_human(done), of, pct, _human(rate)))
        if final:
            sys.stderr.write('\n')
        sys.stderr.flush()


def _file_digest(path, algo):
    h = hashlib.new(algo)
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(CHUNK), b''):
            h.update(block)
    return h.hexdigest()


def _own_file(path, what):
    """The size of `path` (0 when absent), a file this module creates, appends to, renames
    or deletes: InputError unless it is absent or a regular file. Checked with lstat, so a
    symbolic link (to a file elsewhere, a device) is refused, never followed."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return 0
    if not stat.S_ISREG(st.st_mode):
        raise InputError('%s: the %s is a %s, not a regular file; refusing to write through '
                         'it (remove it and run again)'
                         % (path, what, 'symbolic link' if stat.S_ISLNK(st.st_mode) else 'special file'))
    return st.st_size


def _open_part(path, append):
    """`path` opened for writing bytes (appended to, or emptied) without following a
    symbolic link (O_NOFOLLOW): one put there after _own_file's check is refused too."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | (os.O_APPEND if append else os.O_TRUNC)
    try:
        fd = os.open(path, flags, 0o666)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise InputError('%s: the partial download is a symbolic link; refusing to write '
                             'through it (remove it and run again)' % path)
        raise
    return os.fdopen(fd, 'ab' if append else 'wb')


def _unreachable(url, dest, reason):
    return InputError('cannot download %s (%s); fetch it elsewhere and put it at %s'
                      % (url, reason, dest))


def download(url, dest, size=None, sha256=None, progress=True, sha1=None, md5=None,
             check=None):
    """Download `url` to `dest` (bytes on disk, atomically), resuming `dest`.part.

    `size` (bytes) and `sha256` / `sha1` / `md5` (hex) are checked when given, then
    `check(part_path)` (raising InputError, e.g. `complete`); a mismatch deletes the .part
    and raises InputError. Network failures raise InputError naming the URL and `dest`; a
    transfer cut short keeps the .part so the next call resumes it. Returns dest."""
    dest = os.path.abspath(str(dest))
    part = dest + '.part'
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    offset = _own_file(part, 'partial download')
    if size is not None and offset > size:
        offset = 0
    while size is None or offset < size:  # at most twice: resume, then start over
        req = urllib.request.Request(url, headers={'User-Agent': 'fcn-weights/1'})
        if offset:
            req.add_header('Range', 'bytes=%d-' % offset)
        try:
            resp = urllib.request.urlopen(req, timeout=TIMEOUT)
        except urllib.error.HTTPError as e:
            if e.code == 416 and offset:
                # Range not satisfiable: the .part is complete when the total equals it.
                m = re.search(r'/(\d+)', e.headers.get('Content-Range', '') or '')
                if m and int(m.group(1)) == offset:
                    break
                offset = 0
                continue
            raise _unreachable(url, dest, 'HTTP %d %s' % (e.code, e.reason))
        except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as e:
            reason = getattr(e, 'reason', None) or e
            raise _unreachable(url, dest, str(reason).strip() or type(e).__name__)
        with resp:
            length = resp.headers.get('Content-Length')
            length = int(length) if length and length.isdigit() else None
            m = re.match(r'bytes (\d+)-\d+/(\d+|\*)', resp.headers.get('Content-Range') or '')
            if offset and not (resp.status == 206 and m and int(m.group(1)) == offset):
                offset = 0  # the server ignored Range (or sent another one): start over
            expected = offset + length if length is not None else size
            meter = _Meter(offset, expected, progress)
            done = offset
            with _open_part(part, append=bool(offset)) as f:
                while True:
                    try:
                        block = resp.read(CHUNK)
                    except (OSError, http.client.HTTPException, ValueError) as e:
                        block, cut = b'', type(e).__name__
                    else:
                        cut = None
                    if not block:
                        break
                    f.write(block)
                    done += len(block)
                    meter.show(done)
            meter.show(done, final=True)
            if cut or (length is not None and done < offset + length):
                raise InputError('download of %s interrupted at %s (%s); run again to resume '
                                 '%s' % (url, _human(done), cut or 'connection closed', part))
        break
    _own_file(part, 'partial download')
    return _accept(url, part, dest, check, size=size, sha256=sha256, sha1=sha1, md5=md5)


def _accept(url, staged, dest, check=None, **wanted):
    """Give the finished download `staged` its name `dest` once it passes every check:
    the `wanted` size (bytes) and checksums (sha256 / sha1 / md5 hex; None: not published),
    then `check(staged)` (the content). A failing file is deleted and the InputError names
    `url` and says to run again. Returns dest."""
    for what, want in wanted.items():
        if want is None:
            continue
        have = os.path.getsize(staged) if what == 'size' else _file_digest(staged, what)
        if str(have).lower() != str(want).lower():
            os.unlink(staged)
            raise InputError('%s: %s mismatch (got %s, expected %s); the download was deleted, '
                             'run again' % (url, what, have, want))
    if check:
        try:
            check(staged)
        except InputError as e:
            os.unlink(staged)
            raise InputError('%s: the download is not a complete model (%s); it was deleted, '
                             'run again' % (url, e))
    safewrite.place(staged, dest)  # a link at dest refused, a device written through
    return dest


def download_gdown(url, dest, size=None, progress=True, fetch_file=gdown.download, check=None):
    """Download a Google Drive file with gdown (it handles the confirmation page for large
    files and resumes its own partial file beside `dest`) into `dest`.gdown, check `size`
    (bytes) when given and `check(staged path)` (as download does), then rename it to
    `dest`. InputError naming the URL and `dest` on
    any failure (offline, quota). fetch_file: gdown.download's signature (tests pass a
    local one). Returns dest."""
    dest = os.path.abspath(str(dest))
    staged = dest + '.gdown'
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    _own_file(staged, 'partial download')  # gdown would write through a link
    try:
        got = fetch_file(url=url, output=staged, quiet=not progress, resume=True)
    except Exception as e:  # gdown raises its own errors, requests' and OSError
        raise _unreachable(url, dest, str(e).strip().splitlines()[0] if str(e).strip()
                           else type(e).__name__)
    if not got or not os.path.isfile(staged):
        raise _unreachable(url, dest, 'gdown saved nothing')
    return _accept(url, staged, dest, check, size=size)


def deploy_path(model):
    """The net `model`'s weights load into: the model directory's deploy.prototxt, or the
    classifier's ilsvrc-nets/<name>-deploy.prototxt for vgg16 / caffenet; None for a
    release in a fork's layout (PSPNet's: Weights.convert, surgery.py converts it first)."""
    if model in ILSVRC:
        return os.path.join(REPO, models.CLASSIFIERS[model].deploy)
    if models.converted(model):
        return None
    return os.path.join(os.path.dirname(record_path(model)), 'deploy.prototxt')


def parse_weights(path):
    """InputError unless caffemodel `path` parses as a NetParameter holding layers, each
    blob with as many values (data or double_data) as its shape: what can be checked
    without a net to compare with (a file cut inside a layer does not parse; one cut at
    a layer boundary needs the net: `complete`)."""
    caffe = guard.import_caffe()
    if os.path.getsize(path) == 0:
        raise InputError('%s: weights file is empty' % path)
    param = netload.read_proto(path, caffe.proto.caffe_pb2.NetParameter())
    layers = list(param.layer) or list(param.layers)
    if not layers:
        raise InputError('%s: weights file holds no layers' % path)
    for layer in layers:
        for i, blob in enumerate(layer.blobs):
            shape = netload._blob_shape(blob)
            want, have = netinit._count(shape), max(len(blob.data), len(blob.double_data))
            if have != want:
                raise InputError('%s: layer %r blob %d holds %d values, its shape %s needs %d'
                                 % (path, layer.name, i, have, shape, want))


def complete(model, path):
    """InputError unless caffemodel `path` parses and covers every learnable layer of
    `model`'s deploy net with the shapes it expects (netload.check_weights, not partial):
    what a file cut short fails, wherever it was cut. Without a deploy net to check
    against (PSPNet's fork-layout files, a folder of your own) it must at least parse,
    every blob whole (parse_weights), unless the record publishes a size or checksum:
    those (checked before this) already say the bytes are the release's."""
    deploy = deploy_path(model)
    if deploy and os.path.isfile(deploy):
        guard.set_mode(None)
        netload.check_weights(path, netload.open_net(deploy, 'test'))
        return
    rec = read_url_record(record_path(model))
    if not any(rec[key] for key in ('size',) + tuple(DIGESTS)):
        parse_weights(path)


def sources(rec, name, mirrors=()):
    """[(url, downloader)] to try, in order, for record `rec` whose file is saved as
    `name`: each mirror's <mirror>/<name> (plain HTTP), then the record's URLs (gdown,
    when the record says so, for Google Drive's; plain HTTP for the others)."""
    out = [(m.rstrip('/') + '/' + urllib.request.pathname2url(name).lstrip('/'), None)
           for m in mirrors]
    for url in rec['urls']:
        host = urllib.request.urlparse(url).hostname or ''
        out.append((url, rec['downloader'] if host in GDRIVE_HOSTS else None))
    return out


def fetch(model, progress=True, verify=False, content=True, mirrors=()):
    """Download `model`'s weights unless present; returns (path, 'present' | 'downloaded'
    | 'extracted': taken from the archive already there).

    A present file must have the recorded size; where none is recorded (and always with
    `verify`) its content must be `complete`; `verify` also checks the checksums.
    content=False skips that content check of a present file, for a caller that loads it
    through netload.open_net right away (the same full-coverage check, so the caffemodel
    is not parsed and the deploy net not built twice). Missing, it is downloaded from
    the first of `sources` (mirrors: folder URLs, tried first) that gives a file passing
    every check; InputError naming each URL and why it failed when none does. A record
    naming a `member` gets its archive that way, then the member (fetch_member)."""
    rec = read_url_record(record_path(model))
    if not rec['url']:
        raise NotReleasedError('%s: %s' % (model, NO_RELEASE))
    return fetch_record(rec, weights_path(model), lambda part: complete(model, part),
                        progress, verify, content, mirrors)


def fetch_record(rec, dest, check, progress=True, verify=False, content=True, mirrors=()):
    """fetch() of record `rec` (read_url_record's dict) into `dest`, each file content-
    checked by `check(path)` (raising InputError): see fetch."""
    if rec['member']:
        return fetch_member(rec, dest, check, progress, verify, content, mirrors)
    if os.path.isfile(dest):
        if rec['size'] is not None and os.path.getsize(dest) != rec['size']:
            raise InputError('%s: has %d bytes, the release has %d; delete it and run again'
                             % (dest, os.path.getsize(dest), rec['size']))
        for algo in DIGESTS if verify else ():
            if rec[algo] and _file_digest(dest, algo) != rec[algo]:
                raise InputError('%s: %s does not match the release; delete it and run again'
                                 % (dest, algo))
        if verify or (content and rec['size'] is None):
            try:
                check(dest)
            except InputError as e:
                raise InputError('%s; delete it and run again' % e)
        return dest, 'present'
    failed, tries = [], sources(rec, os.path.basename(dest), mirrors)
    for url, downloader in tries:
        try:
            if downloader == 'gdown':
                download_gdown(url, dest, size=rec['size'], progress=progress, check=check)
            else:
                download(url, dest, size=rec['size'], progress=progress, check=check,
                         **{a: rec[a] for a in DIGESTS})
            return dest, 'downloaded'
        except InputError as e:
            failed.append(str(e))
            if progress and len(failed) < len(tries):
                print('%s; trying the next source' % e, file=sys.stderr, flush=True)
    if len(failed) == 1:
        raise InputError(failed[0])
    raise InputError('%s: no source worked (%s)' % (dest, '; '.join(failed)))


# --- archives: weights published as a member of a zip -------------------------------------

class DamagedArchive(InputError):
    """A zip whose member does not read back whole (CRC, compressed data, headers)."""


def fetch_member(rec, dest, check, progress=True, verify=False, content=True, mirrors=()):
    """fetch_record() of a record naming a `member`: `dest` present is content-checked
    (`check`; the record's size and checksums are the archive's, checked with `verify`
    when the archive is still there); missing, the archive beside it (saved_name) is
    fetched unless there (the same sources, resume, size and checksums; it must open as
    a zip) and kept, then the member is extracted into `dest` (extract_member). A
    damaged archive is deleted when this call downloaded it, else kept and named."""
    archive = os.path.join(os.path.dirname(dest), saved_name(rec))
    whole = dict(rec, member=None)
    if os.path.isfile(dest):
        if verify and os.path.isfile(archive):
            fetch_record(whole, archive, check_zip, progress, verify=True)
        if verify or content:
            try:
                check(dest)
            except InputError as e:
                raise InputError('%s; delete it and run again' % e)
        return dest, 'present'
    _, state = fetch_record(whole, archive, check_zip, progress, verify, content, mirrors)
    try:
        extract_member(archive, rec['member'], dest, check, progress)
    except DamagedArchive as e:
        if state != 'downloaded':
            raise InputError('%s; delete it and run again' % e)
        os.unlink(archive)
        raise InputError('%s; the download was deleted, run again' % e)
    return dest, 'downloaded' if state == 'downloaded' else 'extracted'


def check_zip(path):
    """InputError unless `path` opens as a zip archive (its central directory, at the
    end of the file, reads: a download cut short does not)."""
    try:
        with zipfile.ZipFile(path) as zf:
            zf.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError) as e:
        raise InputError('%s: not a zip archive (%s)' % (path, e))


def find_member(zf, archive, member):
    """The ZipInfo of `member` in open zip `zf`: its exact path, else (a bare name) the one
    file of that name in any folder. InputError naming `archive` when it is missing (with
    what the archive holds), ambiguous, or at a path that is absolute or holds '..'."""
    files = [i for i in zf.infolist() if not i.is_dir()]
    hits = [i for i in files if i.filename == member]
    if not hits and '/' not in member:
        hits = [i for i in files if i.filename.replace('\\', '/').rsplit('/', 1)[-1] == member]
    if not hits:
        held = [i.filename for i in files]
        more = ' and %d more' % (len(held) - 20) if len(held) > 20 else ''
        raise InputError('%s: holds no member %s (it holds: %s%s)'
                         % (archive, member, ', '.join(held[:20]) or 'nothing', more))
    if len(hits) > 1:
        raise InputError('%s: holds %d files named %s (%s); name one by its path in the '
                         'record\'s member:' % (archive, len(hits), member,
                                                 ', '.join(i.filename for i in hits)))
    if not models.member_ok(hits[0].filename):
        raise InputError('%s: member %r has an unsafe path (absolute or with \'..\'); '
                         'refusing to extract it' % (archive, hits[0].filename))
    return hits[0]


def extract_member(archive, member, dest, check=None, progress=True):
    """Stream `member` (find_member) of zip `archive` into `dest`: refused when the disk
    has not its size free; written to `dest`.part (never through a link: _open_part),
    zipfile checking its CRC as it reads, its size compared with the archive's, then
    `check(part)` (InputError), then renamed into place (safewrite.place). Any failure
    removes the .part (the archive is there to extract from again). A damaged member is
    a DamagedArchive; InputError for the rest. Returns dest."""
    dest = os.path.abspath(str(dest))
    part = dest + '.part'
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError) as e:
        raise InputError('%s: not a zip archive (%s)' % (archive, e))
    with zf:
        info = find_member(zf, archive, member)
        safewrite.check_free_space(os.path.dirname(dest), info.file_size,
                                   '%s (%s)' % (os.path.basename(dest), _human(info.file_size)))
        _own_file(part, 'partial extraction')
        meter, done = _Meter(0, info.file_size, progress), 0
        try:
            with zf.open(info) as src, _open_part(part, append=False) as f:
                for block in iter(lambda: src.read(CHUNK), b''):
                    f.write(block)
                    done += len(block)
                    meter.show(done)
            meter.show(done, final=True)
            if _own_file(part, 'partial extraction') != info.file_size:
                raise InputError('%s: extracted %d of the %d bytes of %s'
                                 % (part, os.path.getsize(part), info.file_size, info.filename))
            if check:
                check(part)
        except (zipfile.BadZipFile, zlib.error, EOFError) as e:
            _drop(part)
            raise DamagedArchive('%s: member %s is damaged (%s)' % (archive, info.filename, e))
        except (NotImplementedError, RuntimeError) as e:  # a compression method, a password
            _drop(part)
            raise InputError('%s: cannot extract %s (%s)' % (archive, info.filename, e))
        except InputError as e:
            _drop(part)
            raise InputError('%s: member %s is not usable weights (%s)'
                             % (archive, info.filename, e))
        except BaseException:
            _drop(part)
            raise
    safewrite.place(part, dest)  # a link at dest refused, a device written through
    return dest


def _drop(part):
    """Remove our own partial file `part` (a regular file; never a link put there)."""
    if os.path.isfile(part) and not os.path.islink(part):
        os.unlink(part)


def _rel(path):
    rel = os.path.relpath(path, REPO)
    return path if rel.startswith('..') else rel


def list_models(names):
    """One line per model: name, present / in archive (kept, member not extracted) /
    partial / missing / no release, path, URL."""
    rows = []
    for name in names:
        rec = read_url_record(record_path(name))
        if not rec['url']:
            rows.append((name, 'no release', rec['note'] or NO_RELEASE, ''))
            continue
        dest = weights_path(name)
        download = archive_path(name) or dest
        state = ('present' if os.path.isfile(dest) else 'in archive' if download != dest
                 and os.path.isfile(download) else 'partial' if os.path.isfile(download + '.part')
                 else 'missing')
        rows.append((name, state, _rel(dest), rec['url']))
    wide = [max((len(r[i]) for r in rows if r[3] or i < 2), default=0) for i in range(3)]
    for row in rows:
        cells = row if row[3] else row[:3]
        print('  '.join(c.ljust(w) for c, w in zip(cells, wide + [0])).rstrip())


# --- which weights file: the project's answers, one policy each ----------------------------
#
# Every "which caffemodel?" question of the commands is answered here:
#   weights_path(model)        the released file, where fetch() saves it (its record says)
#   released_weights(model)    the same, fetched on first use (infer.py)
#   snapshot_weights(folder)   the latest trusted snapshot its solve.py wrote (snapshots.py)
#   trained_weights(model)     a trained model's: its latest snapshot, else its release
#   ilsvrc_weights(arch)       the ImageNet classifier cast to convolutions (surgery.py cast)
#   parent_weights(source)     a Parent's: the cast classifier's, or a trained model's
#   converted_weights(spec)   a release converted for this Caffe (Weights.convert names how)
#   init_file_weights(spec)    init.caffemodel in a model's folder (net.py new wrote it, or
#                              fetched from where spec.start says it is published)
#   default_weights(spec)      a model's when no --weights is given: released (converted
#                              where the release needs it), else the latest snapshot

def trained_weights(model_name):
    """Weights of a trained model for a child to start from: the latest good snapshot in
    its folder's snapshot/ (models.model_dir: a user's model may live anywhere), else the
    released caffemodel in the folder (see weights.py)."""
    model_dir = models.model_dir(model_name)
    path = snapshot_weights(model_dir)
    if path:
        return path
    try:
        released = weights_path(model_name)  # where weights.py puts it
    except InputError:  # the release never had this model
        released = None
    if released and os.path.isfile(released):
        return released
    raise InputError('%s: no trained weights (no snapshot/ and no released .caffemodel); '
                     'train it with `python %s` or fetch them with `python weights.py %s`'
                     % (model_dir, os.path.join(model_dir, 'solve.py'), model_name))


def parent_weights(source):
    """The weights file of a Parent's source: a classifier's cast weights or a model's
    trained ones."""
    return ilsvrc_weights(source) if source in models.CLASSIFIERS else trained_weights(source)


def converted_weights(spec):
    """The released weights of `spec` converted for this Caffe, where models.stock_file
    says (made by the surgery.py command spec.weights.convert names); an InputError saying
    how to make them, or to pass --weights."""
    path = models.stock_file(spec)
    if not os.path.isfile(path):
        raise InputError('%s: not found; get and convert the released weights with '
                         '`python weights.py %s && python surgery.py %s --model %s` '
                         '(or pass --weights FILE)'
                         % (path, spec.name, spec.weights.convert, spec.name))
    return path


def ilsvrc_weights(arch):
    """ilsvrc-nets/<arch>-fcn.caffemodel: the ImageNet classifier cast to convolutions."""
    path = os.path.join(REPO, 'ilsvrc-nets', '%s-fcn.caffemodel' % arch)
    if not os.path.isfile(path):
        raise InputError('%s: not found; make it with `python weights.py %s` (downloads the '
                         'Model Zoo classifier) then `python surgery.py cast --arch %s`'
                         % (path, arch, arch))
    return path


def default_weights(spec, download=True, partial=False):
    """The weights of model `spec` when --weights is not given: for a model the release
    never had (a user's model.json, nyud-fcn16s-color-hha) the latest good snapshot its
    solve.py wrote (snapshot_weights), else the released ones (released_weights).
    partial: the net will be opened with partial loading (--allow-partial)."""
    if spec.weights is not None and spec.weights.convert:
        return converted_weights(spec)
    if spec.weights is not None:
        return released_weights(spec.name, download, partial)
    folder = models.model_dir(spec)
    path = snapshot_weights(folder)
    if path is None:
        raise InputError('%s: not trained yet (no good snapshot in %s); train it with `python %s` '
                         'or pass --weights FILE' % (spec.name, snapshots.snapshot_dir(folder),
                                                     os.path.join(folder, 'solve.py')))
    return path


def released_weights(model, download=True, partial=False):
    """Path of `model`'s released weights (where weights.py keeps them), fetched on
    first use unless not `download` (progress bar, size / checksum checked); offline,
    an InputError names the URL and the path to put the file at."""
    path = weights_path(model)
    if os.path.isfile(path):
        # A file of the wrong size is refused here; its content is checked by open_net
        # (every layer covered) unless the net is opened partially, then by fetch.
        fetch(model, progress=False, content=partial)
        return path
    if not download:
        raise InputError('%s: weights not found; get them with `python weights.py %s` '
                         '(or pass --weights FILE, or drop --no-download)' % (path, model))
    print('%s: fetching the released weights into %s' % (model, path), file=sys.stderr, flush=True)
    return fetch(model, progress=sys.stderr.isatty())[0]


def snapshot_weights(model_dir):
    """The weights of the latest trusted snapshot the model in `model_dir` wrote with its
    solve.py (MODEL_DIR/snapshot; snapshots.latest_weights), or None."""
    return snapshots.latest_weights(snapshots.snapshot_dir(model_dir))


def init_file_weights(spec):
    """models.INIT_FILE in the folder of `spec` (init 'file'): a model made by `net.py new`
    starts from the weights it wrote there (spec.start_made_by names the command that
    writes them, the message when they are missing); a model whose start is published
    (spec.start, e.g. a member of its release's archive) gets it fetched there on first
    use, parsed whole (no net to check it against: its classifier may differ)."""
    path = os.path.join(models.model_dir(spec), models.INIT_FILE)
    if os.path.isfile(path):
        return path
    if spec.start is None:  # not published: a command of this project makes it
        raise InputError('%s: not found; the weights %s starts from go there: make them with '
                         '`%s`' % (path, spec.name, spec.start_made_by))
    print('%s: fetching its start weights into %s' % (spec.name, path), file=sys.stderr, flush=True)
    return fetch_record(weights_record(spec.start), path, parse_weights,
                        progress=sys.stderr.isatty())[0]


def main(argv=None):
    parser = argparse.ArgumentParser(
        description='Download released FCN weights (and the VGG16 / CaffeNet ILSVRC nets) '
                    'into their model directories.')
    parser.add_argument('models', nargs='*', metavar='MODEL',
                        help='model directory name (e.g. voc-fcn8s), vgg16, caffenet, or a '
                             'directory holding a caffemodel-url')
    parser.add_argument('--all', action='store_true',
                        help='every FCN model with released weights (not vgg16/caffenet)')
    parser.add_argument('--list', action='store_true',
                        help='only print each model, whether its weights are present, and the URL')
    parser.add_argument('--verify', action='store_true',
                        help='also check the checksums and the content of weights '
                             'already present')
    parser.add_argument('--quiet', action='store_true', help='no progress meter')
    parser.add_argument('--mirror', action='append', metavar='URL',
                        help='a folder URL holding the weights under their saved names, tried '
                             'before the record\'s URLs (repeatable; default: $%s, URLs '
                             'separated by spaces)' % MIRROR_ENV)
    args = parser.parse_args(argv)
    mirrors = args.mirror or os.environ.get(MIRROR_ENV, '').split()
    for mirror in mirrors:
        if not URL.match(mirror):
            parser.error('--mirror %s: not a URL (http://, https://, ftp:// or file://)' % mirror)
    names = list(args.models)
    if args.all:
        names += [m for m in recorded_models() if m not in names and not models.converted(m)]
    if args.list:
        list_models(names or recorded_models() + sorted(ILSVRC))
        return 0
    if not names:
        parser.error('name a MODEL, vgg16, caffenet, or use --all / --list')
    for name in names:
        record_path(name)  # unknown names fail before anything is downloaded
    failed = 0
    for name in names:
        rec = read_url_record(record_path(name))
        if not rec['url'] and args.all and name not in args.models:
            print('%s: skipped, %s' % (name, NO_RELEASE))
            continue
        try:
            if rec['url'] and not os.path.isfile(weights_path(name)):
                kept = archive_path(name)
                source = ('%s: %s' % (_rel(kept), rec['member']) if kept and os.path.isfile(kept)
                          else rec['url'])
                print('%s: %s -> %s' % (name, source, _rel(weights_path(name))), flush=True)
            path, state = fetch(name, progress=not args.quiet, verify=args.verify,
                                mirrors=mirrors)
            print('%s: %s %s' % (name, state, _rel(path)))
        except InputError as e:
            print('error: %s' % e, file=sys.stderr)
            failed += 1
    return 1 if failed else 0

if __name__ == '__main__':
    run_cli(main)
