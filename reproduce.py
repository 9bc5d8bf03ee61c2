"""Reproduce the paper's tables: evaluate the models, the paper's numbers beside the measured ones.

    python reproduce.py                              # every model whose weights and data are present
    python reproduce.py --models voc-fcn8s voc-fcn32s --gpu 0
    python reproduce.py --limit 50                   # quick look: the first 50 images of each split
    python reproduce.py --data-root /datasets --weights voc-fcn8s=my.caffemodel
    python reproduce.py --snapshots                  # latest training snapshot first, else released
    python reproduce.py --merge --models nyud-fcn32s-color   # add to the results already in OUT
    python reproduce.py --readme                     # also refresh README.md's results block
    python reproduce.py --ray HEAD:6379              # images scored by a Ray cluster's workers (docs/cluster.md)

Every model of the registry (models.py; or those named with --models, which may also be
the folder of a model of your own, registered by its model.json) is scored on its
dataset's scored split (seg11valid for VOC, test for NYUDv2 and SIFT Flow, val for
PASCAL-Context) with its model directory's val.prototxt, through score.py's own pieces
(score.data_layer, class_info, ScoredOutput, evaluate_outputs, output_json): the numbers are those
`score.py --model M --weights W --split S` prints. SIFT Flow is scored on both heads;
its semantic scores leave cow, desert and moon (absent from the test split) out of the
class averages, and the table says so.

Weights, per model: `--weights MODEL=FILE` if given; else with --snapshots the latest
training snapshot (MODEL/snapshot/train_iter_N.caffemodel, see weights.snapshot_weights); else
the released caffemodel in the model directory (weights.weights_path). A model whose
weights or data are missing is listed with the reason and what to run or read.

Paper rows (models.PAPER, the one table of the papers' numbers, docs/models.md), and
the model directory each is compared with:

    release seg11valid mean IU   FCN-32s/16s/8s/8s at-once/AlexNet -> voc-fcn32s, voc-fcn16s,
                                 voc-fcn8s, voc-fcn8s-atonce, voc-fcn-alexnet
    release VOC2012 test         FCN-8s (test server only: listed, not measurable here)
    CVPR Table 2 (seg11valid =   FCN-32s/16s/8s -> voc-fcn32s/16s/8s (FCN-32s-fixed: no model)
      VOC2011 val subset)
    CVPR Table 3 (VOC test)      FCN-8s 2011 / 2012 test (test server only), ~175 ms/image
                                 on a K40c: compared with voc-fcn8s's measured time
    CVPR Table 4 (NYUDv2 test)   FCN-32s RGB / RGBD / HHA / RGB-HHA -> nyud-fcn32s-color /
                                 color-d / hha / color-hha; FCN-16s RGB-HHA -> nyud-fcn16s-color-hha
    CVPR Table 5 (SIFT Flow)     FCN-16s semantic -> siftflow-fcn16s score_sem; geometric
                                 pixel accuracy -> its score_geo

Models with no number in the paper (siftflow-fcn32s/8s, pascalcontext-*) get rows of
their own with only the measured values.

Models evaluated in sliding windows (their registry entry's evaluation: PSPNet's
pspnet50-ade20k, pspnet101-cityscapes, pspnet101-voc2012; folders pspnet/<model>) are
scored by score.py's own evaluate_protocol (predict.py: the release's MATLAB evaluation;
the numbers `score.py --model M --weights W` prints): single scale always, the
release's multi-scale (0.5 .. 1.75 averaged) with --multi-scale (about 9 times the
work). Their weights are the converted caffemodel pspnet/<model>/<release>-stock.caffemodel
(`python weights.py M` then `python surgery.py pspnet-convert --model M`). Its
published numbers are models.PAPER rows too (the numbers: docs/models.md):

    PSPNet release   ADE20K val single / multi-scale -> pspnet50-ade20k; Cityscapes val
                     -> pspnet101-cityscapes; VOC2012 test (server only) -> pspnet101-voc2012
    PSPNet Table 3   PSPNet101 on ADE20K val (never released: no model)

Models padded to a fixed input (evaluation windows 'padded': DeepLab v2 and v3) are
scored by their val net (one scale, task = the score blob); with --multi-scale, those
whose evaluation has multi_scales are also scored through the engine, as `score.py
--multi-scale` does: task 'multi-scale' (the scales' logits averaged) and, where the
evaluation's multi_flip asks for it, 'multi-scale-flip' (`score.py --multi-scale --flip`,
mirror images added): DeepLabv3's 79.45 and 79.77 rows on VOC2012 val.

Output, into OUT (default <repo>/results), written atomically after every model:
OUT/results.json (every model's status, weights, split, images, time and score.py's
per-task scores; the comparison rows, in %) and OUT/results.md (the comparison table,
the models not evaluated and why, and a per-class IU table per evaluated model). The
summary is also printed. --readme [FILE] replaces the block between
`<!-- results:start -->` and `<!-- results:end -->` in README.md (or FILE) with it.

Time: forward pass only (the data layer's loading excluded), ms per image, mean over the
evaluated images after the first (which pays for memory allocation), on this machine.

--model-root DIR looks for the model directories in DIR instead of the repository
(e.g. narrow test nets). --limit N scores the first N images of each split: the table
says "(first N images)". Exit status: 0, also when nothing could be evaluated (missing
weights or data are reported, not errors); 1 when an evaluation failed (the other models
are still done and written) or on a bad argument (argparse's own usage errors: 2).
"""
import argparse
import datetime
import os
import shlex
import sys
import time

import cli
import guard
import jsonfile
import layers
import metrics
import models
import netinit
import netload
import predict
import safewrite
import score
import snapshots
import weights
from project import REPO, InputError, NotReleasedError

METRICS = ('overall_acc', 'mean_acc', 'mean_iu', 'fwavacc')
METRIC_NAMES = {'overall_acc': 'pixel acc', 'mean_acc': 'mean acc', 'mean_iu': 'mean IU',
                'fwavacc': 'f.w. IU'}
MULTI_TASKS = ('multi-scale', 'multi-scale-flip')  # engine_runs' tasks of --multi-scale
MARK_START, MARK_END = '<!-- results:start -->', '<!-- results:end -->'


# ----------------------------------------------------------------------------- weights and data

def _commands(model, model_dir, model_root):
    """(fetch, train) commands for `model`, as a user types them."""
    if os.path.abspath(model_root) == REPO:  # the folder as typed from the repository root
        return ('python weights.py %s' % model,
                'python %s' % os.path.join(os.path.relpath(model_dir, REPO), 'solve.py'))
    return ('python %s %s' % (os.path.join(REPO, 'weights.py'), model_dir),
            'python %s' % os.path.join(model_dir, 'solve.py'))


def all_models():
    """Every model reproduce.py knows, in table order: the registry's (models.names())."""
    return models.names()


def model_dataset(model):
    return models.get(model).dataset


def data_readme(dataset):
    """The first README of `dataset` (how to get it, where to put it), or None."""
    readmes = models.dataset(dataset).readmes
    return readmes[0] if readmes else None


def model_folder(model, model_root):
    """Where `model`'s files are under `model_root`: its folder (models.model_dir) at the
    same place relative to the root as to the repository; a user's model (outside the
    repository) in its own folder."""
    folder = models.model_dir(model)
    rel = os.path.relpath(folder, REPO)
    return folder if rel.startswith(os.pardir) else os.path.join(model_root, rel)


def scored_split(model):
    """dataset, split and paper_images (the paper's split size) of `model`'s entry."""
    data = models.get(model).data
    return dict(dataset=data.name, split=data.score_split,
                paper_images=data.split(data.score_split).size)


def converted_weights(spec, model_dir):
    """(path, 'released') of a release converted for this Caffe (Weights.convert), or
    (None, reason dict)."""
    path = os.path.join(model_dir, spec.weights.stock_file)
    if os.path.isfile(path):
        return path, 'released'
    return None, dict(what='weights', message='converted weights not found: %s' % path,
                      commands=['python weights.py %s && python surgery.py %s --model %s'
                                % (spec.name, spec.weights.convert, spec.name)])


def find_weights(model, model_dir, model_root, override=None, prefer_snapshot=False):
    """(path, source) of the weights to score `model` with, or (None, reason dict).

    source: '--weights', 'snapshot' or 'released'. The reason dict names what is missing
    (the path expected) and the commands that get it. prefer_snapshot: --snapshots."""
    if override:
        return override, '--weights'
    spec = models.get(model)
    if spec.weights is not None and spec.weights.convert and not prefer_snapshot:
        return converted_weights(spec, model_dir)
    fetch, train_cmd = _commands(model, model_dir, model_root)
    tried = []
    if prefer_snapshot:
        path = weights.snapshot_weights(model_dir)
        if path:
            return path, 'snapshot'
        tried.append('no training snapshot in %s' % snapshots.snapshot_dir(model_dir))
    try:
        path = weights.weights_path(model_dir)
    except InputError as e:  # no URL record, or a model the release never shipped
        message = 'never released' if isinstance(e, NotReleasedError) else str(e)
        return None, dict(what='weights', message='; '.join(tried + [message]), commands=[train_cmd])
    if os.path.isfile(path):
        return path, 'released'
    tried.append('released weights not found: %s' % path)
    return None, dict(what='weights', message='; '.join(tried), commands=[fetch, train_cmd])


def data_check(model, model_dir, split, root=None):
    """(ids, None): the image ids of `split` as model_dir/val.prototxt's data layer reads
    them; or (None, reason dict) when its list is missing (the path expected and the
    dataset's README to read) or there is no val.prototxt."""
    dataset = model_dataset(model)
    val = os.path.join(model_dir, 'val.prototxt')
    if not os.path.isfile(val):
        return None, dict(what='model', message='%s not found' % val,
                          commands=['python net.py %s' % model])
    layer, cls = score.data_layer(netinit.read_net_param(val))
    try:
        p = layers.parse_param_str(layer.python_param.param_str)
        return cls.ids(split, root, **{k: p[k] for k in cls.DIRS if k in p}), None
    except (FileNotFoundError, InputError) as e:  # no split list, or an empty one
        reason = dict(what='data', message=str(e), commands=[])
        readme = data_readme(dataset)
        if readme and os.path.isfile(os.path.join(REPO, readme)):
            reason['read'] = readme
        return None, reason
    except ValueError as e:  # a bad param_str
        raise InputError('%s: %s' % (val, e))


# ----------------------------------------------------------------------------- evaluation

class TimedNet:
    """A caffe.Net whose forward() is timed: the data layer(s) first, then the rest.

    score.evaluate_outputs calls forward() and reads blobs as usual (everything else is
    the net's); `forward_s` collects the seconds of the layers after the data layer
    (the net's compute), `load_s` those of the data layer. The two partial forwards run
    exactly the layers one forward() runs, in the same order. The returned outputs are
    read back from the device, so GPU work has finished when the clock stops."""

    def __init__(self, net):
        self.net = net
        names = list(net._layer_names)
        n_data = 0
        while n_data < len(names) - 1 and net.layers[n_data].type in ('Python', 'Input', 'Data'):
            n_data += 1
        self.split = (names[n_data - 1], names[n_data]) if n_data else None
        self.load_s, self.forward_s = [], []

    def forward(self):
        t0 = time.perf_counter()
        if self.split:
            self.net.forward(end=self.split[0])
        t1 = time.perf_counter()
        out = self.net.forward(start=self.split[1]) if self.split else self.net.forward()
        self.load_s.append(t1 - t0)
        self.forward_s.append(time.perf_counter() - t1)
        return out

    def __getattr__(self, name):
        return getattr(self.net, name)


def _mean_ms(seconds):
    """Mean in ms over the images after the first (warm-up), or of the one image."""
    kept = seconds[1:] if len(seconds) > 1 else seconds
    return 1000.0 * sum(kept) / len(kept) if kept else None


def engine_runs(protocol, multi_scale=False):
    """(task, models.Protocol) pairs the protocol engine scores for reproduce.py, from the
    model's evaluation: 'single-scale' for sliding windows (a model scored on whole or
    padded images has its val net's single scale instead); with `multi_scale` and the
    spec's multi_scales, 'multi-scale' (the protocol's own flip) and, where its
    multi_flip asks for it, 'multi-scale-flip' (the mirror images added)."""
    runs = [('single-scale', protocol)] if protocol.windows == 'sliding' else []
    if multi_scale and protocol.multi_scales:
        multi = predict.with_options(protocol, scales=protocol.multi_scales)
        runs.append(('multi-scale', multi))
        if protocol.multi_flip and not protocol.flip:
            runs.append(('multi-scale-flip', predict.with_options(multi, flip=True)))
    return runs


def evaluate_protocol(model_dir, weights, split, ids, spec, runs, progress=True, root=None,
                      opts=None):
    """Score `weights` through the protocol engine (score.evaluate_protocol: deploy net,
    whole images read by model_dir/val.prototxt's data layer class) for each of `runs`
    (engine_runs'); returns tasks {task: score.output_json}, images and ms_per_image, the
    first run's time per image (every window, mirrored ones included; None without runs).
    opts: the Ray flags (cli.ray_flags; --ray: the images scored by the cluster's workers)."""
    val = os.path.join(model_dir, 'val.prototxt')
    param = netinit.read_net_param(val)
    cls, split, _ = score.net_split_ids(param, val, split, root)
    p = cls.parse_params(score.data_layer(param)[0].python_param.param_str, root=root)
    deploy = os.path.join(model_dir, 'deploy.prototxt')
    net = netload.open_net(deploy, 'test', weights, finish=spec.finish, forward_only=True,
                           keep=[o.score for o in spec.outputs])
    blob = spec.outputs[0].score
    classes, _ = score.class_info(spec.dataset, 'label', split, net.blobs[blob].channels)
    tasks, ms = {}, []
    for task, run in runs:
        t0 = time.perf_counter()
        try:
            ev = score.evaluate_protocol(net, cls, p, ids, len(classes), run, spec.preprocess,
                                         blob, progress=progress, scored=score.protocol_on_cluster(
                                             opts, deploy, weights, ids, cls, p, len(classes),
                                             run, spec.preprocess, blob, finish=spec.finish))
        except ValueError as e:  # e.g. a malformed dataset file met during the walk
            raise InputError(str(e))
        ms.append(1000.0 * (time.perf_counter() - t0) / max(len(ids), 1))
        ev.layer = task
        tasks[task] = score.output_json(ev, classes)
    return dict(tasks=tasks, images=len(ids), ms_per_image=ms[0] if ms else None,
                load_ms_per_image=None)


def evaluate_model(model_dir, weights, split, ids, dataset, progress=True, root=None, opts=None,
                   finish=()):
    """Score `weights` on the images `ids` of `split` with model_dir/val.prototxt, as
    score.py's command does (its data layer set to `split`; finish: the model's finish
    steps, score.open_val_net's); returns the model's entry:
    tasks {score blob: score.output_json}, images, ms_per_image, load_ms_per_image (None
    with --ray in `opts`: the images are scored by the cluster's workers)."""
    val = os.path.join(model_dir, 'val.prototxt')
    net, _, _, _ = score.open_val_net(val, weights, split, root, finish)
    outputs, names = score.scored_outputs(net, dataset, split, val)
    timed = TimedNet(net)
    try:
        results = score.evaluate_outputs(timed, ids, outputs, progress, score.on_cluster(
            opts, val, weights, split, ids, outputs, finish))
    except ValueError as e:  # e.g. a malformed dataset file met during the walk
        raise InputError(str(e))
    return dict(tasks={ev.layer: score.output_json(ev, classes)
                       for ev, classes in zip(results, names)},
                images=len(ids), ms_per_image=_mean_ms(timed.forward_s),
                load_ms_per_image=_mean_ms(timed.load_s))


# ----------------------------------------------------------------------------- comparison

def _pct(fraction):
    return None if fraction is None else 100.0 * fraction


def comparison_rows(entries, selected):
    """The comparison: models.PAPER's rows (PaperRow.to_dict) with the measured values (%)
    of their model, then a row per output of each evaluated model the paper has no row for."""
    rows = []
    for r in models.PAPER:
        entry = entries.get(r.model) if r.model else None
        row = dict(r.to_dict(), measured=None, diff=None, images=None,
                   ms_measured=None, status='')
        if not r.model:
            row['status'] = 'no model'
        elif entry and entry.get('status') == 'evaluated':
            if r.local or r.ms is not None:  # the paper's time is for any VOC image
                row['ms_measured'] = entry.get('ms_per_image')
            if r.local:
                task = entry['tasks'].get(r.task)
                if task:
                    row['measured'] = {k: _pct(task[k]) for k in METRICS}
                    row['diff'] = {k: (row['measured'][k] - row['paper'][k])
                                   if row['paper'][k] is not None and row['measured'][k] is not None
                                   else None for k in METRICS}
                    row['images'] = entry['images']
                    row['split_images'] = entry['split_images']
                    row['excluded'] = task['excluded']
                    row['status'] = 'measured'
                else:
                    row['status'] = ('multi-scale not run' if r.task in MULTI_TASKS
                                     else 'the net has no %s output' % r.task)
            else:
                row['status'] = 'not measurable locally'
        elif not r.local:
            row['status'] = 'not measurable locally'
        elif r.model not in selected and r.model not in entries:
            row['status'] = 'not selected'
        else:
            row['status'] = 'not evaluated'
        rows.append(row)
    in_paper = {(r.model, r.task) for r in models.PAPER}
    for model, entry in entries.items():
        if entry.get('status') != 'evaluated':
            continue
        for blob in entry['tasks']:
            if (model, blob) in in_paper:
                continue
            task = entry['tasks'][blob]
            name = '%s (%s)' % (model, blob) if len(entry['tasks']) > 1 else model
            rows.append(dict(source='-', name=name, model=model, task=blob,
                             data='%s %s' % (entry['dataset'], entry['split']), local=True,
                             paper={k: None for k in METRICS}, ms=None, note='no number in the paper',
                             measured={k: _pct(task[k]) for k in METRICS},
                             diff={k: None for k in METRICS}, images=entry['images'],
                             split_images=entry['split_images'], excluded=task['excluded'],
                             ms_measured=entry.get('ms_per_image'), status='measured'))
    order = {m: i for i, m in enumerate(all_models())}
    n = len(models.PAPER)
    head, extra = rows[:n], rows[n:]
    extra.sort(key=lambda r: (order.get(r['model'], len(order)), r['task']))
    return head + extra


def _num(v):
    return '-' if v is None or v != v else '%.1f' % v


def _ms(v):
    return '-' if v is None else '%.0f' % v


def _cell(paper, measured):
    """'paper / measured (measured - paper)' with '-' for what is missing."""
    if paper is None and measured is None:
        return '-'
    if measured is None:
        return '%s / -' % _num(paper)
    if paper is None:
        return '- / %s' % _num(measured)
    return '%s / %s (%+.1f)' % (_num(paper), _num(measured), measured - paper)


def _images(row):
    if row.get('images') is None:
        return '-'
    text = str(row['images'])
    if row['images'] < row.get('split_images', row['images']):
        text = '%d of %d (first %d images)' % (row['images'], row['split_images'], row['images'])
    return text


def _note(row, entries):
    notes = [row['note']] if row['note'] else []
    if row['status'] in ('not evaluated', 'not selected'):
        entry = entries.get(row['model'], {})
        if entry.get('status') == 'failed':
            notes.insert(0, 'evaluation failed (see below)')
        elif entry.get('reasons'):
            notes.insert(0, 'not evaluated: %s missing'
                         % ' and '.join(r['what'] for r in entry['reasons']))
        else:
            notes.insert(0, 'not evaluated: %s' % row['status'])
    elif row['status'].startswith(('the net has no', 'multi-scale not run')):
        notes.insert(0, row['status'])
    if row.get('excluded'):
        notes.append('%s excluded from the class averages (absent from the split)'
                     % ', '.join(row['excluded']))
    if row['status'] == 'measured':
        entry = entries.get(row['model'], {})
        expected = entry.get('paper_images')
        if expected and entry.get('split_images') != expected:
            notes.append('this split has %d images, the paper\'s %d'
                         % (entry['split_images'], expected))
    return '; '.join(notes)


def _md_table(header, rows):
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    for row in rows:
        lines.append('| ' + ' | '.join(str(c).replace('|', '\\|') for c in row) + ' |')
    return '\n'.join(lines)


def summary_markdown(record):
    """The comparison table and the models not evaluated (Markdown, no title)."""
    entries = record['models']
    lines = ['Generated by `%s` on %s; device: %s; data root: `%s`.'
             % (record['command'], record['date'], record['device'], record['data_root']),
             '',
             'Values in %: paper / measured (measured - paper). ms/image: forward pass only, '
             'mean over the evaluated images after the first, on the machine that measured it '
             '(the paper: about 175 ms for FCN-8s on a Tesla K40c). The released weights are '
             'the release\'s models (trained longer than the CVPR paper\'s), so they are '
             'expected to match the "release" rows and to exceed CVPR Table 2.',
             '']
    header = ['source', 'paper model', 'model', 'data', 'images'] + \
        [METRIC_NAMES[k] for k in METRICS] + ['ms/image', 'note']
    body = []
    for row in record['rows']:
        ms = '%s / %s' % (_ms(row['ms']), _ms(row['ms_measured']))
        ms = '-' if ms == '- / -' else ms
        body.append([row['source'], row['name'], row['model'] or '-', row['data'], _images(row)]
                    + [_cell(row['paper'][k], (row['measured'] or {}).get(k)) for k in METRICS]
                    + [ms, _note(row, entries)])
    lines.append(_md_table(header, body))
    missing = [(m, e) for m, e in entries.items() if e.get('status') != 'evaluated']
    if missing:
        lines += ['', '### Not evaluated', '']
        for model, entry in missing:
            parts = []
            for reason in entry.get('reasons', []):
                text = '%s: %s' % ('data missing' if reason['what'] == 'data' else
                                   'weights missing' if reason['what'] == 'weights' else
                                   reason['what'], reason['message'])
                if reason.get('commands'):
                    text += ' (run %s)' % ' or '.join('`%s`' % c for c in reason['commands'])
                if reason.get('read'):
                    text += ' (read %s)' % reason['read']
                parts.append(text)
            # Paths inside the repository as typed from its root, so the Markdown (and the
            # README block) reads the same in any clone.
            text = '; '.join(parts).replace(REPO + os.sep, '')
            lines.append('- `%s` (%s): %s' % (model, entry['status'], text))
    evaluated = [m for m, e in entries.items() if e.get('status') == 'evaluated']
    if evaluated:
        lines += ['', 'Weights scored: ' + '; '.join(
            '`%s` %s (%s%s)' % (m, entries[m]['weights'], entries[m]['weights_source'],
                                ', measured %s' % entries[m]['date'] if entries[m].get('earlier_run')
                                else '') for m in evaluated) + '.']
    return '\n'.join(lines) + '\n'


def per_class_markdown(record):
    """A per-class IU (and accuracy) table for each evaluated model and output."""
    lines = []
    for model, entry in record['models'].items():
        if entry.get('status') != 'evaluated':
            continue
        for blob, task in entry['tasks'].items():
            images = '%d images' % entry['images']
            if entry['images'] < entry['split_images']:
                images = 'first %d images of %d' % (entry['images'], entry['split_images'])
            lines += ['', '### %s: %s vs %s (%s %s, %s)'
                      % (model, blob, task['label'], entry['dataset'], entry['split'], images), '']
            rows = []
            for name, iu in task['per_class_iu'].items():
                acc = task['per_class_acc'].get(name)
                excluded = ' (excluded)' if name in task['excluded'] else ''
                rows.append([name + excluded, _num(_pct(iu)), _num(_pct(acc))])
            rows.append(['**mean**', _num(_pct(task['mean_iu'])), _num(_pct(task['mean_acc']))])
            lines.append(_md_table(['class', 'IU %', 'acc %'], rows))
    if not lines:
        return ''
    return '\n## Per-class IU\n' + '\n'.join(lines) + '\n'


def results_markdown(record):
    return ('# FCN reproduction: the paper beside the measured scores\n\n'
            + summary_markdown(record) + per_class_markdown(record))


def write_results(out, record):
    """OUT/results.json and OUT/results.md, atomically (`record` holds JSON types only)."""
    metrics.write_json(os.path.join(out, 'results.json'), record)
    with safewrite.atomic_write(os.path.join(out, 'results.md'), 'w') as f:
        f.write(results_markdown(record))


def update_readme(path, record, out):
    """Replace the text between the results markers of `path` with the summary and a link
    to the per-class tables. InputError when the file or its markers are missing."""
    if not os.path.isfile(path):
        raise InputError('%s: not found (--readme needs a file with %s and %s markers)'
                         % (path, MARK_START, MARK_END))
    with open(path) as f:
        text = f.read()
    start, end = text.find(MARK_START), text.find(MARK_END)
    if start < 0 or end < start:
        raise InputError('%s: no %s ... %s block to replace; add the two markers where the '
                         'results belong' % (path, MARK_START, MARK_END))
    link = os.path.relpath(os.path.join(out, 'results.md'), os.path.dirname(os.path.abspath(path)))
    block = ('\n<!-- generated by reproduce.py --readme: do not edit by hand -->\n'
             + summary_markdown(record)
             + '\nPer-class IU of every evaluated model: [%s](%s).\n' % (link, link))
    new = text[:start + len(MARK_START)] + block + text[end:]
    if new != text:
        with safewrite.atomic_write(path, 'w') as f:
            f.write(new)
    return path


# ----------------------------------------------------------------------------- command

def _device_text(mode):
    if mode != 'cpu':
        return mode
    name = cli.cpu_name()
    return 'CPU%s, %d cores' % (' ' + name if name else '', os.cpu_count() or 1)


def parse_weights(items, known):
    """{model: absolute path} from MODEL=FILE arguments (checked)."""
    out = {}
    for item in items or ():
        model, sep, path = item.partition('=')
        if not sep or not model or not path:
            raise InputError('--weights %s: expected MODEL=FILE' % item)
        if model not in known:
            raise InputError('--weights %s: unknown model %r (models: %s)'
                             % (item, model, ', '.join(known)))
        path = os.path.abspath(os.path.expanduser(path))
        if not os.path.isfile(path):
            raise InputError('--weights %s: weights file not found: %s' % (item, path))
        out[model] = path
    return out


# what an evaluated entry of results.json holds, and of each of its tasks: the keys the
# tables read, with their JSON types (None: null allowed)
ENTRY_KEYS = {'tasks': (dict,), 'dataset': (str,), 'split': (str,), 'images': (int,),
              'split_images': (int,), 'weights': (str,), 'weights_source': (str,),
              'date': (str,), 'ms_per_image': (int, float, type(None))}
TASK_KEYS = dict({k: (int, float, type(None)) for k in METRICS}, label=(str,), excluded=(list,),
                 per_class_iu=(dict,), per_class_acc=(dict,))


def _entry_problem(entry):
    """What is wrong with an earlier run's model entry (None when it can be merged)."""
    if not isinstance(entry, dict):
        return 'not an object'
    if entry.get('status') != 'evaluated':
        return None  # not merged
    for keys, where, what in [(ENTRY_KEYS, entry, '')] + [
            (TASK_KEYS, t, 'task %r ' % name) for name, t in sorted(
                (entry.get('tasks') or {}).items()) if isinstance(entry.get('tasks'), dict)]:
        if not isinstance(where, dict):
            return '%sis not an object' % what
        for key, types in keys.items():
            if key not in where:
                return '%shas no %r' % (what, key)
            if not isinstance(where[key], types) or isinstance(where[key], bool):
                return '%s%r is %s' % (what, key, type(where[key]).__name__)
    return None


def _load_previous(out):
    """The model entries of OUT/results.json to merge; InputError naming the file and the
    model when one is malformed (an edited or foreign file)."""
    path = os.path.join(out, 'results.json')
    if not os.path.isfile(path):
        return {}
    try:
        entries = jsonfile.read_json(path).get('models', {})
    except InputError as e:  # not JSON, binary, nested too deep, not an object
        raise InputError('%s; --merge cannot merge with it' % e)
    if not isinstance(entries, dict):
        raise InputError('%s: cannot merge with it ("models" is not an object)' % path)
    for model, entry in entries.items():
        problem = _entry_problem(entry)
        if problem:
            raise InputError('%s: cannot merge with it: model %r %s (delete the entry or run '
                             'without --merge)' % (path, model, problem))
    return entries


def check_outputs(out, readme, overrides, val_nets):
    """Refuse, before scoring, an OUT folder or --readme file that cannot be written, or
    an OUT that would put results.json / results.md over an input: a --weights file, or
    anything in the datasets the `val_nets` (prototxt paths) read."""
    safewrite.check_writable(out, '--out', folder=True)
    protect = list(overrides.values())
    for val in val_nets:
        try:
            protect += score.data_dirs(netinit.read_net_param(val), val)
        except InputError:  # no or a broken val net: that model fails on its own later
            pass
    for name in ('results.json', 'results.md'):
        safewrite.check_not_input(os.path.join(out, name), protect)
    if readme:
        safewrite.check_writable(readme, '--readme')


def score_model(model, model_dir, model_root, entry, override, args):
    """Fill `entry` (status 'missing' with reasons, or 'evaluated' with the scores) for
    one model; True when it was evaluated. Errors are InputError / OSError."""
    split = entry['split']
    if not os.path.isdir(model_dir):
        entry['reasons'].append(dict(what='model', message='no model directory %s' % model_dir,
                                     commands=['python net.py %s' % model]))
        return False
    weights, source = find_weights(model, model_dir, model_root, override, args.snapshots)
    if weights is None:
        entry['reasons'].append(source)
    ids, reason = data_check(model, model_dir, split, args.data_root)
    if reason:
        entry['reasons'].append(reason)
    if entry['reasons']:
        return False
    entry.update(weights=weights, weights_source=source, split_images=len(ids))
    if args.limit:
        ids = ids[:args.limit]
    print('%s: scoring %s (%s) on %s %s, %d images'
          % (model, weights, source, entry['dataset'], split, len(ids)), file=sys.stderr, flush=True)
    spec = models.get(model)
    runs = engine_runs(spec.evaluation, args.multi_scale)
    if spec.evaluation.windows == 'sliding':
        entry.update(evaluate_protocol(model_dir, weights, split, ids, spec, runs,
                                       not args.quiet, args.data_root, args))
    else:  # the val net's single scale, then the engine's runs (--multi-scale), if any
        entry.update(evaluate_model(model_dir, weights, split, ids, entry['dataset'],
                                    not args.quiet, args.data_root, args, spec.finish))
        if runs:
            entry['tasks'].update(evaluate_protocol(model_dir, weights, split, ids, spec, runs,
                                                    not args.quiet, args.data_root, args)['tasks'])
    entry.update(status='evaluated', date=datetime.datetime.now().isoformat(timespec='seconds'))
    return True


def select_models(names):
    """The model ids to evaluate: every built-in one by default, else `names` (ids, or a
    folder of a model registered by its model.json, e.g. one made by `net.py new`)."""
    if not names:
        return list(models.BUILTIN)
    selected, unknown = [], []
    for name in names:
        try:
            selected.append(models.get(name).name)
        except InputError:
            unknown.append(name)
    if unknown:
        raise InputError('unknown model(s) %s (models: %s; or a folder holding %s)'
                         % (', '.join(unknown), ', '.join(all_models()), models.SPEC_FILE))
    return selected


def main(argv=None):
    parser = argparse.ArgumentParser(
        parents=[cli.data_root_flag(), cli.limit_flag(), cli.gpu_flag(), cli.ray_flags()],
        description=__doc__.split('\n\n')[0],
        epilog=__doc__[__doc__.index('\n\n') + 2:], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--models', nargs='+', metavar='MODEL',
                        help='models to evaluate (default: all): %s' % ', '.join(all_models()))
    parser.add_argument('--model-root', default=REPO,
                        help='folder holding the model directories (default: the repository)')
    parser.add_argument('--weights', nargs='+', metavar='MODEL=FILE', default=[],
                        help='score FILE for MODEL instead of its released weights')
    parser.add_argument('--snapshots', action='store_true',
                        help='prefer the latest training snapshot (MODEL/snapshot) to the '
                             'released weights')
    parser.add_argument('--out', default=os.path.join(REPO, 'results'),
                        help='folder for results.json and results.md (default: <repo>/results)')
    parser.add_argument('--merge', action='store_true',
                        help='keep the models evaluated by an earlier run in OUT/results.json '
                             'that this run does not evaluate')
    parser.add_argument('--readme', nargs='?', const=os.path.join(REPO, 'README.md'),
                        metavar='FILE', help='replace the results block of README.md (or FILE)')
    parser.add_argument('--quiet', action='store_true', help='no progress line')
    parser.add_argument('--multi-scale', action='store_true',
                        help="also score the multi-scale protocol of models whose "
                             "evaluation has one (PSPNet's release; DeepLabv3's scales, and "
                             "+ flip)")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)

    selected = select_models(args.models)
    known = all_models()
    overrides = parse_weights(args.weights, known)
    cli.check_limit(args.limit)
    cli.use_data_root(args.data_root)
    model_root = os.path.abspath(args.model_root)
    if not os.path.isdir(model_root):
        raise InputError('--model-root %s: no such directory' % args.model_root)
    out = os.path.abspath(args.out)
    check_outputs(out, args.readme, overrides,  # before anything is scored
                  [os.path.join(model_folder(m, model_root), 'val.prototxt') for m in selected])
    previous = _load_previous(out) if args.merge else {}
    mode = guard.set_mode(args.gpu)

    record = dict(command='python reproduce.py' + ''.join(' ' + shlex.quote(a) for a in argv),
                  date=datetime.datetime.now().isoformat(timespec='seconds'),
                  device=_device_text(mode), data_root=layers.data_root(args.data_root),
                  model_root=model_root, limit=args.limit, models={}, rows=[])
    entries = record['models']
    failed = 0

    def save():
        """Write OUT/results.{json,md} (with --merge, the earlier run's other models
        too); returns the record written, as JSON types (NaN -> None)."""
        merged = dict(entries)
        for m, e in previous.items():
            if e.get('status') == 'evaluated' and merged.get(m, {}).get('status') != 'evaluated':
                merged[m] = dict(e, earlier_run=True)
        ordered = {m: merged[m] for m in known + sorted(merged) if m in merged}
        written = metrics.jsonable(dict(record, models=ordered,
                                      rows=comparison_rows(ordered, selected)))
        write_results(out, written)
        return written

    for model in selected:
        entry = dict(status='missing', reasons=[], **scored_split(model))
        entries[model] = entry
        try:
            if score_model(model, model_folder(model, model_root), model_root, entry,
                           overrides.get(model), args):
                save()  # after every model, so an interrupted run keeps what it measured
        except (InputError, OSError) as e:  # a broken model directory, dataset or weights file
            entry.update(status='failed', reasons=[dict(what='evaluation', message=str(e))])
            print('%s: evaluation failed: %s' % (model, e), file=sys.stderr, flush=True)
            failed += 1
    written = save()
    print(summary_markdown(written), end='')
    print('wrote %s and %s' % (os.path.join(out, 'results.json'), os.path.join(out, 'results.md')))
    if args.readme:
        print('updated %s' % update_readme(os.path.abspath(args.readme), written, out))
    return 1 if failed else 0


if __name__ == '__main__':
    cli.run_cli(main)
