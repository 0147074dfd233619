"""The per-run report: every figure is a real, non-blank PNG, and the HTML shows them all."""

import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from cnn_jax.reporting import run_report
from cnn_jax.training import train
from conftest import REPO, load_config

FIGURES = ('curves.png', 'confusion.png', 'filters.png', 'patches.png', 'grad_cam.png',
           'feature_maps.png', 'pooling.png', 'mistakes.png')


def _assert_report(index_path, figures=FIGURES):
  directory = os.path.dirname(index_path)
  with open(index_path, encoding='utf-8') as f:
    page = f.read()
  assert set(re.findall(r'<img src="([^"]+)"', page)) == set(figures)
  for name in figures:
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
  page = _assert_report(os.path.join(digits_run, 'report', 'index.html'),
                        FIGURES + ('image_explained.png',))
  assert 'Feature maps of stroke.png' in page
  assert 'stroke.png: the prediction and its evidence' in page


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


def test_grad_cam_finds_the_strokes_and_differs_between_classes(digits_run):
  """Measured, not looked at: over the test digits, the evidence for the predicted class lies on
  the strokes more than on the empty border, and another class's evidence lies elsewhere."""
  from cnn_jax.reporting import saliency  # pylint: disable=g-import-not-at-top
  from cnn_jax.serving import inference  # pylint: disable=g-import-not-at-top
  trained = inference.load_trained(digits_run, 'best')
  examples, logits = inference.split_logits(trained, 'test')
  target = saliency.cam_target(trained.model, trained.variables, trained.info.image_shape)
  assert (target.path, target.on_input, target.shape) == ('pool_1', True, (4, 4, 64))
  normalised = trained.normalizer(examples.images)
  predicted = logits.argmax(-1)
  cams = saliency.grad_cam(trained.model, trained.variables, normalised, predicted, target)
  assert cams.shape == (360, 8, 8) and cams.min() >= 0 and cams.max() == pytest.approx(1)
  pixels = examples.images[..., 0]
  ring = np.ones((8, 8), bool)
  ring[1:-1, 1:-1] = False
  strokes, border = pixels > 8, (pixels == 0) & ring  # Of the 0–16 digits.
  pairs = [(cam[s].mean(), cam[b].mean()) for cam, s, b in zip(cams, strokes, border)
           if s.any() and b.any()]
  on_strokes, on_border = np.mean(pairs, axis=0)
  assert on_strokes > 1.5 * on_border  # Measured: 0.55 against 0.24 after 900 steps.
  assert np.mean([s > b for s, b in pairs]) > 0.8
  others = saliency.grad_cam(trained.model, trained.variables, normalised, (predicted + 1) % 10,
                             target)
  assert np.abs(cams - others).mean() > 0.1  # Measured: 0.38 after 900 steps.


def test_the_patches_that_excite_a_filter_are_where_its_output_peaks():
  from cnn_jax.models.summary import LayerRow  # pylint: disable=g-import-not-at-top
  from cnn_jax.reporting import saliency  # pylint: disable=g-import-not-at-top
  images = np.arange(2 * 6 * 6, dtype=np.float32).reshape(2, 6, 6, 1)
  outputs = np.zeros((2, 6, 6, 2), np.float32)  # 3×3 SAME (P = 1), stride 1: 6×6 outputs.
  outputs[1, 2, 3, 0] = 5.0  # Filter 0 peaks on image 1 around (2, 3) ...
  outputs[0, 0, 0, 1] = 5.0  # ... filter 1 in image 0's corner, half of its window padding.
  row = LayerRow('conv_0', 'Conv', (6, 6, 2), 20, 0, (6, 6, 1), kernel=3, stride=1, padding=1)
  patches = saliency.strongest_patches(images, outputs, row, count=1)
  assert patches.shape == (2, 1, 3, 3, 1)
  np.testing.assert_array_equal(patches[0, 0], images[1, 1:4, 2:5])
  corner = np.zeros((3, 3, 1), np.float32)
  corner[1:, 1:] = images[0, :2, :2]
  np.testing.assert_array_equal(patches[1, 0], corner)


def test_pooling_three_ways_on_one_map():
  from cnn_jax.reporting import saliency  # pylint: disable=g-import-not-at-top
  feature_map = np.array([[1, 3, 0, 0], [0, 4, 0, 0], [2, 2, 5, 0], [2, 2, 0, 0]], np.float32)
  pooled = saliency.pooled_three_ways(feature_map)
  np.testing.assert_allclose(pooled['max'], [[4, 0], [2, 5]])
  np.testing.assert_allclose(pooled['avg'], [[2, 0], [2, 1.25]])
  np.testing.assert_allclose(pooled['l2'], [[np.sqrt(26), 0], [4, 5]], atol=1e-5)


CHROMIUM = shutil.which('chromium') or shutil.which('chromium-browser')
# The page's images that the browser decoded, written into the page once it has loaded.
_PROBE = ('<script>window.addEventListener("load", () => {const images = [...document.images];'
          'document.body.dataset.rendered = images.filter(i => i.complete && i.naturalWidth > 0)'
          '.length + "/" + images.length;});</script></body>')


def _render_in_chromium(index: str, figures: int, tmp_path, height: int = 6000) -> np.ndarray:
  """Opens the page `index` in headless Chromium: checks it decoded all `figures` images, and
  returns a screenshot of it as grey pixels."""
  with open(index, encoding='utf-8') as f:
    page = f.read()
  probe = os.path.join(os.path.dirname(index), 'rendered.html')
  with open(probe, 'w', encoding='utf-8') as f:
    f.write(page.replace('</body>', _PROBE))
  browser = [CHROMIUM, '--headless', '--no-sandbox', '--disable-gpu', '--hide-scrollbars']
  dom = subprocess.run(browser + ['--virtual-time-budget=5000', '--dump-dom', f'file://{probe}'],
                       capture_output=True, text=True, timeout=120, check=False)
  assert f'data-rendered="{figures}/{figures}"' in dom.stdout, dom.stderr[-2000:]
  shot = str(tmp_path / 'page.png')
  subprocess.run(browser + [f'--window-size=1100,{height}', f'--screenshot={shot}',
                            f'file://{index}'], capture_output=True, timeout=120, check=True)
  with Image.open(shot) as image:
    return np.asarray(image.convert('L'), np.float32)


@pytest.mark.skipif(CHROMIUM is None, reason='no chromium: apt-get install chromium (.ci/run does)')
def test_a_browser_renders_every_figure_of_the_report(digits_run, tmp_path):
  directory = shutil.copytree(os.path.dirname(run_report.build_report(digits_run)),
                              tmp_path / 'report')
  pixels = _render_in_chromium(os.path.join(directory, 'index.html'), len(FIGURES), tmp_path)
  drawn_rows = (pixels < 200).any(axis=1)  # Rows where something darker than paper was drawn.
  assert drawn_rows.mean() > 0.5, 'most of the page is blank'


@pytest.mark.skipif(CHROMIUM is None, reason='no chromium: apt-get install chromium (.ci/run does)')
def test_a_browser_renders_the_sweep_page_with_every_trial_in_its_figures(tmp_path):
  from cnn_jax.sweeps import leaderboard  # pylint: disable=g-import-not-at-top
  workdir = tmp_path / 'sweep'
  sweep = subprocess.run(
      [sys.executable, '-m', 'cnn_jax.sweep', '--config', 'configs/digits.py', '--workdir',
       str(workdir), '--config.num_steps=22', '--config.eval_every_steps=11',
       '--sweep', 'model.features=[(8,),(16,)]', '--sweep', 'optimizer.learning_rate=[1e-3,3e-3]'],
      cwd=REPO, capture_output=True, text=True, timeout=600, check=True)
  assert 'Warning' not in sweep.stderr, sweep.stderr  # No library warning reaches the console.
  index = run_report.build_report(str(workdir))
  figures = len(leaderboard.OPTUNA_FIGURES)
  pixels = _render_in_chromium(index, figures, tmp_path, height=3000)
  assert (pixels < 200).any(axis=1).mean() > 0.3, 'most of the sweep page is blank'
  # Each trial is a line of the parallel-coordinates plot, none drawn in a near-white colour.
  for name in ('parallel.png', 'slice.png'):
    with Image.open(os.path.join(os.path.dirname(index), name)) as image:
      rgb = np.asarray(image.convert('RGB'), np.float32)
    assert rgb.std() > 10, name
