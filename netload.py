"""Caffemodels checked against their net before Caffe loads them, and nets opened.

Caffe aborts the process on weights whose shapes do not fit the net. `check_weights`
compares every parameter blob of a caffemodel with the net's in Python first, and asks
that the file covers every layer with parameters unless the caller copies partially on
purpose (a parent's weights into its child). `open_net` builds a net from a checked
prototxt (netinit.check_prototxt) and copies checked weights into it: every input is an
InputError naming the file, never a Caffe abort; with a model's finish steps, the
fixed layers its weights leave out are filled from their formula (fixed.py). A net
opened for inference only (forward_only) has its BatchNorm and Scale layers folded into
the convolutions before them (bnfold.py): the same outputs with less arithmetic and none
of the copies those layers keep for a backward pass. With weights it is built folded
straight away (open_folded): the caffemodel is checked against the net as written, whose
shapes are derived from the folded net, and folded as it is read; and, on this project's Caffe
(tools/caffe-patches/06-forward-memory.patch), its intermediate blobs share memory
where their values are never needed at the same time (share_memory).
"""
import os
import tempfile

import numpy as np
from google.protobuf import text_format

import bnfold
import fixed
from guard import import_caffe
from netinit import _count, check_net, check_prototxt, layer_active, read_net_param, remember
from project import InputError


def _blob_shape(blob):
    """Shape of a caffe_pb2.BlobProto, handling the legacy num/channels/height/width fields."""
    if blob.HasField('shape'):
        return tuple(blob.shape.dim)
    return (blob.num, blob.channels, blob.height, blob.width)


def _shapes_match(stored, wanted):
    if stored == wanted:
        return True
    # Legacy 4-D blobs are padded on the left with 1s, as Caffe's ShapeEquals does.
    if len(stored) == 4 and len(wanted) <= 4:
        return stored == (1,) * (4 - len(wanted)) + tuple(wanted)
    return False


def blob_value_problem(blob, count):
    """Why Caffe's Blob::FromProto would abort on `blob` (a BlobProto) for a blob of
    `count` values, or None. It reads double_data when that holds any value (data then
    ignored), else data, and each must hold exactly `count`; the same for double_diff,
    else diff, when either holds any (a saved gradient)."""
    for main, alt in (('double_data', 'data'), ('double_diff', 'diff')):
        field = main if len(getattr(blob, main)) else alt
        n = len(getattr(blob, field))
        if n != count and (n or field == 'data'):
            return 'holds %d %s values, its shape needs %d' % (n, field, count)
    return None


def read_proto(path, message, error=InputError, text='%s: not a Caffe weights file (%s)'):
    """`message` (an empty protobuf message: caffe_pb2.NetParameter(), SolverState(), ...)
    parsed from the binary file `path`; error(text % (path, why)) when it cannot be read
    or does not parse."""
    try:
        with open(path, 'rb') as f:
            message.ParseFromString(f.read())
    except Exception as e:  # protobuf raises DecodeError or RuntimeError by backend
        raise error(text % (path, e))
    return message


def _varint(f, first=None):
    """The base-128 varint at the file position (its first byte already read: `first`)."""
    value, shift = 0, 0
    while True:
        byte = first or f.read(1)
        first = None
        if not byte:
            raise ValueError('truncated')
        value |= (byte[0] & 0x7f) << shift
        if byte[0] < 0x80:
            return value
        shift += 7
        if shift > 63:
            raise ValueError('malformed varint')


class StoredValues:
    """One value field of a BlobProto in a caffemodel (data, diff, double_data or
    double_diff), left in the file: len() is its count; read_into copies it into a float32
    array of that many values. A packed field is only located, never read, while the file
    is checked; `values` holds those of a field that was parsed (written unpacked)."""

    def __init__(self, path, offset=0, count=0, dtype='<f4', values=()):
        self.path, self.offset, self.count, self.dtype = path, offset, count, np.dtype(dtype)
        self.values = values

    def __len__(self):
        return self.count if not len(self.values) else len(self.values)

    def read_into(self, out):
        """out (a C-contiguous float32 array of len(self) values, e.g. a Caffe blob's data)."""
        flat = out.reshape(-1)
        if len(self.values) or self.dtype != np.dtype('<f4'):
            flat[...] = np.asarray(self.values if len(self.values) else np.fromfile(
                self.path, self.dtype, self.count, offset=self.offset), np.float32)
            return
        with open(self.path, 'rb') as f:  # straight into the blob: no copy of the values
            f.seek(self.offset)
            if f.readinto(memoryview(flat).cast('B')) != flat.nbytes:
                raise InputError('%s: cut short inside a blob at byte %d' % (self.path, self.offset))


class StoredBlob:
    """A caffemodel's BlobProto without its values in memory: the shape fields of the
    message (shape, num, channels, height, width, HasField) and, for data, diff,
    double_data and double_diff, a StoredValues each. Read like a BlobProto by
    _blob_shape and blob_value_problem."""
    VALUES = {'data': '<f4', 'diff': '<f4', 'double_data': '<f8', 'double_diff': '<f8'}

    def __init__(self, proto, values):
        self._proto = proto
        for name in self.VALUES:
            setattr(self, name, values.get(name) or StoredValues(None))

    def __getattr__(self, name):
        return getattr(self._proto, name)


class _Unpacked(Exception):
    """A value field written element by element (not packed): parse the layer instead."""


def _fields(f, end):
    """(number, wire type, start of the field's tag, start of its payload, payload length)
    for each field of the message from the file position to `end`."""
    while f.tell() < end:
        start = f.tell()
        tag = _varint(f)
        wire = tag & 7
        if wire == 0:
            _varint(f)
            yield tag >> 3, wire, start, f.tell(), 0
            continue
        if wire not in (1, 2, 5):
            raise ValueError('wire type %d at byte %d' % (wire, start))
        n = {1: 8, 5: 4}.get(wire) or _varint(f)
        if f.tell() + n > end:
            raise ValueError('truncated: a field of %d bytes at byte %d ends past %d'
                             % (n, f.tell(), end))
        payload = f.tell()
        f.seek(n, 1)
        yield tag >> 3, wire, start, payload, n


def _raw(f, spans):
    """The bytes of the file at (start, end) spans, joined: fields kept as written."""
    out = []
    for start, end in spans:
        f.seek(start)
        out.append(f.read(end - start))
    return b''.join(out)


def _stored_blob(f, path, start, end, blob_proto):
    """The BlobProto at [start, end) of the file as a StoredBlob: its value fields located."""
    numbers = {blob_proto.DESCRIPTOR.fields_by_name[k].number: k for k in StoredBlob.VALUES}
    f.seek(start)
    spans, values = [], {}
    for number, wire, tag_at, payload, n in list(_fields(f, end)):
        if number not in numbers:
            spans.append((tag_at, payload + n))
        elif wire != 2 or numbers[number] in values:
            raise _Unpacked()
        else:
            dtype = StoredBlob.VALUES[numbers[number]]
            values[numbers[number]] = StoredValues(path, payload, n // int(dtype[-1]), dtype)
    proto = blob_proto()
    proto.ParseFromString(_raw(f, spans))
    return StoredBlob(proto, values)


def _stored_layer(f, path, start, end, kind):
    """(layer without blobs, [StoredBlob]) for the layer message at [start, end)."""
    caffe = import_caffe()
    blobs_field = kind.DESCRIPTOR.fields_by_name['blobs'].number
    f.seek(start)
    fields = list(_fields(f, end))
    spans = [(t, p + n) for number, _, t, p, n in fields if number != blobs_field]
    blobs = [(p, p + n) for number, wire, _, p, n in fields if number == blobs_field and wire == 2]
    layer = kind()
    layer.ParseFromString(_raw(f, spans))
    try:
        return layer, [_stored_blob(f, path, b, e, caffe.proto.caffe_pb2.BlobProto)
                       for b, e in blobs]
    except _Unpacked:  # legal but never written by Caffe: parse it whole, values in memory
        f.seek(start)
        layer.ParseFromString(f.read(end - start))
        stored = [StoredBlob(b, {k: StoredValues(path, values=getattr(b, k))
                                 for k in StoredBlob.VALUES}) for b in layer.blobs]
        del layer.blobs[:]
        return layer, stored


def read_layers(path, error=InputError, text='%s: not a Caffe weights file (%s)'):
    """Yield (field, layer, blobs) for each layer of caffemodel `path`, in file order:
    field 'layer' (LayerParameter) or 'layers' (V1LayerParameter), the layer without its
    blobs, and its blobs as StoredBlobs, whose values stay in the file until copied
    (StoredValues.read_into). The NetParameter's other fields are skipped: where parsing
    the whole file (read_proto) holds the file and its parse, twice the weights, this
    holds no weights at all. error(text % (path, why)) when it cannot be read or parsed."""
    caffe = import_caffe()
    kinds = {100: ('layer', caffe.proto.caffe_pb2.LayerParameter),
             2: ('layers', caffe.proto.caffe_pb2.V1LayerParameter)}
    try:
        with open(path, 'rb') as f:
            size = os.fstat(f.fileno()).st_size
            for number, wire, _, payload, n in _fields(f, size):
                if wire == 2 and number in kinds:
                    name, kind = kinds[number]
                    layer, blobs = _stored_layer(f, path, payload, payload + n, kind)
                    f.seek(payload + n)
                    yield name, layer, blobs
    except Exception as e:  # protobuf raises DecodeError or RuntimeError by backend
        raise error(text % (path, e))


def _layer_problem(path, layer, blobs, wanted):
    """Why Caffe would abort copying `layer` (a LayerParameter of caffemodel `path`, its
    `blobs` as read_layers gives them) into a net layer with parameter shapes `wanted`,
    or None."""
    stored = [_blob_shape(b) for b in blobs]
    if len(wanted) != len(stored) or not all(map(_shapes_match, stored, wanted)):
        return ('%s: layer %r has %d parameter blobs of shapes %s but the net expects %d of %s'
                % (path, layer.name, len(stored), stored, len(wanted), wanted))
    for i, b in enumerate(blobs):
        problem = blob_value_problem(b, _count(wanted[i]))
        if problem:
            return '%s: layer %r blob %d (shape %s) %s' % (path, layer.name, i, wanted[i], problem)
    return None


def check_weights(path, net, partial=False, formula=()):
    """Raise InputError unless caffemodel `path` parses, every layer it shares with `net`
    (by name) has the same number and shapes of parameter blobs with all their values,
    and, unless `partial`, it covers every layer of `net` that has parameters (weights of
    another model or a file cut short would leave layers at their random fill). partial:
    copying by name on purpose (a parent net's weights into its child); formula: names of
    fixed layers the caller fills from their formula (fixed.fill), which the file may
    leave out. Returns the names of the layers copied.

    As Caffe's Net::CopyTrainedLayersFrom: every layer of the file whose name is a layer
    of the net is copied, so its blob count must be that layer's (also zero: a blob-less
    layer named like a parameter layer, or blobs for a ReLU, abort Caffe), and each
    blob's value counts must fit (blob_value_problem: data, double_data, diff,
    double_diff). The file is read a layer at a time (read_layers)."""
    return _check_weights(path, net_layers(net), partial, formula)[0]


def net_layers(net):
    """[(layer name, [parameter blob shapes])] of caffe.Net `net`, in its order."""
    return [(name, [tuple(b.data.shape) for b in layer.blobs])
            for name, layer in zip(net._layer_names, net.layers)]


def _check_weights(path, layers, partial=False, formula=()):
    """check_weights against `layers` (net_layers: a net, or one as written that was never
    built), and the field of the file Caffe reads: (names, "layer" or "layers")."""
    path = str(path)
    if not os.path.isfile(path):
        raise InputError('%s: weights file not found' % path if not os.path.exists(path)
                         else '%s: not a weights file (a folder?)' % path)
    if os.path.getsize(path) == 0:
        raise InputError('%s: weights file is empty' % path)
    net_blobs = {}
    for name, shapes in layers:  # Caffe copies into the first
        net_blobs.setdefault(name, shapes)
    params = list(dict.fromkeys(name for name, shapes in layers if shapes))  # as net.params
    # Caffe reads the `layer` field, or V1 models' `layers` when there is no `layer`:
    # both are checked as they come, the one Caffe reads decides.
    seen, copied, problems = set(), {'layer': [], 'layers': []}, {}
    for kind, layer, blobs in read_layers(path):
        seen.add(kind)
        if kind in problems or layer.name not in net_blobs:
            continue  # Caffe ignores a layer the net does not have
        wanted = net_blobs[layer.name]
        problem = _layer_problem(path, layer, blobs, wanted)
        if problem:
            problems[kind] = problem
        elif wanted:
            copied[kind].append(layer.name)
    if not seen:
        raise InputError('%s: weights file holds no layers' % path)
    kind = 'layer' if 'layer' in seen else 'layers'
    if kind in problems:
        raise InputError(problems[kind])
    shared = copied[kind]
    if not shared:
        raise InputError('%s: no layer name matches the net (%s...)'
                         % (path, ', '.join(params[:3])))
    missing = [name for name in params if name not in shared and name not in formula]
    if missing and not partial:
        raise InputError('%s: has no weights for %d of the net\'s %d layers with parameters '
                         '(%s%s): weights of another model, or a file cut short? (partial '
                         'loading only when asked for)' % (path, len(missing), len(params),
                         ', '.join(missing[:4]), ', ...' if len(missing) > 4 else ''))
    return shared, kind


def _values(stored):
    """The StoredValues Caffe's Blob::FromProto takes from StoredBlob `stored`: double_data
    when it holds any, else data."""
    return stored.double_data if len(stored.double_data) else stored.data


def copy_layers(path, net, kind='layer'):
    """Net::CopyTrainedLayersFrom (net.copy_from) a layer at a time (read_layers), for a
    file check_weights passed: each layer of field `kind` whose name is a layer of `net`
    gives the first layer of that name its blobs' values (double_data when it holds any,
    else data). Caffe parses the whole file first: a transient copy of every weight."""
    first = _first_layers(net)
    for field, layer, blobs in read_layers(path):
        target = first.get(layer.name)
        if field != kind or target is None:
            continue
        for blob, stored in zip(target.blobs, blobs):
            _values(stored).read_into(blob.data)


def open_net(prototxt, phase='test', weights=None, partial=False, finish=(), forward_only=False,
             keep=()):
    """caffe.Net for `prototxt` in phase 'train' or 'test', with `weights` copied in
    (every parameter layer covered unless `partial`: see check_weights), every input
    checked first so bad input is an InputError, never a Caffe abort. The net is
    remembered, so a reshape to an image's size is checked first (netinit.check_input).

    finish: the model's finish steps (spec.finish): its fixed formula layers
    (fixed.formula_layers) that `weights` do not hold are filled from the formula, e.g. a
    val net's zoom that the train net (whose snapshot this is) does not have.

    forward_only (a 'test' net that only ever runs forward: segmenting, scoring): its
    BatchNorm (+ Scale) layers after convolutions are folded into them (with weights:
    open_folded, the folded net built directly; without: fold_batchnorm of the net as
    written); the caffemodel is not touched. Blob names the
    applications read stay; the folded layers are gone from net.params. Then its blobs
    share memory (share_memory): after a forward pass only the outputs, the data layers'
    tops and the blobs named in `keep` (e.g. a val net's scores, which its loss layer
    reads) still hold their values."""
    caffe = import_caffe()
    check_prototxt(prototxt, phase)
    param = read_net_param(prototxt)
    if forward_only and phase == 'test' and weights:
        net, param = open_folded(prototxt, param, weights, partial, finish)
        share_memory(net, keep)
        remember(net, param, prototxt, phase)  # for netinit.check_input
        return net
    net = caffe.Net(str(prototxt), caffe.TRAIN if phase == 'train' else caffe.TEST)
    if weights:
        formula = fixed.formula_layers(net, finish, param) if finish else set()
        shared, kind = _check_weights(weights, net_layers(net), partial, formula)
        if forward_only:  # the nets inference keeps: no transient copy of every weight
            copy_layers(weights, net, kind)
        else:
            net.copy_from(str(weights))
        fixed.fill(net, finish, formula - set(shared))
    if forward_only and phase == 'test':
        net, param = fold_batchnorm(net, param)
        share_memory(net, keep)
    remember(net, param, prototxt, phase)  # for netinit.check_input
    return net


def open_folded(prototxt, param, weights, partial=False, finish=()):
    """(caffe.Net, NetParameter) of test net `prototxt` (NetParameter `param`) with its
    foldable BatchNorm (+ Scale) layers folded (bnfold) and caffemodel `weights` in,
    built without ever building the net as written: building both put two nets'
    parameters (and Net::Init's transient per-branch copies, for DeepLab v2) in memory,
    the peak of opening.
    The file is checked against the net as written (layers_as_written) and read a layer
    at a time (copy_folded). A file that leaves part of a fold out (partial) opens the
    net as written and folds it (fold_batchnorm): the fold then takes those layers'
    initial values, as before."""
    caffe = import_caffe()
    active = _active(param)
    chains = bnfold.plan(active)
    if not chains:
        net, folded = caffe.Net(str(prototxt), caffe.TEST), param
    else:
        folded = bnfold.folded(active, chains)
        net = _net_from_param(folded, prototxt)
    formula = fixed.formula_layers(net, finish, param) if finish else set()
    shared, kind = _check_weights(weights, layers_as_written(net, active, chains), partial, formula)
    parts = {active.layer[i].name for chain in chains for i in chain if i is not None}
    if not parts <= set(shared):
        del net
        return _open_then_fold(prototxt, param, weights, kind, finish, formula - set(shared))
    copy_folded(weights, net, active, chains, kind)
    fixed.fill(net, finish, formula - set(shared))
    return net, folded


def _active(param):
    """A copy of NetParameter `param` with only its layers active in the test phase."""
    state = param.state if param.HasField('state') else None
    active = type(param)()
    active.CopyFrom(param)
    del active.layer[:]
    active.layer.extend(l for l in param.layer if layer_active(l, 'test', state))
    return active


def _net_from_param(param, prototxt):
    """caffe.Net (test phase) of NetParameter `param`, derived from `prototxt`, whose
    check it repeats (probe_net aside: Caffe built the prototxt's own layers)."""
    caffe = import_caffe()
    check_net(param, str(prototxt), 'test', probe=False)
    with tempfile.NamedTemporaryFile('w', suffix='.prototxt') as f:
        f.write(text_format.MessageToString(param))
        f.flush()
        return caffe.Net(f.name, caffe.TEST)


def _open_then_fold(prototxt, param, weights, kind, finish, fill):
    """The net as written with `weights` copied (field `kind`) and the formula layers
    `fill` filled, then folded: fold_batchnorm's (net, param)."""
    caffe = import_caffe()
    net = caffe.Net(str(prototxt), caffe.TEST)
    copy_layers(weights, net, kind)
    fixed.fill(net, finish, fill)
    return fold_batchnorm(net, param)


def layers_as_written(net, active, chains):
    """net_layers of the test net `active` (NetParameter) as written, derived from `net`,
    the caffe.Net of its folded version (bnfold.folded(active, chains)): every other layer
    has the same parameters in both; a folded convolution has its weights and its bias
    only if it had one; a BatchNorm (C,), (C,), (1,) and a Scale (C,) and its bias, C
    being the channels of the convolution's output (Caffe's BatchNorm and Scale setup).
    Caffe's automatic split layers, which have no parameters, are those of `net`."""
    first = _first_layers(net)
    shapes = {name: [tuple(b.data.shape) for b in layer.blobs] for name, layer in first.items()}
    for c, bn, s in chains:
        conv = active.layer[c]
        out = net.blobs[net.top_names[conv.name][0]].data.shape  # also the BatchNorm's
        shapes[conv.name] = shapes[conv.name][:1 + conv.convolution_param.bias_term]
        shapes[active.layer[bn].name] = [(out[1] if len(out) > 1 else 1,)] * 2 + [(1,)]
        if s is not None:
            scale = active.layer[s]
            axis = scale.scale_param.axis % len(out)
            shapes[scale.name] = [tuple(out[axis:axis + 1])] * (1 + scale.scale_param.bias_term)
    written = [(l.name, shapes[l.name]) for l in active.layer]
    names = {l.name for l in active.layer}
    return written + [(name, []) for name in net._layer_names if name not in names]


def _first_layers(net):
    """{layer name: the first caffe layer of that name in `net`} (Caffe copies into it)."""
    first = {}
    for name, layer in zip(net._layer_names, net.layers):
        first.setdefault(name, layer)
    return first


def _param_key(layer, i):
    """Which parameter blob of the net blob `i` of LayerParameter `layer` is: Caffe
    shares blobs between layers by their param name, and the last copied value wins."""
    name = layer.param[i].name if i < len(layer.param) else ''
    return name or (layer.name, i)


def copy_folded(path, net, active, chains, kind='layer'):
    """copy_layers of caffemodel `path` (checked against the net as written, `active`)
    into `net`, its folded version (bnfold.folded(active, chains)), then the fold: a
    folded convolution's weights are copied into its blob as they come and scaled there
    once the file is read (_fold_in_place); its bias and the BatchNorm and Scale values
    (a few per channel) are held aside until then. Shared parameters (by param name)
    end with the last value the file gives them, as Caffe's copy leaves them."""
    first, layers = _first_layers(net), {}
    for l in active.layer:
        layers.setdefault(l.name, l)
    convs = {active.layer[c].name for c, _, _ in chains}
    targets, aside = {}, {}  # param key -> arrays of `net` it fills; values held aside
    for name, layer in layers.items():
        for i, blob in enumerate(first[name].blobs if name in first else []):
            if name not in convs or i == 0:  # a folded bias is computed, not copied
                targets.setdefault(_param_key(layer, i), []).append(blob.data)
    for key in _aside_keys(active, chains):
        aside[key] = None
    for field, layer, blobs in read_layers(path):
        if field != kind or layer.name not in layers:
            continue
        for i, stored in enumerate(blobs):
            key, values = _param_key(layers[layer.name], i), _values(stored)
            for array in targets.get(key, ()):
                values.read_into(array)  # straight from the file into the blob
            if key in aside:
                aside[key] = np.empty(len(values), np.float32)
                values.read_into(aside[key])
    _fold_in_place(net, active, chains, aside)


def _aside_keys(active, chains):
    """The param keys of the folded layers' small blobs: conv biases, BatchNorm, Scale."""
    for c, bn, s in chains:
        conv = active.layer[c]
        if conv.convolution_param.bias_term:
            yield _param_key(conv, 1)
        for i in range(3):
            yield _param_key(active.layer[bn], i)
        if s is not None:
            for i in range(1 + active.layer[s].scale_param.bias_term):
                yield _param_key(active.layer[s], i)


def _fold_in_place(net, active, chains, values):
    """Scale each folded convolution's weights in `net` (copied as written) by its
    BatchNorm (+ Scale) and write its bias (bnfold, float64, rounded once), `values`
    {param key: float32 array} giving the biases and statistics. Convolutions folded to
    shared weights (DeepLab v2's branches) share one blob: it is scaled once."""
    first, done = _first_layers(net), set()
    for c, bn, s in chains:
        conv, bn = active.layer[c], active.layer[bn]
        blobs = first[conv.name].blobs
        if blobs[0].data.ctypes.data in done:
            continue
        done.add(blobs[0].data.ctypes.data)
        a, b = bnfold.batchnorm_affine(*[values[_param_key(bn, i)] for i in range(3)],
                                       eps=bn.batch_norm_param.eps)
        if s is not None:
            scale = active.layer[s]
            a, b = bnfold.then(a, b, *[values[_param_key(scale, i)]
                                       for i in range(1 + scale.scale_param.bias_term)])
        bias = values[_param_key(conv, 1)] if conv.convolution_param.bias_term else None
        w = blobs[0].data
        blobs[1].data[...] = bnfold.fold_conv(w, bias, a, b, out=w)[1]


def share_memory(net, keep=()):
    """Let the blobs of caffe.Net `net`, which will only run forward, take turns in shared
    buffers (Net::ShareForwardMemory, 06-forward-memory.patch): a blob's memory is reused
    once its last reader ran, so a forward pass holds about the largest set of blobs alive
    at once instead of every blob. Kept readable: the net's inputs and outputs, the tops
    of data layers and the blobs named in `keep`. Reshapes and images of any size stay
    correct (the buffers follow). True when it is on; False on a Caffe without the patch
    or a net some layer of which would run backward (force_backward)."""
    share = getattr(net, '_share_forward_memory', None)
    return bool(share and share(list(keep)))


def fold_batchnorm(net, param):
    """(net, param) with the foldable BatchNorm (+ Scale) layers of test-phase caffe.Net
    `net`, built from NetParameter `param`, folded into their convolutions
    (bnfold.plan): a new caffe.Net of the rewritten prototxt (bnfold.folded) holding
    every other layer's weights as `net` does and the folded convolutions' W a and
    bias a + b (_fold_in_place, as open_folded folds). `net` and `param` themselves
    when nothing folds."""
    active = _active(param)
    chains = bnfold.plan(active)
    if not chains:
        return net, param
    param = bnfold.folded(active, chains)
    out = _net_from_param(param, '(folded net)')
    convs = {active.layer[c].name for c, _, _ in chains}
    for name, blobs in out.params.items():
        for i, blob in enumerate(blobs):
            if name not in convs or i == 0:  # a folded bias is computed, not copied
                blob.data[...] = net.params[name][i].data
    values = dict.fromkeys(_aside_keys(active, chains))
    for layer in active.layer:
        for i, blob in enumerate(net.params[layer.name] if layer.name in net.params else []):
            if _param_key(layer, i) in values:
                values[_param_key(layer, i)] = blob.data
    _fold_in_place(out, active, chains, values)
    return out, param
