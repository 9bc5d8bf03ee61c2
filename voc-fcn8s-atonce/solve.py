"""Train FCN-8s all at once on PASCAL VOC (SBD train, scored on seg11valid).

    python voc-fcn8s-atonce/solve.py               # the paper's recipe on CPU (75 x 4000 iterations)
    python voc-fcn8s-atonce/solve.py --gpu 0       # on a GPU
    python voc-fcn8s-atonce/solve.py --help        # short runs, other weights, data root, output

Starts from VGG16 cast to convolutions; scale_pool4/scale_pool3 fix the skips' scale.
Snapshots, log.jsonl and log.png go to voc-fcn8s-atonce/snapshot/; a rerun resumes from the latest snapshot.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import train  # noqa: E402

if __name__ == '__main__':
    train.main(__file__)  # models.py says how this model starts and trains
