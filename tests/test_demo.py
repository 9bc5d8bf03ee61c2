"""demo.py's arguments are checked before anything is generated."""
import os
import subprocess
import sys

import pytest

from project import REPO


@pytest.mark.parametrize('flag, value', [('--val-images', '0'), ('--train-images', '-1'),
                                         ('--rounds', '0'), ('--iters', '0'), ('--lr', 'nan')])
def test_bad_demo_arguments_are_one_line_errors(tmp_path, flag, value):
    out = tmp_path / 'demo'
    r = subprocess.run([sys.executable, os.path.join(REPO, 'demo.py'), '--out', str(out), flag, value],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert 'Traceback' not in r.stderr
    assert flag in r.stderr.strip().splitlines()[-1]
    assert not out.exists()  # nothing generated
