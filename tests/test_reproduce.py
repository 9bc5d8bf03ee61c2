"""reproduce.py on tiny generated datasets with narrow nets whose weights the tests set:
its numbers are score.py's (both are run), missing weights / data / model directories
are reported with their reasons, --limit / --snapshots / --merge / --readme work, and
with no data at all the paper's tables are still printed and the exit status is 0.

    .venv/bin/python -m pytest tests/test_reproduce.py -q
"""
import json
import os
import re
import shutil
import subprocess
import sys

import pytest

import datasets
import models
import project
from datasets import random_weights
import net
import reproduce

PY = sys.executable
NARROW = (2, 2, 2, 2, 2, 4)  # net.py widths: conv blocks 1-5, fc6/fc7
VOC_RELEASED = 'fcn8s-heavy-pascal.caffemodel'


@pytest.fixture(scope='module')
def world(tmp_path_factory):
    """models/voc-fcn8s (released weights in place, a training snapshot too) and
    models/siftflow-fcn16s (weights beside it), narrow; a tiny VOC and SIFT Flow."""
    root = tmp_path_factory.mktemp('reproduce')
    models, data = root / 'models', root / 'data'
    voc = models / 'voc-fcn8s'
    net.write_model_dir(str(voc), 'voc-fcn8s', widths=NARROW)
    (voc / 'caffemodel-url').write_text('http://example.invalid/%s\n' % VOC_RELEASED)
    random_weights(voc / 'deploy.prototxt', voc / VOC_RELEASED, seed=0)
    random_weights(voc / 'deploy.prototxt', voc / 'snapshot' / 'train_iter_8.caffemodel',
                   seed=1)
    (voc / 'snapshot' / 'train_iter_8.solverstate').write_bytes(b'')
    # the manifest a run writes last: without it the snapshot is incomplete, not trusted
    (voc / 'snapshot' / 'train_iter_8.json').write_text(json.dumps(
        {'iter': 8, 'round': {'start': 0, 'loss_sum': 0.0, 'count': 8, 'seconds': 1.0},
         'caffemodel_bytes': (voc / 'snapshot' / 'train_iter_8.caffemodel').stat().st_size,
         'solverstate_bytes': 0, 'params': {}, 'end_of_round': True}))
    sift = models / 'siftflow-fcn' / 'fcn16s'
    net.write_model_dir(str(sift), 'siftflow-fcn16s', widths=NARROW)
    sift_weights = random_weights(sift / 'deploy.prototxt', root / 'siftflow.caffemodel', seed=2)
    datasets.make_voc(data)
    datasets.make_siftflow(data)
    return dict(root=root, models=models, data=data, voc=voc, sift_weights=sift_weights)


def run_main(monkeypatch, *args):
    """reproduce.main in this process; FCN_DATA_ROOT (which --data-root sets) is restored."""
    monkeypatch.setenv('FCN_DATA_ROOT', '/nonexistent')
    return reproduce.main([str(a) for a in args])


def run_cli(script, *args):
    env = dict(os.environ, GLOG_minloglevel='2')
    for k in ('FCN_DEBUG', 'FCN_DATA_ROOT'):
        env.pop(k, None)
    return subprocess.run([PY, os.path.join(project.REPO, script)] + [str(a) for a in args],
                          cwd='/', capture_output=True, text=True, env=env, timeout=120)


def score_py(tmp_path, model_dir, weights, data, *extra):
    """score.py's JSON for the same model, weights and data."""
    out = tmp_path / ('score-%s.json' % os.path.basename(str(model_dir)))
    r = run_cli('score.py', '--model', model_dir, '--weights', weights, '--data-root', data,
                '--out', out, '--quiet', *extra)
    assert r.returncode == 0, r.stderr
    return json.loads(out.read_text())


def read_results(out):
    with open(os.path.join(str(out), 'results.json')) as f:
        return json.load(f)


def row(results, source, name, data=None):
    found = [r for r in results['rows'] if r['source'] == source and r['name'] == name
             and data in (None, r['data'])]
    assert len(found) == 1, (source, name, data)
    return found[0]


def test_numbers_are_score_py_numbers(world, tmp_path, monkeypatch, capsys):
    out = tmp_path / 'out'
    code = run_main(monkeypatch, '--model-root', world['models'], '--data-root', world['data'],
                    '--models', 'voc-fcn8s', 'siftflow-fcn16s', '--out', out, '--quiet',
                    '--weights', 'siftflow-fcn16s=%s' % world['sift_weights'])
    assert code == 0
    res = read_results(out)
    voc, sift = res['models']['voc-fcn8s'], res['models']['siftflow-fcn16s']
    assert voc['status'] == sift['status'] == 'evaluated'
    assert voc['weights_source'] == 'released'
    assert voc['weights'] == str(world['voc'] / VOC_RELEASED)
    assert sift['weights_source'] == '--weights'
    assert voc['split'] == 'seg11valid' and sift['split'] == 'test'
    assert voc['images'] == voc['split_images'] == 3
    assert voc['ms_per_image'] > 0 and voc['load_ms_per_image'] > 0

    # score.py on the same model, weights and data: the same scores, every task
    want = score_py(tmp_path, world['voc'], voc['weights'], world['data'])
    assert voc['tasks'] == want['tasks']
    want = score_py(tmp_path, world['models'] / 'siftflow-fcn' / 'fcn16s', world['sift_weights'],
                    world['data'])
    assert sift['tasks'] == want['tasks']
    assert sorted(sift['tasks']) == ['score_geo', 'score_sem']
    assert sift['tasks']['score_sem']['excluded'] == ['cow', 'desert', 'moon']

    # the paper's rows carry the measured values in %, and the difference
    fcn8s = row(res, 'release', 'FCN-8s', 'seg11valid')
    assert fcn8s['model'] == 'voc-fcn8s' and fcn8s['status'] == 'measured'
    assert fcn8s['paper']['mean_iu'] == 65.5
    assert fcn8s['measured']['mean_iu'] == pytest.approx(100 * voc['tasks']['score']['mean_iu'])
    assert fcn8s['diff']['mean_iu'] == pytest.approx(fcn8s['measured']['mean_iu'] - 65.5)
    assert fcn8s['diff']['overall_acc'] is None  # the release gives mean IU only
    table2 = row(res, 'CVPR Table 2', 'FCN-8s')
    for k, v in zip(reproduce.METRICS, (90.3, 75.9, 62.7, 83.2)):
        assert table2['paper'][k] == v
        assert table2['measured'][k] == pytest.approx(100 * voc['tasks']['score'][k])
    sem = row(res, 'CVPR Table 5', 'FCN-16s semantic')
    assert sem['measured']['mean_iu'] == pytest.approx(100 * sift['tasks']['score_sem']['mean_iu'])
    assert sem['excluded'] == ['cow', 'desert', 'moon']
    geo = row(res, 'CVPR Table 5', 'FCN-16s geometric')
    assert geo['paper']['overall_acc'] == 94.3
    assert geo['measured']['overall_acc'] == pytest.approx(
        100 * sift['tasks']['score_geo']['overall_acc'])
    test_server = row(res, 'CVPR Table 3', 'FCN-8s', 'VOC2011 test')
    assert test_server['measured'] is None and test_server['status'] == 'not measurable locally'
    assert test_server['ms'] == 175 and test_server['ms_measured'] == voc['ms_per_image']
    assert row(res, 'CVPR Table 4', 'FCN-32s RGB')['status'] == 'not selected'

    md = (out / 'results.md').read_text()
    stdout = capsys.readouterr().out
    for text in (md, stdout):
        assert '| release | FCN-8s | voc-fcn8s | seg11valid | 3 |' in text
        assert '65.5 / %.1f (%+.1f)' % (fcn8s['measured']['mean_iu'], fcn8s['diff']['mean_iu']) in text
        assert 'cow, desert, moon excluded from the class averages' in text
        assert "this split has 3 images, the paper's 736" in text
    # per-class IU tables, class names from layers.py
    assert '### voc-fcn8s: score vs label (voc seg11valid, 3 images)' in md
    assert '| tvmonitor |' in md and '| cow (excluded) | - | - |' in md
    assert '### siftflow-fcn16s: score_geo vs geo' in md and '| horizontal |' in md


def test_limit_and_snapshots(world, tmp_path, monkeypatch):
    out = tmp_path / 'out'
    assert run_main(monkeypatch, '--model-root', world['models'], '--data-root', world['data'],
                    '--models', 'voc-fcn8s', '--snapshots', '--limit', 2, '--out', out,
                    '--quiet') == 0
    res = read_results(out)
    voc = res['models']['voc-fcn8s']
    assert voc['weights_source'] == 'snapshot'
    assert voc['weights'] == str(world['voc'] / 'snapshot' / 'train_iter_8.caffemodel')
    assert voc['images'] == 2 and voc['split_images'] == 3 and res['limit'] == 2
    want = score_py(tmp_path, world['voc'], voc['weights'], world['data'], '--limit', 2)
    assert voc['tasks'] == want['tasks'] and want['images'] == 2
    md = (out / 'results.md').read_text()
    assert '| 2 of 3 (first 2 images) |' in md
    assert '(voc seg11valid, first 2 images of 3)' in md


def test_missing_weights_data_and_models_are_reported(world, tmp_path, monkeypatch, capsys):
    models, data = tmp_path / 'models', tmp_path / 'data'
    datasets.make_voc(data)  # VOC only: no SIFT Flow, no NYUD
    voc = models / 'voc-fcn8s'
    net.write_model_dir(str(voc), 'voc-fcn8s', widths=NARROW)
    (voc / 'caffemodel-url').write_text('http://example.invalid/%s\n' % VOC_RELEASED)
    sift = models / 'siftflow-fcn' / 'fcn16s'
    net.write_model_dir(str(sift), 'siftflow-fcn16s', widths=NARROW)
    nyud = models / 'nyud-fcn' / 'fcn16s-color-hha'
    net.write_model_dir(str(nyud), 'nyud-fcn16s-color-hha', widths=NARROW)
    shutil.copy(os.path.join(project.REPO, 'nyud-fcn', 'fcn16s-color-hha', 'caffemodel-url'), str(nyud))
    out = tmp_path / 'out'
    code = run_main(monkeypatch, '--model-root', models, '--data-root', data, '--out', out,
                    '--models', 'voc-fcn8s', 'siftflow-fcn16s', 'nyud-fcn16s-color-hha',
                    'pascalcontext-fcn8s', '--snapshots',
                    '--weights', 'siftflow-fcn16s=%s' % world['sift_weights'])
    assert code == 0
    entries = read_results(out)['models']
    assert all(e['status'] == 'missing' for e in entries.values())

    # weights missing, data present: the path expected and both ways to get them
    (reason,) = entries['voc-fcn8s']['reasons']
    assert reason['what'] == 'weights'
    assert str(voc / VOC_RELEASED) in reason['message']
    assert 'no training snapshot in %s' % (voc / 'snapshot') in reason['message']
    assert reason['commands'] == ['python %s %s' % (os.path.join(project.REPO, 'weights.py'), voc),
                                  'python %s' % (voc / 'solve.py')]
    # weights given, data missing: the split list expected and the README to read
    (reason,) = entries['siftflow-fcn16s']['reasons']
    assert reason['what'] == 'data'
    assert str(data / 'sift-flow' / 'test.txt') in reason['message']
    assert reason['read'] == 'data/sift-flow/README.md'
    # never released, and no data
    weights_reason, data_reason = entries['nyud-fcn16s-color-hha']['reasons']
    assert weights_reason['message'].endswith('never released')
    assert weights_reason['commands'] == ['python %s' % (nyud / 'solve.py')]
    assert str(data / 'nyud' / 'test.txt') in data_reason['message']
    assert data_reason['read'] == 'data/nyud/README.md'
    # no model directory
    (reason,) = entries['pascalcontext-fcn8s']['reasons']
    assert reason['what'] == 'model' and str(models / 'pascalcontext-fcn' / 'fcn8s') in reason['message']

    text = capsys.readouterr().out
    assert '### Not evaluated' in text
    assert '- `voc-fcn8s` (missing): weights missing: ' in text
    assert '(read data/sift-flow/README.md)' in text
    assert 'not evaluated: weights and data missing' in text  # nyud-fcn16s-color-hha's row
    assert text == (out / 'results.md').read_text().split('\n\n', 1)[1].split('\n## Per-class')[0] \
        + 'wrote %s and %s\n' % (out / 'results.json', out / 'results.md')


def test_no_data_at_all_prints_the_paper_tables(tmp_path):
    empty = tmp_path / 'empty'
    empty.mkdir()
    r = run_cli('reproduce.py', '--data-root', empty, '--out', tmp_path / 'out')
    assert r.returncode == 0, r.stderr
    assert 'Traceback' not in r.stderr
    for text in ('| release | FCN-32s | voc-fcn32s | seg11valid | - | - | - | 63.6 / - |',
                 '| CVPR Table 2 | FCN-8s | voc-fcn8s | seg11valid (VOC2011 val subset) | - | '
                 '90.3 / - | 75.9 / - | 62.7 / - | 83.2 / - |',
                 '| CVPR Table 3 | FCN-8s | voc-fcn8s | VOC2012 test | - | - | - | 62.2 / - | - | 175 / - |',
                 '| CVPR Table 4 | FCN-16s RGB-HHA | nyud-fcn16s-color-hha | NYUDv2 test | - | '
                 '65.4 / - | 46.1 / - | 34.0 / - | 49.5 / - |',
                 '| CVPR Table 5 | FCN-16s geometric | siftflow-fcn16s | SIFT Flow test | - | 94.3 / - |',
                 'VOC test server only', '### Not evaluated',
                 str(empty / 'pascal' / 'VOC2011' / 'ImageSets' / 'Segmentation' / 'seg11valid.txt')):
        assert text in r.stdout, text
    res = read_results(tmp_path / 'out')
    assert len(res['rows']) == len(models.PAPER)
    assert all(r['measured'] is None for r in res['rows'])
    assert sorted(res['models']) == sorted(models.BUILTIN)
    assert all(e['status'] == 'missing' for e in res['models'].values())


def test_readme_block(world, tmp_path, monkeypatch):
    readme = tmp_path / 'README.md'
    readme.write_text('# Title\n\nprose\n\n%s\nold table\n%s\n\nmore prose\n'
                      % (reproduce.MARK_START, reproduce.MARK_END))
    out = tmp_path / 'out'
    args = ['--model-root', world['models'], '--data-root', world['data'], '--out', out,
            '--models', 'voc-fcn8s', '--quiet', '--readme', readme]
    assert run_main(monkeypatch, *args) == 0
    text = readme.read_text()
    assert text.startswith('# Title\n\nprose\n\n' + reproduce.MARK_START + '\n')
    assert text.endswith(reproduce.MARK_END + '\n\nmore prose\n')
    assert 'old table' not in text
    assert '| release | FCN-8s | voc-fcn8s | seg11valid | 3 |' in text
    assert '[out/results.md](out/results.md)' in text
    assert run_main(monkeypatch, *args) == 0  # again: one block, replaced
    assert readme.read_text().count(reproduce.MARK_START) == 1
    assert readme.read_text().count('| release | FCN-8s | voc-fcn8s | seg11valid |') == 1

    readme.write_text('# no markers\n')
    with pytest.raises(project.InputError, match='results:start'):
        run_main(monkeypatch, *args)
    assert readme.read_text() == '# no markers\n'
    assert (out / 'results.json').is_file()  # the results are written first


def test_merge_keeps_earlier_models(world, tmp_path, monkeypatch):
    out = tmp_path / 'out'
    base = ['--model-root', world['models'], '--data-root', world['data'], '--out', out, '--quiet',
            '--weights', 'siftflow-fcn16s=%s' % world['sift_weights']]
    assert run_main(monkeypatch, *base, '--models', 'voc-fcn8s') == 0
    assert run_main(monkeypatch, *base, '--models', 'siftflow-fcn16s', '--merge') == 0
    res = read_results(out)
    assert res['models']['voc-fcn8s']['status'] == 'evaluated'
    assert res['models']['voc-fcn8s']['earlier_run'] is True
    assert 'earlier_run' not in res['models']['siftflow-fcn16s']
    assert row(res, 'release', 'FCN-8s', 'seg11valid')['status'] == 'measured'
    assert row(res, 'CVPR Table 5', 'FCN-16s semantic')['status'] == 'measured'
    assert run_main(monkeypatch, *base, '--models', 'siftflow-fcn16s') == 0  # no --merge
    assert sorted(read_results(out)['models']) == ['siftflow-fcn16s']


def test_failed_evaluation_exits_1_and_the_rest_is_done(world, tmp_path, monkeypatch):
    other = tmp_path / 'other'
    net.write_model_dir(str(other), 'voc-fcn8s', widths=(2, 2, 2, 2, 2, 6))
    wrong = random_weights(other / 'deploy.prototxt', tmp_path / 'wrong.caffemodel')
    out = tmp_path / 'out'
    code = run_main(monkeypatch, '--model-root', world['models'], '--data-root', world['data'],
                    '--out', out, '--quiet', '--models', 'voc-fcn8s', 'siftflow-fcn16s',
                    '--weights', 'voc-fcn8s=%s' % wrong,
                    'siftflow-fcn16s=%s' % world['sift_weights'])
    assert code == 1
    entries = read_results(out)['models']
    assert entries['voc-fcn8s']['status'] == 'failed'
    assert 'fc6' in entries['voc-fcn8s']['reasons'][0]['message']
    assert entries['siftflow-fcn16s']['status'] == 'evaluated'


@pytest.mark.parametrize('args, words', [
    (['--weights', 'voc-fcn8s'], 'MODEL=FILE'),
    (['--weights', 'nosuch=/x'], "unknown model 'nosuch'"),
    (['--weights', 'voc-fcn8s=/nonexistent.caffemodel'], '/nonexistent.caffemodel'),
    (['--models', 'voc-fcn9s'], 'voc-fcn9s'),
    (['--limit', '0'], '--limit'),
    (['--data-root', '/nonexistent-data'], '/nonexistent-data'),
    (['--model-root', '/nonexistent-models'], '/nonexistent-models'),
])
def test_bad_arguments(tmp_path, monkeypatch, args, words):
    with pytest.raises(project.InputError, match=words):
        run_main(monkeypatch, '--out', tmp_path / 'out', *args)
    assert not (tmp_path / 'out').exists()


def test_paper_table_covers_the_spec():
    """Every model a paper row names exists; the numbers are the papers' (docs/results.md)."""
    for r in models.PAPER:
        assert r.model is None or r.model in models.BUILTIN
    release = {r.model: r.mean_iu for r in models.PAPER if r.source == 'release' and r.local}
    assert release == {'voc-fcn32s': 63.6, 'voc-fcn16s': 65.0, 'voc-fcn8s': 65.5,
                       'voc-fcn8s-atonce': 65.4, 'voc-fcn-alexnet': 48.0}
    nyud = [(r.model, r.mean_iu) for r in models.PAPER if r.source == 'CVPR Table 4']
    assert nyud == [('nyud-fcn32s-color', 29.2), ('nyud-fcn32s-color-d', 30.5),
                    ('nyud-fcn32s-hha', 24.2), ('nyud-fcn32s-color-hha', 32.8),
                    ('nyud-fcn16s-color-hha', 34.0)]
    assert not any(r.local for r in models.PAPER if 'test' in r.data
                   and r.source != 'CVPR Table 4' and r.source != 'CVPR Table 5')


def test_broken_model_directory_fails_alone(world, tmp_path, monkeypatch):
    """A val.prototxt that does not parse: that model fails with the file named, exit 1;
    the other models are still looked at."""
    models = tmp_path / 'models'
    (models / 'voc-fcn8s').mkdir(parents=True)
    (models / 'voc-fcn8s' / 'val.prototxt').write_text('layer { oops')
    shutil.copytree(str(world['models'] / 'siftflow-fcn' / 'fcn16s'), str(models / 'siftflow-fcn' / 'fcn16s'))
    out = tmp_path / 'out'
    code = run_main(monkeypatch, '--model-root', models, '--data-root', world['data'],
                    '--out', out, '--quiet', '--models', 'voc-fcn8s', 'siftflow-fcn16s',
                    '--weights', 'voc-fcn8s=%s' % (world['voc'] / VOC_RELEASED),
                    'siftflow-fcn16s=%s' % world['sift_weights'])
    assert code == 1
    entries = read_results(out)['models']
    assert entries['voc-fcn8s']['status'] == 'failed'
    assert str(models / 'voc-fcn8s' / 'val.prototxt') in entries['voc-fcn8s']['reasons'][0]['message']
    assert entries['siftflow-fcn16s']['status'] == 'evaluated'
    md = (out / 'results.md').read_text()
    assert '- `voc-fcn8s` (failed): evaluation: ' in md
    assert '| 65.5 / - | - | - | evaluation failed (see below) |' in md


@pytest.mark.parametrize('entry, words', [
    ('not a dict', "model 'voc-fcn8s' not an object"),
    ({'status': 'evaluated'}, "model 'voc-fcn8s' has no 'tasks'"),
    ({'status': 'evaluated', 'tasks': {'score': {'mean_iu': 'high'}}}, "has no 'dataset'"),
])
def test_merge_with_a_malformed_entry_is_one_line(world, tmp_path, monkeypatch, entry, words):
    """A malformed model entry in OUT/results.json is a one-line error on --merge."""
    out = tmp_path / 'out'
    out.mkdir()
    (out / 'results.json').write_text(json.dumps({'models': {'voc-fcn8s': entry}}))
    with pytest.raises(project.InputError, match='results.json: cannot merge with it: .*%s'
                       % re.escape(words)):
        run_main(monkeypatch, '--model-root', world['models'], '--data-root', world['data'],
                 '--out', out, '--quiet', '--models', 'voc-fcn8s', '--merge')


@pytest.mark.parametrize('content', [b'[' * 100000, b'\x89PNG\r\n\x1a\n\x00', b'[{"models": 1}]'],
                         ids=['nested too deep', 'binary', 'a list'])
def test_merge_with_a_damaged_results_json_is_one_line(world, tmp_path, monkeypatch, content):
    """Deeply nested JSON in OUT/results.json was a RecursionError traceback on --merge."""
    out = tmp_path / 'out'
    out.mkdir()
    (out / 'results.json').write_bytes(content)
    with pytest.raises(project.InputError) as e:
        run_main(monkeypatch, '--model-root', world['models'], '--data-root', world['data'],
                 '--out', out, '--quiet', '--models', 'voc-fcn8s', '--merge')
    message = str(e.value)
    assert str(out / 'results.json') in message and '--merge' in message and '\n' not in message


def test_merge_names_a_malformed_task_value(world, tmp_path, monkeypatch):
    out = tmp_path / 'out'
    assert run_main(monkeypatch, '--model-root', world['models'], '--data-root', world['data'],
                    '--out', out, '--quiet', '--models', 'voc-fcn8s') == 0
    assert reproduce._load_previous(str(out))['voc-fcn8s']['status'] == 'evaluated'
    res = read_results(out)
    res['models']['voc-fcn8s']['tasks']['score']['mean_iu'] = 'high'
    (out / 'results.json').write_text(json.dumps(res))
    with pytest.raises(project.InputError, match="model 'voc-fcn8s' task 'score' 'mean_iu' is str"):
        reproduce._load_previous(str(out))


def test_out_checked_before_scoring(world, tmp_path, monkeypatch, capsys):
    """An OUT that cannot be written is refused before the first model is scored."""
    (tmp_path / 'afile').write_text('x')
    base = ['--model-root', world['models'], '--data-root', world['data'], '--quiet',
            '--models', 'voc-fcn8s']
    with pytest.raises(project.InputError, match='--out .*afile'):
        run_main(monkeypatch, *base, '--out', tmp_path / 'afile' / 'out')
    voc = world['data'] / 'pascal' / 'VOC2011'
    with pytest.raises(project.InputError, match='inside %s' % re.escape(str(voc))):
        run_main(monkeypatch, *base, '--out', voc / 'SegmentationClass')
    assert 'scoring' not in capsys.readouterr().err
    assert not (voc / 'SegmentationClass' / 'results.json').exists()


def test_commands_name_the_models_folder_in_the_cards_layout():
    # nyud-fcn32s-hha lives in nyud-fcn/fcn32s-hha/: the training command must say so.
    REPO = project.REPO
    folder = reproduce.model_folder("nyud-fcn32s-hha", REPO)
    fetch, train_cmd = reproduce._commands('nyud-fcn32s-hha', folder, REPO)
    assert fetch == 'python weights.py nyud-fcn32s-hha'
    assert train_cmd == 'python %s' % os.path.join('nyud-fcn', 'fcn32s-hha', 'solve.py')
    assert os.path.isfile(os.path.join(REPO, train_cmd.split()[1]))
