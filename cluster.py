"""Scoring and segmenting on a Ray cluster, with the numbers one machine gives.

score.py, reproduce.py and infer.py take --ray [ADDRESS] (cli.ray_flags): their images go
to a pool of Ray actors ("workers"), each of which opens the net once and then runs the
command's own per-image function (score.image_scores through the val net, score.protocol_image
for sliding-window models, infer.segment_image) on the images it is handed; the results
come back to the command (the driver), which sums and writes them as a local run does.
Confusion matrices are integer counts and the losses are added in the split's order, so
the JSON is identical to a local run's whatever the number of workers and the order the
results come back in. docs/cluster.md has the details.

    .venv/bin/python score.py --model voc-fcn8s --weights W --ray                  # local cluster
    ray start --head --num-cpus 8                            # on the head node, then on each other:
    ray start --address=HEAD:6379 --num-cpus 8
    .venv/bin/python score.py --model voc-fcn8s --weights W --ray HEAD:6379 --threads-per-worker 2
    .venv/bin/python infer.py photos/ --out seg/ --ray HEAD:6379 --gpus-per-worker 1

Every node needs the checkout at the same path (with its .venv and `make caffe`; Ray is
started from that .venv), and the data root, the model folders and the weights at the same
paths (a shared file system): each worker checks at its start that it sees them, and one
that does not is a one-line error naming its node and the path. Outputs are written by the
driver only (safewrite's checked writes), so --out and --save-pred need not be shared.

Faults: a worker that dies (its process killed, its node lost) has the images it held
handed to the others (first in the queue) and a new worker is started in its place; every
image is counted once, by its position in the list; an image on which WORKER_DEATHS workers
died in turn is an error naming it. Ctrl-C kills the workers (and a local cluster) and exits.

Ray is an optional extra (pip install '.[cluster]'); it is imported by `_ray()` when --ray
is given, not at the top: importing it takes 0.4 to 0.9 s here, which every score.py and
infer.py run would pay otherwise.
"""
import collections
import contextlib
import copy
import dataclasses
import logging
import os
import signal
import socket
import sys

import tqdm

import cli
import guard
import project

IN_FLIGHT = 2  # images handed to a worker at once: the next one is queued while one runs
WORKER_DEATHS = 3  # workers that may die on one image before it is an error
POLL_S = 1.0  # how often the driver wakes up while waiting (Ctrl-C is seen then)
CONNECT_S = 10  # seconds to wait for the head node's port to answer


def _ray():
    """The ray module; an InputError saying how to install it when it is missing."""
    try:
        import ray
    except ImportError:
        raise project.InputError("--ray needs Ray, an optional extra: pip install '.[cluster]'")
    return ray


@dataclasses.dataclass
class Job:
    """What each worker runs: `state = open(*open_args)` once, then for each item
    `image(state, item, *image_args)` (its element `pick` when set: what comes back).

    paths: {what: path} every worker must see before it opens anything (weights, data
    root, prototxt). data_root: handed to the data layers on the worker (cli.use_data_root)
    before `open`. errors: exception classes of a per-image call that are that image's
    result (infer.py reports a bad photo and goes on) instead of the end of the run.
    The functions are the commands' own, passed by reference (Ray imports their module on
    the worker)."""
    open: object
    open_args: tuple
    image: object
    image_args: tuple = ()
    paths: dict = dataclasses.field(default_factory=dict)
    data_root: str = None
    pick: int = None
    errors: tuple = ()


def worker_args(args, files, **changes):
    """A copy of a command's parsed `args` for a worker's open: the paths of `files`
    ({argument: path}, made absolute in place: a worker runs in another folder) and
    `changes` set, the GPU the worker's own (Ray gives it its GPUs as devices 0, 1, ...),
    no --ray."""
    out = copy.copy(args)
    for key, path in files.items():
        files[key] = os.path.abspath(path) if path else path
        setattr(out, key, files[key])
    for key, value in changes.items():
        setattr(out, key, value)
    out.gpu = 0 if args.gpus_per_worker else None
    out.ray = None
    return out


def node_name():
    """'IP (node id prefix)': the Ray node this process runs on, for messages."""
    ray = _ray()
    return '%s (node %s)' % (ray.util.get_node_ip_address(),
                             ray.get_runtime_context().get_node_id()[:8])


class Worker:
    """A Ray actor (made remote in Pool.spawn): checks the job's paths, opens its net once,
    then runs images. A problem at the start is kept and told by `ready`, so that the
    driver can name the node and the path in one line."""

    def __init__(self, job, gpu):
        self.job, self.where, self.problem, self.state = job, node_name(), None, None
        missing = ['%s %s' % (what, path) for what, path in job.paths.items()
                   if path and not os.path.exists(path)]
        if missing:
            self.problem = ('%s: cannot see %s (every node needs them at the same paths: a '
                            'shared file system)' % (self.where, ', '.join(missing)))
            return
        try:
            cli.use_data_root(job.data_root)
            guard.set_mode(gpu)
            self.state = job.open(*job.open_args)
        except (project.InputError, OSError, ValueError) as e:
            self.problem = '%s: %s' % (self.where, e)

    def ready(self):
        """(node name, process id, the problem at the start or None)."""
        return self.where, os.getpid(), self.problem

    def run(self, item):
        out = self.job.image(self.state, item, *self.job.image_args)
        return out if self.job.pick is None else out[self.job.pick]


class Pool:
    """The workers of one command run on the cluster of `opts.ray` (cli.ray_flags).

        with Pool(args, job) as pool:
            for position, result in pool.imap(items):
                ...

    Leaving the block kills the workers and, when this pool started it, the local cluster."""

    def __init__(self, opts, job):
        self.opts, self.job = opts, job
        self.ray, self.started, self.actors = None, False, {}
        self.starting, self.next_id, self.redone, self.pids = {}, 0, 0, {}

    def __enter__(self):
        try:
            self.start()
        except BaseException:  # an error or Ctrl-C while starting: nothing left running
            self.close()
            raise
        return self

    def __exit__(self, *exc):
        self.close()

    # -- the cluster and its workers ---------------------------------------------------

    def connect(self):
        """ray.init for --ray: a local cluster for the run ('local'), else the one at the
        address; a session already connected (tests' clusters) is used as it is."""
        ray = self.ray = _ray()
        if ray.is_initialized():
            return
        quiet = dict(log_to_driver=False, logging_level=logging.ERROR)
        if self.opts.ray == 'local':
            with _interrupt_after():
                ray.init(address='local', include_dashboard=False, **quiet)
            self.started = True
            return
        hint = 'start a cluster with `ray start --head`'
        host, _, port = self.opts.ray.rpartition(':')
        if port.isdigit():  # Ray itself retries an address where nothing listens for minutes
            try:
                socket.create_connection((host.split('://')[-1], int(port)), CONNECT_S).close()
            except OSError as e:
                raise project.InputError('--ray %s: nothing answers there (%s); %s'
                                         % (self.opts.ray, e.strerror or e, hint))
        try:
            with _interrupt_after():
                ray.init(address=self.opts.ray, **quiet)
        except (ConnectionError, ValueError, RuntimeError) as e:
            raise project.InputError('--ray %s: cannot connect (%s); %s'
                                     % (self.opts.ray, _first_line(e), hint))

    def worker_count(self):
        """--workers, else as many as the cluster's CPUs (GPUs) allow; InputError when the
        cluster cannot hold that many."""
        have = self.ray.cluster_resources()
        cpus, gpus = int(have.get('CPU', 0)), have.get('GPU', 0)
        threads, per_gpu = self.opts.threads_per_worker, self.opts.gpus_per_worker
        fit = cpus // threads
        if per_gpu:
            fit = min(fit, int(gpus // per_gpu + 1e-9))
        n = self.opts.workers or fit
        if n < 1 or n > fit:
            raise project.InputError(
                '--workers %s x --threads-per-worker %d%s: the cluster has %d CPUs and %g GPUs'
                % (n or 'auto', threads, ' x --gpus-per-worker %g' % per_gpu if per_gpu else '',
                   cpus, gpus))
        return n

    def spawn(self):
        """Start one worker; its ready() is awaited among the results (self.starting)."""
        opts = self.opts
        env = {'PYTHONPATH': project.REPO, 'OMP_NUM_THREADS': str(opts.threads_per_worker)}
        actor = self.ray.remote(Worker).options(
            num_cpus=opts.threads_per_worker, num_gpus=opts.gpus_per_worker,
            runtime_env={'env_vars': env}).remote(self.job, 0 if opts.gpus_per_worker else None)
        self.next_id += 1
        self.starting[actor.ready.remote()] = (self.next_id, actor)

    def start(self):
        """Connect, start the workers and wait until each has opened its net: a worker that
        cannot (a path it does not see) is an InputError naming its node."""
        self.connect()
        for _ in range(self.worker_count()):
            self.spawn()
        while self.starting:
            done, _ = self.ray.wait(list(self.starting), num_returns=1, timeout=POLL_S)
            for ref in done:
                self.admit(ref, fatal=True)

    def admit(self, ref, fatal):
        """A worker's ready() came back: keep it, or (a problem) raise / drop it."""
        wid, actor = self.starting.pop(ref)
        try:
            where, pid, problem = self.ray.get(ref)
        except self.ray.exceptions.RayError as e:
            problem = 'worker %d could not start: %s' % (wid, _first_line(e))
        if problem:
            self.ray.kill(actor)
            if fatal:
                raise project.InputError(problem)
            tqdm.tqdm.write('cluster: %s' % problem, file=sys.stderr)
            return
        self.actors[wid] = actor
        self.pids[wid] = (where, pid)

    def close(self):
        if self.ray is None:
            return
        for actor in list(self.actors.values()) + [a for _, a in self.starting.values()]:
            self.ray.kill(actor)
        self.actors, self.starting = {}, {}
        if self.started:
            self.ray.shutdown()
            self.started = False

    # -- the images --------------------------------------------------------------------

    def imap(self, items):
        """Yield (position, result) for every item of `items` exactly once, in the order the
        workers finish. A worker that dies has its images put first in the queue for the
        others and is replaced; an error of the job's per-image function ends the run
        (raised here as it was there), unless of a class in job.errors (yielded as the
        result)."""
        ray = self.ray
        queue = collections.deque(range(len(items)))
        flying = {}  # result ref -> (worker id, position)
        deaths = collections.Counter()  # position -> workers that died holding it
        done = set()
        while len(done) < len(items):
            for wid, actor in list(self.actors.items()):
                held = sum(1 for w, _ in flying.values() if w == wid)
                while queue and held < IN_FLIGHT:
                    position = queue.popleft()
                    flying[actor.run.remote(items[position])] = (wid, position)
                    held += 1
            if not flying and not self.starting:
                raise project.InputError('cluster: every worker died; %d of %d images done'
                                         % (len(done), len(items)))
            ready, _ = ray.wait(list(flying) + list(self.starting), num_returns=1,
                                timeout=POLL_S)
            for ref in ready:
                if ref in self.starting:
                    self.admit(ref, fatal=False)
                    continue
                wid, position = flying.pop(ref)
                try:
                    result = ray.get(ref)
                except ray.exceptions.RayTaskError as e:  # the per-image function raised
                    cause = e.cause if isinstance(e.cause, BaseException) else None
                    if cause is None:
                        raise project.InputError('cluster: %s' % _first_line(e))
                    if not isinstance(cause, self.job.errors):
                        raise cause
                    result = cause
                except ray.exceptions.RayError as e:  # the worker (or its node) is gone
                    self.lost(wid, position, e, flying, queue, deaths, items)
                    continue
                if position in done:  # never counted twice
                    continue
                done.add(position)
                yield position, result

    def lost(self, wid, position, error, flying, queue, deaths, items):
        """Worker `wid` died holding image `position`: its images go first in the queue, a
        new worker is started in its place."""
        back = {position}
        for ref in [r for r, (w, _) in flying.items() if w == wid]:
            back.add(flying.pop(ref)[1])
        back = sorted(back)
        if wid not in self.actors:
            queue.extendleft(reversed(back))
            return
        del self.actors[wid]
        where, pid = self.pids.pop(wid)
        for p in back:
            deaths[p] += 1
            if deaths[p] >= WORKER_DEATHS:
                raise project.InputError('%s: %d workers died on it (the last on %s: %s)'
                                         % (items[p], deaths[p], where, _first_line(error)))
        queue.extendleft(reversed(back))
        self.redone += len(back)
        tqdm.tqdm.write('cluster: worker %d on %s (pid %d) died; %d image%s handed to the '
                        'others, a new worker starting' % (wid, where, pid, len(back),
                                                           's' * (len(back) != 1)),
                        file=sys.stderr)
        self.spawn()


@contextlib.contextmanager
def _interrupt_after():
    """Ctrl-C held back until the block is done (then raised): Ray interrupted half-way
    through its start leaves its processes running, or crashes."""
    caught = []
    try:
        before = signal.signal(signal.SIGINT, lambda *_: caught.append(True))
    except ValueError:  # not the main thread: signals are not ours to take
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, before)
    if caught:
        raise KeyboardInterrupt


def _first_line(error):
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def imap(opts, job, items):
    """(position, result) of every item on the --ray cluster (Pool.imap), the pool started
    first and stopped at the end (also on an error or Ctrl-C): before the last result is
    handed over, as a consumer that knows how many to expect (zip) asks for no more."""
    items, last = list(items), None
    if not items:
        return
    with Pool(opts, job) as pool:
        for pair in pool.imap(items):
            if last is not None:
                yield last
            last = pair
    if last is not None:
        yield last


def in_order(opts, job, items):
    """The results of `items` on the --ray cluster in the items' order (what a local loop
    gives), those that come back early held until their turn."""
    held, turn = {}, 0
    for position, result in imap(opts, job, items):
        held[position] = result
        while turn in held:
            yield held.pop(turn)
            turn += 1
