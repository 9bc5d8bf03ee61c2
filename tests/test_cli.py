"""The command runner and progress (cli.py) as a user meets them: a latin-1 terminal, a
SIGTERM in the middle of a batch, progress written into a log file. infer.py runs as a
subprocess on a two-layer net with random weights."""
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

import cli
from datasets import random_weights  # tests/datasets.py
from project import REPO

TINY = """name: "tiny"
layer { name: "input" type: "Input" top: "data"
        input_param { shape { dim: 1 dim: 3 dim: 16 dim: 16 } } }
layer { name: "score" type: "Convolution" bottom: "data" top: "score"
        convolution_param { num_output: 21 kernel_size: 1 } }
"""


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp('tiny')
    deploy = folder / 'deploy.prototxt'
    deploy.write_text(TINY)
    return ['--model', 'voc-fcn8s', '--deploy', str(deploy),
            '--weights', random_weights(deploy, folder / 'w.caffemodel')]


def infer(*args, env=None, **kw):
    env = dict(os.environ, GLOG_minloglevel='2', PYTHONPATH=REPO, **(env or {}))
    env.pop('FCN_DEBUG', None)
    return subprocess.Popen([sys.executable, os.path.join(REPO, 'infer.py')] + [str(a) for a in args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, **kw)


def test_non_ascii_names_print_on_a_latin1_terminal(tiny, tmp_path):
    """A file name the terminal's encoding cannot show is printed with backslash escapes,
    on stdout (done) and stderr (an error), and the batch goes on."""
    good = tmp_path / 'строка-日本.png'
    Image.fromarray(np.zeros((9, 11, 3), np.uint8)).save(good)
    p = infer(good, tmp_path / 'нет-日本.jpg', '--out', tmp_path / 'o', *tiny,
              env={'PYTHONIOENCODING': 'latin-1'})
    out, err = (b.decode('latin-1') for b in p.communicate(timeout=120))
    assert p.returncode == 1, err
    assert 'Traceback' not in err and 'UnicodeEncodeError' not in err, err
    assert '\\u65e5\\u672c' in out and '1 of 2 images' in out, out
    lines = err.strip().splitlines()
    assert len(lines) == 1 and '\\u043d\\u0435\\u0442' in lines[0], err
    assert (tmp_path / 'o' / 'строка-日本.png').is_file()


def test_sigterm_mid_write_leaves_no_part_files(tiny, tmp_path):
    """SIGTERM while an output is being written (its hidden .part exists): the checked
    writer's cleanup runs as for Ctrl-C, nothing half-written is left, exit 143."""
    src = tmp_path / 'photos'
    src.mkdir()
    rng = np.random.RandomState(0)
    for k in range(3):  # big noisy photos: their label PNGs take a while to encode
        Image.fromarray(rng.randint(0, 256, (2500, 2500, 3)).astype(np.uint8)).save(
            src / ('p%d.bmp' % k))
    out = tmp_path / 'out'
    p = infer(src, '--out', out, '--max-side', 2500, *tiny)
    deadline = time.time() + 120
    parts = []
    while p.poll() is None and time.time() < deadline and not parts:
        parts = [n for n in (os.listdir(out) if out.is_dir() else []) if n.endswith('.part')]
    assert parts, 'no output was being written'
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=60)
    err = err.decode()
    assert not [n for n in os.listdir(out) if n.endswith('.part')]
    assert p.returncode == 143, (p.returncode, err)
    assert 'Traceback' not in err and err.strip().splitlines()[-1] == 'terminated', err


def test_progress_in_a_log_is_plain_lines(capsys):
    """stderr not a terminal (capsys, a log file): each progress report is a line of its
    own, never statuses joined by carriage returns."""
    bar = cli.progress_bar(3, 'scoring score')
    for _ in range(3):
        bar.update(1)
    bar.close()
    err = capsys.readouterr().err
    assert '\r' not in err and err.endswith('\n'), repr(err)
    lines = err.splitlines()
    assert lines[0].startswith('scoring score 0/3') and lines[-1].startswith('scoring score 3/3')
    assert len(lines) <= 4  # a start, the end (mininterval keeps the rest out)
