"""The two facts every module of this project starts from, Caffe-free.

- `REPO`: the repository root; every default path is resolved from it, never from the
  current directory.
- `InputError`: bad user input (a file, a flag, a dataset). Its message names the input
  and the problem in one line; cli.run_cli turns it into that line on stderr and exit
  status 1.
"""
import os

REPO = os.path.dirname(os.path.abspath(__file__))
INT_MAX = 2 ** 31 - 1  # Caffe's limit on the values one blob holds (and on its int32 counts)


class InputError(ValueError):
    """Bad user input (a file, a flag, a dataset): the message names it and the problem."""
