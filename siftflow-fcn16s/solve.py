"""Train FCN-16s on SIFT Flow, semantic + geometric (trainval, scored on test).

    python siftflow-fcn16s/solve.py               # the paper's recipe on CPU (50 x 2000 iterations)
    python siftflow-fcn16s/solve.py --gpu 0       # on a GPU
    python siftflow-fcn16s/solve.py --help        # short runs, other weights, data root, output

Starts from the trained FCN-32s (siftflow-fcn32s).
Snapshots, log.jsonl and log.png go to siftflow-fcn16s/snapshot/; a rerun resumes from the latest snapshot.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import train  # noqa: E402

if __name__ == '__main__':
    train.main(__file__)  # models.py says how this model starts and trains
