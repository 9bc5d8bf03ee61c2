"""models.py, the registry: lookups, a user's model.json, and the modules that read
their facts from it agree with it.

    .venv/bin/python -m pytest tests/test_models.py -q      # a few seconds
"""
import dataclasses
import json
import os
import subprocess
import sys

import pytest

import models
import project
from project import InputError


def test_get_by_id_folder_and_classifier():
    spec = models.get('nyud-fcn32s-color-hha')
    assert (spec.folder, spec.family, spec.dataset, spec.head) == (
        'nyud-fcn/fcn32s-color-hha', 'nyud-fcn', 'nyud', '32s')
    assert models.get('nyud-fcn/fcn32s-color-hha') is spec        # the card's folder
    assert models.get('nyud-fcn32s-color-hha/') is spec           # the release's folder name
    assert models.get(os.path.join(project.REPO, 'voc-fcn8s')) is models.get('voc-fcn8s')
    assert models.get('vgg16').kind == 'classifier' and spec.kind == 'fcn'
    assert [p.suffix for p in spec.parents] == ['color', 'hha'] and spec.init == 'transplant'
    assert models.model_dir(spec) == os.path.join(project.REPO, 'nyud-fcn', 'fcn32s-color-hha')


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(InputError) as e:
        models.get('voc-fcn4s')
    for name in ('voc-fcn8s', 'pascalcontext-fcn32s', 'vgg16', 'caffenet', 'model.json'):
        assert name in str(e.value)
    with pytest.raises(InputError, match='known: voc, nyud, siftflow, pascalcontext'):
        models.dataset('coco')


def test_specs_are_frozen_and_checked():
    spec = models.get('voc-fcn8s')
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.head = '16s'
    with pytest.raises(InputError, match='head must be one of'):
        dataclasses.replace(spec, head='4s')
    with pytest.raises(InputError, match='rounds must be a positive integer'):
        dataclasses.replace(spec, schedule=models.Schedule(0, 4000))


def test_schedule_is_the_training_length():
    """One source: PASCAL-Context trains 50 x 8000 = 400,000 iterations as the release's
    loop does; its solver's max_iter 300000 is the release's file value (only `caffe
    train` would stop there), kept in the solver.prototxt byte for byte."""
    lengths = {'voc-fcn32s': 100000, 'voc-fcn8s-atonce': 300000, 'nyud-fcn32s-hha': 100000,
               'siftflow-fcn16s': 100000, 'pascalcontext-fcn8s': 400000}
    for name, total in lengths.items():
        assert models.get(name).schedule.total == total, name
    assert models.get('pascalcontext-fcn32s').solver.max_iter == 300000


def test_default_data_layers_come_from_the_registry():
    import net
    assert net.default_data('voc')['val'] == ('VOCSegDataLayer', {
        'voc_dir': 'pascal/VOC2011', 'split': 'seg11valid', 'seed': 1337,
        'mean': [104.00699, 116.66877, 122.67892]})
    assert net.default_data('ade20k')['train'] == ('ADE20KSegDataLayer', {
        'ade20k_dir': 'ade20k/ADEChallengeData2016', 'split': 'training', 'seed': 1337})


def test_data_layers_hold_the_registry_facts():
    """layers.py reads its class names, means, split sizes and directories from models.py;
    the one fact it still writes itself, Cityscapes' label table (labelId -> trainId and
    name), must give the registry's 19 class names in trainId order."""
    import layers
    d = models.DATASETS
    assert layers.CITYSCAPES_CLASSES == d['cityscapes'].classes
    assert layers.ADE20K_CLASSES == d['ade20k'].classes and len(d['ade20k'].classes) == 150
    assert len(layers.ADE20K_PALETTE) == 150 and len(layers.CITYSCAPES_PALETTE) == 19
    assert layers.PSP_MEAN == d['ade20k'].mean == d['cityscapes'].mean == d['voc2012'].mean
    for name in models.BUILTIN_DATASETS:
        assert layers.score_layer(name).__name__ == d[name].split(d[name].score_split).layer
    assert tuple(layers.VOC_CLASSES) == d['voc'].classes
    assert tuple(layers.NYUD_CLASSES) == d['nyud'].classes
    assert tuple(layers.SIFTFLOW_SEM_CLASSES) == d['siftflow'].label('sem').classes
    assert tuple(layers.SIFTFLOW_GEO_CLASSES) == d['siftflow'].label('geo').classes
    assert tuple(layers.SIFTFLOW_SEM_ABSENT_IN_TEST) == d['siftflow'].label('sem').excluded
    assert tuple(layers.CONTEXT_CLASSES) == d['pascalcontext'].classes
    means = {('voc', 'color'): layers.VOC_MEAN, ('nyud', 'color'): layers.NYUD_COLOR_MEAN,
             ('nyud', 'hha'): layers.NYUD_HHA_MEAN, ('nyud', 'depth'): (layers.NYUD_LOG_DEPTH_MEAN,),
             ('siftflow', 'color'): layers.SIFTFLOW_MEAN,
             ('pascalcontext', 'color'): layers.CONTEXT_MEAN}
    for (name, kind), mean in means.items():
        assert tuple(mean) == d[name].input(kind).mean, (name, kind)
    for (name, split), size in getattr(layers, 'SPLIT_SIZES', {}).items():
        if name == 'sbdd':  # SBD train is the VOC models' training split
            name = 'voc'
        if name in d:
            assert d[name].split(split).size == size, (name, split)
    for spec in d.values():
        for split in spec.splits:
            cls = getattr(layers, split.layer)
            for key, value in split.dirs:
                assert cls.PARAMS[key] == value, (spec.name, split.name, key)


def test_release_records_are_generated_from_the_registry():
    """net.py writes every caffemodel-url record from the specs' Weights (one source);
    weights.py reads back the registry's URL, file name, downloader and checksums, and
    finds the weights where the registry says."""
    import net
    import weights
    specs = [models.get(name) for name in models.BUILTIN] + list(models.CLASSIFIERS.values())
    for spec in specs:
        path = models.record_file(spec)
        with open(path) as f:
            assert f.read() == net.url_record(spec), path
        rec, release = weights.read_url_record(path), spec.weights
        assert rec['url'] == (release.url if release else None), path
        assert 'generated by net.py' not in rec['note']
        if release:
            assert rec['file'] == release.file_name and rec['downloader'] == release.downloader
            for key in ('size', 'sha256', 'sha1', 'md5'):
                assert rec[key] == getattr(release, key), (path, key)
            assert weights.weights_path(spec.name) == models.weights_file(spec)
    assert models.get('caffenet').weights.sha1 == '4c8d77deb20ea792f84eb5e6d0a11ca0a8660a46'
    unsourced = dataclasses.replace(models.get('voc-fcn8s'), weights=models.Weights(
        'http://x/w.caffemodel', sha1='0' * 40))
    with pytest.raises(ValueError, match='no source'):
        net.url_record(unsourced)


def test_paper_rows_name_known_models():
    """Every paper row names a registered model (or none); a model's rows are its `paper`."""
    assert {r.model for r in models.PAPER} - {None} <= set(models.names())
    assert [r.name for r in models.get('siftflow-fcn16s').paper] == [
        'FCN-16s semantic', 'FCN-16s geometric']


def _user_spec(folder):
    shapes = models.DatasetSpec(
        'shapes', 'generated shapes', labels=(models.Labels('label', ('background', 'disc')),),
        inputs=(models.Input('color', 3, (1.0, 2.0, 3.0), 'BGR'),),
        splits=(models.Split('train', 10, 'VOCSegDataLayer', (('voc_dir', '/data/shapes'),)),
                models.Split('val', 4, 'VOCSegDataLayer', (('voc_dir', '/data/shapes'),))),
        train_split='train', score_split='val', readmes=(), mean_param=True)
    models.register_dataset(shapes)
    return dataclasses.replace(
        models.get('voc-fcn8s'), name='shapes-fcn8s', folder=str(folder), family='shapes-fcn',
        dataset='shapes', builder='fcn', builder_args=(),
        parents=(models.Parent('vgg16'),), weights=None, title='FCN-8s on shapes')


def test_user_model_json_is_found_by_path_and_name(registry, tmp_path):
    spec = _user_spec(tmp_path)
    (tmp_path / models.SPEC_FILE).write_text(json.dumps(models.to_dict(spec)))
    models.DATASETS.pop('shapes')  # model.json carries its dataset whole
    assert 'shapes-fcn8s' not in models.names()
    found = models.get(str(tmp_path))
    assert found == spec and models.get('shapes-fcn8s') is found
    assert models.model_dir(found) == str(tmp_path) and models.get(str(tmp_path)) is found
    import net
    param = net.build_net('shapes-fcn8s', 'train')
    (layer,) = [l for l in param.layer if l.type == 'Python']
    assert json.loads(layer.python_param.param_str) == {
        'voc_dir': '/data/shapes', 'split': 'train', 'seed': 1337, 'mean': [1.0, 2.0, 3.0]}
    assert [l.convolution_param.num_output for l in param.layer if l.name == 'score_fr'] == [2]
    solver = net.model_solver('shapes-fcn8s')
    assert 'test_iter: 4\n' in solver and 'base_lr: 1e-14\n' in solver


@pytest.mark.parametrize('content, words', [
    (b'{"name": ' + b'[' * 100000, 'nested too deeply'),
    (b'{"name": "x", "labels": ' + b'[' * 80 + b']' * 80 + b'}', 'nested too deeply'),
    (b'\x89PNG\r\n\x1a\n\x00\x00', 'not valid JSON'),
    (b'["voc-fcn8s"]', 'expected a JSON object, found array'),
], ids=['nested too deep to parse', 'nested too deep to walk', 'binary', 'a list'])
def test_model_json_nested_binary_or_of_another_shape_is_a_one_line_error(registry, tmp_path,
                                                                          content, words):
    """A deeply nested model.json was a RecursionError traceback."""
    (tmp_path / models.SPEC_FILE).write_bytes(content)
    with pytest.raises(InputError) as e:
        models.load(tmp_path)
    message = str(e.value)
    assert str(tmp_path / models.SPEC_FILE) in message and words in message and '\n' not in message


def test_bad_model_json_is_a_one_line_error(registry, tmp_path):
    path = tmp_path / models.SPEC_FILE
    path.write_text('{"name": ')
    with pytest.raises(InputError, match='model.json: not valid JSON'):
        models.load(tmp_path)
    path.write_text(json.dumps({'name': 'x', 'dataset': 'voc'}))
    with pytest.raises(InputError, match=r'model.json: x: not a model description \(KeyError'):
        models.load(tmp_path)
    clash = dataclasses.replace(models.get('voc-fcn8s'), folder=str(tmp_path), title='mine')
    path.write_text(json.dumps(models.to_dict(clash)))
    with pytest.raises(InputError, match="model.json: model 'voc-fcn8s' already exists"):
        models.load(tmp_path)
    orphan = dataclasses.replace(clash, name='orphan', parents=(models.Parent('no-such-model'),))
    path.write_text(json.dumps(models.to_dict(orphan)))
    with pytest.raises(InputError, match="parent 'no-such-model' is not a known model"):
        models.get(str(tmp_path))


def test_docs_models_md_is_current(tmp_path):
    path = os.path.join(project.REPO, 'docs', 'models.md')
    with open(path) as f:
        assert f.read() == models.markdown(), 'docs/models.md is stale: run `python net.py`'
    import net
    assert net.DOCS == path and net.all_files(['voc-fcn8s'])[path] == models.markdown()
    text = models.markdown()
    for name in models.names() + ['seg11valid 736', 'trainval 795', '65.4', '50 x 8000']:
        assert name in text, name


def test_net_list_and_docs_print_the_registry(capsys):
    import net
    assert net.main(['--list']) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == models.names()
    assert '50 x 8000' in lines[models.names().index('pascalcontext-fcn32s')]
    assert net.main(['--docs']) == 0
    assert capsys.readouterr().out == models.markdown()


def test_models_imports_no_caffe():
    code = 'import sys, models; models.markdown(); sys.exit("caffe" in sys.modules)'
    assert subprocess.run([sys.executable, '-c', code], cwd=project.REPO).returncode == 0


def _user_json(folder, edit):
    """model.json of _user_spec in `folder`, changed by edit(dict) (the dataset whole)."""
    spec = _user_spec(folder)
    d = json.loads(json.dumps(models.to_dict(spec)))
    models.DATASETS.pop('shapes')
    edit(d)
    (folder / models.SPEC_FILE).write_text(json.dumps(d))


@pytest.mark.parametrize('what,edit,message', [
    ('numeric name', lambda d: d.update(name=42), 'name must be a non-empty text, got 42'),
    ('empty labels', lambda d: d['dataset_spec'].update(labels=[]), 'has no labels'),
    ('no classes', lambda d: d['dataset_spec']['labels'][0].update(classes=[]),
     "label 'label' needs a list of class names"),
    ('classes as text', lambda d: d['dataset_spec']['labels'][0].update(classes='ab'),
     'classes must be a list'),
    ('2-value mean', lambda d: d['dataset_spec']['inputs'][0].update(mean=[1.0, 2.0]),
     'the color mean must be 3 numbers'),
    ('text mean', lambda d: d['dataset_spec']['inputs'][0].update(mean='104'), 'mean must be a list'),
    ('text in mean', lambda d: d['dataset_spec']['inputs'][0].update(mean=[1.0, 'x', 3.0]),
     'the color mean must be 3 numbers'),
    ('huge iters', lambda d: d['schedule'].update(iters=10 ** 20), '2147483647'),
    ('huge total', lambda d: d['schedule'].update(rounds=3, iters=2 ** 30),
     "more than Caffe's limit"),
    ('huge max_iter', lambda d: d['solver'].update(max_iter=2 ** 40), 'solver values out of range'),
])
def test_model_json_with_values_the_code_trips_on_is_a_one_line_error(registry, tmp_path, what,
                                                                        edit, message):
    _user_json(tmp_path, edit)
    with pytest.raises(InputError) as e:
        models.get(str(tmp_path))
    text = str(e.value)
    assert text.startswith(str(tmp_path / models.SPEC_FILE)) and message in text, text
    assert '\n' not in text
    assert 'shapes' not in models.DATASETS or what not in ('empty labels', 'no classes')


def test_model_paths_from_the_current_directory_and_folders_named_like_built_ins(
        registry, tmp_path, monkeypatch):
    """The `--model mymodels/x` net.py new prints resolves from where the user is; a
    folder of their own named like a built-in model (voc-fcn8s, pspnet50-ade20k) is
    theirs, never the built-in one."""
    monkeypatch.chdir(tmp_path)
    mine = tmp_path / 'mymodels' / 'x'
    mine.mkdir(parents=True)
    _user_json(mine, lambda d: None)
    assert models.get('mymodels/x').name == 'shapes-fcn8s'
    assert models.get('mymodels/x/').name == 'shapes-fcn8s'
    for name in ('voc-fcn8s', 'pspnet50-ade20k'):
        folder = tmp_path / name
        folder.mkdir()
        spec = dataclasses.replace(models.get('shapes-fcn8s'), name='mine-' + name,
                                   folder=str(folder))
        (folder / models.SPEC_FILE).write_text(json.dumps(models.to_dict(spec)))
        assert models.get(name).name == 'mine-' + name
        assert models.get('./' + name).name == 'mine-' + name
        assert models.model_dir(models.get(name)) == str(folder)
    assert models.converted('pspnet50-ade20k') is None
    assert models.converted(str(tmp_path / 'pspnet50-ade20k')) is None
    os.chdir(project.REPO)  # (monkeypatch restores the directory)
    assert models.converted('pspnet50-ade20k').name == 'pspnet50-ade20k'
    assert models.get('voc-fcn8s') is models.BUILTIN['voc-fcn8s']
    r = subprocess.run([sys.executable, os.path.join(project.REPO, 'infer.py'), 'photo.jpg',
                        '--model', 'mymodels/x'], cwd=str(tmp_path), capture_output=True,
                       text=True, timeout=120)
    assert 'unknown model' not in r.stderr and str(mine) in r.stderr, r.stderr  # its folder's


def test_builder_arguments_come_from_the_spec_fields_once(tmp_path):
    """head, dataset, class counts and a ResNet's depth are the spec's fields, never also
    builder_args; a model.json whose builder_args repeat its head and dataset (as older
    `net.py new` folders hold) loads when they agree, and is refused when they do not."""
    assert models.get('siftflow-fcn16s').builder_facts() == dict(
        head='16s', dataset='siftflow', num_classes=(33, 3))
    assert models.get('pspnet50-ade20k').builder_facts() == dict(
        head='pyramid', dataset='ade20k', num_classes=150, depth=50)
    with pytest.raises(InputError, match='builder_args head: the spec'):
        dataclasses.replace(models.get('voc-fcn8s'), builder_args=(('head', '8s'),))
    d = models.to_dict(models.get('voc-fcn8s-atonce'))
    d.update(name='old-atonce', builder_args=dict(d['builder_args'], head='8s', dataset='voc'))
    assert models.from_dict(d, str(tmp_path)).build_kwargs() == {'at_once': True}
    d['builder_args']['head'] = '16s'
    with pytest.raises(InputError, match="builder_args head '16s' disagrees"):
        models.from_dict(d, str(tmp_path))
