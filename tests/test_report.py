"""The per-run report: every figure is a real, non-blank PNG, and the HTML shows them all."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from cnn_jax.reporting import run_report
from cnn_jax.training import train
from conftest import REPO, load_config

FIGURES = ('curves.png', 'confusion.png', 'filters.png', 'feature_maps.png', 'mistakes.png')


def _assert_report(index_path):
  directory = os.path.dirname(index_path)
  with open(index_path, encoding='utf-8') as f:
    page = f.read()
  assert set(re.findall(r'<img src="([^"]+)"', page)) == set(FIGURES)
  for name in FIGURES:
    with Image.open(os.path.join(directory, name)) as image:
      image.verify()  # A complete, valid PNG.
    with Image.open(os.path.join(directory, name)) as image:
      pixels = np.asarray(image.convert('L'), np.float32)
      assert image.format == 'PNG' and min(image.size) >= 150 and max(image.size) <= 2000
    assert pixels.std() > 10, f'{name} is blank'
  assert 'Total params' in page and 'accuracy' in page
  return page


@pytest.fixture(scope='module')
def digits_run(tmp_path_factory):
  config = load_config('digits')
  config.num_steps, config.progress_bar = 220, False
  workdir = str(tmp_path_factory.mktemp('digits'))
  train.train_and_evaluate(config, workdir)
  return workdir


def test_report_of_a_digits_run(digits_run):
  page = _assert_report(run_report.build_report(digits_run))
  assert 'Learned filters of conv_0: 32 filters of 3×3×1' in page
  # The test split, by default, and its one evaluation at the end of training.
  assert 'On split test: accuracy' in page and '360 images' in page
  assert 'evaluated once at the end on the checkpoint chosen on validation' in page


def test_report_with_an_image_of_ones_own(digits_run, tmp_path):
  Image.fromarray(np.eye(32, dtype=np.uint8) * 255).save(tmp_path / 'stroke.png')
  result = subprocess.run([sys.executable, '-m', 'cnn_jax.report', '--workdir', digits_run,
                           '--image', str(tmp_path / 'stroke.png')], cwd=REPO,
                          capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == 0, result.stderr
  page = _assert_report(os.path.join(digits_run, 'report', 'index.html'))
  assert 'Feature maps of stroke.png' in page


def test_report_of_a_colour_cats_vs_dogs_run(tmp_path):
  config = load_config('cats_vs_dogs', 'small')
  config.data.image_size = 32
  config.batch_size = config.eval_batch_size = 8
  config.num_steps, config.progress_bar = 4, False
  with tfds.testing.mock_data(num_examples=16):
    train.train_and_evaluate(config, str(tmp_path))
    page = _assert_report(run_report.build_report(str(tmp_path)))
  assert 'filters of 3×3×3' in page  # RGB first-layer filters, drawn in colour.


def test_feature_maps_share_one_stated_scale_per_layer_and_loss_is_logarithmic(monkeypatch,
                                                                               tmp_path):
  figures = pytest.importorskip('cnn_jax.reporting.figures')
  drawn = []
  monkeypatch.setattr(figures, '_save', lambda figure, path: drawn.append(figure) or path)
  maps = np.zeros((4, 4, 3), np.float32)
  maps[..., 1] = 1.0  # A constant map beside an all-zero one: they must not look alike.
  maps[..., 2] = np.arange(16).reshape(4, 4) / 5
  figures.feature_maps(np.zeros((8, 8, 1)), [('conv_0', maps)], str(tmp_path / 'f.png'), 3)
  panels = [axis.images[0] for axis in drawn[0].axes if axis.images][1:]  # After the input.
  assert len(panels) == 3 and len({panel.get_clim() for panel in panels}) == 1
  assert panels[0].get_clim() == (0.0, 3.0)  # The layer's range, stated by its colour bar.
  assert drawn[0].axes[-1].get_ylim() == (0.0, 3.0)  # The colour bar, at the row's end.
  records = [{'step': s, 'time': s / 10, 'split': 'train', 'loss': 2.3 / s, 'accuracy': 0.5}
             for s in range(1, 50)]
  figures.training_curves(records, str(tmp_path / 'c.png'))
  loss_axes = [axis for axis in drawn[1].axes if axis.get_ylabel().startswith('loss')]
  assert loss_axes and all(axis.get_yscale() == 'log' for axis in loss_axes)
