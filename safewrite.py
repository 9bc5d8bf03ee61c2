"""Outputs written safely: never over an input, complete before they take their name.

- `atomic_write(path, protect=...)`: write to a temporary file beside `path`, every
  write checked complete (size on disk compared) before the rename, so an interrupted
  run or a full disk never leaves a half-written output; never over an input.
- `check_not_input(path, protect)`: refuse an output that would replace an input file
  or land inside an input folder.
- `check_writable(path)`: refuse, before long work, an output that cannot be written.
- `check_free_space(directory, nbytes, what)`: refuse before Caffe writes a file it would
  abort on when the disk fills.
"""
import contextlib
import errno
import io
import os
import shutil
import tempfile

from project import InputError


def check_free_space(directory, nbytes, what):
    """InputError unless the file system of `directory` has `nbytes` free for `what`
    (a snapshot, a cast net): checked before Caffe writes, since a full disk during
    Caffe's own write aborts the process (glog CHECK on SerializeToOstream)."""
    free = shutil.disk_usage(str(directory)).free
    if free < nbytes:
        raise InputError('%s: not enough free space for %s (%.1f MB needed, %.1f MB free)'
                         % (directory, what, nbytes / 1e6, free / 1e6))
    return free


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_not_input(path, protect=()):
    """InputError (naming both paths) when writing `path` would replace one of `protect`
    (a file: the same file, also through a symlink or a hard link) or land inside one of
    them (a folder, e.g. a dataset's: its files are inputs too)."""
    path = str(path)
    real = os.path.realpath(path)
    for keep in protect:
        keep = str(keep)
        if os.path.isdir(keep):
            inside = os.path.commonpath([real, os.path.realpath(keep)]) == os.path.realpath(keep)
            if inside:
                raise InputError('%s: refusing to write inside %s (an input folder)' % (path, keep))
        elif real == os.path.realpath(keep) or (
                os.path.exists(path) and os.path.exists(keep) and os.path.samefile(path, keep)):
            raise InputError('%s: refusing to write: it would replace the input %s' % (path, keep))


def check_writable(path, what='output', folder=False):
    """InputError (naming `what` and the path) unless `path` can be created or replaced:
    a file output must not be a folder, a folder output (`folder`) not a file, and the
    nearest existing folder above it must be a writable folder. Checked before long work
    so its results are not lost at the end."""
    path = os.path.abspath(str(path))
    if os.path.isdir(path) != folder and os.path.exists(path):
        raise InputError('%s %s: is a %s, expected a %s' % (
            what, path, 'folder' if os.path.isdir(path) else 'file',
            'folder' if folder else 'file'))
    parent = path if folder and os.path.isdir(path) else os.path.dirname(path)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise InputError('%s %s: cannot be created, %s is a file' % (what, path, parent))
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError('%s %s: cannot be written, %s is not writable' % (what, path, parent))
    return path


class _CheckedWriter(io.RawIOBase):
    """A raw binary file on `fd` whose every write is complete or an OSError: a short
    os.write is retried, one that writes nothing is ENOSPC. It has no fileno(), so
    libraries that would write behind Python's back (Pillow's encoders) call write()."""

    def __init__(self, fd, path):
        super().__init__()
        self.fd, self.path, self.written = fd, path, 0

    def writable(self):
        return True

    def fileno(self):
        raise io.UnsupportedOperation('fileno')

    def write(self, data):
        if self.fd is None:
            raise ValueError('%s: write after the file was closed' % self.path)
        view = memoryview(data).cast('B')
        done = 0
        while done < len(view):
            try:
                n = os.write(self.fd, view[done:])
            except OSError as e:  # name the file: ENOSPC alone says not which
                raise OSError(e.errno, e.strerror, self.path) from None
            if not n:
                raise OSError(errno.ENOSPC, 'write incomplete (%d of %d bytes)'
                              % (done, len(view)), self.path)
            done += n
        self.written += done
        return done


@contextlib.contextmanager
def atomic_write(path, mode='wb', protect=()):
    """Open a temporary file beside `path`; on success it replaces `path` in one rename.

    mode 'wb' yields a binary file, 'w' a UTF-8 text file. Before the rename the data is
    flushed and fsynced and the file's size is compared with the bytes written, so a
    full disk is an OSError naming `path` and never a truncated file under its final
    name. `protect`: inputs `path` must not replace (see check_not_input)."""
    path = str(path)
    check_not_input(path, protect)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix='.' + os.path.basename(path) + '.', suffix='.part')
    raw = _CheckedWriter(fd, path)
    try:
        f = raw if 'b' in mode else io.TextIOWrapper(io.BufferedWriter(raw), encoding='utf-8')
        yield f
        try:
            f.flush()
            os.fsync(fd)  # a full disk may only show here (delayed allocation, NFS)
        except OSError as e:
            raise OSError(e.errno, e.strerror, path) if e.filename is None else e
        size = os.fstat(fd).st_size
        if size != raw.written:
            raise OSError(errno.EIO, 'written incompletely (%d of %d bytes on disk)'
                          % (size, raw.written), path)
        os.close(fd)
        fd = raw.fd = None
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual mode
        os.replace(tmp, path)
    except BaseException:
        if fd is not None:
            raw.fd = None  # a buffer flushed later must not write to a reused descriptor
            os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
