"""Shared test setup: the repo root and tools/ on sys.path, Caffe's logging quiet."""
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for path in (os.path.join(REPO, 'tools'), REPO):  # tools/: build_caffe.py, bench.py
    if path not in sys.path:
        sys.path.insert(0, path)
os.environ.setdefault('GLOG_minloglevel', '2')
