"""Score a caffemodel on a split: the Caffe evaluation and its command.

The metrics themselves (confusion matrix, the four scores, JSON) are metrics.py's and
need no Caffe; this module walks a net over a split and feeds them:

- `evaluate(net, ids, ...)` / `evaluate_outputs(net, ids, outputs)`: forward a test net once
  per image id, accumulate each output's matrix and mean loss, optionally save the
  predictions as palette PNGs; each output's result is an `Evaluation`;
- `open_val_net`, `scored_outputs`, `net_split_ids`, `class_info`, `output_json`: the
  prototxt plumbing the command, train.py and reproduce.py share.

Command: score a caffemodel on a split with the model directory's val.prototxt:

    .venv/bin/python score.py --model voc-fcn8s --weights voc-fcn8s/fcn8s-heavy-pascal.caffemodel
    .venv/bin/python score.py --model voc-fcn8s --weights W --split seg11valid \\
        --data-root /datasets --limit 50 --out results.json --save-pred out/voc-fcn8s-pred
    .venv/bin/python score.py --model siftflow-fcn16s \\
        --weights siftflow-fcn/fcn16s/siftflow-fcn16s-heavy.caffemodel     # scores sem and geo

--data-root is the folder holding the datasets' folders (pascal/VOC2011, sift-flow, ...;
default $FCN_DATA_ROOT, else <repo>/data). --model is a model directory of the repository
(or a path to one); other relative paths are taken from the current directory. The JSON
(--out) holds model, weights, split, images, the first output's overall_acc, mean_acc,
mean_iu, fwavacc, loss, per_class_iu / per_class_acc ({class: value}, null where
undefined) and excluded classes, and every output's under "tasks" (SIFT Flow: score_sem,
score_geo). SIFT Flow's cow, desert and moon (absent from its test split) are left out
of the semantic class averages when scoring that split.

How a model is scored is its registry entry's evaluation (models.Protocol). Whole-image
models (the FCNs) are scored by their val.prototxt, whose data layer feeds each image at
its own size with the preprocessing predict.py applies (RGB -> BGR, minus the mean).
Sliding-window models (PSPNet: pspnet50-ade20k, pspnet101-voc2012, pspnet101-cityscapes;
folder pspnet/<model>) are scored by predict.py instead, exactly as the release's MATLAB
evaluation does it: its deploy net slides over each whole image of the split (read by
val.prototxt's data layer class, without Caffe) resized so the long side is base size
+ 1 (513 ADE20K / VOC, 2049 Cityscapes), each window's logits plus its mirror's through
a softmax, probabilities averaged over the windows, resized to the label's size and
averaged over the scales (--multi-scale: 0.5 .. 1.75). No loss is computed.
docs/evaluation.md gives the details.

    .venv/bin/python score.py --model pspnet50-ade20k --weights pspnet/pspnet50-ade20k/pspnet50_ADE20K-stock.caffemodel
    .venv/bin/python score.py --model pspnet101-cityscapes --weights W --multi-scale --out ms.json

Models padded to a fixed input (DeepLab v2 / v3) are scored by their val net, unless
--multi-scale, --scales, --flip or --deploy is given, or the model's preprocessing is
not its dataset's, or it has no val net: then by predict.py's padded protocol on its
deploy net (scales' and mirror images' logits averaged). A DeepLabv3 converted from
torchvision (`surgery.py deeplabv3-from-torchvision`: a folder of model.json, deploy net
and caffemodel) is scored that way on its dataset's scored split (VOC 2012 val), each
image normalised as torchvision does (RGB in 0-1, ImageNet mean and std):

    .venv/bin/python score.py --model tv-deeplabv3 --weights tv-deeplabv3/deeplabv3_resnet101_coco-586e9e4e-stock.caffemodel

--deploy replaces the deploy net (its input gives the crop), --base-size the base size
(both for nets of your own, e.g. narrow test nets); --scales the scales; --no-flip leaves
out the mirrored windows (not the release's protocol).

--ray [ADDRESS] spreads the images over a pool of Ray workers (cluster.py; --workers,
--threads-per-worker, --gpus-per-worker; docs/cluster.md): the same JSON as a local run.

    .venv/bin/python score.py --model voc-fcn8s --weights W --ray                # a local cluster
    .venv/bin/python score.py --model voc-fcn8s --weights W --ray HEAD:6379 --workers 16

--out and --save-pred are checked before anything is scored: they must be writable and
may not lie inside the dataset or be the weights or the prototxt (a prediction saved
into the label folder would replace the ground truth). A label outside the net's classes
(other than 255, void) stops the run with the file and the values, never dropped.
"""
import argparse
import dataclasses
import datetime
import functools
import json
import os
import tempfile

import numpy as np

import cli
import cluster
import guard
import layers
import metrics
import models
import netinit
import netload
import project
import safewrite
import predict


# ----------------------------------------------------------------------------- nets

def loss_blob(net, layer='score', gt='label'):
    """The top of the loss layer comparing `layer` with `gt` (e.g. 'loss' for
    score/label, 'loss_geo' for score_geo/geo); else 'loss' if the net has that blob
    and only one loss; else None."""
    for name, bottoms in net.bottom_names.items():
        if list(bottoms) == [layer, gt]:
            tops = net.top_names[name]
            if tops:
                return tops[0]
    if 'loss' in net.blobs and gt in ('label', 'sem'):
        return 'loss'
    return None


@dataclasses.dataclass
class Evaluation:
    """What `evaluate` gives for one output: score blob `layer` against label blob `gt`
    over `images` images; `hist` the C x C int64 confusion matrix (rows ground truth),
    `loss` the mean loss (None without a loss blob), `scores` metrics.scores' dict with
    'images', 'void_pixels' and 'loss' added."""
    layer: str
    gt: str
    hist: np.ndarray
    loss: object
    images: int
    scores: dict


@dataclasses.dataclass
class ScoredOutput:
    """One score blob to evaluate against one label blob (see `evaluate`)."""
    layer: str = 'score'
    gt: str = 'label'
    num_classes: int = None
    exclude: list = None
    save_dir: str = None
    loss: object = 'auto'


def _output_state(net, t):
    """(output, ConfusionMatrix, loss blob or None, [loss total]) after checking the blobs."""
    for blob in (t.layer, t.gt):
        if blob not in net.blobs:
            raise ValueError('evaluate: the net has no blob %r (blobs: %s)'
                             % (blob, ', '.join(net.blobs)))
    n_cl = int(t.num_classes or net.blobs[t.layer].channels)
    loss = loss_blob(net, t.layer, t.gt) if t.loss == 'auto' else t.loss
    if loss is not None and loss not in net.blobs:
        raise ValueError('evaluate: the net has no loss blob %r' % loss)
    if t.save_dir:
        os.makedirs(t.save_dir, exist_ok=True)
    return t, metrics.ConfusionMatrix(n_cl, t.exclude), loss, [0.0]


def image_scores(net, idx, state):
    """One forward pass of `net` (its data layer at image `idx`) scored for each output of
    `state` (_output_state's): a list of (the image's ConfusionMatrix, its loss or None,
    its prediction H x W). A label outside an output's classes is a ValueError naming
    the image id and the values."""
    net.forward()
    out = []
    for t, cm, loss, total in state:
        pred = net.blobs[t.layer].data[0].argmax(0)
        one = metrics.ConfusionMatrix(cm.num_classes, cm.exclude)
        try:
            one.update(net.blobs[t.gt].data[0, 0], pred)
        except ValueError as e:
            raise ValueError('image %s, %s: %s' % (idx, t.gt, e))
        out.append((one, float(net.blobs[loss].data.flat[0]) if loss else None, pred))
    return out


def add_image(state, idx, scores):
    """Add image `idx`'s image_scores to the split's in `state`: matrices summed
    (integers), losses added (in the order of the calls), predictions saved."""
    for (t, cm, loss, total), (one, value, pred) in zip(state, scores):
        cm.merge(one)
        if t.save_dir:
            layers.save_label_png(os.path.join(t.save_dir, idx + '.png'), pred,
                                  num_classes=cm.num_classes)
        if loss:
            total[0] += value


def evaluate_outputs(net, ids, outputs, progress=True, scored=None):
    """Like `evaluate`, for several `ScoredOutput`s in one pass over the images (SIFT Flow's
    score_sem/sem and score_geo/geo). Returns a list of `Evaluation`s, one per output.
    A label outside an output's classes is a ValueError naming the image id and values.
    scored: image_scores' results of `ids`, in that order, computed elsewhere (cluster.py's
    workers) instead of by `net` here."""
    ids = [str(i) for i in ids]
    layers.walk_in_order(net)
    state = [_output_state(net, t) for t in outputs]
    scored = scored or (image_scores(net, idx, state) for idx in ids)
    bar = cli.progress_bar(len(ids), 'scoring ' + ', '.join(t.layer for t in outputs),
                              enabled=progress)
    try:
        for idx, scores in zip(ids, scored):
            add_image(state, idx, scores)
            bar.update(1)
    finally:
        bar.close()
    results = []
    for t, cm, loss, total in state:
        mean_loss = total[0] / len(ids) if (loss and ids) else None
        s = cm.compute()
        s['loss'] = mean_loss
        results.append(Evaluation(t.layer, t.gt, cm.hist, mean_loss, len(ids), s))
    return results


def evaluate(net, ids, layer='score', gt='label', num_classes=None, save_dir=None,
             progress=True, exclude=None, loss='auto'):
    """Forward `net` once per image id in `ids` (its data layer walks the same split in
    the same order) and score blob `layer` (1 x C x H x W; prediction = argmax over C)
    against blob `gt` (1 x 1 x H x W, 255 = void).

    num_classes: C, default the channels of `layer`. save_dir: when given, each
    prediction is written as the palette PNG `<save_dir>/<id>.png` (the folder is
    created if needed; files are replaced). progress: a progress line on stderr.
    exclude: class indices left out of the per-class means (see metrics.scores).
    loss: the loss blob to average, 'auto' (see `loss_blob`) or None.

    Returns an `Evaluation` (.hist C x C int64, .loss, .scores the metrics dict).
    """
    output = ScoredOutput(layer, gt, num_classes, exclude, save_dir, loss)
    return evaluate_outputs(net, ids, [output], progress)[0]


# ----------------------------------------------------------------------------- on a Ray cluster

def scores_at(opened, item, outputs):
    """A cluster worker's image (cluster.py): image_scores of `item` = (position in the
    split, id) through the val net of `opened` (open_val_net's), its data layer moved to
    that position first; predictions kept (as predict.label_dtype: uint8, uint16 past 256
    classes) only for outputs that save them."""
    net = opened[0]
    position, idx = item
    layer = next(x for x in net.layers if isinstance(x, layers.SegDataLayer))
    if layer.indices[position] != idx:
        raise project.InputError('%s: image %d of the split list is %s there, %s here'
                                 % (cluster.node_name(), position, layer.indices[position], idx))
    layer.seek(position)
    state = [_output_state(net, dataclasses.replace(t, save_dir=None)) for t in outputs]
    return [(one, loss, pred.astype(predict.label_dtype(one.num_classes)) if t.save_dir else None)
            for t, (one, loss, pred) in zip(outputs, image_scores(net, idx, state))]


def on_cluster(opts, val, weights, split, ids, outputs, finish=()):
    """image_scores of `ids` (in order) computed by the --ray cluster's workers for
    evaluate_outputs(scored=...), or None without --ray (opts: cli.ray_flags, data_root;
    finish: the model's finish steps, see open_val_net)."""
    if getattr(opts, 'ray', None) is None:
        return None
    root, weights = layers.data_root(opts.data_root), os.path.abspath(weights)
    job = cluster.Job(open_val_net, (val, weights, split, root, finish), scores_at, (outputs,),
                      {'data root': root, 'weights': weights, 'val net': val}, root)
    return cluster.in_order(opts, job, list(enumerate(ids)))


def protocol_on_cluster(opts, deploy, weights, ids, *image_args, finish=()):
    """protocol_image's results of `ids` (in order; image_args: its arguments after the
    id) computed by the --ray cluster's workers for evaluate_protocol(scored=...), or None
    without --ray (finish: the model's finish steps, netload.open_net's)."""
    if getattr(opts, 'ray', None) is None:
        return None
    root, weights, deploy = (layers.data_root(opts.data_root), os.path.abspath(weights),
                             os.path.abspath(deploy))
    # forward_only, keeping the score blob protocol_image reads (its last argument)
    opener = functools.partial(netload.open_net, finish=finish, forward_only=True,
                               keep=[image_args[-1]])
    job = cluster.Job(opener, (deploy, 'test', weights), protocol_image, image_args,
                      {'data root': root, 'weights': weights, 'net': deploy}, root)
    return cluster.in_order(opts, job, ids)


# ----------------------------------------------------------------------------- sliding windows

def protocol_image(net, idx, cls, params, num_classes, protocol, prep, blob):
    """(ConfusionMatrix, prediction H x W) of image `idx` under the sliding `protocol`
    (see evaluate_protocol); a label outside the classes is a ValueError naming it."""
    rgb, label = cls.example(params, idx, num_classes)
    pred = predict.labels(net, rgb, protocol, prep, blob, size=label.shape)
    one = metrics.ConfusionMatrix(num_classes)
    try:
        one.update(label, pred)
    except ValueError as e:
        raise ValueError('image %s: %s' % (idx, e))
    return one, pred


def evaluate_protocol(net, cls, params, ids, num_classes, protocol, prep, blob, save_dir=None,
                      palette=None, progress=True, scored=None):
    """The evaluation `protocol` (models.Protocol, run by predict.scores: PSPNet's
    sliding windows) of deploy net `net` over image ids `ids`, each read by data layer
    class `cls` with its parsed `params` (read_example: whole image and labels as the
    dataset stores them, mapped to 0..num_classes-1 / 255; a label of another size than
    its image is an InputError naming the label file), preprocessed by `prep`
    (models.Preprocess); the crop is the net's input size, the scores are those of blob
    `blob` at the label's size. save_dir: predictions as palette PNGs <save_dir>/<id>.png
    (`palette`: the dataset's colours). scored: protocol_image's results of `ids`, in
    that order, computed elsewhere (cluster.py's workers). Returns an `Evaluation` of the
    predictions against the labels (no loss)."""
    cm = metrics.ConfusionMatrix(num_classes)
    n = len(protocol.scales)
    scored = scored or (protocol_image(net, idx, cls, params, num_classes, protocol, prep, blob)
                        for idx in ids)
    bar = cli.progress_bar(len(ids), 'scoring %s, %d scale%s' % (blob, n, 's' * (n > 1)),
                              enabled=progress)
    try:
        for idx, (one, pred) in zip(ids, scored):
            cm.merge(one)
            if save_dir:
                path = os.path.join(save_dir, idx + '.png')
                os.makedirs(os.path.dirname(path), exist_ok=True)  # Cityscapes ids are city/name
                layers.save_label_png(path, pred, palette=palette, num_classes=num_classes)
            bar.update(1)
    finally:
        bar.close()
    s = cm.compute()
    s['loss'] = None
    return Evaluation(blob, 'label', cm.hist, None, len(ids), s)


def protocol_record(protocol, net):
    """The protocol as the --out JSON and reproduce.py's results record it."""
    return dict(windows=protocol.windows, base_size=protocol.base_size,
                crop=list(predict.net_crop(net)), scales=list(protocol.scales),
                flip=protocol.flip, combine=protocol.combine)


def engine_data(spec, val, split=None, root=None):
    """(data layer class, its parsed params, split, ids, the dataset's files no output may
    replace) of the images a model is scored on through the engine: those val.prototxt's
    layers.py data layer reads; for a model without a val net (one converted from
    PyTorch: model.json and a deploy net), its dataset's scored split (or `split`) read by
    that dataset's data layer class (layers.score_layer), with the layer's defaults."""
    if os.path.isfile(val):
        param = netinit.read_net_param(val)
        cls, split, ids = net_split_ids(param, val, split, root)
        p = cls.parse_params(data_layer(param)[0].python_param.param_str, root=root)
        return cls, p, split, ids, [split_list(param, val, root)] + data_dirs(param, val, root)
    if spec.dataset not in models.BUILTIN_DATASETS:
        raise project.InputError('%s: not found (a model of dataset %s needs its val net to '
                                 'say how its images are read)' % (val, spec.dataset))
    cls = layers.score_layer(spec.dataset)
    split = split or models.dataset(spec.dataset).score_split
    try:
        p = cls.parse_params({'split': split, 'randomize': False}, root=root)
    except ValueError as e:
        raise project.InputError('%s: %s' % (spec.folder, e))
    return (cls, p, split, cls.ids(split, root), [cls.split_path(p)] + [p[k] for k in cls.DIRS])


def score_protocol(args, spec):
    """score.py through the protocol engine (spec.evaluation: PSPNet's sliding windows; a
    padded model's scales and flip, or one without a val net): its deploy net over each
    whole image of the split (see the module's doc), preprocessed by spec.preprocess."""
    folder = models.model_dir(spec)
    val = os.path.join(folder, 'val.prototxt')
    deploy = args.deploy or os.path.join(folder, 'deploy.prototxt')
    if not os.path.isfile(deploy):
        raise project.InputError('%s: not found (generate the nets with python net.py)' % deploy)
    cls, p, split, ids, data_files = engine_data(spec, val, args.split, args.data_root)
    output_checks(args, val, args.weights, deploy, data_files)
    if args.limit:
        ids = ids[:args.limit]
    dataset, blob = spec.dataset, spec.outputs[0].score
    guard.set_mode(args.gpu)
    net = netload.open_net(deploy, 'test', args.weights, finish=spec.finish, forward_only=True,
                           keep=[o.score for o in spec.outputs])
    if blob not in net.blobs:
        raise project.InputError('%s: the net has no blob %r' % (deploy, blob))
    classes, exclude = class_info(dataset, 'label', split, net.blobs[blob].channels)
    protocol = predict.with_options(
        spec.evaluation, base_size=args.base_size,
        flip=False if args.no_flip else True if args.flip else None,
        scales=spec.evaluation.multi_scales if args.multi_scale else args.scales)
    print('%s: scoring %s on %s %s (%d images; %s, scales %s, flip %s)'
          % (spec.name, args.weights, dataset, split, len(ids),
             'base size %d' % protocol.base_size if protocol.base_size else protocol.windows,
             ' '.join('%g' % x for x in protocol.scales), 'yes' if protocol.flip else 'no'),
          flush=True)
    try:
        scored = protocol_on_cluster(args, deploy, args.weights, ids, cls, p, len(classes),
                                     protocol, spec.preprocess, blob, finish=spec.finish)
        ev = evaluate_protocol(net, cls, p, ids, len(classes), protocol, spec.preprocess, blob,
                               args.save_pred, layers.PALETTES.get(spec.palette),
                               not args.quiet, scored)
    except ValueError as e:  # e.g. a malformed dataset file met during the walk
        raise project.InputError(str(e))
    return report(args, deploy, dataset, split, ids, [ev], [classes],
                  protocol=protocol_record(protocol, net))


# ----------------------------------------------------------------------------- command

def through_engine(spec, args):
    """Whether `spec` is scored by the protocol engine (score_protocol): sliding windows
    always; a model padded to a fixed input when scales, flip or another deploy net are
    asked for (its val net's data layer pads one scale, unmirrored), when its input
    preprocessing is not its dataset's (a converted PyTorch model's: the val net's data
    layer feeds the dataset's), or when it has no val net (model.json and a deploy net)."""
    ev = spec.evaluation
    if ev.windows != 'padded':
        return ev.windows == 'sliding'
    val = os.path.join(models.model_dir(spec), 'val.prototxt')
    return bool(args.multi_scale or args.scales or args.flip or args.no_flip or args.deploy
                or spec.preprocessing is not None or not os.path.isfile(val))


def sliding_models():
    """The registry's models evaluated in sliding windows (PSPNet's)."""
    return [n for n in models.names() if models.get(n).evaluation.windows == 'sliding']


def registered(model):
    """The registry's ModelSpec of `model` (an id, a model's folder, a folder holding a
    model.json: models.get), or None for a folder the registry does not know."""
    try:
        spec = models.get(model)
    except project.InputError:
        return None
    return spec if isinstance(spec, models.ModelSpec) else None


def model_dir(model):
    """The folder of `model`: the registry's (models.model_dir), else `model` as a path
    (a folder of nets the registry does not know, e.g. tests' narrow ones)."""
    spec = registered(model)
    in_repo = os.path.join(project.REPO, model)
    path = (models.model_dir(spec) if spec else
            in_repo if os.path.isdir(in_repo) else os.path.abspath(model))
    if not os.path.isdir(path):
        raise project.InputError('%s: no such model directory (models: %s)'
                                % (model, ', '.join(models.names())))
    return path


def output_pairs(spec):
    """(score blob, label blob) pairs to score: the model's outputs; for a folder the
    registry does not know, every output any registered model has (the net's decide)."""
    specs = [spec] if spec else models.MODELS.values()
    pairs = [(o.score, o.label) for s in specs for o in s.outputs]
    return tuple(dict.fromkeys(pairs))


def data_layer(param):
    """(LayerParameter, data layer class) of the net's layers.py Python layer."""
    for layer in param.layer:
        if layer.type == 'Python' and layer.python_param.module == 'layers':
            cls = getattr(layers, layer.python_param.layer, None)
            if cls is None or not hasattr(cls, 'ids'):
                raise project.InputError('data layer %r: layers.py has no data layer class %r'
                                        % (layer.name, layer.python_param.layer))
            return layer, cls
    raise project.InputError('the net has no layers.py data layer (Python layer, module "layers")')


def net_split_ids(param, path, split=None, root=None):
    """(data layer class, split, image ids in walking order) of the layers.py data layer in
    NetParameter `param` (read from `path`); `split` replaces the net's split in `param`;
    directories relative to layers.data_root(root).

    The layer in `param` is set to walk its list in order, once per image, without
    augmentation (randomize and augment false), whatever the split's name or the net's
    param_str say: a training split's default is random draws with replacement, which
    would score some images twice, others never, and save predictions under the wrong
    ids."""
    layer, cls = data_layer(param)
    try:
        p = layers.parse_param_str(layer.python_param.param_str)
        if split:
            p['split'] = split
        p['randomize'] = False
        if 'augment' in cls.allowed_keys():
            p['augment'] = False
        layer.python_param.param_str = json.dumps(p)
        return cls, p.get('split'), cls.ids(p.get('split'), root,
                                            **{k: p[k] for k in cls.DIRS if k in p})
    except ValueError as e:
        raise project.InputError('%s: %s' % (path, e))


def split_list(param, path, root=None):
    """The split list file the layers.py data layer of `param` (as net_split_ids left it)
    reads: an input no output may replace."""
    layer, cls = data_layer(param)
    try:
        return cls.split_path(cls.parse_params(layer.python_param.param_str,
                                               check_required=False, root=root))
    except (ValueError, KeyError) as e:
        raise project.InputError('%s: %s' % (path, e))


def open_val_net(val, weights, split=None, root=None, finish=()):
    """(net, data layer class, split, ids) for scoring `weights` with the val prototxt `val`,
    its layers.py data layer switched to `split` when given. Inputs are checked first.
    finish: the model's finish steps: the val net's fixed formula layers `weights` do not
    hold (a zoom only the val net has) are filled (netload.open_net).
    root: the data root of the ids read here; the layer Caffe instantiates from the
    prototxt finds it in $FCN_DATA_ROOT (the commands set it from --data-root)."""
    param = netinit.read_net_param(val)
    cls, split, ids = net_split_ids(param, val, split, root)
    with tempfile.TemporaryDirectory() as tmp:
        proto = os.path.join(tmp, 'val.prototxt')
        with open(proto, 'w') as f:
            f.write(str(param))
        try:
            net = netload.open_net(proto, 'test', weights, finish=finish, forward_only=True,
                                   keep=[s for s, _ in output_pairs(None)])
        except project.InputError:  # names its file (weights, a dataset file)
            raise
        except ValueError as e:  # a data layer's complaint about its param_str
            raise project.InputError('%s: %s' % (val, e))
    layers.bind_num_classes(net)
    return net, cls, split, ids


def data_dirs(param, path, root=None):
    """The absolute dataset folders the layers.py data layer of NetParameter `param`
    (read from `path`) reads under data root `root`: what no output of a run may be
    written into."""
    layer, cls = data_layer(param)
    try:
        p = cls.parse_params(layer.python_param.param_str, check_required=False, root=root)
    except ValueError as e:
        raise project.InputError('%s: %s' % (path, e))
    return [p[k] for k in cls.DIRS]


def dataset_of(cls):
    """The built-in dataset whose scored split data layer `cls` reads (None for others):
    only for a folder the registry does not know, whose dataset its val net's layer tells."""
    return {layers.score_layer(name): name for name in models.BUILTIN_DATASETS}.get(cls)


def scored_outputs(net, dataset, split, val, save_pred=None, pairs=None):
    """([ScoredOutput], [class names]) of every score/label pair of `pairs` (default output_pairs(None))
    the net has; predictions go to save_pred (save_pred/<label>/ when there are several)."""
    pairs = pairs or output_pairs(None)
    outputs, names = [], []
    multi = sum(1 for s, g in pairs if s in net.blobs and g in net.blobs) > 1
    for score_blob, gt in pairs:
        if score_blob not in net.blobs or gt not in net.blobs:
            continue
        n_cl = net.blobs[score_blob].channels
        classes, exclude = class_info(dataset, gt, split, n_cl)
        save = None
        if save_pred:
            save = os.path.join(save_pred, gt) if multi else save_pred
        outputs.append(ScoredOutput(score_blob, gt, n_cl, exclude, save))
        names.append(classes)
    if not outputs:
        raise project.InputError('%s: no score/label blob pair among %s'
                                % (val, ', '.join('%s/%s' % t for t in pairs)))
    return outputs, names


def per_class(values, names):
    return {name: v for name, v in zip(names, values)}


def output_json(ev, names):
    s = ev.scores
    out = {k: s[k] for k in ('overall_acc', 'mean_acc', 'mean_iu', 'fwavacc')}
    out.update(layer=ev.layer, label=ev.gt, loss=s['loss'], images=s['images'],
               pixels=s['pixels'], excluded=[names[i] for i in s['excluded']],
               per_class_iu=per_class(s['per_class_iu'], names),
               per_class_acc=per_class(s['per_class_acc'], names))
    return out


def class_info(dataset, gt='label', split=None, num_classes=None):
    """(class names, excluded class indices) for scoring label blob `gt` of `dataset`
    (a DatasetSpec name of the registry, a user's too) on `split`.

    The label's `excluded` classes (SIFT Flow's semantic cow, desert, moon, absent from
    its test split) are excluded when `split` is the scored split (None means that one
    too). Names are '0', '1', ... when the dataset or label is unknown or has another
    number of classes than `num_classes`.
    E.g. class_info('siftflow', 'sem', 'test') -> (33 names, [8, 10, 15])."""
    spec = models.DATASETS.get(dataset)
    label = next((lab for lab in spec.labels if lab.top == gt), None) if spec else None
    classes = list(label.classes) if label else []
    if num_classes is not None and len(classes) != num_classes:
        classes = [str(i) for i in range(num_classes)]
    exclude = []
    if label and (split is None or split == spec.score_split):
        exclude = [classes.index(c) for c in label.excluded if c in classes]
    return classes, exclude


def model_inputs(folder):
    """The files of a model's folder a scoring run reads or that make the model (its
    prototxts, model.json): no output may replace them."""
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return []
    return [os.path.join(folder, n) for n in names
            if n.endswith('.prototxt') or n == 'model.json']


def output_checks(args, val, weights, deploy=None, data_files=None):
    """Refuse, before anything is scored, a --out or --save-pred that cannot be written or
    would replace an input: the weights, the val and deploy prototxts (and every other
    file that makes the model), the split list, or anything in the dataset's folders
    (data_files: those, when known already: engine_data's; else val's data layer's)."""
    if data_files is None:
        param = netinit.read_net_param(val)
        net_split_ids(param, val, args.split, args.data_root)
        data_files = [split_list(param, val, args.data_root)] + data_dirs(param, val, args.data_root)
    inputs = ([weights, val] + ([deploy] if deploy else []) +
              model_inputs(os.path.dirname(os.path.abspath(val))) + data_files)
    for flag, path in (('--out', args.out), ('--save-pred', args.save_pred)):
        if path:
            safewrite.check_writable(path, flag, folder=flag == '--save-pred')
            safewrite.check_not_input(path, inputs)


def print_output(ev, classes):
    cm = metrics.ConfusionMatrix(len(classes), ev.scores['excluded'])
    cm.hist, cm.images = ev.hist, ev.images
    print('\n%s vs %s' % (ev.layer, ev.gt))
    print(cm.format(classes))
    if ev.scores['excluded']:
        print('excluded from the class averages: %s'
              % ', '.join(classes[i] for i in ev.scores['excluded']))


def main(argv=None):
    parser = argparse.ArgumentParser(
        parents=[cli.data_root_flag(), cli.limit_flag(), cli.gpu_flag(), cli.ray_flags()],
        description='Score a caffemodel on a split with its model directory\'s val.prototxt.',
        epilog=__doc__[__doc__.index('Command:'):], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--model', required=True, help='model directory, e.g. voc-fcn8s')
    parser.add_argument('--weights', required=True, help='caffemodel to score')
    parser.add_argument('--split', help="split list to score (default: the val.prototxt's)")
    parser.add_argument('--out', help='write the scores here as JSON')
    parser.add_argument('--save-pred', metavar='DIR',
                        help='save predictions as palette PNGs DIR/<id>.png (multi-task: DIR/<label>/)')
    parser.add_argument('--quiet', action='store_true', help='no progress line')
    psp = parser.add_argument_group('models evaluated in sliding windows (PSPNet: the '
                                    'release\'s evaluation)')
    psp.add_argument('--multi-scale', action='store_true',
                     help='average the scales of the model\'s evaluation (PSPNet: %s; '
                          'default: 1 only)' % ' '.join('%g' % s for s in models.PSP_SCALES))
    psp.add_argument('--scales', type=float, nargs='+', metavar='S', help='scales to average')
    psp.add_argument('--no-flip', action='store_true', help='leave out the flipped windows')
    psp.add_argument('--flip', action='store_true', help='add the mirror images\' logits '
                     '(models padded to a fixed input: DeepLabv3\'s + flip row)')
    psp.add_argument('--base-size', type=int, metavar='N',
                     help='base size: the long side at scale s is N x s + 1 (default the '
                          'model\'s: 512 ADE20K / VOC, 2048 Cityscapes)')
    psp.add_argument('--deploy', help="deploy prototxt (default: the model's)")
    args = parser.parse_args(argv)
    check_args(args)
    spec = registered(args.model)
    if spec is not None and through_engine(spec, args):
        return score_protocol(args, spec)
    if args.multi_scale or args.scales or args.no_flip or args.flip or args.base_size or args.deploy:
        raise project.InputError('--multi-scale, --scales, --no-flip, --base-size and --deploy '
                                'are for models evaluated in sliding windows (%s); %s is '
                                'scored on whole images by its val net'
                                % (', '.join(sliding_models()), args.model))

    mdir = model_dir(args.model)
    val = os.path.join(mdir, 'val.prototxt')
    if not os.path.isfile(val):
        raise project.InputError('%s: not found (the model directory has no val net; '
                                'generate the nets with net.py)' % val)
    output_checks(args, val, args.weights)
    guard.set_mode(args.gpu)

    finish = spec.finish if spec else models.DEFAULT_FINISH
    net, cls, split, ids = open_val_net(val, args.weights, args.split, args.data_root, finish)
    if args.limit:
        ids = ids[:args.limit]
    dataset = spec.dataset if spec else dataset_of(cls)
    outputs, names = scored_outputs(net, dataset, split, val, args.save_pred, output_pairs(spec))

    print('%s: scoring %s on %s %s (%d images)' % (args.model, args.weights, dataset or cls.__name__,
                                                    split, len(ids)), flush=True)
    try:
        results = evaluate_outputs(net, ids, outputs, not args.quiet,
                                   on_cluster(args, val, args.weights, split, ids, outputs, finish))
    except ValueError as e:  # e.g. a malformed dataset file met during the walk
        raise project.InputError(str(e))
    return report(args, val, dataset, split, ids, results, names)


def check_args(args):
    """The checks every model's scoring shares: weights, --limit, --data-root (set)."""
    if not os.path.isfile(args.weights):
        raise project.InputError('%s: weights file not found' % args.weights)
    cli.check_limit(args.limit)
    cli.use_data_root(args.data_root)
    if args.scales and min(args.scales) <= 0:
        raise project.InputError('--scales must be positive, got %s' % args.scales)
    if args.base_size is not None and args.base_size < 1:
        raise project.InputError('--base-size must be >= 1, got %d' % args.base_size)


def report(args, prototxt, dataset, split, ids, results, names, **extra):
    """Print each output's table and write the --out JSON: the first output's metrics at
    the top level, every output's under 'tasks', `extra` (e.g. PSPNet's protocol) beside."""
    per_output = {}
    for ev, classes in zip(results, names):
        print_output(ev, classes)
        per_output[ev.layer] = output_json(ev, classes)
    # the first output's metrics at the top level, every output's under 'tasks'
    record = dict(model=args.model, weights=os.path.abspath(args.weights), prototxt=prototxt,
                  dataset=dataset, split=split, images=len(ids), data_root=layers.data_root(args.data_root),
                  date=datetime.datetime.now().isoformat(timespec='seconds'), **extra)
    record.update(per_output[results[0].layer])
    record.update(images=len(ids), tasks=per_output)
    if args.out:
        metrics.write_json(args.out, record)
        print('wrote %s' % args.out)
    return 0


if __name__ == '__main__':
    cli.run_cli(main)
