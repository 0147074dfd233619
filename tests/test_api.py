"""cnn_jax from Python: the same training, predictions and evaluation as the command line."""

import json
import logging
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import cnn_jax
from cnn_jax import data
from cnn_jax.errors import UserError
from conftest import REPO


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('api_run')
  result = cnn_jax.train('configs/digits.py', workdir, {'num_steps': 220, 'progress_bar': False})
  return workdir, result


@pytest.fixture(scope='module')
def test_digits(tmp_path_factory):
  """Six test digits as 8-bit arrays, and the same as PNG files."""
  split = data.load_split(data.DataSpec('digits'), 'test')
  pixels = np.round(split.images[:6, ..., 0].astype(np.float32) * 255 / 16).astype(np.uint8)
  directory = tmp_path_factory.mktemp('png')
  paths = []
  for i, image in enumerate(pixels):
    paths.append(str(directory / f'{i}.png'))
    Image.fromarray(image).save(paths[-1])
  return pixels, paths, split.labels[:6]


def test_train_returns_what_the_command_reports(trained):
  workdir, result = trained
  assert set(result) >= {'loss', 'accuracy', 'test'} and result['accuracy'] > 0.8
  assert (workdir / 'config.json').exists()


def test_predictions_agree_for_arrays_paths_pil_images_and_the_command(trained, test_digits):
  workdir, _ = trained
  pixels, paths, labels = test_digits
  classifier = cnn_jax.load(workdir)
  assert classifier.class_names == tuple('0123456789') and classifier.image_shape == (8, 8, 1)
  from_files = classifier.predict(paths, top_k=10)
  from_arrays = classifier.predict(pixels, top_k=10)  # One [N, H, W] stack of grey images.
  from_floats = classifier.predict([p / 255.0 for p in pixels], top_k=10)  # Floats in [0, 1].
  from_pil = classifier.predict([Image.fromarray(p) for p in pixels], top_k=10)
  for group in (from_arrays, from_floats, from_pil):
    assert [p.label for p in group] == [p.label for p in from_files]
    np.testing.assert_allclose([p.probabilities for p in group],
                               [p.probabilities for p in from_files], atol=1e-6)
  assert sum(int(p.label) == y for p, y in zip(from_files, labels)) >= 5
  command = subprocess.run([sys.executable, '-m', 'cnn_jax.predict', '--workdir', str(workdir),
                            '--json', *paths], cwd=REPO, capture_output=True, text=True,
                           timeout=300, check=True)
  printed = [json.loads(line) for line in command.stdout.splitlines()]
  assert [r['prediction'] for r in printed] == [p.label for p in from_files]
  np.testing.assert_allclose([r['probability'] for r in printed],
                             [p.probability for p in from_files], atol=1e-6)
  probabilities = classifier.predict_proba(pixels)
  assert probabilities.shape == (6, 10)
  np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
  assert classifier.predict([]) == []  # No images: no answers, from both.
  assert classifier.predict_proba([]).shape == (0, 10)


def test_a_bad_image_is_its_own_error_and_evaluate_matches_the_run(trained, test_digits):
  workdir, result = trained
  classifier = cnn_jax.load(workdir)
  pixels, paths, _ = test_digits
  mixed = classifier.predict([pixels[0], np.zeros((3, 4, 5)), paths[1] + '.missing'])
  assert mixed[0].label is not None
  assert 'shape (3, 4, 5)' in mixed[1].error and mixed[2].error == 'does not exist'
  with pytest.raises(UserError, match='integer pixels from 999 to 999'):
    classifier.predict_proba(np.full((8, 8), 999))
  assert classifier.evaluate()['accuracy'] == pytest.approx(result['accuracy'], abs=1e-9)
  assert classifier.evaluate('test')['count'] == 360
  assert 'Total params: 53,002' in classifier.summary()


def test_mistakes_are_user_errors():
  with pytest.raises(UserError, match='does not exist'):
    cnn_jax.train('configs/nope.py', '/tmp/unused')
  with pytest.raises(UserError, match="unknown config key 'optimizer.learnin_rate'"):
    cnn_jax.train('configs/digits.py', '/tmp/unused', {'optimizer.learnin_rate': 1e-3})
  with pytest.raises(UserError, match='not a cnn_jax training workdir'):
    cnn_jax.load(REPO)


def test_loading_a_run_says_nothing_about_orbax_internals(trained, caplog):
  workdir, _ = trained
  with caplog.at_level(logging.WARNING):
    cnn_jax.load(workdir)
  assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
