"""tools/bench.py's figures without timing anything: the output check against Caffe, the
ratios to the fastest fp32 peer, the README tables (--markdown) from a run's JSON, the
line for a peer that is not installed, and the PyTorch translation of the layers the
DeepLab nets add (against real Caffe on a tiny net). Speed is measured by the bench
itself, never here. About 2 s (the torch test is marked slow: importing torch)."""
import json

import numpy as np
import pytest

import bench
import benchpeers
import netinit
from guard import import_caffe


def row(peer, median, sgemm=100.0, peak=1024.0, precision='f32', runtime=None):
    return {'peer': peer, 'median_s': median, 'min_s': median * 0.9, 'sgemm_gflops_median': sgemm,
            'peak_rss_mb': peak, 'precision': precision, 'flops': 363e9,
            'runtime': runtime or {'caffe': 'Caffe', 'torch': 'PyTorch 2.13.0',
                                   'onnxruntime': 'ONNX Runtime 1.32.0'}.get(peer, 'OpenVINO 2026.4.1')}


def test_output_difference_is_relative_to_the_largest_caffe_output():
    ref = np.array([[1.0, -4.0], [2.0, 0.5]], np.float32)
    got = ref + np.array([[0, 0], [0.002, -0.001]], np.float32)
    assert bench.output_difference(ref, got) == pytest.approx(0.002 / 4, rel=1e-3)
    assert bench.output_difference(ref, ref) == 0
    assert bench.output_difference(ref, got[:1]) is None  # another shape: no figure


def test_bounds_fp32_peers_tight_reduced_precision_loose():
    assert bench.bound('onnxruntime', 'f32') == bench.BOUND_F32 == 1e-4
    assert bench.bound('openvino', 'f32') == 1e-4
    assert bench.bound('openvino-default', 'bf16') == bench.BOUND_REDUCED
    assert bench.bound('openvino-default', 'f32') == bench.BOUND_REDUCED  # never an fp32 peer


def test_rank_never_counts_the_default_precision_peer_as_fastest():
    rows = [row('caffe', 2.0, sgemm=100), row('torch', 3.0, sgemm=50),
            row('openvino', 1.6, sgemm=100), row('openvino-default', 0.8, precision='bf16'),
            {'peer': 'onnxruntime', 'error': 'exit 1: boom'}]
    assert bench.rank(rows) == 'openvino'
    assert rows[0]['ratio'] == pytest.approx(1.25)
    assert rows[3]['ratio'] == pytest.approx(0.5)
    # Torch ran while the machine gave half the sgemm: in sgemm units it took 3 x 50 / (1.6 x 100).
    assert rows[1]['sgemm_ratio'] == pytest.approx(150 / 160)
    assert 'ratio' not in rows[4]
    assert bench.rank([row('openvino-default', 1.0, precision='bf16')]) is None


def run_json():
    rows = [row('caffe', 0.71, peak=1290), row('onnxruntime', 0.80, peak=2250),
            row('openvino', 0.75, peak=1260), row('openvino-default', 0.40, peak=1100, precision='bf16')]
    rows[0]['reference'] = True
    rows[1]['difference'], rows[1]['bound'] = 9.7e-7, 1e-4
    rows[2]['difference'], rows[2]['bound'] = 2.5e-4, 1e-4  # over its bound
    rows[3]['difference'], rows[3]['bound'] = 8.9e-3, 5e-2
    fastest = bench.rank(rows)
    return {'label': '', 'repeats': 5, 'time': '2026-12-07 01:00 UTC',
            'environment': {'cpu': 'AMD EPYC 9R45', 'affinity_cpus': 2, 'blas': 'BLAS: OpenBLAS 0.3.30'},
            'sgemm': {}, 'train': None,
            'nets': [{'net': 'fcn8s', 'size': [500, 500], 'fastest': fastest, 'rows': rows}]}


def test_markdown_tables_from_a_run(tmp_path):
    results = run_json()
    path = tmp_path / 'bench.json'
    path.write_text(json.dumps(results))
    text = bench.markdown(json.loads(path.read_text()))
    lines = text.splitlines()
    assert lines[0].startswith('AMD EPYC 9R45, 2 threads per peer; BLAS: OpenBLAS 0.3.30; 2026-12-07')
    head = ('| net (GFLOP) | Caffe | ONNX Runtime 1.32.0 | OpenVINO 2026.4.1 '
            '| OpenVINO 2026.4.1 (bf16, default) |')
    assert head in lines
    assert ('| FCN-8s 500 x 500 (363) | **0.71 s, 1.00x, 1.26 GB** | 0.80 s, 1.13x, 2.20 GB | '
            '0.75 s, 1.06x, 1.23 GB | 0.40 s, 0.56x, 1.07 GB |') in lines
    assert '| FCN-8s | reference | 9.7e-07 | 2.5e-04 (over 0.0001) | 8.9e-03 |' in lines
    assert not any('Other processes' in line for line in lines)
    results['nets'][0]['rows'][2]['others_busy_max'] = 0.4  # a busy machine is said
    assert 'Other processes used up to 40% of the CPUs' in bench.markdown(results)


def test_a_missing_runtime_is_one_line_saying_how_to_install(monkeypatch):
    monkeypatch.setitem(benchpeers.NEEDS, 'openvino', ('no_such_runtime_xyz', "pip install '.[bench]'"))
    lines = []
    assert bench.available(['caffe', 'openvino'], lines.append) == ['caffe']
    assert len(lines) == 1 and "skipped openvino: no_such_runtime_xyz not installed" in lines[0]
    assert "pip install '.[bench]'" in lines[0]


TINY = '''
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 13 dim: 13 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 4 kernel_size: 3 pad: 2 dilation: 2 bias_term: false } }
layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "conv" batch_norm_param { use_global_stats: true } }
layer { name: "sc" type: "Scale" bottom: "conv" top: "conv" scale_param { bias_term: true } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool" pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "sub" type: "Pooling" bottom: "conv" top: "sub" pooling_param { pool: MAX kernel_size: 1 stride: 2 } }
layer { name: "gap" type: "Pooling" bottom: "pool" top: "gap" pooling_param { pool: AVE global_pooling: true } }
layer { name: "flat" type: "Reshape" bottom: "gap" top: "flat" reshape_param { shape { dim: 0 dim: -1 } } }
layer { name: "zero" type: "Power" bottom: "pool" top: "zero" power_param { power: 1 scale: 0 shift: 0 } }
layer { name: "tile" type: "Bias" bottom: "zero" bottom: "flat" top: "tile" bias_param { axis: 0 } }
layer { name: "cat" type: "Concat" bottom: "tile" bottom: "pool" top: "cat" }
layer { name: "sub2" type: "Concat" bottom: "sub" bottom: "sub" top: "sub2" }
layer { name: "fuse" type: "Eltwise" bottom: "cat" bottom: "sub2" bottom: "cat" top: "fuse"
        eltwise_param { operation: MAX } }
layer { name: "sum" type: "Eltwise" bottom: "fuse" bottom: "sub2" top: "score" }
'''


def test_torch_translation_of_the_deeplab_layers_equals_caffe(tmp_path):
    torch = pytest.importorskip('torch')
    caffe = import_caffe()
    path = tmp_path / 'tiny.prototxt'
    path.write_text(TINY)
    net = caffe.Net(str(path), caffe.TEST)
    rng = np.random.default_rng(0)
    for blobs in net.params.values():  # BatchNorm's factor too: stored statistics / factor
        for b in blobs:
            b.data[...] = rng.uniform(0.5, 1.5, b.data.shape)
    net.blobs['data'].data[...] = rng.standard_normal((1, 3, 13, 13)) * 50
    want = net.forward()['score'].copy()
    blobs = {'data': torch.from_numpy(net.blobs['data'].data.copy())}
    for fn, bottoms, top in benchpeers.torch_ops(net, netinit.read_net_param(str(path))):
        blobs[top] = fn(*[blobs[b] for b in bottoms])
    got = blobs['score'].numpy()
    assert got.shape == want.shape == (1, 8, 7, 7)
    assert bench.output_difference(want, got) < 1e-5
