"""What every command shares: the runner, the progress bar and the common flags.

- `run_cli(main)`: the one place a command turns an input error into a one-line
  message and exit status 1 (FCN_DEBUG=1 shows the traceback instead); SIGTERM is
  handled as Ctrl-C is (KeyboardInterrupt, so every checked write removes its
  temporary file), and printing never fails on a name the terminal cannot encode.
- `progress_bar(total, desc)`: the tqdm bar long work shows (plain lines in a log).
- `cpu_name()`: the processor's name, for the records benchmarks and reproduce.py write.
- `available_memory()`: the bytes a command may plan to use (up-front memory checks).
- The flags several commands take, each defined once as an argparse parent:
  `gpu_flag()` (--gpu ID; --gpu ID[,ID...] for training), `data_root_flag()`
  (--data-root DIR), `limit_flag()` (--limit N) and `ray_flags()` (--ray [ADDRESS],
  --workers, --threads-per-worker, --gpus-per-worker: cluster.py); `use_data_root(root)`
  is the one place a --data-root is checked and handed to the data layers, and
  `check_limit` the one check of --limit.
"""
import argparse
import os
import signal
import sys

import tqdm

from project import InputError


class Terminated(KeyboardInterrupt):
    """SIGTERM (a `kill`, a scheduler's stop) raised in the main thread as Ctrl-C is, so the
    same cleanup runs (safewrite.atomic_write removes its temporary file)."""


def _terminate(signum, frame):
    raise Terminated()


def tolerant_streams():
    """Make stdout and stderr print any text: characters the terminal's encoding cannot
    show (a non-ASCII file name under a latin-1 or C locale) become backslash escapes
    instead of a UnicodeEncodeError in the middle of a batch."""
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, 'reconfigure'):
            stream.reconfigure(errors='backslashreplace')


def run_cli(main, argv=None):
    """Run `main(argv)` as a command: input errors become one line on stderr and exit 1;
    Ctrl-C exits 130 and SIGTERM 143, both after the cleanup a KeyboardInterrupt runs."""
    tolerant_streams()
    signal.signal(signal.SIGTERM, _terminate)
    try:
        code = main(argv)
    except (InputError, OSError) as e:
        if os.environ.get('FCN_DEBUG'):
            raise
        print('error: %s' % e, file=sys.stderr)
        code = 1
    except Terminated:
        print('terminated', file=sys.stderr)
        code = 128 + signal.SIGTERM
    except KeyboardInterrupt:
        print('interrupted', file=sys.stderr)
        code = 130
    sys.exit(code or 0)


class _LogLines:
    """tqdm's output file when stderr is not a terminal (a log, a pipe): every redraw
    ('\\r' + status) becomes one line of its own, never a line of '\\r'-joined statuses."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text):
        line = text.replace('\r', '').rstrip()
        if line:
            self.stream.write(line + '\n')

    def flush(self):
        self.stream.flush()


def progress_bar(total, desc, enabled=True, unit='image'):
    """A tqdm bar on stderr for long work (count, rate, time left); none unless `enabled`.
    Redrawn in place on a terminal; into a log file (not a terminal) a plain line at
    most every 30 s and one at the end. Print beside it with bar.write(text)."""
    tty = sys.stderr.isatty()
    graphic = ' |{bar:20}|' if tty else ''
    return tqdm.tqdm(total=total, desc=desc, unit=unit, file=sys.stderr if tty else _LogLines(sys.stderr),
                     disable=not enabled or total <= 0, mininterval=0.1 if tty else 30,
                     bar_format='{desc} {n_fmt}/{total_fmt}%s {percentage:.0f}%%, '
                                '{rate_fmt}, {remaining} left' % graphic)


def cpu_name():
    """The processor's model name from /proc/cpuinfo ('' where there is none)."""
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return ''


def available_memory():
    """Bytes of memory this machine can give a process now without swapping: Linux's
    MemAvailable, else the free physical pages (None where neither is known)."""
    try:
        with open('/proc/meminfo') as f:
            for line in f:
                if line.startswith('MemAvailable:'):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf('SC_AVPHYS_PAGES') * os.sysconf('SC_PAGE_SIZE')
    except (OSError, ValueError, AttributeError):
        return None


# --- the flags several commands share ------------------------------------------------------

def gpu_ids(text):
    """argparse type of --gpu: '0' -> [0], '0,1,3' -> [0, 1, 3]; distinct ids >= 0."""
    try:
        ids = [int(t) for t in text.split(',')]
    except ValueError:
        raise argparse.ArgumentTypeError('%r: give GPU ids as 0 or 0,1,2 (integers, commas)' % text)
    if any(i < 0 for i in ids):
        raise argparse.ArgumentTypeError('%r: GPU ids are 0 or more' % text)
    if len(set(ids)) != len(ids):
        raise argparse.ArgumentTypeError('%r: a GPU id is given twice' % text)
    return ids


def gpu_flag(several=False):
    """An argparse parent with --gpu: one GPU id (args.gpu, None for the CPU), or with
    `several` a list of ids for data-parallel training (args.gpu, [] for the CPU)."""
    p = argparse.ArgumentParser(add_help=False)
    if several:
        p.add_argument('--gpu', type=gpu_ids, default=[], metavar='ID[,ID...]',
                       help='GPU id, or ids 0,1,... for data-parallel training over NCCL, one '
                            'process per GPU (parallel.py) (default: CPU)')
    else:
        p.add_argument('--gpu', type=int, default=None, help='GPU id (default: CPU)')
    return p


def data_root_flag():
    """An argparse parent with --data-root DIR (args.data_root; see use_data_root)."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument('--data-root', default=None,
                   help='datasets root (sets FCN_DATA_ROOT; default $FCN_DATA_ROOT, else '
                        '<repo>/data)')
    return p


def limit_flag():
    """An argparse parent with --limit N (args.limit; see check_limit)."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument('--limit', type=int, metavar='N',
                   help='score only the first N images of each split')
    return p


def positive_int(text):
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError('%r is not an integer' % text)
    if value < 1:
        raise argparse.ArgumentTypeError('%r: must be 1 or more' % text)
    return value


def ray_flags():
    """An argparse parent with the Ray cluster flags (cluster.py): --ray [ADDRESS]
    (args.ray: None without the flag, 'local' for a cluster started for the run),
    --workers N (args.workers, None: as many as the cluster's resources allow),
    --threads-per-worker N (CPU threads of each worker) and --gpus-per-worker G."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group('Ray cluster (optional extra: pip install \'.[cluster]\'; '
                             'docs/cluster.md)')
    g.add_argument('--ray', nargs='?', const='local', default=None, metavar='ADDRESS',
                   help='spread the images over a pool of Ray workers: on the cluster at '
                        'ADDRESS (host:port of `ray start --head`, or auto), else on a '
                        'local cluster started for the run')
    g.add_argument('--workers', type=positive_int, metavar='N',
                   help='Ray workers, each holding one net (default: as many as the '
                        'cluster\'s CPUs, or GPUs with --gpus-per-worker, allow)')
    g.add_argument('--threads-per-worker', type=positive_int, default=1, metavar='N',
                   help='CPU threads (and Ray CPUs) of each worker (default 1)')
    g.add_argument('--gpus-per-worker', type=float, default=0, metavar='G',
                   help='GPUs of each worker (default 0: the CPU; a fraction shares one)')
    return p


def check_limit(limit):
    """InputError unless --limit is unset or at least 1."""
    if limit is not None and limit < 1:
        raise InputError('--limit must be >= 1, got %d' % limit)


def use_data_root(root):
    """Hand --data-root to the data layers, once checked: an InputError unless it is a
    folder. Set in the environment (FCN_DATA_ROOT, read by layers.data_root) because the
    layers are instantiated by Caffe from a prototxt, where no argument reaches them;
    every other reader is passed the root. Nothing when `root` is None."""
    if root:
        if not os.path.isdir(root):
            raise InputError('--data-root %s: no such directory' % root)
        os.environ['FCN_DATA_ROOT'] = os.path.abspath(root)
