"""CPU and GPU give the same outputs (skipped unless pycaffe was built with CUDA and a GPU
is present: `make test` on a machine with nvcc and a GPU builds that way)."""
import os

import numpy as np
import pytest

import common
import net

caffe = common.import_caffe()
pytestmark = pytest.mark.skipif(not common.build_info().get('cuda'),
                                reason='pycaffe built without CUDA (CPU only)')

WIDTHS = (8, 8, 16, 16, 16, 32)


def narrow_deploy(tmp_path):
    path = os.path.join(str(tmp_path), 'deploy.prototxt')
    with open(path, 'w') as f:
        f.write(str(net.voc_fcn('8s', 'deploy', widths=WIDTHS)))
    return path


def forward(path, weights, image, gpu):
    common.set_mode(0 if gpu else None)
    n = common.open_net(path, 'test', weights)
    n.blobs['data'].reshape(*image.shape)
    n.blobs['data'].data[...] = image
    return n.forward()['score'].copy()


def test_fcn8s_forward_equal_on_cpu_and_gpu(tmp_path):
    path = narrow_deploy(tmp_path)
    common.set_mode(None)
    n = common.open_net(path, 'test')
    rng = np.random.RandomState(0)
    for blobs in n.params.values():
        for b in blobs:
            b.data[...] = rng.normal(0, 0.05, b.data.shape)
    weights = os.path.join(str(tmp_path), 'w.caffemodel')
    n.save(weights)
    image = rng.normal(0, 50, (1, 3, 61, 47)).astype(np.float32)
    cpu = forward(path, weights, image, gpu=False)
    gpu = forward(path, weights, image, gpu=True)
    common.set_mode(None)
    assert cpu.shape == (1, 21, 61, 47)
    np.testing.assert_allclose(gpu, cpu, rtol=1e-3, atol=1e-3 * np.abs(cpu).max())
