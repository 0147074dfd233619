"""Evaluate and predict from a workdir alone: the same numbers as training, bad files survived."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from cnn_jax import data, evaluate
from cnn_jax.data import images
from cnn_jax.serving import inference
from cnn_jax.training import train
from cnn_jax.errors import UserError
from cnn_jax.runtime.writers import read_metrics
from conftest import REPO, load_config


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
  config = load_config('digits')
  config.num_steps = 330
  config.progress_bar = False
  path = str(tmp_path_factory.mktemp('trained'))
  train.train_and_evaluate(config, path)
  return path


@pytest.fixture(scope='module')
def image_dir(tmp_path_factory):
  """Test digits written as 8-bit PNGs (0–16 scaled to 0–255), plus three broken files."""
  path = tmp_path_factory.mktemp('images')
  test = data.load_split(data.DataSpec('digits'), 'test')
  for i in range(12):
    pixels = np.round(test.images[i, ..., 0].astype(np.float32) * 255 / 16).astype(np.uint8)
    Image.fromarray(pixels).save(path / f'{i:02d}_label{test.labels[i]}.png')
  (path / 'empty.png').write_bytes(b'')
  (path / 'notes.jpg').write_text('not an image')
  good = (path / '00_label{}.png'.format(test.labels[0])).read_bytes()
  (path / 'truncated.png').write_bytes(good[:len(good) // 2])
  Image.fromarray(np.zeros((20, 30, 4), np.uint8), 'RGBA').save(path / 'rgba_named.jpg.png')
  return path


def test_evaluate_reproduces_the_runs_final_metrics(workdir):
  report = inference.evaluate_workdir(workdir, 'latest')  # The last evaluation's checkpoint.
  final = [r for r in read_metrics(workdir) if r['split'] == 'eval'][-1]
  assert report['checkpoint_step'] == 330 and report['count'] == 144  # The validation split.
  assert report['accuracy'] == pytest.approx(final['accuracy'], abs=1e-9)
  assert report['loss'] == pytest.approx(final['loss'], rel=1e-5)
  matrix = np.asarray(report['confusion_matrix'])
  assert matrix.sum() == 144 and np.trace(matrix) == round(report['accuracy'] * 144)
  assert sum(c['count'] for c in report['per_class'].values()) == 144
  text = evaluate.format_report(report)
  assert 'confusion matrix' in text and f"{report['accuracy']:.2%}" in text
  path = evaluate.write_report(report, workdir)
  assert path.endswith(os.path.join('eval', 'validation_step330.json'))
  with open(path, encoding='utf-8') as f:
    assert json.load(f)['confusion_matrix'] == report['confusion_matrix']


def test_per_class_precision_recall_and_f1_from_the_confusion_matrix():
  matrix = np.array([[8, 2, 0], [1, 9, 0], [0, 0, 0]])  # Rows: true class; columns: predicted.
  cat, dog, fox = (inference._class_scores(matrix, k) for k in range(3))  # pylint: disable=protected-access
  assert cat['recall'] == cat['accuracy'] == 0.8 and cat['precision'] == 8 / 9
  assert cat['f1'] == pytest.approx(2 * 0.8 * (8 / 9) / (0.8 + 8 / 9))
  assert dog['precision'] == 9 / 11 and dog['recall'] == 0.9
  assert fox == {'accuracy': None, 'precision': None, 'recall': None, 'f1': None, 'correct': 0,
                 'count': 0}  # No image of it, none predicted: nothing to score.


def test_evaluate_names_the_checkpoints_there_are(workdir):
  with pytest.raises(UserError, match='one of the saved steps: .*330'):
    inference.evaluate_workdir(workdir, which='12345')
  with pytest.raises(UserError, match='not a cnn_jax training workdir'):
    inference.evaluate_workdir(os.path.dirname(workdir))


def test_predict_survives_bad_files_and_predicts_the_rest(workdir, image_dir):
  trained = inference.load_trained(workdir, 'best')
  results = {os.path.basename(r.file): r
             for r in inference.predict_files(trained, images.expand_paths([str(image_dir)]))}
  assert 'empty file' in results['empty.png'].error
  assert 'not a readable image' in results['notes.jpg'].error
  assert 'truncated' in results['truncated.png'].error
  assert results['rgba_named.jpg.png'].error is None  # Converted to grey, resized to 8×8.
  digits = {name: r for name, r in results.items() if '_label' in name}
  correct = sum(r.top_k[0][0] == name.split('label')[1][0] for name, r in digits.items())
  assert correct >= 10  # Of 12 test digits; the model is ~97% accurate.
  for r in digits.values():
    assert len(r.top_k) == 3 and sum(p for _, p in r.top_k) <= 1.0 + 1e-6


def test_dark_ink_on_white_is_flagged_and_invert_restores_the_answer(workdir, image_dir,
                                                                     tmp_path):
  originals = sorted(str(p) for p in image_dir.glob('*_label*.png'))
  inverted = []
  for path in originals:  # The same digits as dark ink on white paper.
    with Image.open(path) as image:
      inverted.append(str(tmp_path / os.path.basename(path)))
      Image.fromarray(255 - np.asarray(image)).save(inverted[-1])
  trained = inference.load_trained(workdir)
  plain = inference.predict_files(trained, originals, top_k=10)
  reversed_ = inference.predict_files(trained, inverted, top_k=10)
  assert not any(p.reversed_polarity for p in plain)
  assert all(p.reversed_polarity for p in reversed_)
  restored = inference.predict_files(trained, inverted, top_k=10, invert=True)
  assert not any(p.reversed_polarity for p in restored)
  for a, b in zip(restored, plain):
    assert [n for n, _ in a.top_k] == [n for n, _ in b.top_k]
    np.testing.assert_allclose([q for _, q in a.top_k], [q for _, q in b.top_k], atol=1e-6)
  command = [sys.executable, '-m', 'cnn_jax.predict', '--workdir', workdir, inverted[0]]
  result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300,
                          check=False)
  assert result.returncode == 0 and 'background reversed' in result.stdout
  assert 'learned from images on a dark one' in result.stderr and 'pass --invert' in result.stderr
  result = subprocess.run(command + ['--invert'], cwd=REPO, capture_output=True, text=True,
                          timeout=300, check=False)
  assert result.returncode == 0 and 'warning' not in result.stderr
  assert result.stdout.split(': ')[1][0] == plain[0].top_k[0][0]


def test_batched_prediction_equals_one_by_one(workdir, image_dir):
  trained = inference.load_trained(workdir)
  files = sorted(str(p) for p in image_dir.glob('*_label*.png'))
  batched = inference.predict_files(trained, files, top_k=10, batch_size=5)
  for one_file, together in zip(files, batched):
    alone = inference.predict_files(trained, [one_file], top_k=10, batch_size=1)[0]
    assert [n for n, _ in alone.top_k] == [n for n, _ in together.top_k]
    np.testing.assert_allclose([p for _, p in alone.top_k], [p for _, p in together.top_k],
                               rtol=1e-5, atol=1e-7)


def test_the_commands_run_from_the_workdir_alone(workdir, image_dir):
  def run(module, *args):
    return subprocess.run([sys.executable, '-m', module, '--workdir', workdir, *args], cwd=REPO,
                          capture_output=True, text=True, timeout=300, check=False)
  result = run('cnn_jax.evaluate', '--checkpoint', 'best')
  assert result.returncode == 0, result.stderr
  assert 'confusion matrix' in result.stdout and 'written to' in result.stdout
  result = run('cnn_jax.predict', '--json', str(image_dir / 'empty.png'),
               str(next(image_dir.glob('00_label*.png'))))
  assert result.returncode == 0, result.stderr
  records = [json.loads(line) for line in result.stdout.strip().splitlines()]
  assert records[0]['error'] == 'empty file (0 bytes)' and records[1]['prediction'] in '0123456789'
  result = run('cnn_jax.predict', str(image_dir / 'missing.png'))
  assert result.returncode == 2 and 'does not exist' in result.stderr
  assert 'Traceback' not in result.stderr
  result = run('cnn_jax.predict', '--json', str(image_dir / 'missing.png'),
               str(next(image_dir.glob('00_label*.png'))))  # One missing: the others still run.
  records = [json.loads(line) for line in result.stdout.strip().splitlines()]
  assert result.returncode == 0 and records[0]['error'] == 'does not exist'
  assert records[1]['prediction'] in '0123456789'
