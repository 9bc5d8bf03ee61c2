"""Train PSPNet-101 on Cityscapes (train, scored on val), the paper's way as far as stock Caffe allows.

    python pspnet/pspnet101-cityscapes/solve.py --gpu 0     # 18 rounds x 5000 iterations (90k) of 16 images
    python pspnet/pspnet101-cityscapes/solve.py --weights resnet-stock.caffemodel   # from an ImageNet trunk
    python pspnet/pspnet101-cityscapes/solve.py --help      # short runs, data root, output

Starts from the released weights converted for this Caffe (fine-tuning): python weights.py
pspnet101-cityscapes && python surgery.py pspnet-convert --model pspnet101-cityscapes, which writes
pspnet/pspnet101-cityscapes/pspnet101_cityscapes-stock.caffemodel. Or from a deep-stem ResNet of your own
(none was released for Caffe; e.g. a PyTorch one converted to this net's layer names)
with --weights: layers are copied by name, the head starts from its fillers. Either way
train.finish_pspnet then sets the fixed interpolation layers and gives BatchNorm layers
without statistics the identity. The recipe (net.py, solver.prototxt): poly lr (power
0.9) from 0.01, momentum 0.9, weight decay 1e-4, new layers at 10x, auxiliary loss 0.4,
iter_size 16 for the paper's batch of 16; the data layer augments as the paper says.
BN statistics stay frozen: stock Caffe has no synchronised BN across GPUs, which the
paper used for its batch of 16.
Snapshots, log.jsonl and log.png go to pspnet/pspnet101-cityscapes/snapshot/; a rerun resumes.
"""
import os
import sys

# pspnet/<model>/ lies two folders below the repository
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
import train  # noqa: E402

if __name__ == '__main__':
    train.main(__file__)  # models.py says how this model starts and trains
