"""The peers of tools/bench.py: one deploy net with one set of weights, opened in each runtime.

Every opener takes the net's files (the deploy prototxt, the bench's random-weights
caffemodel, the ONNX file export.py made from those two), the input (1 x 3 x H x W
float32) and the thread count (the machine's cores), and returns a function running one
forward pass that returns the net's first output (numpy, 1 x classes x H x W):

    caffe             this project's Caffe (the default build), opened as every command
                      opens a net (netload.open_net); OpenBLAS and Caffe's OpenMP loops use
                      all cores by default
    caffe-direct      the same with FCN_CAFFE_WINOGRAD=0 (set by the worker before Caffe runs)
    torch             the prototxt translated layer by layer into torch.nn.functional calls
                      sharing the weight arrays of stock pycaffe's net (torch.from_numpy, no
                      copies): torch.set_num_threads(cores), inference mode
    onnxruntime       the ONNX file, CPUExecutionProvider, intra_op_num_threads = cores,
                      inter_op 1, sequential, all graph optimizations
    openvino          the ONNX file compiled for CPU with INFERENCE_PRECISION_HINT f32,
                      PERFORMANCE_HINT LATENCY, NUM_STREAMS 1, INFERENCE_NUM_THREADS = cores
    openvino-default  the same without the precision hint: OpenVINO's default on this CPU
                      (bf16 where the CPU has AVX-512 BF16 or AMX); not fp32, so reported
                      apart and never counted as the fastest fp32 peer

Nothing runs at import, and the runtimes are imported by their opener only, so a process
holds one runtime (its peak memory is that runtime's).
"""
import os

import guard
import netinit
import netload

PEERS = ('caffe', 'caffe-direct', 'torch', 'onnxruntime', 'openvino', 'openvino-default')
DEFAULT_PEERS = ('caffe', 'torch', 'onnxruntime', 'openvino', 'openvino-default')
FP32 = ('caffe', 'caffe-direct', 'torch', 'onnxruntime', 'openvino')  # may be the fastest fp32 peer
# The Python module each peer needs, and how to install it (a missing one: the peer is skipped).
NEEDS = {'torch': ('torch', "pip install 'torch>=2.0' (the [torch] extra; make test installs it)"),
         'onnxruntime': ('onnxruntime', "pip install '.[export]' (make installs it)"),
         'openvino': ('openvino', "pip install '.[bench]' (make installs it)"),
         'openvino-default': ('openvino', "pip install '.[bench]' (make installs it)")}
ONNX_PEERS = ('onnxruntime', 'openvino', 'openvino-default')  # run export.py's file
THREADS = ('Caffe: OpenBLAS and OpenMP defaults (N unless '
           'OPENBLAS_NUM_THREADS / OMP_NUM_THREADS say less); PyTorch: torch.set_num_threads(N); '
           'ONNX Runtime: intra_op_num_threads N, inter_op 1; OpenVINO: INFERENCE_NUM_THREADS N, '
           'NUM_STREAMS 1, PERFORMANCE_HINT LATENCY')


def version(peer):
    """The runtime's name and version as the report shows it."""
    if peer.startswith('caffe'):
        return 'Caffe' + (' (direct conv)' if peer == 'caffe-direct' else '')
    if peer == 'torch':
        import torch
        return 'PyTorch %s' % torch.__version__.split('+')[0]
    if peer == 'onnxruntime':
        import onnxruntime
        return 'ONNX Runtime %s' % onnxruntime.__version__
    import openvino
    return 'OpenVINO %s' % openvino.__version__.split('-')[0]


def open_caffe(files, data, output, threads):
    """The project's Caffe as infer.py and score.py open a net: netload.open_net with
    forward_only (BatchNorm folded, blobs sharing memory; `output` kept), reshaped to the
    input's size."""
    net = netload.open_net(files['prototxt'], 'test', files['caffemodel'], forward_only=True,
                           keep=[output])
    net.blobs['data'].reshape(*data.shape)
    net.reshape()
    net.blobs['data'].data[...] = data

    def forward():
        net.forward()
        return net.blobs[output].data
    forward.net = net  # for --profile
    return forward


def open_torch(files, data, output, threads):
    """PyTorch: the translation (torch_ops) of the prototxt, its weights those of stock
    pycaffe's net read from the same caffemodel (Caffe's allocations for a net are lazy:
    its activations are never allocated, only the weights torch shares)."""
    import torch
    torch.set_num_threads(threads)
    caffe = guard.import_caffe()
    net = caffe.Net(files['prototxt'], caffe.TEST, weights=files['caffemodel'])
    param = netinit.read_net_param(files['prototxt'])
    ops = torch_ops(net, param)
    x = torch.from_numpy(data)

    def forward():
        with torch.inference_mode():
            blobs = {'data': x}
            for fn, bottoms, top in ops:
                blobs[top] = fn(*[blobs[b] for b in bottoms])
            return blobs[output].numpy()
    forward.threads = torch.get_num_threads()
    return forward


def open_onnxruntime(files, data, output, threads):
    import onnxruntime
    opts = onnxruntime.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    opts.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    sess = onnxruntime.InferenceSession(files['onnx'], opts, providers=['CPUExecutionProvider'])
    feed = {sess.get_inputs()[0].name: data}
    return lambda: sess.run([output], feed)[0]


def open_openvino(files, data, output, threads, precision='f32'):
    """OpenVINO on the CPU, one stream of `threads` threads; precision None: its default."""
    import openvino
    core = openvino.Core()
    config = {'PERFORMANCE_HINT': 'LATENCY', 'NUM_STREAMS': '1',
              'INFERENCE_NUM_THREADS': str(threads)}
    if precision:
        config['INFERENCE_PRECISION_HINT'] = precision
    compiled = core.compile_model(core.read_model(files['onnx']), 'CPU', config)
    request = compiled.create_infer_request()
    port = compiled.output(output)

    def forward():
        request.infer({0: data})
        return request.get_tensor(port).data
    forward.precision = compiled.get_property('INFERENCE_PRECISION_HINT').get_type_name()
    forward.threads = int(compiled.get_property('INFERENCE_NUM_THREADS'))
    return forward


OPENERS = {'caffe': open_caffe, 'caffe-direct': open_caffe, 'torch': open_torch,
           'onnxruntime': open_onnxruntime, 'openvino': open_openvino,
           'openvino-default': lambda *a: open_openvino(*a, precision=None)}


def open_peer(peer, files, data, output, threads):
    if peer == 'caffe-direct':  # read by the patched Caffe at every convolution call
        os.environ['FCN_CAFFE_WINOGRAD'] = '0'
    return OPENERS[peer](files, data, output, threads)


# --- PyTorch: the prototxt as torch.nn.functional calls -----------------------------------

def _first(values, default):
    return values[0] if len(values) else default


def _torch_op(layer, blob):
    """The function computing Caffe layer `layer` (caffe_pb2.LayerParameter) in PyTorch;
    blob(i): its i-th parameter blob as a tensor sharing Caffe's memory."""
    import torch
    import torch.nn.functional as F
    kind = layer.type
    if kind in ('Convolution', 'Deconvolution'):
        p = layer.convolution_param
        args = dict(stride=_first(p.stride, 1), padding=_first(p.pad, 0), groups=p.group,
                    dilation=_first(p.dilation, 1))
        w, b = blob(0), blob(1) if p.bias_term else None
        # (Caffe's deconvolution weights are in x out/groups x k x k, as torch's are.)
        conv = F.conv2d if kind == 'Convolution' else F.conv_transpose2d
        return lambda x: conv(x, w, b, **args)
    if kind == 'ReLU':
        s = layer.relu_param.negative_slope
        return torch.relu_ if s == 0 else (lambda x: F.leaky_relu_(x, s))
    if kind == 'Pooling':  # Caffe rounds the output size up
        p = layer.pooling_param
        if p.global_pooling:
            assert p.pool == p.AVE, layer.name
            return lambda x: x.mean((2, 3), keepdim=True)
        if p.pool == p.MAX:  # torch's ceil mode drops a window starting in the padding, as Caffe
            return lambda x: F.max_pool2d(x, p.kernel_size, p.stride, p.pad, ceil_mode=True)
        assert p.pool == p.AVE and p.pad == 0, layer.name  # PSPNet's pyramid: whole windows
        return lambda x: F.avg_pool2d(x, p.kernel_size, p.stride)
    if kind == 'BatchNorm':  # Caffe's statistics are stored times the factor blob
        factor = float(blob(2)[0])
        factor = 1 / factor if factor else 0
        m, v, eps = blob(0) * factor, blob(1) * factor, layer.batch_norm_param.eps
        return lambda x: F.batch_norm(x, m, v, training=False, eps=eps)
    if kind == 'Scale':
        assert layer.scale_param.bias_term and len(layer.bottom) == 1, layer.name
        w, b = blob(0).view(1, -1, 1, 1), blob(1).view(1, -1, 1, 1)
        return lambda x: torch.addcmul(b, x, w)
    if kind == 'Bias':  # DeepLabv3's image pooling: a second bottom broadcast from `axis`
        axis = layer.bias_param.axis
        assert len(layer.bottom) == 2, layer.name
        return lambda x, b: x + b.reshape(b.shape + (1,) * (x.dim() - axis - b.dim()))
    if kind == 'Power':  # (shift + scale x) ^ power
        p = layer.power_param
        return lambda x: (x * p.scale + p.shift) ** p.power
    if kind == 'Concat':
        return lambda *xs: torch.cat(xs, 1)
    if kind == 'InnerProduct':  # on axis 2: PSPNet's bins -> F x F interpolation
        p = layer.inner_product_param
        assert p.axis == 2 and not p.bias_term and not p.transpose, layer.name
        w = blob(0)
        return lambda x: F.linear(x.flatten(2), w)
    if kind == 'Reshape':
        dims = list(layer.reshape_param.shape.dim)
        return lambda x: x.reshape([x.shape[i] if d == 0 else d for i, d in enumerate(dims)])
    if kind == 'Tile':
        p = layer.tile_param
        return lambda x: x.repeat([p.tiles if i == p.axis else 1 for i in range(x.dim())])
    if kind == 'Dropout':
        return lambda x: x
    if kind == 'Crop':
        p = layer.crop_param
        assert p.axis == 2 and len(p.offset) == 1, layer.name
        o = p.offset[0]
        return lambda x, ref: x[:, :, o:o + ref.shape[2], o:o + ref.shape[3]]
    if kind == 'Eltwise':
        p = layer.eltwise_param
        assert not p.coeff and p.operation in (p.SUM, p.MAX), layer.name
        if p.operation == p.MAX:  # DeepLab v2's fusion of its scale branches
            return lambda *xs: torch.stack(xs).amax(0)
        return lambda *xs: sum(xs[1:], xs[0])
    raise ValueError('bench: no PyTorch mapping for %s layer %s' % (kind, layer.name))


def torch_ops(net, param):
    """[(function, bottom names, top name)] computing deploy NetParameter `param` in
    PyTorch with the weights of caffe.Net `net` (shared, not copied: DeepLab v2's
    branches that share parameters by name share them here too)."""
    import torch
    ops = []
    for layer in param.layer:
        if layer.type == 'Input':
            continue
        blob = (lambda name: lambda i: torch.from_numpy(net.params[name][i].data))(layer.name)
        ops.append((_torch_op(layer, blob), list(layer.bottom), layer.top[0]))
    return ops
