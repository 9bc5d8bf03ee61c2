"""The registry: every dataset and model of the project, each fact written once. No Caffe.

A `DatasetSpec` says what a dataset is (classes, means, input tops, splits and their
sizes, its data layers and their default parameters); a `ModelSpec` says what a model is
(folder, dataset, trunk, head, builder, how it starts, solver, schedule, what is scored,
released weights, the paper rows it reproduces); a `ClassifierSpec` is one of the
ImageNet nets the FCNs start from (VGG16, CaffeNet). net.py builds every prototxt from
these; docs/models.md is generated from them (`python net.py --docs`).

    import models
    models.get('voc-fcn8s')                   # ModelSpec (or ClassifierSpec for 'vgg16')
    models.get('nyud-fcn/fcn32s-color-hha')   # the same model by its folder
    models.get('path/to/my-model')            # a user's folder holding model.json
    models.dataset('siftflow')                # DatasetSpec
    models.names()                            # every model id, in table order
    models.register(spec)                     # a user's own model (ModelSpec)
    models.load('path/to/my-model')           # read its model.json, register it

Unknown names raise common.InputError listing the known ones.

Folders: the models are to move to the layout of the design card (issue 13): the VOC
models at the top (`voc-fcn8s/`), the other families in one folder each with the head
and modality as subfolder (`nyud-fcn/fcn32s-color-hha/`, `siftflow-fcn/fcn16s/`,
`pascalcontext-fcn/fcn8s/`). `ModelSpec.folder` is that new place; the model id stays
the release's folder name (`nyud-fcn32s-color-hha`), which is also where the files sit
until the move (`model_dir`). Sources: CVPR 2015 / PAMI 2016 and the reference release;
docs/ says which fact comes from where.
"""
import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Optional, Tuple

from common import REPO, InputError

HEADS = ('32s', '16s', '8s', 'pyramid')  # the FCNs' skips; PSPNet's pyramid pooling head
INITS = ('copy', 'transplant', 'bgrd', 'release')
SPEC_FILE = 'model.json'  # a user's model folder describes its model in this file
SEED = 1337               # the data layers' random seed, as in the release
VOID = 255                # the ignore label of the losses and the metrics

# Until the model folders move to the card's layout (phase 2 of issue 13), the built-in
# FCNs' files sit in the release's flat folders, named by the model id; the families in
# FOLDED were born in the card's layout (pspnet/<model>/).
FLAT_LAYOUT = True
FOLDED = ('pspnet',)


# ---------------------------------------------------------------------------
# Datasets

@dataclass(frozen=True)
class Labels:
    """One label top of a dataset and the classes of the score blob trained on it.
    excluded: classes absent from the dataset's scored split, left out of the class
    averages there (SIFT Flow's cow, desert, moon; CVPR 2015 section 5, Table 5).
    void: the label value ignored by the loss and the metrics (None: every pixel counts)."""
    top: str
    classes: Tuple[str, ...]
    excluded: Tuple[str, ...] = ()
    void: Optional[int] = VOID


@dataclass(frozen=True)
class Input:
    """One image top a dataset's layer can produce: `kind` (color, depth, hha),
    `channels`, the mean subtracted (per channel, in `order`), the channel order."""
    kind: str
    channels: int
    mean: Tuple[float, ...]
    order: str


@dataclass(frozen=True)
class Split:
    """An image list of a dataset: its name, how many images it must hold, the layers.py
    class that reads it and that layer's directory parameters (relative to the data root)."""
    name: str
    size: int
    layer: str
    dirs: Tuple[Tuple[str, str], ...]
    made_by: str = ''  # the script that derives the list, when the dataset ships none


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset: what its data layers produce and where its files come from.

    labels: the label tops, first the main one (its classes are the model's `classes`).
    inputs: the image tops the layer can give (NYUD: color, depth, hha).
    splits: every list the models use; train_split is trained on, score_split scored.
    mean_param: whether the generated nets write the mean into the layer's param_str
      (the VOC and PASCAL-Context nets of the release do; for NYUD and SIFT Flow the
      layer applies the means above itself).
    readmes: data/<dataset>/README.md files saying how to obtain it."""
    name: str
    title: str
    labels: Tuple[Labels, ...]
    inputs: Tuple[Input, ...]
    splits: Tuple[Split, ...]
    train_split: str
    score_split: str
    readmes: Tuple[str, ...]
    mean_param: bool = False
    paper: str = ''  # where the papers describe it

    @property
    def classes(self):
        return self.labels[0].classes

    @property
    def mean(self):
        """The color input's mean (B, G, R)."""
        return self.input('color').mean

    def input(self, kind):
        for i in self.inputs:
            if i.kind == kind:
                return i
        raise InputError('dataset %s has no %s input (it has %s)'
                         % (self.name, kind, ', '.join(i.kind for i in self.inputs)))

    def split(self, name):
        for s in self.splits:
            if s.name == name:
                return s
        raise InputError('dataset %s has no split %r (known: %s)'
                         % (self.name, name, ', '.join(s.name for s in self.splits)))

    def label(self, top):
        for lab in self.labels:
            if lab.top == top:
                return lab
        raise InputError('dataset %s has no label top %r' % (self.name, top))

    def layer_params(self, split):
        """(layers.py class, param_str dict) of the default data layer reading `split`;
        directories relative to the data root."""
        s = self.split(split)
        params = dict(s.dirs, split=s.name, seed=SEED)
        if self.mean_param:
            params['mean'] = list(self.mean)
        return s.layer, params


VOC_CLASSES = (
    'background', 'aeroplane', 'bicycle', 'bird', 'boat', 'bottle', 'bus', 'car', 'cat',
    'chair', 'cow', 'diningtable', 'dog', 'horse', 'motorbike', 'person', 'pottedplant',
    'sheep', 'sofa', 'train', 'tvmonitor')

# PSPNet's datasets (Zhao et al., CVPR 2017, section 4; its release's preprocessing):
# the release subtracts the RGB mean (123.68, 116.779, 103.939), feeding BGR; written
# (B, G, R) like every mean here, since the layers subtract after the switch to BGR.
PSP_MEAN = (103.939, 116.779, 123.68)

# ADE20K's 150 SceneParsing classes, in the order of the benchmark's objectInfo150 list
# (label value k + 1 in the annotation PNGs is class k here); the first name of each
# entry's synonyms.
ADE20K_CLASSES = (
    'wall', 'building', 'sky', 'floor', 'tree', 'ceiling', 'road', 'bed', 'windowpane',
    'grass', 'cabinet', 'sidewalk', 'person', 'earth', 'door', 'table', 'mountain', 'plant',
    'curtain', 'chair', 'car', 'water', 'painting', 'sofa', 'shelf', 'house', 'sea',
    'mirror', 'rug', 'field', 'armchair', 'seat', 'fence', 'desk', 'rock', 'wardrobe',
    'lamp', 'bathtub', 'railing', 'cushion', 'base', 'box', 'column', 'signboard',
    'chest of drawers', 'counter', 'sand', 'sink', 'skyscraper', 'fireplace',
    'refrigerator', 'grandstand', 'path', 'stairs', 'runway', 'case', 'pool table',
    'pillow', 'screen door', 'stairway', 'river', 'bridge', 'bookcase', 'blind',
    'coffee table', 'toilet', 'flower', 'book', 'hill', 'bench', 'countertop', 'stove',
    'palm', 'kitchen island', 'computer', 'swivel chair', 'boat', 'bar', 'arcade machine',
    'hovel', 'bus', 'towel', 'light', 'truck', 'tower', 'chandelier', 'awning',
    'streetlight', 'booth', 'television receiver', 'airplane', 'dirt track', 'apparel',
    'pole', 'land', 'bannister', 'escalator', 'ottoman', 'bottle', 'buffet', 'poster',
    'stage', 'van', 'ship', 'fountain', 'conveyer belt', 'canopy', 'washer', 'plaything',
    'swimming pool', 'stool', 'barrel', 'basket', 'waterfall', 'tent', 'bag', 'minibike',
    'cradle', 'oven', 'ball', 'food', 'step', 'tank', 'trade name', 'microwave', 'pot',
    'animal', 'bicycle', 'lake', 'dishwasher', 'screen', 'blanket', 'sculpture', 'hood',
    'sconce', 'vase', 'traffic light', 'tray', 'ashcan', 'fan', 'pier', 'crt screen',
    'plate', 'monitor', 'bulletin board', 'shower', 'radiator', 'glass', 'clock', 'flag')

# Cityscapes' 19 evaluated classes, by trainId (0..18); layers.py's label table maps the
# labelIds of the annotation PNGs onto them (tests/test_models.py holds the two equal).
CITYSCAPES_CLASSES = (
    'road', 'sidewalk', 'building', 'wall', 'fence', 'pole', 'traffic light', 'traffic sign',
    'vegetation', 'terrain', 'sky', 'person', 'rider', 'car', 'truck', 'bus', 'train',
    'motorcycle', 'bicycle')

DATASETS = {d.name: d for d in (
    DatasetSpec(
        'voc', 'PASCAL VOC 2011 segmentation (trained on SBD)',
        labels=(Labels('label', VOC_CLASSES),),
        inputs=(Input('color', 3, (104.00699, 116.66877, 122.67892), 'BGR'),),
        splits=(Split('train', 8498, 'SBDDSegDataLayer', (('sbdd_dir', 'sbdd/dataset'),)),
                Split('seg11valid', 736, 'VOCSegDataLayer', (('voc_dir', 'pascal/VOC2011'),),
                      made_by='data/pascal/seg11valid.py')),
        train_split='train', score_split='seg11valid', mean_param=True,
        readmes=('data/pascal/README.md', 'data/sbdd/README.md'),
        paper='CVPR 2015 section 4 and 5, PAMI 2016 section 5'),
    DatasetSpec(
        'nyud', 'NYUDv2, 40 classes (Gupta et al.)',
        labels=(Labels('label', (
            'wall', 'floor', 'cabinet', 'bed', 'chair', 'sofa', 'table', 'door', 'window',
            'bookshelf', 'picture', 'counter', 'blinds', 'desk', 'shelves', 'curtain',
            'dresser', 'pillow', 'mirror', 'floor-mat', 'clothes', 'ceiling', 'books',
            'refrigerator', 'television', 'paper', 'towel', 'shower-curtain', 'box',
            'whiteboard', 'person', 'night-stand', 'toilet', 'sink', 'lamp', 'bathtub',
            'bag', 'otherstructure', 'otherfurniture', 'otherprop')),),
        inputs=(Input('color', 3, (116.190, 97.203, 92.318), 'BGR'),
                Input('depth', 1, (7.844,), 'log of the depth PNG value (mm)'),
                Input('hha', 3, (132.431, 94.076, 118.477), 'HHA as stored (not flipped)')),
        splits=(Split('trainval', 795, 'NYUDSegDataLayer', (('nyud_dir', 'nyud'),),
                      made_by='data/nyud/splits.py'),
                Split('test', 654, 'NYUDSegDataLayer', (('nyud_dir', 'nyud'),),
                      made_by='data/nyud/splits.py')),
        train_split='trainval', score_split='test', readmes=('data/nyud/README.md',),
        paper='CVPR 2015 section 5 (NYUDv2), Table 4'),
    DatasetSpec(
        'siftflow', 'SIFT Flow, semantic (33) and geometric (3) labels',
        labels=(Labels('sem', (
            'awning', 'balcony', 'bird', 'boat', 'bridge', 'building', 'bus', 'car', 'cow',
            'crosswalk', 'desert', 'door', 'fence', 'field', 'grass', 'moon', 'mountain',
            'person', 'plant', 'pole', 'river', 'road', 'rock', 'sand', 'sea', 'sidewalk',
            'sign', 'sky', 'staircase', 'streetlight', 'sun', 'tree', 'window'),
            excluded=('cow', 'desert', 'moon')),
            Labels('geo', ('sky', 'horizontal', 'vertical'))),
        inputs=(Input('color', 3, (114.578, 115.294, 108.353), 'BGR'),),
        splits=(Split('trainval', 2486, 'SIFTFlowSegDataLayer', (('siftflow_dir', 'sift-flow'),),
                      made_by='data/sift-flow/splits.py'),
                Split('test', 200, 'SIFTFlowSegDataLayer', (('siftflow_dir', 'sift-flow'),),
                      made_by='data/sift-flow/splits.py')),
        train_split='trainval', score_split='test', readmes=('data/sift-flow/README.md',),
        paper='CVPR 2015 section 5 (SIFT Flow), Table 5'),
    DatasetSpec(
        'pascalcontext', 'PASCAL-Context, 59 classes plus background',
        labels=(Labels('label', VOC_CLASSES + (
            'bag', 'bed', 'bench', 'book', 'building', 'cabinet', 'ceiling', 'clothes',
            'computer', 'cup', 'door', 'fence', 'floor', 'flower', 'food', 'grass', 'ground',
            'keyboard', 'light', 'mountain', 'mouse', 'curtain', 'platform', 'sign', 'plate',
            'road', 'rock', 'shelves', 'sidewalk', 'sky', 'snow', 'bedcloth', 'track',
            'tree', 'truck', 'wall', 'water', 'window', 'wood'), void=None),),
        inputs=(Input('color', 3, (104.007, 116.669, 122.679), 'BGR'),),
        splits=tuple(Split(name, size, 'PASCALContextSegDataLayer',
                           (('voc_dir', 'pascal/VOC2010'), ('context_dir', 'pascal-context')))
                     for name, size in (('train', 4998), ('val', 5105))),
        train_split='train', score_split='val', mean_param=True,
        readmes=('data/pascal/README.md', 'data/pascal-context/README.md'),
        paper='PAMI 2016 section 5 (PASCAL-Context)'),
    DatasetSpec(
        'ade20k', 'ADE20K SceneParsing (ADEChallengeData2016), 150 classes',
        labels=(Labels('label', ADE20K_CLASSES),),
        inputs=(Input('color', 3, PSP_MEAN, 'BGR'),),
        splits=tuple(Split(name, size, 'ADE20KSegDataLayer',
                           (('ade20k_dir', 'ade20k/ADEChallengeData2016'),),
                           made_by='data/ade20k/splits.py')
                     for name, size in (('training', 20210), ('validation', 2000))),
        train_split='training', score_split='validation', readmes=('data/ade20k/README.md',),
        paper='PSPNet (CVPR 2017) section 4 (ADE20K), Table 3'),
    DatasetSpec(
        'cityscapes', 'Cityscapes, fine annotations, 19 classes',
        labels=(Labels('label', CITYSCAPES_CLASSES),),
        inputs=(Input('color', 3, PSP_MEAN, 'BGR'),),
        splits=tuple(Split(name, size, 'CityscapesSegDataLayer', (('cityscapes_dir', 'cityscapes'),),
                           made_by='data/cityscapes/splits.py')
                     for name, size in (('train', 2975), ('val', 500), ('test', 1525))),
        train_split='train', score_split='val', readmes=('data/cityscapes/README.md',),
        paper='PSPNet (CVPR 2017) section 4 (Cityscapes)'),
    DatasetSpec(
        'voc2012', 'PASCAL VOC 2012 segmentation (PSPNet)',
        labels=(Labels('label', VOC_CLASSES),),
        inputs=(Input('color', 3, PSP_MEAN, 'BGR'),),
        splits=tuple(Split(name, size, 'VOC2012PSPSegDataLayer', (('voc_dir', 'pascal/VOC2012'),))
                     for name, size in (('train', 1464), ('val', 1449))),
        train_split='train', score_split='val', readmes=('data/pascal/README.md',),
        paper='PSPNet (CVPR 2017) section 4 (PASCAL VOC 2012)'),
)}


BUILTIN_DATASETS = tuple(DATASETS)  # the project's own; a user's are registered at run time


def dataset(name):
    """The DatasetSpec called `name`; InputError listing the known ones."""
    if name not in DATASETS:
        raise InputError('unknown dataset %r (known: %s)' % (name, ', '.join(DATASETS)))
    return DATASETS[name]


def register_dataset(spec):
    """Add a user's DatasetSpec (same name twice: only the identical spec)."""
    if not isinstance(spec, DatasetSpec):
        raise InputError('register_dataset takes a DatasetSpec, got %r' % (spec,))
    if DATASETS.get(spec.name, spec) != spec:
        raise InputError('dataset %r is already registered with other facts' % spec.name)
    DATASETS[spec.name] = spec
    return spec


# ---------------------------------------------------------------------------
# Models

@dataclass(frozen=True)
class Weights:
    """Released weights: the URL, saved in the model's folder as `file_name` (default the
    URL's basename); the size in bytes and checksums where published (None: not known),
    each with where it was published (`sources`: (key, source) pairs, written as the
    comment above the value in the generated caffemodel-url record); `downloader`: None
    (plain HTTP) or 'gdown' (Google Drive's confirmation page); `note`: comment lines."""
    url: str
    size: Optional[int] = None
    sha256: Optional[str] = None
    sha1: Optional[str] = None
    md5: Optional[str] = None
    file_name: Optional[str] = None
    downloader: Optional[str] = None
    sources: Tuple[Tuple[str, str], ...] = ()
    note: Tuple[str, ...] = ()

    @property
    def file(self):
        return self.file_name or self.url.rstrip('/').rsplit('/', 1)[-1]

    @property
    def stem(self):
        """The file name without .caffemodel (PSPNet: the release's net name)."""
        return self.file[:-len('.caffemodel')] if self.file.endswith('.caffemodel') else self.file


@dataclass(frozen=True)
class Parent:
    """Weights a model starts from, copied by layer name: `source` is a classifier
    ('vgg16', 'caffenet': its fc6/fc7 cast to convolutions) or a model id (its trained
    weights); `suffix` is appended to the source's layer names (NYUD late fusion towers)."""
    source: str
    suffix: str = ''


@dataclass(frozen=True)
class Solver:
    """solver.prototxt settings (lr_policy fixed; test_iter is the scored split's size).
    max_iter is the release's value: the solving loop never reads it (Caffe's
    Solver::Step(n) runs n iterations whatever max_iter says; only `caffe train`, i.e.
    Solver::Solve, stops at it); the training length is the model's Schedule.
    snapshot None: no periodic snapshots (Caffe's default 0).
    lr_policy 'fixed' (the FCNs) or 'poly' (PSPNet: base_lr (1 - iter / max_iter)^power)."""
    base_lr: float
    momentum: float = 0.99
    iter_size: int = 1
    max_iter: int = 100000
    snapshot: Optional[int] = None
    weight_decay: float = 0.0005
    lr_policy: str = 'fixed'
    power: Optional[float] = None


@dataclass(frozen=True)
class Schedule:
    """Training length: `rounds` x `iters` iterations, the scored split scored after each round."""
    rounds: int
    iters: int

    @property
    def total(self):
        return self.rounds * self.iters


@dataclass(frozen=True)
class Output:
    """A scored output: score blob vs the dataset's label top of that name."""
    score: str = 'score'
    label: str = 'label'


@dataclass(frozen=True)
class PaperRow:
    """One row of a paper table or of the release's notes, in %. model: the model id it
    is compared with (None: no model here reproduces it); task: the score blob; local:
    False where only the PASCAL evaluation server scores the data; ms: the paper's time
    per image."""
    source: str
    name: str
    model: Optional[str]
    data: str
    overall_acc: Optional[float] = None
    mean_acc: Optional[float] = None
    mean_iu: Optional[float] = None
    fwavacc: Optional[float] = None
    task: str = 'score'
    local: bool = True
    ms: Optional[int] = None
    note: str = ''

    def to_dict(self):
        """The row as reproduce.py's PAPER entries are written (source, name, model, task,
        data, local, paper={metric: value}, ms, note)."""
        return dict(source=self.source, name=self.name, model=self.model, task=self.task,
                    data=self.data, local=self.local,
                    paper=dict(overall_acc=self.overall_acc, mean_acc=self.mean_acc,
                               mean_iu=self.mean_iu, fwavacc=self.fwavacc),
                    ms=self.ms, note=self.note)


@dataclass(frozen=True)
class ModelSpec:
    """A trainable model: an FCN, or one of PSPNet's released nets.

    name: the model id, the release's folder name (voc-fcn8s, nyud-fcn32s-color-hha).
    folder: its folder in the card's layout, relative to the repository (absolute for a
      user's model); see model_dir for where the files are now.
    family: the family folder (voc-fcn, nyud-fcn, siftflow-fcn, pascalcontext-fcn).
    dataset: a DatasetSpec name.  trunk: a ClassifierSpec name.  head: 32s, 16s or 8s.
    builder, builder_args: the net.py function that builds its nets, and its arguments
      besides split / widths / data_layer / data_params (pairs, as a tuple).
    inputs: the dataset inputs it reads, in order (color; hha; color + depth; color + hha).
    init: how it starts: 'copy' (each parent's weights by name), 'transplant' (each
      parent into the layers carrying its suffix), 'bgrd' (the cast VGG16 by name, then
      conv1_1_bgrd made from conv1_1: NYUD early fusion), 'release' (its own released
      weights, converted by surgery.py pspnet-convert: PSPNet fine-tunes from them).
    parents: the weights it starts from (Parent), in order.
    solver, schedule: solver.prototxt settings; the training length (the one source).
    outputs: what is scored each round (SIFT Flow: both heads).
    weights: the released weights (None: never released).
    title: one line for tables; note: what is beyond the release, if anything."""
    name: str
    folder: str
    family: str
    dataset: str
    trunk: str
    head: str
    builder: str
    builder_args: Tuple[Tuple[str, object], ...]
    init: str
    parents: Tuple[Parent, ...]
    solver: Solver
    schedule: Schedule
    title: str
    inputs: Tuple[str, ...] = ('color',)
    outputs: Tuple[Output, ...] = (Output(),)
    weights: Optional[Weights] = None
    note: str = ''
    kind: str = field(default='fcn', init=False)

    def __post_init__(self):
        if self.head not in HEADS:
            raise InputError('%s: head must be one of %s, got %r' % (self.name, ', '.join(HEADS), self.head))
        if self.init not in INITS:
            raise InputError('%s: init must be one of %s, got %r' % (self.name, ', '.join(INITS), self.init))
        for what, n in (('rounds', self.schedule.rounds), ('iters', self.schedule.iters)):
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise InputError('%s: schedule %s must be a positive integer, got %r' % (self.name, what, n))
        if not self.parents and self.init not in ('copy', 'release'):
            raise InputError('%s: init %r needs parents' % (self.name, self.init))

    @property
    def data(self):
        return dataset(self.dataset)

    @property
    def classes(self):
        """Number of outputs of the first scored blob (SIFT Flow: the semantic head's)."""
        return len(self.data.label(self.outputs[0].label).classes)

    @property
    def paper(self):
        """The PaperRows this model reproduces."""
        return tuple(r for r in PAPER if r.model == self.name)

    def build_kwargs(self):
        return dict(self.builder_args)

    def parent_text(self):
        """The parents in words, e.g. 'VGG16 cast to conv' or 'trained voc-fcn16s'."""
        words = []
        for p in self.parents:
            what = ('%s cast to conv' % CLASSIFIERS[p.source].title if p.source in CLASSIFIERS
                    else 'trained %s' % p.source)
            words.append(what + (' (suffix %s)' % p.suffix if p.suffix else ''))
        if self.init == 'release':
            words.append('its converted release weights')
        text = ' + '.join(words) or 'zero weights'
        return text + ('; conv1_1_bgrd from conv1_1' if self.init == 'bgrd' else '')


@dataclass(frozen=True)
class ClassifierSpec:
    """An ImageNet classifier whose weights the FCNs start from, cast to convolutions.

    deploy: its deploy prototxt (written by net.py), relative to the repository.
    builder: the net.py function that builds it.  size: its input side (pixels).
    cast: the file `surgery.py cast` writes (fc6/fc7 as convolutions), beside the weights.
    trunk_model: the FCN whose deploy net gives the fully convolutional trunk.
    source: where the weights are published."""
    name: str
    title: str
    deploy: str
    builder: str
    size: int
    weights: Weights
    cast: str
    trunk_model: str
    source: str
    folder: str = 'ilsvrc-nets'
    kind: str = field(default='classifier', init=False)


CLASSIFIERS = {c.name: c for c in (
    ClassifierSpec(
        'vgg16', 'VGG16', 'ilsvrc-nets/vgg16-deploy.prototxt', 'vgg16_classifier', 224,
        Weights('http://www.robots.ox.ac.uk/~vgg/software/very_deep/caffe/VGG_ILSVRC_16_layers.caffemodel'),
        'vgg16-fcn.caffemodel', 'voc-fcn32s',
        'Caffe Model Zoo "VGG_ILSVRC_16_layers" (K. Simonyan, A. Zisserman; gist '
        'ksimonyan/211839e770f7b538e2d8), 528 MB, layers conv1_1 ... fc8'),
    ClassifierSpec(
        'caffenet', 'CaffeNet', 'ilsvrc-nets/caffenet-deploy.prototxt', 'caffenet_classifier', 227,
        Weights('http://dl.caffe.berkeleyvision.org/bvlc_reference_caffenet.caffemodel',
                sha1='4c8d77deb20ea792f84eb5e6d0a11ca0a8660a46'),
        'caffenet-fcn.caffemodel', 'voc-fcn-alexnet',
        'BVLC Model Zoo models/bvlc_reference_caffenet (233 MB)'),
)}

RELEASE = 'http://dl.caffe.berkeleyvision.org/'
VGG = (Parent('vgg16'),)


def _fcn(name, folder, dataset, head, builder, args, parents, solver, schedule, title,
         init='copy', trunk='vgg16', release=None, **kwargs):
    weights = Weights(RELEASE + release + '.caffemodel') if release else None
    return ModelSpec(name=name, folder=folder, family=dataset + '-fcn', dataset=dataset, trunk=trunk,
                     head=head, builder=builder, builder_args=tuple(args), init=init,
                     parents=tuple(parents), solver=solver, schedule=schedule, title=title,
                     weights=weights, **kwargs)


def _builtin():
    voc, fifty = Schedule(25, 4000), Schedule(50, 2000)
    specs = [
        _fcn('voc-fcn32s', 'voc-fcn32s', 'voc', '32s', 'voc_fcn', [('head', '32s')], VGG,
             Solver(1e-10, snapshot=4000), voc, 'FCN-32s', release='fcn32s-heavy-pascal'),
        _fcn('voc-fcn16s', 'voc-fcn16s', 'voc', '16s', 'voc_fcn', [('head', '16s')],
             [Parent('voc-fcn32s')], Solver(1e-12, snapshot=4000), voc, 'FCN-16s',
             release='fcn16s-heavy-pascal'),
        _fcn('voc-fcn8s', 'voc-fcn8s', 'voc', '8s', 'voc_fcn', [('head', '8s')],
             [Parent('voc-fcn16s')], Solver(1e-14, snapshot=4000), voc, 'FCN-8s',
             release='fcn8s-heavy-pascal'),
        _fcn('voc-fcn8s-atonce', 'voc-fcn8s-atonce', 'voc', '8s', 'voc_fcn',
             [('head', '8s'), ('at_once', True)], VGG,
             Solver(1e-10, max_iter=300000, snapshot=4000), Schedule(75, 4000),
             'FCN-8s, all at once', release='fcn8s-atonce-pascal'),
        _fcn('voc-fcn-alexnet', 'voc-fcn-alexnet', 'voc', '32s', 'voc_fcn_alexnet', [],
             [Parent('caffenet')],
             Solver(1e-4, momentum=0.9, iter_size=20, snapshot=4000), voc, 'FCN-AlexNet',
             trunk='caffenet', release='fcn-alexnet-pascal'),
    ]
    for modality, inputs, init, parents, lr, title in (
            ('color', ('color',), 'copy', VGG, 1e-10, 'FCN-32s RGB'),
            ('hha', ('hha',), 'copy', VGG, 1e-10, 'FCN-32s HHA'),
            ('color-d', ('color', 'depth'), 'bgrd', VGG, 1e-10, 'FCN-32s RGB-D, early fusion'),
            ('color-hha', ('color', 'hha'), 'transplant',
             [Parent('nyud-fcn32s-color', 'color'), Parent('nyud-fcn32s-hha', 'hha')], 1e-12,
             'FCN-32s RGB-HHA, late fusion')):
        specs.append(_fcn(
            'nyud-fcn32s-' + modality, 'nyud-fcn/fcn32s-' + modality, 'nyud', '32s', 'nyud_fcn',
            [('modality', modality)], parents, Solver(lr, max_iter=300000, snapshot=2000),
            fifty, title, init=init, inputs=inputs, release='nyud-fcn32s-%s-heavy' % modality))
    specs.append(_fcn(
        'nyud-fcn16s-color-hha', 'nyud-fcn/fcn16s-color-hha', 'nyud', '16s', 'nyud_fcn',
        [('modality', 'color-hha'), ('head', '16s')], [Parent('nyud-fcn32s-color-hha')],
        Solver(1e-12, max_iter=300000, snapshot=2000), fifty, 'FCN-16s RGB-HHA',
        inputs=('color', 'hha'),
        note='beyond the release: CVPR 2015 Table 4 reports it, the release never shipped it'))
    # SIFT Flow: no periodic snapshots (the release's solvers have none).
    for head, lr, parents in (('32s', 1e-10, VGG), ('16s', 1e-12, [Parent('siftflow-fcn32s')]),
                              ('8s', 1e-12, [Parent('siftflow-fcn16s')])):
        specs.append(_fcn(
            'siftflow-fcn' + head, 'siftflow-fcn/fcn' + head, 'siftflow', head, 'siftflow_fcn',
            [('head', head)], parents, Solver(lr, max_iter=300000), fifty,
            'FCN-%s, semantic + geometric' % head,
            outputs=(Output('score_sem', 'sem'), Output('score_geo', 'geo')),
            release='siftflow-fcn%s-heavy' % head))
    # PASCAL-Context: 50 x 8000 = 400,000 iterations, as the release's solve.py loop runs
    # (its solver.prototxt's max_iter 300000 only bounds `caffe train`); see Solver.
    for head, lr, parents in (('32s', 1e-10, VGG),
                              ('16s', 1e-12, [Parent('pascalcontext-fcn32s')]),
                              ('8s', 1e-14, [Parent('pascalcontext-fcn16s')])):
        specs.append(_fcn(
            'pascalcontext-fcn' + head, 'pascalcontext-fcn/fcn' + head, 'pascalcontext', head,
            'pascalcontext_fcn', [('head', head)], parents,
            Solver(lr, max_iter=300000, snapshot=4000), Schedule(50, 8000),
            'FCN-%s, 59 classes + background' % head,
            release='pascalcontext-fcn%s-heavy' % head))
    specs += _pspnets()
    return {s.name: s for s in specs}


# PSPNet (Zhao et al., CVPR 2017): the three nets its authors released, with the layer
# names of the release (net.pspnet). Training (section 4.1): poly lr (power 0.9), base
# 0.01, momentum 0.9, weight decay 1e-4, batch 16 = iter_size 16 of the data layers' one
# image; max_iter per dataset (150k ADE20K, 30k VOC 2012, 90k Cityscapes). The schedule
# scores the val split every PSP_ROUND iterations (this project's choice: the paper gives
# only the total), so the poly rate reaches 0 at the end of the last round.
PSP_ROUND = 5000
# The release's caffemodels, on Google Drive as its README links them: (file name, drive
# id, approximate size in MB, UNCONFIRMED: no size or checksum was published).
GDRIVE = 'https://drive.google.com/uc?id='


def _psp_weights(file_name, drive_id, mb, model):
    return Weights(GDRIVE + drive_id, file_name=file_name, downloader='gdown', note=(
        'PSPNet release (Zhao et al., CVPR 2017): %s on Google Drive, as the' % file_name,
        "release's README links it. Size UNCONFIRMED (about %d MB); no checksum was published." % mb,
        "In the PSPNet fork's layout: python surgery.py pspnet-convert --model %s" % model))


def _pspnets():
    solver = dict(momentum=0.9, weight_decay=1e-4, iter_size=16, lr_policy='poly', power=0.9)
    specs = []
    for name, depth, stride_on, crop, data, max_iter, release, drive, mb, title in (
            ('pspnet50-ade20k', 50, '1x1_reduce', 473, 'ade20k', 150000, 'pspnet50_ADE20K',
             '0BzaU285cX7TCN1R3QnUwQ0hoMTA', 200, 'PSPNet50, ADE20K'),
            ('pspnet101-voc2012', 101, '3x3', 473, 'voc2012', 30000, 'pspnet101_VOC2012',
             '0BzaU285cX7TCNVhETE5vVUdMYk0', 270, 'PSPNet101, VOC 2012'),
            ('pspnet101-cityscapes', 101, '3x3', 713, 'cityscapes', 90000,
             'pspnet101_cityscapes', '0BzaU285cX7TCT1M3TmNfNjlUeEU', 270,
             'PSPNet101, Cityscapes')):
        specs.append(ModelSpec(
            name=name, folder='pspnet/' + name, family='pspnet', dataset=data,
            trunk='resnet%d' % depth, head='pyramid', builder='pspnet',
            builder_args=(('depth', depth), ('stride_on', stride_on),
                          ('num_classes', len(DATASETS[data].classes)), ('crop', crop),
                          ('dataset', data)),
            init='release', parents=(), solver=Solver(0.01, max_iter=max_iter, **solver),
            schedule=Schedule(max_iter // PSP_ROUND, PSP_ROUND), title=title,
            outputs=(Output('conv6_interp', 'label'),),
            weights=_psp_weights(release + '.caffemodel', drive, mb, name),
            note="the release's Caffe fork layout, converted by surgery.py pspnet-convert"))
    return specs


BUILTIN = _builtin()
MODELS = dict(BUILTIN)  # + the models registered at run time (register / load)


# ---------------------------------------------------------------------------
# The papers' numbers (%): CVPR 2015 Tables 2-5 and the release's notes (docs/results.md).

SEG11 = 'seg11valid'
TABLE2_DATA = 'seg11valid (VOC2011 val subset)'
TEST_SERVER = 'VOC test server only: not measurable locally'
K40 = TEST_SERVER + '; paper time on a Tesla K40c'
PSP_MS = 'multi-scale 0.5 .. 1.75 + flip: reproduce.py --multi-scale'

PAPER = (
    PaperRow('release', 'FCN-32s', 'voc-fcn32s', SEG11, mean_iu=63.6),
    PaperRow('release', 'FCN-16s', 'voc-fcn16s', SEG11, mean_iu=65.0),
    PaperRow('release', 'FCN-8s', 'voc-fcn8s', SEG11, mean_iu=65.5),
    PaperRow('release', 'FCN-8s at-once', 'voc-fcn8s-atonce', SEG11, mean_iu=65.4),
    PaperRow('release', 'FCN-AlexNet', 'voc-fcn-alexnet', SEG11, mean_iu=48.0),
    PaperRow('release', 'FCN-8s', 'voc-fcn8s', 'VOC2012 test', mean_iu=67.2, local=False,
             note=TEST_SERVER),
    PaperRow('CVPR Table 2', 'FCN-32s-fixed', None, TABLE2_DATA, 83.0, 59.7, 45.4, 72.0,
             note='only the last layer fine-tuned; never released, not reproduced'),
    PaperRow('CVPR Table 2', 'FCN-32s', 'voc-fcn32s', TABLE2_DATA, 89.1, 73.3, 59.4, 81.4),
    PaperRow('CVPR Table 2', 'FCN-16s', 'voc-fcn16s', TABLE2_DATA, 90.0, 75.7, 62.4, 83.0),
    PaperRow('CVPR Table 2', 'FCN-8s', 'voc-fcn8s', TABLE2_DATA, 90.3, 75.9, 62.7, 83.2),
    PaperRow('CVPR Table 3', 'FCN-8s', 'voc-fcn8s', 'VOC2011 test', mean_iu=62.7, local=False,
             ms=175, note=K40),
    PaperRow('CVPR Table 3', 'FCN-8s', 'voc-fcn8s', 'VOC2012 test', mean_iu=62.2, local=False,
             ms=175, note=K40),
    PaperRow('CVPR Table 4', 'FCN-32s RGB', 'nyud-fcn32s-color', 'NYUDv2 test', 60.0, 42.2, 29.2, 43.9),
    PaperRow('CVPR Table 4', 'FCN-32s RGBD', 'nyud-fcn32s-color-d', 'NYUDv2 test', 61.5, 42.4, 30.5, 45.5),
    PaperRow('CVPR Table 4', 'FCN-32s HHA', 'nyud-fcn32s-hha', 'NYUDv2 test', 57.1, 35.2, 24.2, 40.4),
    PaperRow('CVPR Table 4', 'FCN-32s RGB-HHA', 'nyud-fcn32s-color-hha', 'NYUDv2 test',
             64.3, 44.9, 32.8, 48.0),
    PaperRow('CVPR Table 4', 'FCN-16s RGB-HHA', 'nyud-fcn16s-color-hha', 'NYUDv2 test',
             65.4, 46.1, 34.0, 49.5, note='never released: train it to compare'),
    PaperRow('CVPR Table 5', 'FCN-16s semantic', 'siftflow-fcn16s', 'SIFT Flow test',
             85.2, 51.7, 39.5, 76.1, task='score_sem'),
    PaperRow('CVPR Table 5', 'FCN-16s geometric', 'siftflow-fcn16s', 'SIFT Flow test',
             overall_acc=94.3, task='score_geo'),
    # PSPNet's published numbers (CVPR 2017 and its release's notes). "single-scale":
    # scale 1 with the flipped windows added; "multi-scale": the six scales summed, flip too.
    PaperRow('PSPNet release', 'PSPNet50, single scale', 'pspnet50-ade20k', 'ADE20K val',
             overall_acc=80.04, mean_iu=41.68, task='single-scale'),
    PaperRow('PSPNet release', 'PSPNet50, multi-scale', 'pspnet50-ade20k', 'ADE20K val',
             overall_acc=80.76, mean_iu=42.78, task='multi-scale', note=PSP_MS),
    PaperRow('PSPNet release', 'PSPNet101, single scale', 'pspnet101-cityscapes',
             'Cityscapes val', overall_acc=96.38, mean_iu=79.70, task='single-scale'),
    PaperRow('PSPNet release', 'PSPNet101, multi-scale', 'pspnet101-cityscapes',
             'Cityscapes val', overall_acc=96.59, mean_iu=80.91, task='multi-scale', note=PSP_MS),
    PaperRow('PSPNet release', 'PSPNet101 (COCO pre-trained)', 'pspnet101-voc2012',
             'VOC2012 test', mean_iu=85.41, local=False, task='single-scale', note=TEST_SERVER),
    PaperRow('PSPNet Table 3', 'PSPNet101, single scale', None, 'ADE20K val', overall_acc=80.64,
             mean_iu=41.96, note='ResNet-101 ADE20K weights never released'),
    PaperRow('PSPNet Table 3', 'PSPNet101, multi-scale', None, 'ADE20K val', overall_acc=81.39,
             mean_iu=43.29, note='ResNet-101 ADE20K weights never released'),
)


# ---------------------------------------------------------------------------
# Lookup and registration

def names(family=None):
    """Every model id (built-in first, in table order, then the registered ones); with
    `family` ('pspnet', 'voc-fcn', ...) only that family's."""
    return [n for n, s in MODELS.items() if family is None or s.family == family]


def pspnet(model):
    """The ModelSpec of the PSPNet `model` (its id, or a path ending in it), else None."""
    spec = MODELS.get(os.path.basename(os.path.normpath(str(model))))
    return spec if spec is not None and spec.family == 'pspnet' else None


def _known():
    return ', '.join(names() + list(CLASSIFIERS))


def _folder_spec(path):
    """The spec of the model whose folder is `path` (a built-in folder, new or release
    name, or a folder holding model.json), or None."""
    full = os.path.abspath(os.path.join(REPO, path))
    for spec in MODELS.values():
        if full in (os.path.abspath(os.path.join(REPO, spec.folder)), model_dir(spec)):
            return spec
    if os.path.isfile(os.path.join(full, SPEC_FILE)):
        return load(full)
    return None


def get(name):
    """The ModelSpec or ClassifierSpec called `name`: a model id, a classifier name, a
    model's folder (relative to the repository or absolute), or a folder holding a
    model.json. InputError listing the known names otherwise."""
    name = str(name)
    if name in MODELS:
        return MODELS[name]
    if name in CLASSIFIERS:
        return CLASSIFIERS[name]
    spec = _folder_spec(name.rstrip('/') or name)
    if spec is None:
        raise InputError('unknown model %r (known: %s; or a folder holding %s)'
                         % (name, _known(), SPEC_FILE))
    return spec


def model_dir(spec):
    """Absolute path of the folder holding `spec`'s files (prototxts, solve.py, weights)."""
    spec = get(spec) if isinstance(spec, str) else spec
    if FLAT_LAYOUT and BUILTIN.get(spec.name) == spec and spec.family not in FOLDED:
        return os.path.join(REPO, spec.name)
    return os.path.abspath(os.path.join(REPO, spec.folder))


def register(spec):
    """Add a user's ModelSpec; a name already taken by a different spec is an InputError."""
    if not isinstance(spec, ModelSpec):
        raise InputError('register takes a ModelSpec, got %r' % (spec,))
    if spec.name in CLASSIFIERS or MODELS.get(spec.name, spec) != spec:
        raise InputError('model %r already exists (%s); pick another name'
                         % (spec.name, model_dir(MODELS.get(spec.name, spec))))
    dataset(spec.dataset)
    for p in spec.parents:
        if p.source not in MODELS and p.source not in CLASSIFIERS:
            raise InputError('%s: parent %r is not a known model (known: %s)'
                             % (spec.name, p.source, _known()))
    MODELS[spec.name] = spec
    return spec


def to_dict(spec):
    """`spec` as the JSON-ready dict written to a model folder's model.json (from_dict
    reads it back); a user's dataset is written whole under "dataset_spec"."""
    d = dataclasses.asdict(spec)
    d.pop('kind')
    d['builder_args'] = dict(spec.builder_args)
    if spec.dataset not in BUILTIN_DATASETS:
        d['dataset_spec'] = dataclasses.asdict(dataset(spec.dataset))
    return d


def _tuples(value):
    """JSON lists back to the tuples the frozen specs hold."""
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    return value


def _dataset_from_dict(d):
    d = dict(d)
    d['labels'] = tuple(Labels(**dict(lab, classes=tuple(lab['classes']),
                                      excluded=tuple(lab.get('excluded', ()))))
                        for lab in d['labels'])
    d['inputs'] = tuple(Input(**dict(i, mean=tuple(i['mean']))) for i in d['inputs'])
    d['splits'] = tuple(Split(**dict(s, dirs=_tuples(s['dirs']))) for s in d['splits'])
    d['readmes'] = tuple(d.get('readmes', ()))
    return DatasetSpec(**d)


def from_dict(d, folder=None):
    """A ModelSpec from a model.json dict; `folder` (the file's folder) replaces d's folder.
    Missing: family (the folder's name), trunk vgg16, init copy, parents [trunk],
    inputs [color], outputs [score vs label], no weights."""
    d = dict(d)
    try:
        if 'dataset_spec' in d:
            register_dataset(_dataset_from_dict(d.pop('dataset_spec')))
        if folder:
            d['folder'] = os.path.abspath(folder)
        d.setdefault('family', os.path.basename(os.path.normpath(d.get('folder', ''))))
        d.setdefault('trunk', 'vgg16')
        d.setdefault('init', 'copy')
        d.setdefault('title', d.get('name', ''))
        d['parents'] = tuple(Parent(**p) for p in d.get('parents', [{'source': d['trunk']}]))
        d['builder_args'] = tuple(dict(d.get('builder_args', {})).items())
        d['solver'] = Solver(**d['solver'])
        d['schedule'] = Schedule(**d['schedule'])
        d['inputs'] = tuple(d.get('inputs', ('color',)))
        d['outputs'] = tuple(Output(**o) for o in d.get('outputs', [{}]))
        d['weights'] = (Weights(**{k: _tuples(v) for k, v in d['weights'].items()})
                        if d.get('weights') else None)
        return ModelSpec(**d)
    except (KeyError, TypeError, AttributeError, ValueError) as e:
        if isinstance(e, InputError):
            raise
        raise InputError('%s: not a model description (%s: %s)'
                         % (d.get('name', 'model'), type(e).__name__, e))


def load(folder):
    """Read `folder`/model.json, register the model it describes and return its spec."""
    path = os.path.join(os.path.abspath(folder), SPEC_FILE)
    try:
        with open(path) as f:
            d = json.load(f)
    except OSError as e:
        raise InputError('%s: cannot read (%s)' % (path, e.strerror or e))
    except ValueError as e:
        raise InputError('%s: not valid JSON (%s)' % (path, e))
    if not isinstance(d, dict):
        raise InputError('%s: expected a JSON object' % path)
    try:
        spec = from_dict(d, folder)
    except InputError as e:
        raise InputError('%s: %s' % (path, e))
    if MODELS.get(spec.name) == spec:
        return MODELS[spec.name]
    try:
        return register(spec)
    except InputError as e:
        raise InputError('%s: %s' % (path, e))


# ---------------------------------------------------------------------------
# docs/models.md, generated from the tables above (net.py writes it; a test fails when stale)

def _num(v):
    return '-' if v is None else '%.1f' % v


def _table(header, rows):
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    return lines + ['| ' + ' | '.join(str(c) for c in row) + ' |' for row in rows]


def markdown():
    """The text of docs/models.md: the models, datasets, classifiers and paper rows."""
    out = ['# Models, datasets and the papers\' numbers', '',
           'Generated by `python net.py` from `models.py` (the one place these facts are',
           'written); edit models.py, then run `python net.py`. `tests/test_models.py` fails',
           'when this file is stale. What the columns mean: docs/fcn.md (nets), docs/training.md',
           '(solvers, schedules), docs/data.md (datasets), docs/results.md (the numbers).', '',
           '## Models', '',
           'The model id is the release\'s folder name; "folder" is its place in the design',
           'card\'s layout. Schedule: rounds x iterations per round, scoring after each round.',
           '']
    rows = []
    for spec in BUILTIN.values():
        s = spec.solver
        solver = 'lr %g%s, momentum %g%s' % (
            s.base_lr, ' poly %g' % s.power if s.lr_policy == 'poly' else '', s.momentum,
            ', iter_size %d' % s.iter_size if s.iter_size > 1 else '')
        scored = ', '.join('%s vs %s' % (o.score, o.label) for o in spec.outputs)
        weights = '`%s`' % spec.weights.file if spec.weights else 'never released'
        rows.append(('`%s`' % spec.name, '`%s/`' % spec.folder, spec.dataset, spec.title,
                     spec.trunk, spec.parent_text(), solver,
                     '%d x %d' % (spec.schedule.rounds, spec.schedule.iters), scored, weights))
    out += _table(('model', 'folder', 'dataset', 'net', 'trunk', 'starts from', 'solver',
                   'schedule', 'scored', 'released weights'), rows)
    out += ['', '## Datasets', '']
    rows = []
    for d in DATASETS.values():
        splits = ', '.join('%s %d' % (sp.name, sp.size) for sp in d.splits)
        classes = ' + '.join('%d (%s)' % (len(lab.classes), lab.top) for lab in d.labels)
        means = '; '.join('%s %s' % (i.kind, ', '.join('%r' % m for m in i.mean)) for i in d.inputs)
        layers = ', '.join(sorted({sp.layer for sp in d.splits}))
        rows.append(('`%s`' % d.name, d.title, classes, splits,
                     '%s / %s' % (d.train_split, d.score_split), means, layers,
                     ', '.join('`%s`' % r for r in d.readmes)))
    out += _table(('dataset', 'what', 'classes', 'splits (images)', 'train / scored',
                   'means', 'data layers', 'how to get it'), rows)
    out += ['', '## ImageNet classifiers', '']
    out += _table(('name', 'deploy net', 'weights', 'cast to', 'input', 'source'),
                  [('`%s`' % c.name, '`%s`' % c.deploy, '`%s/%s`' % (c.folder, c.weights.file),
                    '`%s/%s`' % (c.folder, c.cast), '%d x %d' % (c.size, c.size), c.source)
                   for c in CLASSIFIERS.values()])
    out += ['', '## The papers\' numbers (%)', '']
    out += _table(('source', 'net', 'model', 'data', 'pixel acc', 'mean acc', 'mean IU',
                   'f.w. IU', 'note'),
                  [(r.source, r.name + ('' if r.task == 'score' else ' (%s)' % r.task),
                    '`%s`' % r.model if r.model else '-', r.data, _num(r.overall_acc),
                    _num(r.mean_acc), _num(r.mean_iu), _num(r.fwavacc), r.note)
                   for r in PAPER])
    return '\n'.join(out) + '\n'
