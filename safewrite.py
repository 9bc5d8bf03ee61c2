"""Outputs written safely: never over an input, complete before they take their name.

- `atomic_write(path, protect=...)`: the one checked writer. Write to a temporary file
  beside `path`, every write checked complete (size on disk compared) before the
  rename, so an interrupted run or a full disk never leaves a half-written output;
  never over an input. A character device or a FIFO (/dev/null, a terminal, a pipe) is
  written through, never replaced; a symbolic link, a block device or a socket is
  refused (`output_kind` says why).
- `staged(path)`: the same for a library that writes a file by name itself (Caffe's
  net.save): it writes a temporary path, which then takes `path`'s place.
- `check_not_input(path, protect)`: refuse an output that would replace an input file
  or land inside an input folder.
- `check_writable(path)`: refuse, before long work, an output that cannot be written.
- `check_free_space(directory, nbytes, what)`: refuse before Caffe writes a file it would
  abort on when the disk fills (bytes and inodes).
- `own_folder(path)` / `open_own(path)`: a folder or file the project keeps in its own
  output folder (a run's .staging, train.lock): never a symbolic link, never followed.
"""
import contextlib
import errno
import io
import os
import shutil
import stat
import tempfile

from project import InputError


def check_free_space(directory, nbytes, what, files=8):
    """InputError unless the file system of `directory` has `nbytes` free for `what`
    (a snapshot, a cast net) and room for `files` new files (free inodes: a file system
    can run out of them with bytes to spare): checked before Caffe writes, since a file
    Caffe cannot create or complete aborts the process (glog CHECK on SerializeToOstream).
    A file system that reports no inode count (f_files 0) has no such limit."""
    free = shutil.disk_usage(str(directory)).free
    if free < nbytes:
        raise InputError('%s: not enough free space for %s (%.1f MB needed, %.1f MB free)'
                         % (directory, what, nbytes / 1e6, free / 1e6))
    vfs = os.statvfs(str(directory))
    if vfs.f_files and vfs.f_favail < files:
        raise InputError('%s: no room for %s: the file system has %d free inodes (new files) '
                         'left, %d needed, although %.1f MB are free'
                         % (directory, what, vfs.f_favail, files, free / 1e6))
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


def output_kind(path):
    """How an output at `path` is written: 'file' (none yet, or a regular file: a
    temporary file renamed over it) or 'special' (a character device or a FIFO, also
    behind a symbolic link: /dev/null, /dev/stdout on a terminal or a pipe: written
    through, never replaced). InputError for a folder, a block device, a socket and a
    symbolic link to anything else: renaming over a link would replace the link with a
    file, and writing at its target would put the output wherever the link points (for
    a run's own files, a link planted in its folder: anywhere); a link to a file is
    refused with its target named, so the user passes that path instead."""
    path = str(path)
    try:
        st = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):  # not there yet (or cannot be: a
        return 'file'  # file above it, which check_writable and the write report)
    if stat.S_ISREG(st.st_mode):
        return 'file'
    if stat.S_ISLNK(st.st_mode):
        try:
            st = os.stat(path)
        except OSError:
            st = None
        if st is not None and (stat.S_ISCHR(st.st_mode) or stat.S_ISFIFO(st.st_mode)):
            return 'special'
        raise InputError('%s: is a symbolic link (to %s): refusing to replace it or to write '
                         'through it; give the path of the file itself'
                         % (path, os.path.realpath(path)))
    if stat.S_ISCHR(st.st_mode) or stat.S_ISFIFO(st.st_mode):
        return 'special'
    kind = ('a folder' if stat.S_ISDIR(st.st_mode) else 'a block device' if stat.S_ISBLK(st.st_mode)
            else 'a socket' if stat.S_ISSOCK(st.st_mode) else 'not a regular file')
    raise InputError('%s: is %s: refusing to write an output there' % (path, kind))


def check_writable(path, what='output', folder=False):
    """InputError (naming `what` and the path) unless `path` can be created or replaced:
    a file output must not be a folder, a folder output (`folder`) not a file, and the
    nearest existing folder above it must be a writable folder. Checked before long work
    so its results are not lost at the end."""
    path = os.path.abspath(str(path))
    if not folder and not os.path.isdir(path):
        output_kind(path)  # a link, a block device, a socket: refused now, not after the work
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
    name. A character device or FIFO at `path` is written through instead (every write
    still checked: /dev/full is ENOSPC); a symbolic link to a file, a folder, a block
    device or a socket is an InputError (output_kind). `protect`: inputs `path` must not
    replace (see check_not_input)."""
    path = str(path)
    check_not_input(path, protect)
    if output_kind(path) == 'special':
        with _write_through(path, mode) as f:
            yield f
        return
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
        place(tmp, path, synced=True)
    except BaseException:
        if fd is not None:
            raw.fd = None  # a buffer flushed later must not write to a reused descriptor
            os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def _write_through(path, mode):
    """A character device or FIFO at `path` opened for writing (following a link to it:
    /dev/stdout), every write checked like atomic_write's; nothing renamed, no fsync
    (a pipe has none)."""
    fd = os.open(path, os.O_WRONLY | os.O_NOCTTY | os.O_CLOEXEC)
    raw = _CheckedWriter(fd, path)
    try:
        f = raw if 'b' in mode else io.TextIOWrapper(io.BufferedWriter(raw), encoding='utf-8')
        yield f
        f.flush()
    finally:
        raw.fd = None
        os.close(fd)


def place(tmp, path, synced=False):
    """Give the complete file `tmp` (beside `path`, or on its file system) the name `path`
    in one rename, after fsyncing it (unless `synced`) and giving it the usual mode (mkstemp makes 0600);
    a character device or FIFO at `path` gets tmp's bytes written through and tmp goes.
    Never renames over a symbolic link, a folder or a device (output_kind, checked again
    here: the path may have changed since the work began)."""
    path = str(path)
    if output_kind(path) == 'special':
        try:
            with open(tmp, 'rb') as src, _write_through(path, 'wb') as f:
                shutil.copyfileobj(src, f, 1 << 20)
        finally:
            os.unlink(tmp)
        return
    if not synced:
        fd = os.open(tmp, os.O_RDONLY | os.O_NOFOLLOW)
        try:
            os.fsync(fd)
        except OSError as e:
            raise OSError(e.errno, e.strerror, path)
        finally:
            os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())
    os.replace(tmp, path)


@contextlib.contextmanager
def staged(path, protect=()):
    """A temporary path beside `path` for a library that writes a file by name itself
    (Caffe's net.save); when the block ends without an error the file takes `path`'s
    place (place: fsynced, renamed, or written through a device or FIFO), else it goes.
    Refused up front like atomic_write: an input (`protect`), a link, a folder, ..."""
    path = os.path.abspath(str(path))
    check_not_input(path, protect)
    output_kind(path)
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix='.' + os.path.basename(path) + '.', suffix='.part')
    os.close(fd)
    try:
        yield tmp
        place(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def own_folder(path):
    """Create (if missing) and return the folder `path` that the project keeps inside its
    own output folder (a run's .staging, whose files it deletes): InputError when `path`
    is a symbolic link or not a folder, so that nothing outside is ever emptied."""
    path = str(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with contextlib.suppress(FileExistsError):
        os.mkdir(path)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise InputError('%s: is %s, not the folder this project keeps there; remove it'
                         % (path, 'a symbolic link' if stat.S_ISLNK(st.st_mode) else 'a file'))
    return path


def open_own(path, flags=os.O_RDWR | os.O_CREAT):
    """os.open of a file the project keeps in its own output folder (train.lock), never
    following a symbolic link (O_NOFOLLOW) nor truncating anything but a regular file of
    one link: InputError naming `path` otherwise."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o666)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise InputError('%s: is a symbolic link: refusing to follow it; remove it' % path)
        raise
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
        os.close(fd)
        raise InputError('%s: is %s: refusing to use it; remove it' % (
            path, 'not a regular file' if not stat.S_ISREG(st.st_mode) else
            'a hard link to another file (%d links)' % st.st_nlink))
    return fd
