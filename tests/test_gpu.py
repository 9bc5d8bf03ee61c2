"""CPU and GPU give the same outputs (skipped unless pycaffe was built with CUDA and a GPU
is present: `make test` on a machine with nvcc and a GPU builds that way; a CUDA build on a
machine without a GPU skips them with the CUDA runtime's reason)."""
import os

import numpy as np
import pytest

import guard
import net
import netload
import trainsetup

caffe = guard.import_caffe()
GPU_PROBLEM = guard.gpu_problem(0)
pytestmark = pytest.mark.skipif(GPU_PROBLEM is not None, reason=str(GPU_PROBLEM))

WIDTHS = (8, 8, 16, 16, 16, 32)


def narrow_deploy(tmp_path):
    path = os.path.join(str(tmp_path), 'deploy.prototxt')
    with open(path, 'w') as f:
        f.write(str(net.voc_fcn('8s', 'deploy', widths=WIDTHS)))
    return path


def forward(path, weights, image, gpu):
    guard.set_mode(0 if gpu else None)
    n = netload.open_net(path, 'test', weights)
    n.blobs['data'].reshape(*image.shape)
    n.blobs['data'].data[...] = image
    return n.forward()['score'].copy()


def test_fcn8s_forward_equal_on_cpu_and_gpu(tmp_path):
    path = narrow_deploy(tmp_path)
    guard.set_mode(None)
    n = netload.open_net(path, 'test')
    rng = np.random.RandomState(0)
    for blobs in n.params.values():
        for b in blobs:
            b.data[...] = rng.normal(0, 0.05, b.data.shape)
    weights = os.path.join(str(tmp_path), 'w.caffemodel')
    n.save(weights)
    image = rng.normal(0, 50, (1, 3, 61, 47)).astype(np.float32)
    cpu = forward(path, weights, image, gpu=False)
    gpu = forward(path, weights, image, gpu=True)
    guard.set_mode(None)
    assert cpu.shape == (1, 21, 61, 47)
    np.testing.assert_allclose(gpu, cpu, rtol=1e-3, atol=1e-3 * np.abs(cpu).max())


def voc_train_model(tmp_path, head):
    """A narrow VOC model dir, its nets fed by VOCSegDataLayer from a tiny VOC tree. CPU and
    GPU are compared on val.prototxt: the same net without the random Dropout masks."""
    import datasets
    root = tmp_path / 'data'
    datasets.make_voc(str(root), ['t%d' % i for i in range(3)], split='train', n_classes=4)
    voc_dir = str(root / 'pascal' / 'VOC2011')
    data = {'train': ('VOCSegDataLayer', {'voc_dir': voc_dir, 'split': 'train', 'seed': 1337}),
            'val': ('VOCSegDataLayer', {'voc_dir': voc_dir, 'split': 'train', 'randomize': False})}
    model = tmp_path / ('voc-%s' % head)
    net.write_model_dir(str(model), 'voc-fcn%s' % head, widths=WIDTHS, data=data,
                        solver={'base_lr': 1e-6, 'momentum': 0.9})
    return str(model)


def small_random_weights(model, path):
    """`path`: a caffemodel of the model's val net with N(0, 0.05) weights. (Wider draws
    overflow to a NaN loss, and Caffe's max pooling then writes outside its buffers.)"""
    guard.set_mode(None)
    n = netload.open_net(os.path.join(model, 'val.prototxt'), 'train')
    rng = np.random.RandomState(0)
    for blobs in n.params.values():
        for b in blobs:
            b.data[...] = rng.normal(0, 0.05, b.data.shape)
    n.save(str(path))
    return str(path)


def loss_and_gradients(model, weights, gpu):
    """One forward + backward of the net: (loss, {layer: [weight diff, bias diff]})."""
    guard.set_mode(0 if gpu else None)
    n = netload.open_net(os.path.join(model, 'val.prototxt'), 'train', weights)
    loss = float(n.forward()['loss'])
    n.backward()
    return loss, {k: [b.diff.copy() for b in v] for k, v in n.params.items()}


def test_fcn8s_loss_and_gradients_equal_on_cpu_and_gpu(tmp_path):
    model = voc_train_model(tmp_path, '8s')
    weights = small_random_weights(model, tmp_path / 'w8.caffemodel')
    cpu_loss, cpu = loss_and_gradients(model, weights, gpu=False)
    gpu_loss, gpu = loss_and_gradients(model, weights, gpu=True)
    guard.set_mode(None)
    assert np.isfinite(cpu_loss) and cpu_loss > 0
    assert abs(gpu_loss - cpu_loss) <= 1e-3 * abs(cpu_loss)
    for name in cpu:
        for c, g in zip(cpu[name], gpu[name]):
            scale = max(np.abs(c).max(), 1e-12)
            np.testing.assert_allclose(g, c, rtol=1e-3, atol=2e-3 * scale, err_msg=name)


def test_fcn32s_solver_steps_on_gpu_follow_the_cpu(tmp_path):
    """Three SGD steps of a narrow FCN-32s through the project's solver path (its net
    without Dropout), on CPU and on GPU from the same start: the same losses and weights
    within float tolerance."""
    import surgery
    model = voc_train_model(tmp_path, '32s')
    weights = small_random_weights(model, tmp_path / 'w32.caffemodel')
    results = []
    for gpu in (False, True):
        guard.set_mode(0 if gpu else None)
        param = trainsetup.read_solver(model)
        param.train_net = param.test_net[0]
        del param.test_net[:], param.test_iter[:]
        param.ClearField('test_interval')
        solver = trainsetup.make_solver(param, str(tmp_path / ('out%d' % gpu)))
        trainsetup.load_weights(solver.net, weights)
        surgery.interp(solver.net, surgery.deconv_layers(solver.net))
        losses = []
        for _ in range(3):
            solver.step(1)
            losses.append(float(solver.net.blobs['loss'].data))
        results.append((losses, {k: v[0].data.copy() for k, v in solver.net.params.items()}))
    guard.set_mode(None)
    (cpu_losses, cpu_w), (gpu_losses, gpu_w) = results
    assert all(np.isfinite(cpu_losses)) and cpu_losses[-1] != cpu_losses[0]
    np.testing.assert_allclose(gpu_losses, cpu_losses, rtol=1e-3)
    for name in cpu_w:
        np.testing.assert_allclose(gpu_w[name], cpu_w[name], rtol=1e-3,
                                   atol=1e-3 * max(np.abs(cpu_w[name]).max(), 1e-12), err_msg=name)
