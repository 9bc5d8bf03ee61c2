"""DeepLabv3 (net.deeplab_v3, registry entries deeplabv3-voc12 / -trainval): narrow nets at
output stride 16 and 8 with multi-grid against an independent float64 implementation of the
paper's net (torch.nn.functional in float64), the same weights in both strides, BN trained
in stage 1 and frozen in stage 2, a narrow net's loss falling through the solving loop, and
surgery.py deeplabv3-from-torchvision on a checkpoint in torch's file format compared with
a float64 implementation of torchvision's forward (not torchvision itself)."""
import dataclasses
import json
import math
import os

import numpy as np
import pytest

import guard
import layers
import metrics
import models
import net
import netinit
import netload
import predict
import project
import surgery
import train
from test_deeplab import data_net, make_painted, root, write  # noqa: F401  (root: the fixture)

torch = pytest.importorskip('torch')  # installed by the Makefile (extra [torch])
F = torch.nn.functional
caffe = guard.import_caffe()
SPEC = models.get('deeplabv3-voc12')
NARROW = (4, 4, 4, 2, 2, 3, 3, 4, 4, 4)  # conv1, (unused x2), stages 2-5, ASPP, projection, head
BLOCKS = (1, 1, 2, 3)  # res5: three units, for multi-grid
CROP = 65  # logits 9 at output stride 8, 5 at 16 (513: 65 / 33)


def narrow(split, **kw):
    args = dict(crop=CROP, train_crop=CROP, widths=NARROW, blocks=BLOCKS)
    args.update(kw)
    return net.deeplab_v3(split, **args)


def t64(a):
    return torch.from_numpy(np.asarray(a, np.float64))


# ----------------------------------------------------------------------------- full size

def test_full_size_nets_shapes_and_one_set_of_weights(tmp_path):
    shapes = {}
    for split in ('train', 'val', 'deploy'):
        param = net.build_net('deeplabv3-voc12', split)
        shapes[split] = netinit.check_net(param, split, probe=False)
    # OS 8 at 513: 65 x 65 logits, OS 16: 33; multi-grid dilations 4/8/16 and 2/4/8
    dil = lambda p: {l.name: tuple(l.convolution_param.dilation) for l in p.layer  # noqa: E731
                     if l.name.startswith('res5') and l.name.endswith('branch2b')}
    assert dil(net.build_net('deeplabv3-voc12', 'deploy')) == {
        'res5a_branch2b': (4,), 'res5b_branch2b': (8,), 'res5c_branch2b': (16,)}
    assert dil(net.build_net('deeplabv3-voc12', 'train')) == {
        'res5a_branch2b': (2,), 'res5b_branch2b': (4,), 'res5c_branch2b': (8,)}
    rates = lambda p: [l.convolution_param.dilation[:] for l in p.layer  # noqa: E731
                       if l.name in ('aspp1', 'aspp2', 'aspp3')]
    assert rates(net.build_net('deeplabv3-voc12', 'deploy')) == [[12], [24], [36]]
    assert rates(net.build_net('deeplabv3-voc12', 'train')) == [[6], [12], [18]]
    # the same parameter shapes in every net: one caffemodel loads into all
    params = {}
    for split in ('train', 'deploy'):
        n_ = caffe.Net(write(tmp_path / (split + '.prototxt'), with_inputs(narrow(
            split, data_layer='VOC12AugSegDataLayer', data_params={'split': 'x'}, train_stride=8)
            if split == 'train' else narrow(split))), caffe.TRAIN)
        params[split] = {k: [b.data.shape for b in v] for k, v in n_.params.items()}
    # all but the fixed zoom, whose layer is named by its factor (never shared)
    assert params['train'].pop('logits_interp_x8') == [(21, 1, 15, 15)]
    assert params['deploy'].pop('logits_interp_x8') == [(21, 1, 15, 15)]
    assert params['train'] == params['deploy']


def with_inputs(param):
    """`param` with its Python data layer replaced by Input tops of the same shapes."""
    if param.layer[0].type != 'Python':
        return param
    data = param.layer[0]
    data.type = 'Input'
    data.ClearField('python_param')
    data.input_param.shape.add().dim.extend([1, 3, CROP, CROP])
    data.input_param.shape.add().dim.extend([1, 1, CROP, CROP])
    return param


def test_stage_one_trains_bn_stage_two_freezes_it():
    one, two = (net.build_net(m, 'train') for m in ('deeplabv3-voc12', 'deeplabv3-voc12-trainval'))
    bn1 = [l for l in one.layer if l.type == 'BatchNorm']
    bn2 = [l for l in two.layer if l.type == 'BatchNorm']
    assert bn1 and all(not l.batch_norm_param.HasField('use_global_stats')
                       and abs(l.batch_norm_param.moving_average_fraction - 0.9997) < 1e-6 for l in bn1)
    assert all(l.batch_norm_param.use_global_stats for l in bn2)
    sc1 = [l for l in one.layer if l.type == 'Scale']
    sc2 = [l for l in two.layer if l.type == 'Scale']
    assert all(p.lr_mult == 1 for l in sc1 for p in l.param)
    assert all(p.lr_mult == 0 for l in sc2 for p in l.param)
    assert SPEC.parents == () and models.get('deeplabv3-voc12-trainval').parents[0].source == SPEC.name
    assert '"split": "trainval_aug"' in two.layer[0].python_param.param_str


# ----------------------------------------------------------------------------- the paper's net

def fill_random(n_, seed=0):
    rng = np.random.RandomState(seed)
    for name, blobs in n_.params.items():
        kind = n_.layer_dict[name].type
        if kind == 'BatchNorm':
            c = blobs[0].data.shape[0]
            blobs[0].data[...] = rng.normal(0, 0.1, c)
            blobs[1].data[...] = rng.uniform(0.5, 1.5, c)
            blobs[2].data[...] = 1
        elif kind == 'Scale':
            blobs[0].data[...] = rng.uniform(0.5, 1.5, blobs[0].data.shape)
            blobs[1].data[...] = rng.normal(0, 0.1, blobs[1].data.shape)
        elif kind == 'Convolution':
            for b in blobs:
                fan = max(1, b.data[0].size)
                b.data[...] = rng.normal(0, math.sqrt(2.0 / fan), b.data.shape)
    surgery.pspnet_interp(n_)  # the fixed align-corners zoom


def params64(n_):
    return {k: [t64(b.data) for b in v] for k, v in n_.params.items()}


def conv_bn_ref(p, x, name, stride=1, dilation=1, relu=True):
    w = p[name][0]
    ks = w.shape[-1]
    x = F.conv2d(x, w, stride=stride, padding=dilation * (ks - 1) // 2, dilation=dilation)
    bn, scale, _ = net.bn_names(name, 'msra')
    mean, var, factor = p[bn]
    x = (x - (mean / factor).view(1, -1, 1, 1)) / torch.sqrt((var / factor).view(1, -1, 1, 1) + 1e-5)
    x = x * p[scale][0].view(1, -1, 1, 1) + p[scale][1].view(1, -1, 1, 1)
    return F.relu(x) if relu else x


def paper_ref(p, x, stride, grid=(1, 2, 4), rates=(6, 12, 18)):
    """The paper's DeepLabv3 (MSRA trunk: stride on the 1x1, pool1 pad 1 with Caffe's
    ceil), written from the paper's description, not from net.py's plan."""
    x = conv_bn_ref(p, x, 'conv1', stride=2)
    x = F.max_pool2d(x, 3, 2, padding=1, ceil_mode=True)
    current, rate = 4, 1
    for stage, count in zip((2, 3, 4, 5), BLOCKS):
        s = 1 if stage == 2 else 2
        if s == 2 and current * 2 > stride:
            s, rate = 1, rate * 2
        current *= s
        for b, block in enumerate(net.block_names(stage, count, 'msra', 101)):
            d = rate * (grid[b] if stage == 5 else 1)
            st = s if b == 0 else 1
            y = conv_bn_ref(p, x, block + '_branch2a', stride=st)
            y = conv_bn_ref(p, y, block + '_branch2b', dilation=d)
            y = conv_bn_ref(p, y, block + '_branch2c', relu=False)
            short = conv_bn_ref(p, x, block + '_branch1', stride=st, relu=False) if b == 0 else x
            x = F.relu(y + short)
    feats = [conv_bn_ref(p, x, 'aspp0')]
    feats += [conv_bn_ref(p, x, 'aspp%d' % i, dilation=r * 16 // stride) for i, r in enumerate(rates, 1)]
    pool = conv_bn_ref(p, x.mean(dim=(2, 3), keepdim=True), 'image_pool_conv')
    feats.insert(0, pool.expand(-1, -1, x.shape[2], x.shape[3]))  # bilinear of a constant
    y = conv_bn_ref(p, torch.cat(feats, 1), 'concat_projection')
    logits = F.conv2d(y, p['logits'][0], p['logits'][1])
    return F.interpolate(logits, size=((logits.shape[2] - 1) * stride + 1,) * 2, mode='bilinear',
                         align_corners=True)


def test_narrow_paper_net_at_both_strides_equals_the_float64_formula(tmp_path):
    deploy8 = caffe.Net(write(tmp_path / 'd8.prototxt', narrow('deploy')), caffe.TEST)
    fill_random(deploy8)
    weights = str(tmp_path / 'w.caffemodel')
    deploy8.save(weights)
    # output stride 16: the same file loads by name; only the fixed x16 zoom is not in it
    # (the finish step 'align-corners' sets it from the formula)
    path16 = write(tmp_path / 'd16.prototxt', narrow('deploy', test_stride=16))
    with pytest.raises(project.InputError, match='logits_interp_x16'):
        netload.open_net(path16, 'test', weights)
    deploy16 = netload.open_net(path16, 'test', weights, partial=True)
    surgery.finish(deploy16, SPEC.finish)
    x = np.random.RandomState(3).normal(0, 50, (1, 3, CROP, CROP)).astype(np.float32)
    for n_, stride, feature in ((deploy8, 8, 9), (deploy16, 16, 5)):
        n_.blobs['data'].data[...] = x
        n_.forward()
        assert n_.blobs['logits'].data.shape == (1, 21, feature, feature)
        want = paper_ref(params64(n_), t64(x), stride).numpy()
        got = n_.blobs['logits_interp'].data
        assert got.shape == want.shape == (1, 21, CROP, CROP)
        np.testing.assert_allclose(got, want, atol=1e-4 * np.abs(want).max())
    # other sizes: the deploy net reshapes to any 8 k + 1 (16 k + 1 at stride 16)
    deploy8.blobs['data'].reshape(1, 3, 49, 49)
    deploy8.blobs['data'].data[...] = x[:, :, :49, :49]
    deploy8.forward()
    np.testing.assert_allclose(deploy8.blobs['logits_interp'].data,
                               paper_ref(params64(deploy8), t64(x[:, :, :49, :49]), 8).numpy(),
                               atol=1e-4 * np.abs(deploy8.blobs['logits_interp'].data).max())
    with pytest.raises(ValueError, match='use 8 k \\+ 1'):
        narrow('deploy', crop=64)


def test_narrow_net_learns_with_bn_in_training_mode(root, tmp_path):  # noqa: F811
    make_painted(root, ['2008_%06d' % i for i in range(1, 9)], 'train_aug', seed=1)
    make_painted(root, ['2009_000001', '2009_000002'], 'val', seed=2)
    folder = tmp_path / 'deeplabv3-voc12'
    os.makedirs(folder)
    for split, name in (('train', 'train_aug'), ('val', 'val'), ('deploy', None)):
        data = {} if split == 'deploy' else dict(
            data_layer='VOC12AugSegDataLayer', data_params={'split': name, 'crop': CROP, 'seed': 1337})
        write(folder / (split + '.prototxt'), narrow(split, **data))
    with open(folder / 'solver.prototxt', 'w') as f:
        f.write(net.model_solver(SPEC, test_iter=2, iter_size=1, max_iter=60, base_lr=0.01)
                + 'random_seed: 1337\n')  # the fillers seeded too, not only the loop
    spec = dataclasses.replace(SPEC, init='copy')  # fresh fillers: no ImageNet file here
    log = train.solve(train.Model(str(folder), spec),
                      train.RunConfig(rounds=3, iters=20, out=str(tmp_path / 'out')))
    losses = [r['train_loss'] for r in log]
    assert all(map(math.isfinite, losses)) and losses[-1] < 0.8 * losses[0], losses
    # BN learned: the statistics moved from the identity the finish step set
    snaps = sorted((tmp_path / 'out').glob('**/*.caffemodel'), key=os.path.getmtime)
    # the snapshot is the OS 16 train net's: it has no OS 8 zoom, which every opened net
    # fills from the formula (the model's finish steps), never left at zero
    deploy = str(folder / 'deploy.prototxt')
    with pytest.raises(project.InputError, match='logits_interp_x8'):
        netload.open_net(deploy, 'test', str(snaps[-1]))
    trained = netload.open_net(deploy, 'test', str(snaps[-1]), finish=SPEC.finish)
    zoom = trained.params['logits_interp_x8'][0].data
    classes = zoom.shape[0]
    assert zoom.shape == (classes, 1, 15, 15)
    for c in range(classes):  # the x8 align-corners zoom, per class
        np.testing.assert_allclose(zoom[c, 0], surgery.upsample_filt(15), atol=1e-7)
    # the loop scored val through a filled zoom (a zero one: every logit 0, loss log C),
    # and its last round equals the protocol engine on the snapshot's deploy net
    seg = log[-1]['scores']['seg']
    assert seg['loss'] != pytest.approx(math.log(classes), abs=1e-3)
    cm = metrics.ConfusionMatrix(classes)
    p = layers.VOC12AugSegDataLayer.parse_params({'split': 'val'}, root=str(root))
    for idx in ('2009_000001', '2009_000002'):
        rgb, label = layers.VOC12AugSegDataLayer.read_example(p, idx)
        cm.update(label, predict.labels(trained, rgb, SPEC.evaluation, SPEC.preprocess,
                                        'logits_interp'))
    want = cm.compute()
    assert seg['overall_acc'] == pytest.approx(want['overall_acc'])
    assert seg['mean_iu'] == pytest.approx(want['mean_iu'])
    mean, var, factor = (b.data for b in trained.params['bn_conv1'])
    assert factor[0] > 1 and np.abs(mean / factor[0]).max() > 1e-3
    assert np.abs(trained.params['scale_conv1'][0].data - 1).max() > 0  # the Scale learned too


def test_stage_one_batch_of_16_in_one_net_with_iter_size_1():
    one = net.build_net('deeplabv3-voc12', 'train')
    assert '"batch_size": 16' in one.layer[0].python_param.param_str and SPEC.solver.iter_size == 1
    two = models.get('deeplabv3-voc12-trainval')
    assert two.solver.iter_size == 16 and 'batch_size' not in net.build_net(
        two.name, 'train').layer[0].python_param.param_str


def test_narrow_net_trains_at_batch_2_with_bn_in_training_mode(root, tmp_path):  # noqa: F811
    ids = make_painted(root, ['2008_%06d' % i for i in range(1, 6)], 'train_aug', seed=1)
    make_painted(root, ['2009_000001'], 'val', seed=2)
    # VOC12AugSegDataLayer at batch 2: two forwards of batch 1, stacked
    params = {'split': 'train_aug', 'crop': CROP, 'seed': 3}
    single, double = data_net(tmp_path, params, 'one'), data_net(tmp_path, dict(params, batch_size=2), 'two')
    tops = []
    for _ in range(2):
        single.forward()
        tops.append(single.blobs['data'].data[0].copy())
    double.forward()
    np.testing.assert_array_equal(double.blobs['data'].data, np.stack(tops))
    folder = tmp_path / 'deeplabv3-voc12'
    os.makedirs(folder)
    for split, name in (('train', 'train_aug'), ('val', 'val'), ('deploy', None)):
        data = {} if split == 'deploy' else dict(
            data_layer='VOC12AugSegDataLayer', data_params={'split': name, 'crop': CROP, 'seed': 1337})
        write(folder / (split + '.prototxt'), narrow(split, train_batch=2, **data))
    with open(folder / 'solver.prototxt', 'w') as f:
        f.write(net.model_solver(SPEC, test_iter=1, iter_size=1, max_iter=60, base_lr=0.01))
    spec = dataclasses.replace(SPEC, init='copy')  # fresh fillers: no ImageNet file here
    log = train.solve(train.Model(str(folder), spec),
                      train.RunConfig(rounds=1, iters=3, out=str(tmp_path / 'out')))
    assert len(log) == 1 and math.isfinite(log[0]['train_loss'])
    snap = sorted((tmp_path / 'out').glob('**/*.caffemodel'), key=os.path.getmtime)[-1]
    trained = caffe.Net(str(folder / 'train.prototxt'), str(snap), caffe.TRAIN)
    assert trained.blobs['data'].data.shape == (2, 3, CROP, CROP)
    assert trained.blobs['label'].data.shape == (2, 1, CROP, CROP)
    bn = [name for name, l in zip(trained._layer_names, trained.layers) if l.type == 'BatchNorm']
    assert bn and all(not p.batch_norm_param.use_global_stats for p in netinit.read_net_param(
        str(folder / 'train.prototxt')).layer if p.type == 'BatchNorm')
    mean, var, factor = (b.data for b in trained.params['bn_conv1'])
    assert factor[0] > 1 and np.abs(mean / factor[0]).max() > 1e-3  # statistics of 3 batches
    assert len(ids) == 5


# ----------------------------------------------------------------------------- torchvision

def torchvision_state(widths=(4, 2, 2, 3, 3), blocks=(1, 1, 2, 2), aspp=4, classes=21, seed=0):
    """A random state_dict with torchvision's deeplabv3_resnet keys and narrow widths."""
    g = torch.Generator().manual_seed(seed)
    state = {}

    def conv(key, cout, cin, k, bias=False):
        state[key + '.weight'] = torch.randn(cout, cin, k, k, generator=g) * math.sqrt(2.0 / (cin * k * k))
        if bias:
            state[key + '.bias'] = torch.randn(cout, generator=g) * 0.1

    def bn(key, c):
        state[key + '.weight'] = torch.rand(c, generator=g) + 0.5
        state[key + '.bias'] = torch.randn(c, generator=g) * 0.1
        state[key + '.running_mean'] = torch.randn(c, generator=g) * 0.1
        state[key + '.running_var'] = torch.rand(c, generator=g) + 0.5
        state[key + '.num_batches_tracked'] = torch.tensor(7)
    conv('backbone.conv1', widths[0], 3, 7)
    bn('backbone.bn1', widths[0])
    cin = widths[0]
    for stage, (w, count) in enumerate(zip(widths[1:], blocks), 1):
        for b in range(count):
            pre = 'backbone.layer%d.%d.' % (stage, b)
            conv(pre + 'conv1', w, cin, 1), bn(pre + 'bn1', w)
            conv(pre + 'conv2', w, w, 3), bn(pre + 'bn2', w)
            conv(pre + 'conv3', 4 * w, w, 1), bn(pre + 'bn3', 4 * w)
            if b == 0:
                conv(pre + 'downsample.0', 4 * w, cin, 1), bn(pre + 'downsample.1', 4 * w)
            cin = 4 * w
    for i in range(4):
        conv('classifier.0.convs.%d.0' % i, aspp, cin, 1 if i == 0 else 3)
        bn('classifier.0.convs.%d.1' % i, aspp)
    conv('classifier.0.convs.4.1', aspp, cin, 1), bn('classifier.0.convs.4.2', aspp)
    conv('classifier.0.project.0', aspp, 5 * aspp, 1), bn('classifier.0.project.1', aspp)
    conv('classifier.1', aspp, aspp, 3), bn('classifier.2', aspp)
    conv('classifier.4', classes, aspp, 1, bias=True)
    conv('aux_classifier.0', 2, 4 * widths[3], 3), bn('aux_classifier.1', 2)
    conv('aux_classifier.4', classes, 2, 1, bias=True)
    return state


def torchvision_ref(s, x, blocks=(1, 1, 2, 2)):
    """torchvision's DeepLabv3-ResNet forward (eval mode), written out in float64 from its
    documented structure: stride on the 3x3, replace_stride_with_dilation [F, T, T], max
    pool 3/2/1 rounded down, ASPP 12/24/36 with image pooling last, project + dropout
    (identity), 3x3 head, 1x1 classifier, bilinear align_corners=False to the input."""
    s = {k: v.double() for k, v in s.items()}

    def bn(x, key, relu=True):
        x = F.batch_norm(x, s[key + '.running_mean'], s[key + '.running_var'], s[key + '.weight'],
                         s[key + '.bias'], False, 0.0, 1e-5)
        return F.relu(x) if relu else x
    size = x.shape[2:]
    x = bn(F.conv2d(x, s['backbone.conv1.weight'], stride=2, padding=3), 'backbone.bn1')
    x = F.max_pool2d(x, 3, 2, 1)
    dilation = 1
    for stage, count in enumerate(blocks, 1):
        stride, previous = (1 if stage == 1 else 2), dilation
        if stage >= 3:
            dilation, stride = dilation * stride, 1
        for b in range(count):
            pre = 'backbone.layer%d.%d.' % (stage, b)
            d = previous if b == 0 else dilation
            st = stride if b == 0 else 1
            y = bn(F.conv2d(x, s[pre + 'conv1.weight']), pre + 'bn1')
            y = bn(F.conv2d(y, s[pre + 'conv2.weight'], stride=st, padding=d, dilation=d), pre + 'bn2')
            y = bn(F.conv2d(y, s[pre + 'conv3.weight']), pre + 'bn3', relu=False)
            short = x if b else bn(F.conv2d(x, s[pre + 'downsample.0.weight'], stride=st),
                                   pre + 'downsample.1', relu=False)
            x = F.relu(y + short)
    c = 'classifier.0.convs.'
    feats = [bn(F.conv2d(x, s[c + '0.0.weight']), c + '0.1')]
    for i, r in enumerate((12, 24, 36), 1):
        feats.append(bn(F.conv2d(x, s[c + '%d.0.weight' % i], padding=r, dilation=r), c + '%d.1' % i))
    pool = bn(F.conv2d(F.adaptive_avg_pool2d(x, 1), s[c + '4.1.weight']), c + '4.2')
    feats.append(F.interpolate(pool, size=x.shape[2:], mode='bilinear', align_corners=False))
    y = bn(F.conv2d(torch.cat(feats, 1), s['classifier.0.project.0.weight']), 'classifier.0.project.1')
    y = bn(F.conv2d(y, s['classifier.1.weight'], padding=1), 'classifier.2')
    y = F.conv2d(y, s['classifier.4.weight'], s['classifier.4.bias'])
    return F.interpolate(y, size=size, mode='bilinear', align_corners=False)


@pytest.fixture(scope='module')
def converted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('tv')
    state = torchvision_state()
    ckpt = tmp / 'deeplabv3_narrow.pth'
    torch.save(state, str(ckpt))
    spec = surgery.from_torchvision(ckpt, tmp / 'tvmodel', size=64, quiet=True)
    return state, ckpt, spec


def test_torchvision_checkpoint_converts_exactly_at_multiples_of_8(converted, monkeypatch):
    state, ckpt, spec = converted
    monkeypatch.setattr(models, 'MODELS', dict(models.MODELS))  # registered for this test only
    folder = spec.folder
    assert sorted(os.listdir(folder)) == sorted(['deploy.prototxt', models.SPEC_FILE,
                                                spec.weights.stock_file])
    loaded = models.load(folder)  # a user's model: registered from its model.json
    assert loaded.preprocessing == models.Preprocess((0.485, 0.456, 0.406), 'RGB', 1 / 255.0,
                                                     (0.229, 0.224, 0.225))
    n_ = netload.open_net(os.path.join(folder, 'deploy.prototxt'), 'test',
                          os.path.join(folder, spec.weights.stock_file))
    rng = np.random.RandomState(0)
    for h, w in ((64, 64), (40, 56)):
        x = rng.normal(0, 1, (3, h, w)).astype(np.float32)
        got = predict.forward_logits(n_, x, 'logits_interp')
        want = torchvision_ref(state, t64(x[None]))[0].numpy()
        assert got.shape == want.shape == (21, h, w)
        np.testing.assert_allclose(got, want, atol=1e-4 * np.abs(want).max())
    # another size: a clear error, never a silently shifted map
    with pytest.raises(ValueError, match='does not crop its output to the input'):
        predict.forward_logits(n_, np.zeros((3, 50, 50), np.float32), 'logits_interp')
    # the registry's protocol and preprocessing (padded to the deploy net's 64)
    n_.blobs['data'].reshape(1, 3, 64, 64)
    rgb = rng.randint(0, 256, (30, 45, 3)).astype(np.uint8)
    labels = predict.labels(n_, rgb, loaded.evaluation, loaded.preprocess, 'logits_interp')
    x = predict.preprocess(rgb, loaded.preprocess)
    padded = np.zeros((3, 64, 64), np.float32)
    padded[:, :30, :45] = x
    want = torchvision_ref(state, t64(padded[None]))[0].numpy()[:, :30, :45].argmax(0)
    assert (labels == want).mean() > 0.99
    np.testing.assert_allclose(x[:, 0, 0], (rgb[0, 0] / 255.0 - [0.485, 0.456, 0.406])
                               / np.array([0.229, 0.224, 0.225]), rtol=1e-5)


def test_torchvision_conversion_refuses_bad_input(converted, tmp_path):
    state, ckpt, spec = converted
    with pytest.raises(project.InputError, match='already holds a model'):
        surgery.from_torchvision(ckpt, spec.folder, size=64)
    text = tmp_path / 'x.pth'
    text.write_text('not a checkpoint')
    with pytest.raises(project.InputError, match='not a PyTorch checkpoint'):
        surgery.from_torchvision(text, tmp_path / 'o1')
    bad = dict(state, **{'backbone.extra.weight': torch.zeros(1)})
    torch.save(bad, str(tmp_path / 'bad.pth'))
    with pytest.raises(project.InputError, match='backbone.extra.weight'):
        surgery.from_torchvision(tmp_path / 'bad.pth', tmp_path / 'o2', size=64)
    with pytest.raises(project.InputError, match='multiples of 8'):
        surgery.from_torchvision(ckpt, tmp_path / 'o3', size=60)
    assert not os.path.exists(tmp_path / 'o2' / models.SPEC_FILE)


# ----------------------------------------------------------------------------- ImageNet cast

def msra_file(path, trunk_net, bad=None, leave_out=None):
    """A caffemodel in the layout of Kaiming He's ImageNet ResNet (MSRA naming), written
    field by field: data, every parameter layer of `trunk_net` by name (stock BatchNorm
    [mean, var, factor] and Scale [slope, bias] blobs), pool5 and fc1000 (1000 x C), prob.
    bad: (layer, blob) written one channel too wide; leave_out: a layer left out.
    Returns {layer: [arrays]}."""
    pb = caffe.proto.caffe_pb2
    types = dict(zip(trunk_net._layer_names, (l.type for l in trunk_net.layers)))
    model = pb.NetParameter(name='ResNet-101')
    model.layer.add(name='data', type='Input')
    rng, values = np.random.RandomState(3), {}
    last = None
    for name, blobs in trunk_net.params.items():
        if name == leave_out:
            continue
        values[name] = [rng.uniform(0.5, 1.5, b.data.shape).astype(np.float32) for b in blobs]
        out = model.layer.add(name=name, type=types[name])
        for i, a in enumerate(values[name]):
            shape = (a.shape[0] + 1,) + a.shape[1:] if (name, i) == bad else a.shape
            blob = out.blobs.add()
            blob.shape.dim.extend(shape)
            blob.data.extend(np.resize(a, shape).ravel().tolist())
        last = a.shape[0] if types[name] == 'Scale' else last
    model.layer.add(name='pool5', type='Pooling')
    fc = model.layer.add(name='fc1000', type='InnerProduct')
    fc.blobs.add(shape=dict(dim=[1000, last])).data.extend(np.ones(1000 * last).tolist())
    fc.blobs.add(shape=dict(dim=[1000])).data.extend(np.zeros(1000).tolist())
    model.layer.add(name='prob', type='Softmax')
    with open(path, 'wb') as f:
        f.write(model.SerializeToString())
    return values


def test_resnet_cast_copies_the_msra_trunk_drops_fc1000(tmp_path, capsys):
    widths, blocks = ','.join(map(str, NARROW)), ','.join(map(str, BLOCKS))
    trunk_param, _ = surgery.resnet_trunk_param(SPEC.name, NARROW, BLOCKS)
    assert trunk_param.layer[-1].name == 'res5c_relu'
    proto = tmp_path / 'trunk.prototxt'
    proto.write_text(str(trunk_param))
    trunk = caffe.Net(str(proto), caffe.TEST)
    assert {'conv1', 'bn_conv1', 'scale_conv1', 'res2a_branch1', 'bn2a_branch1',
            'res5c_branch2c'} <= set(trunk.params)
    src = tmp_path / 'ResNet-101-model.caffemodel'
    values = msra_file(str(src), trunk)
    out = tmp_path / 'init.caffemodel'
    assert surgery.main(['resnet-cast', '--weights', str(src), '--out', str(out),
                         '--widths', widths, '--blocks', blocks]) == 0
    text = capsys.readouterr().out
    assert 'dropping fc1000' in text and 'copying res5c_branch2c' in text
    assert 'new aspp0' in text and 'new logits' in text
    assert '1 dropped (fc1000)' in text
    # the cast loads by name into the narrow OS 16 train net; the trunk is the file's
    folder = tmp_path / 'm'
    os.makedirs(folder)
    write(folder / 'deploy.prototxt', narrow('deploy'))
    opened = netload.open_net(str(folder / 'deploy.prototxt'), 'test', str(out), partial=True)
    for name, arrays in values.items():
        for b, a in zip(opened.params[name], arrays):
            np.testing.assert_array_equal(b.data.ravel(), a.ravel())
    assert 'aspp0' not in values and 'fc1000' not in opened.params


def test_resnet_cast_refuses_files_that_do_not_fit(tmp_path):
    widths, blocks = ','.join(map(str, NARROW)), ','.join(map(str, BLOCKS))
    trunk_param, _ = surgery.resnet_trunk_param(SPEC.name, NARROW, BLOCKS)
    proto = tmp_path / 'trunk.prototxt'
    proto.write_text(str(trunk_param))
    trunk = caffe.Net(str(proto), caffe.TEST)
    out = tmp_path / 'init.caffemodel'
    for name, kw, why in (('bad', dict(bad=('res3a_branch2b', 0)), 'res3a_branch2b'),
                          ('short', dict(leave_out='res5b_branch2a'), 'res5b_branch2a')):
        src = tmp_path / (name + '.caffemodel')
        msra_file(str(src), trunk, **kw)
        with pytest.raises(project.InputError, match=why):
            surgery.main(['resnet-cast', '--weights', str(src), '--out', str(out),
                          '--widths', widths, '--blocks', blocks, '--quiet'])
        assert not out.exists()
    with pytest.raises(project.InputError, match='--blocks'):
        surgery.main(['resnet-cast', '--weights', str(src), '--out', str(out), '--blocks', 'x'])


# ----------------------------------------------------------------------------- scales and flip

def half_pixel(n_in, n_out):
    """n_out x n_in plain bilinear resize (half-pixel centres, edges replicated)."""
    a = np.zeros((n_out, n_in))
    for i in range(n_out):
        u = min(max((i + 0.5) * n_in / n_out - 0.5, 0), n_in - 1)
        i0 = int(np.floor(u))
        a[i, i0] += 1 - (u - i0)
        a[i, min(i0 + 1, n_in - 1)] += u - i0
    return a


def test_padded_scales_and_flip_average_logits_as_derived(tmp_path):
    write(tmp_path / 'deploy.prototxt', narrow('deploy'))
    n_ = netload.open_net(str(tmp_path / 'deploy.prototxt'), 'test')
    fill_random(n_)
    rng = np.random.RandomState(5)
    rgb = rng.randint(0, 256, (30, 40, 3)).astype(np.uint8)
    scales = (1.0, 1.25, 1.5)  # the net's 65 input holds 30 x 40 at 1.5
    protocol = dataclasses.replace(SPEC.evaluation, scales=scales, flip=True)
    got = predict.scores(n_, rgb, protocol, SPEC.preprocess, 'logits_interp')
    mean = np.asarray(SPEC.preprocess.mean, np.float64)
    total = 0
    for s in scales:
        h, w = int(math.floor(30 * s + 0.5)), int(math.floor(40 * s + 0.5))
        # the uint8 resize is MATLAB's imresize (tested against its formula in
        # test_pspnet_eval); the rest of the protocol is derived here
        img = predict.imresize(rgb, (h, w)).astype(np.float64) if s != 1 else rgb.astype(np.float64)
        for mirror in (False, True):
            x = img[:, ::-1] if mirror else img
            padded = np.zeros((1, 3, CROP, CROP), np.float32)
            padded[0, :, :h, :w] = (x[:, :, ::-1] - mean).transpose(2, 0, 1)  # BGR - mean
            n_.blobs['data'].data[...] = padded
            n_.forward()
            out = n_.blobs['logits_interp'].data[0, :, :h, :w].astype(np.float64)
            out = out[:, :, ::-1] if mirror else out
            total = total + np.einsum('ih,jw,khw->kij', half_pixel(h, 30), half_pixel(w, 40), out)
    want = total / (2 * len(scales))
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=1e-4 * np.abs(want).max())
    # one scale without flip is the plain padded pass
    plain = predict.scores(n_, rgb, SPEC.evaluation, SPEC.preprocess, 'logits_interp')
    n_.blobs['data'].data[...] = 0
    n_.blobs['data'].data[0, :, :30, :40] = predict.preprocess(rgb, SPEC.preprocess)
    n_.forward()
    np.testing.assert_array_equal(plain, n_.blobs['logits_interp'].data[0, :, :30, :40])



# ----------------------------------------------------------------------------- reproduce.py

def narrow_model(folder, weights):
    """A narrow deeplabv3-voc12 folder (val net padding to CROP, deploy net) and random
    weights saved to `weights`; returns the deploy net's path."""
    os.makedirs(folder)
    write(folder / 'val.prototxt', narrow('val', data_layer='VOC12AugSegDataLayer',
                                          data_params={'split': 'val', 'crop': CROP}))
    deploy = write(folder / 'deploy.prototxt', narrow('deploy'))
    n_ = netload.open_net(deploy, 'test')
    fill_random(n_, seed=3)
    n_.save(str(weights))
    return deploy


def test_reproduce_multi_scale_rows_are_score_py_numbers(root, tmp_path):  # noqa: F811
    import reproduce
    import score
    make_painted(root, ['2009_000001', '2009_000002'], 'val', seed=2)
    model_root, weights = tmp_path / 'models', tmp_path / 'narrow.caffemodel'
    deploy = narrow_model(model_root / SPEC.folder, weights)
    out = tmp_path / 'r'
    base = ['--model-root', str(model_root), '--models', SPEC.name, '--weights',
            '%s=%s' % (SPEC.name, weights), '--out', str(out), '--quiet']

    def rows():
        return {r['name']: r for r in json.loads((out / 'results.json').read_text())['rows']
                if r['model'] == SPEC.name}
    assert reproduce.main(base) == 0
    single, multi, flip = (rows()[n] for n in ('DeepLabv3, eval at output stride 8',
                                               'DeepLabv3, + scales 0.5 .. 1.75',
                                               'DeepLabv3, + scales + flip'))
    assert single['status'] == 'measured'
    assert multi['status'] == flip['status'] == 'multi-scale not run'
    assert reproduce.main(base + ['--multi-scale']) == 0
    got = rows()
    assert got['DeepLabv3, eval at output stride 8']['measured'] == single['measured']
    for name, paper, flags in (('DeepLabv3, + scales 0.5 .. 1.75', 79.45, []),
                               ('DeepLabv3, + scales + flip', 79.77, ['--flip'])):
        row = got[name]
        assert row['status'] == 'measured' and row['paper']['mean_iu'] == paper
        js = tmp_path / 'score.json'
        assert score.main(['--model', SPEC.name, '--weights', str(weights), '--deploy', deploy,
                           '--multi-scale', '--quiet', '--out', str(js)] + flags) == 0
        by_score = json.loads(js.read_text())
        assert by_score['protocol']['scales'] == list(models.DEEPLABV3_SCALES)
        assert by_score['protocol']['flip'] == bool(flags)
        for k in ('mean_iu', 'overall_acc'):
            assert row['measured'][k] == pytest.approx(100 * by_score[k])


def test_score_py_scores_a_converted_torchvision_model_through_the_engine(
        converted, root, tmp_path, monkeypatch):  # noqa: F811
    import score
    from PIL import Image
    state, ckpt, spec = converted
    monkeypatch.setattr(models, 'MODELS', dict(models.MODELS))  # registered for this test only
    ids = make_painted(root, ['2009_000001', '2009_000002', '2009_000003'], 'val', seed=4)
    js, pred = tmp_path / 'score.json', tmp_path / 'pred'
    weights = os.path.join(spec.folder, spec.weights.stock_file)
    assert score.main(['--model', spec.folder, '--weights', weights, '--out', str(js),
                       '--save-pred', str(pred), '--quiet']) == 0
    record = json.loads(js.read_text())
    assert record['split'] == 'val' and record['images'] == 3
    assert record['protocol']['windows'] == 'padded' and record['protocol']['flip'] is False
    # each prediction is torchvision's forward (float64, independent of the engine) of the
    # image normalised its way (RGB in 0-1, ImageNet mean and std), padded with zeros to
    # the converted net's 64 x 64, cropped back; the scores are those predictions' scores
    p = layers.VOC12AugSegDataLayer.parse_params({'split': 'val'}, root=str(root))
    cm = metrics.ConfusionMatrix(21)
    for idx in ids:
        rgb, label = layers.VOC12AugSegDataLayer.read_example(p, idx)
        h, w = label.shape
        x = np.zeros((1, 3, 64, 64))
        x[0, :, :h, :w] = ((rgb / 255.0 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]).transpose(2, 0, 1)
        want = torchvision_ref(state, t64(x))[0].numpy()[:, :h, :w].argmax(0)
        got = np.array(Image.open(pred / (idx + '.png')))
        assert (got == want).mean() > 0.99
        cm.update(label, got)
    assert record['mean_iu'] == pytest.approx(cm.compute()['mean_iu'])
    assert record['overall_acc'] == pytest.approx(cm.compute()['overall_acc'])


# ----------------------------------------------------------------------------- docs

def test_docs_commands_are_the_clis(capsys):
    """docs/deeplabv3.md's commands: cast, score (multi-scale and flip) and reproduce are
    there, and every flag each line gives is one its command's --help lists."""
    import importlib
    import re
    with open(os.path.join(project.REPO, 'docs', 'deeplabv3.md')) as f:
        text = f.read()
    block = text[text.index('```sh'):text.index('```', text.index('```sh') + 5)]
    seen = set()
    for line in block.splitlines()[1:]:
        words = line.split('#')[0].split()
        if not words or not words[1].endswith('.py') or '/' in words[1]:
            continue  # solve.py: a model folder's script
        module = importlib.import_module(words[1][:-3])
        sub = [words[2]] if words[1] == 'surgery.py' else []
        with pytest.raises(SystemExit) as e:
            module.main(sub + ['--help'])
        assert e.value.code == 0
        helptext = capsys.readouterr().out
        for flag in re.findall(r'(--[a-z-]+)', line.split('#')[0]):
            assert flag in helptext, (line, flag)
        seen.add(' '.join([words[1]] + sub + sorted(re.findall(r'--multi-scale|--flip', line))))
    assert {'surgery.py resnet-cast', 'score.py --flip --multi-scale',
            'reproduce.py --multi-scale'} <= seen, seen
    assert 'NOT yet' not in text and text.count('UNCONFIRMED') >= 4
