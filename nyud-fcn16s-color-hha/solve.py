"""Train FCN-16s on NYUDv2 color + HHA (the paper's Table 4 model, never released).

    python nyud-fcn16s-color-hha/solve.py               # the paper's recipe on CPU (50 x 2000 iterations)
    python nyud-fcn16s-color-hha/solve.py --gpu 0       # on a GPU
    python nyud-fcn16s-color-hha/solve.py --help        # short runs, other weights, data root, output

Starts from the trained FCN-32s color-HHA (nyud-fcn32s-color-hha).
Snapshots, log.jsonl and log.png go to nyud-fcn16s-color-hha/snapshot/; a rerun resumes from the latest snapshot.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import train  # noqa: E402

if __name__ == '__main__':
    train.main(__file__)  # models.py says how this model starts and trains
