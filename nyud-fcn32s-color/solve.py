"""Train FCN-32s on NYUDv2 color (trainval, scored on test).

    python nyud-fcn32s-color/solve.py               # the paper's recipe on CPU (50 x 2000 iterations)
    python nyud-fcn32s-color/solve.py --gpu 0       # on a GPU
    python nyud-fcn32s-color/solve.py --help        # short runs, other weights, data root, output

Starts from VGG16 cast to convolutions.
Snapshots, log.jsonl and log.png go to nyud-fcn32s-color/snapshot/; a rerun resumes from the latest snapshot.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import train  # noqa: E402

if __name__ == '__main__':
    train.main(__file__)  # models.py says how this model starts and trains
