"""Train FCN-32s on NYUDv2 color + depth, early fusion (trainval, scored on test).

    python nyud-fcn32s-color-d/solve.py               # the paper's recipe on CPU (50 x 2000 iterations)
    python nyud-fcn32s-color-d/solve.py --gpu 0       # on a GPU
    python nyud-fcn32s-color-d/solve.py --help        # short runs, other weights, data root, output

Starts from VGG16 cast to convolutions; conv1_1_bgrd gets VGG's conv1_1 on the color
channels and their mean on the depth channel (surgery.init_bgrd).
Snapshots, log.jsonl and log.png go to nyud-fcn32s-color-d/snapshot/; a rerun resumes from the latest snapshot.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import train  # noqa: E402

if __name__ == '__main__':
    train.main(__file__)  # models.py says how this model starts and trains
