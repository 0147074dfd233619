"""Exported models: the same probabilities as cnn_jax's own prediction, run with JAX alone."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from cnn_jax import data
from cnn_jax.runtime import exported_model
from cnn_jax.training import export, inference, train
from conftest import REPO, load_config


def _test_pixels():
  """The 360 test digits as 8-bit images, as image files hold them."""
  split = data.load_split(data.DataSpec('digits'), 'test')
  return np.round(split.images.astype(np.float32) * 255 / 16).astype(np.uint8)


def _trained(tmp_path, name, **model):
  config = load_config('digits')
  config.num_steps, config.progress_bar = 44, False
  config.model.update(model)
  workdir = str(tmp_path / name)
  train.train_and_evaluate(config, workdir)
  return inference.load_trained(workdir)


@pytest.mark.parametrize('name, model', [
    ('convnet', {}),
    ('batch_norm', {'batch_norm': True}),  # Running statistics baked in.
])
def test_the_exported_model_gives_cnn_jax_s_probabilities(tmp_path, name, model):
  trained = _trained(tmp_path, name, **model)
  pixels = _test_pixels()
  ours = np.stack([p.probabilities for p in inference.predict_images(trained, list(pixels))])
  directory = str(tmp_path / 'export')
  export.export_stablehlo(trained, directory)
  exported = exported_model.load(directory)
  np.testing.assert_allclose(exported(pixels), ours, atol=1e-5)
  assert exported.class_names == trained.info.class_names
  fixed = str(tmp_path / 'fixed')
  export.export_stablehlo(trained, fixed, batch=32)
  np.testing.assert_allclose(exported_model.load(fixed)(pixels[:45]), ours[:45], atol=1e-5)


def test_a_resnet_exports_too(tmp_path):
  config = load_config('digits')
  config.num_steps, config.progress_bar = 10, False
  config.model = type(config.model)({'name': 'resnet_small', 'stage_sizes': (1, 1),
                                     'num_filters': 8})
  workdir = str(tmp_path / 'resnet')
  train.train_and_evaluate(config, workdir)
  trained = inference.load_trained(workdir)
  pixels = _test_pixels()[:50]
  ours = np.stack([p.probabilities for p in inference.predict_images(trained, list(pixels))])
  export.export_stablehlo(trained, str(tmp_path / 'export'))
  np.testing.assert_allclose(exported_model.load(str(tmp_path / 'export'))(pixels), ours,
                             atol=1e-5)


def test_the_command_writes_a_directory_that_runs_without_cnn_jax(tmp_path):
  trained = _trained(tmp_path, 'run')
  result = subprocess.run([sys.executable, '-m', 'cnn_jax.export', '--workdir', trained.workdir,
                           '--out', str(tmp_path / 'out'), '--platforms', 'cpu,cuda,tpu'],
                          cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == 0, result.stderr
  assert sorted(os.listdir(tmp_path / 'out')) == ['exported_model.py', 'model.json',
                                                  'model.stablehlo']
  np.save(tmp_path / 'pixels.npy', _test_pixels()[:20])
  script = ('import sys; sys.path.insert(0, sys.argv[1]); import numpy as np, exported_model; '
            'p = exported_model.load(sys.argv[1])(np.load(sys.argv[2])); np.save(sys.argv[3], p); '
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('cnn_jax', 'flax')))")
  run = subprocess.run([sys.executable, '-c', script, str(tmp_path / 'out'),
                        str(tmp_path / 'pixels.npy'), str(tmp_path / 'p.npy')],
                       cwd=str(tmp_path), capture_output=True, text=True, timeout=300,
                       check=False)
  assert run.returncode == 0, run.stderr
  assert run.stdout.strip() == '[]'  # Neither cnn_jax nor Flax was imported.
  ours = np.stack([p.probabilities for p in
                   inference.predict_images(trained, list(_test_pixels()[:20]))])
  np.testing.assert_allclose(np.load(tmp_path / 'p.npy'), ours, atol=1e-5)
  files = []
  for i, image in enumerate(_test_pixels()[:6]):
    files.append(str(tmp_path / f'{i}.png'))
    Image.fromarray(image[..., 0]).save(files[-1])
  printed = {}
  for source in (trained.workdir, str(tmp_path / 'out')):  # The run, then its export.
    predicted = subprocess.run([sys.executable, '-m', 'cnn_jax.predict', '--workdir', source,
                                '--json', '--top_k=10', *files], cwd=REPO, capture_output=True,
                               text=True, timeout=300, check=True)
    printed[source] = [json.loads(line) for line in predicted.stdout.splitlines()]
  run, exported = printed.values()
  assert [r['prediction'] for r in run] == [r['prediction'] for r in exported]
  np.testing.assert_allclose([[c['probability'] for c in r['top_k']] for r in run],
                             [[c['probability'] for c in r['top_k']] for r in exported], atol=1e-5)
  bad = subprocess.run([sys.executable, '-m', 'cnn_jax.export', '--workdir', trained.workdir,
                        '--platforms', 'gpu'], cwd=REPO, capture_output=True, text=True,
                       timeout=300, check=False)
  assert bad.returncode == 2 and 'NVIDIA GPUs are cuda' in bad.stderr
