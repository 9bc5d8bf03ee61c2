"""Shared test setup: the repo root on sys.path and Caffe's logging quiet."""
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)
os.environ.setdefault('GLOG_minloglevel', '2')
