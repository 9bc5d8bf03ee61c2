"""The two facts every module of this project starts from, Caffe-free.

- `REPO`: the repository root; every default path is resolved from it, never from the
  current directory.
- `InputError`: bad user input (a file, a flag, a dataset). Its message names the input
  and the problem in one line; cli.run_cli turns it into that line on stderr and exit
  status 1. Its subclasses are the cases a caller tells apart: `TooLargeError` (a blob
  would pass Caffe's INT_MAX values: infer.py then says which size fits) and
  `NotReleasedError` (a model whose authors released no weights: reproduce.py says so).
"""
import os

REPO = os.path.dirname(os.path.abspath(__file__))
INT_MAX = 2 ** 31 - 1  # Caffe's limit on the values one blob holds (and on its int32 counts)


class InputError(ValueError):
    """Bad user input (a file, a flag, a dataset): the message names it and the problem."""


class TooLargeError(InputError):
    """An input that would make a blob (or a layer's weights or im2col buffer) hold more
    than INT_MAX values, which Caffe aborts on."""


class NotReleasedError(InputError):
    """A model whose weights were never released: train it instead."""
