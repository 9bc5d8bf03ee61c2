"""Train FCN-AlexNet on PASCAL VOC (SBD train, scored on seg11valid).

    python voc-fcn-alexnet/solve.py               # the paper's recipe on CPU (25 x 4000 iterations, iter_size 20)
    python voc-fcn-alexnet/solve.py --gpu 0       # on a GPU
    python voc-fcn-alexnet/solve.py --help        # short runs, other weights, data root, output

Starts from CaffeNet with fc6/fc7 cast to convolutions (ilsvrc-nets/caffenet-fcn.caffemodel).
Snapshots, log.jsonl and log.png go to voc-fcn-alexnet/snapshot/; a rerun resumes from the latest snapshot.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import train  # noqa: E402

if __name__ == '__main__':
    train.main(__file__)  # models.py says how this model starts and trains
