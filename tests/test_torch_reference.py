"""The PyTorch reference is the same network as cnn_jax's, and the benchmark compares against it.

CI does not install torch: the tests that need it are skipped there, the others still run.
"""

import importlib.util
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnn_jax import models
from cnn_jax.benchmarks import time_to_accuracy, torch_reference
from cnn_jax.training import optim, setup
from cnn_jax.errors import UserError
from cnn_jax.models import layers
from conftest import REPO, load_config


def _flax_variables(name, kwargs, image_shape, num_classes):
  """Returns the Flax model and random variables of the right shapes (no init: it is slow)."""
  model = models.create_model(name, num_classes, **kwargs)
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, *image_shape)))
  rng = np.random.default_rng(0)
  return model, jax.tree.map(lambda s: rng.normal(0, 0.3, s.shape).astype(np.float32), shapes)


def test_without_torch_the_error_says_how_to_install_the_cpu_build(monkeypatch):
  monkeypatch.setitem(sys.modules, 'torch', None)  # `import torch` now raises ImportError.
  with pytest.raises(UserError, match='download.pytorch.org/whl/cpu'):
    torch_reference.build_torch_convnet('tiny', {}, (8, 8, 1), 10)


def test_models_outside_the_convnet_family_are_refused():
  with pytest.raises(UserError, match='ConvNet family only'):
    torch_reference.build_torch_convnet('resnet18', {}, (32, 32, 3), 10)


def test_every_activation_and_initializer_has_a_torch_counterpart():
  assert set(torch_reference._ACTIVATIONS) == set(layers.ACTIVATIONS)
  assert set(torch_reference._INITIALIZERS) == set(layers.INITIALIZERS)
  assert set(torch_reference._POOLS) == set(layers.POOL_KINDS) - {'none'}


def test_train_until_stops_at_the_target_or_gives_up():
  accuracies = iter([0.5, 0.8, 0.9])
  reached = time_to_accuracy.train_until(lambda e: None, lambda: next(accuracies), 0.75, 5, 0.0)
  assert reached['epochs'] == 2 and reached['accuracy'] == 0.8 and reached['seconds'] > 0
  never = time_to_accuracy.train_until(lambda e: None, lambda: 0.1, 0.75, 3, 0.0)
  assert never == {'seconds': None, 'epochs': 3, 'accuracy': 0.1}


def test_both_frameworks_take_the_batch_order_of_shuffle_seed_else_seed():
  config = load_config('digits')
  config.seed = 3
  assert setup.shuffle_seed(config) == 3
  if 'shuffle_seed' in config:
    config.shuffle_seed = 7
    assert setup.shuffle_seed(config) == 7


@pytest.mark.parametrize('name, kwargs, image_shape, num_classes, expected', [
  ('keras_mnist', {}, (28, 28, 1), 10, 34_826),
  ('single_conv', {}, (300, 300, 3), 2, 438_842),
  ('lenet5', {}, (28, 28, 1), 10, 61_706),
  ('convnet', {'batch_norm': True, 'dense': (128,)}, (28, 28, 1), 10, None),
])
def test_parameter_count_matches_cnn_jax(name, kwargs, image_shape, num_classes, expected):
  pytest.importorskip('torch')
  net = torch_reference.build_torch_convnet(name, kwargs, image_shape, num_classes)
  _, variables = _flax_variables(name, kwargs, image_shape, num_classes)
  flax_count = sum(p.size for p in jax.tree.leaves(variables['params']))
  assert sum(p.numel() for p in net.parameters()) == flax_count
  assert expected in (None, flax_count)


def _copy_flax_weights(net, variables, model, image_shape):
  """Loads the Flax variables into the torch net; the first dense layer's rows are reordered
  from Flax's (H, W, C) flatten order to PyTorch's (C, H, W)."""
  import torch  # pylint: disable=g-import-not-at-top
  params, stats = variables['params'], variables.get('batch_stats', {})
  as_tensor = lambda array: torch.from_numpy(np.array(array))
  convs = [m for m in net if isinstance(m, torch.nn.Conv2d)]
  norms = [m for m in net if isinstance(m, torch.nn.BatchNorm2d)]
  denses = [m for m in net if isinstance(m, torch.nn.Linear)]
  flax_denses = [params[f'dense_{j}'] for j in range(len(model.dense))] + [params['head']]
  with torch.no_grad():
    for i, conv in enumerate(convs):
      kernel = np.asarray(params[f'conv_{i}']['kernel'])  # [kh, kw, in, out]
      conv.weight.copy_(as_tensor(kernel.transpose(3, 2, 0, 1)))
      if conv.bias is not None:
        conv.bias.copy_(as_tensor(params[f'conv_{i}']['bias']))
    for i, norm in enumerate(norms):
      norm.weight.copy_(as_tensor(params[f'bn_{i}']['scale']))
      norm.bias.copy_(as_tensor(params[f'bn_{i}']['bias']))
      norm.running_mean.copy_(as_tensor(stats[f'bn_{i}']['mean']))
      norm.running_var.copy_(as_tensor(stats[f'bn_{i}']['var']))
    flatten = next(i for i, m in enumerate(net) if isinstance(m, torch.nn.Flatten))
    c, h, w = net[:flatten](torch.zeros(1, image_shape[2], *image_shape[:2])).shape[1:]
    for j, (dense, flax_dense) in enumerate(zip(denses, flax_denses)):
      kernel = np.asarray(flax_dense['kernel'])  # [in, out]
      if j == 0:
        kernel = kernel.reshape(h, w, c, -1).transpose(2, 0, 1, 3).reshape(h * w * c, -1)
      dense.weight.copy_(as_tensor(kernel.T))
      dense.bias.copy_(as_tensor(flax_dense['bias']))


@pytest.mark.parametrize('name, kwargs, image_shape', [
  ('lenet5', {}, (28, 28, 1)),
  # Stride 2 with SAME padding and an even kernel: the odd padding pixel goes after, as in Flax.
  ('convnet', {'features': (6, 8), 'kernel_size': (4, 3), 'strides': (2, 1), 'pool': ('none', 'l2'),
               'activation': 'gelu', 'batch_norm': True, 'dense': (16,)}, (13, 11, 3)),
])
def test_forward_pass_equals_flax_with_the_same_weights(name, kwargs, image_shape):
  torch = pytest.importorskip('torch')
  net = torch_reference.build_torch_convnet(name, kwargs, image_shape, 5).eval()
  model, variables = _flax_variables(name, kwargs, image_shape, 5)
  if model.batch_norm:  # Random running statistics check eval-mode batch norm; variances > 0.
    variables['batch_stats'] = jax.tree.map(np.abs, variables['batch_stats'])
  _copy_flax_weights(net, variables, model, image_shape)
  images = np.random.default_rng(0).normal(size=(3, *image_shape)).astype(np.float32)
  expected = np.asarray(jax.jit(model.apply)(variables, images))
  with torch.no_grad():
    logits = net(torch.from_numpy(images.transpose(0, 3, 1, 2).copy())).numpy()
  assert logits.shape == (3, 5)
  np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4)


def test_the_learning_rate_schedule_is_cnn_jax_s():
  torch = pytest.importorskip('torch')
  config = load_config('digits').optimizer
  param = torch.nn.Parameter(torch.zeros(3))
  optimizer, scheduler = torch_reference.torch_optimizer([param], config, total_steps=200)
  schedule = optim.create_schedule('cosine', config.learning_rate, 200, config.warmup_steps)
  for step in range(61):  # Step s is taken at the rate optax gives for count s.
    if step in (0, 1, 25, 50, 60):
      assert optimizer.param_groups[0]['lr'] == pytest.approx(float(schedule(step)), rel=1e-5)
    optimizer.step()
    scheduler.step()


def test_measure_torch_times_a_few_steps_of_the_digits_config():
  pytest.importorskip('torch')
  config = load_config('digits')
  rng = np.random.default_rng(0)
  batches = [{'image': rng.normal(size=(config.batch_size, 8, 8, 1)).astype(np.float32),
              'label': rng.integers(0, 10, config.batch_size).astype(np.int32)}]
  results = torch_reference.measure_torch(config, num_steps=3, warmup=1, synthetic_batches=batches)
  assert set(results) == {'train_first_step_s', 'train_images_per_s', 'eval_first_step_s',
                          'eval_images_per_s'}
  assert all(value > 0 for value in results.values())


def test_benchmark_against_torch_reports_ratios():
  pytest.importorskip('torch')
  command = [sys.executable, '-m', 'cnn_jax.benchmark', '--config', 'configs/digits.py',
             '--steps', '3', '--warmup', '1', '--against', 'torch', '--json']
  done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300,
                        env={**os.environ, 'JAX_PLATFORMS': 'cpu'}, check=False)
  assert done.returncode == 0, done.stderr
  results = json.loads(done.stdout.strip().splitlines()[-1])
  assert results['train_ratio'] > 0 and results['eval_ratio'] > 0
  assert results['torch_train_images_per_s'] > 0 and results['train_images_per_s'] > 0
  # The second column: torch.compile's figures where it works here, else why it does not.
  assert (results.get('torch_compiled_train_images_per_s', 0) > 0
          and results['compiled_train_ratio'] > 0) or results['torch_compile_error']


def test_the_plain_pytorch_digits_script_is_the_readme_job():
  """experiments/benchmarks/digits_torch.py, which whole_job.py times against `cnn-jax train
  --config digits`: the same network (parameter count) and the same splits' sizes."""
  pytest.importorskip('torch')
  spec = importlib.util.spec_from_file_location(
      'digits_torch', os.path.join(REPO, 'experiments', 'benchmarks', 'digits_torch.py'))
  script = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(script)
  assert sum(p.numel() for p in script.network().parameters()) == 53_002  # As cnn_jax's.
  train, validation, test = script.splits(0)
  assert (len(train[1]), len(validation[1]), len(test[1])) == (1_293, 144, 360)


def test_the_torch_augmentations_do_what_cnn_jax_s_do():
  """Each transform on its own: a crop is a window of the zero-padded image, a flip a mirror, an
  erased image differs in one rectangle; shapes kept, and the same generator draws the same."""
  torch = pytest.importorskip('torch')
  from cnn_jax.training.augment import Augmentation  # pylint: disable=g-import-not-at-top
  images = torch.randn(64, 2, 9, 11)
  draw = lambda aug, seed=0: torch_reference.augment_batch(
      torch, images, aug, torch.Generator().manual_seed(seed))
  cropped = draw(Augmentation(crop_padding=2))
  assert cropped.shape == images.shape
  padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
  for i in range(len(images)):
    windows = [(dy, dx) for dy in range(5) for dx in range(5)
               if torch.equal(padded[i, :, dy:dy + 9, dx:dx + 11], cropped[i])]
    assert windows, f'image {i} is not a window of its padded self'
  assert len({tuple(cropped[i].flatten()[:5].tolist()) == tuple(images[i].flatten()[:5].tolist())
              for i in range(len(images))}) == 2  # Some moved, some (offset 2, 2) did not.
  flipped = draw(Augmentation(horizontal_flip=True))
  mirrored = [torch.equal(flipped[i], images[i].flip(2)) for i in range(len(images))]
  kept = [torch.equal(flipped[i], images[i]) for i in range(len(images))]
  assert all(m or k for m, k in zip(mirrored, kept)) and 16 < sum(mirrored) < 48
  erased = draw(Augmentation(erase_probability=1.0))
  changed = (erased != images).any(1)  # [B, H, W]
  for mask in changed:
    rows, cols = torch.nonzero(mask.any(1)).flatten(), torch.nonzero(mask.any(0)).flatten()
    assert mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].all()  # One full rectangle.
  assert torch.equal(draw(Augmentation(crop_padding=2, horizontal_flip=True)),
                     draw(Augmentation(crop_padding=2, horizontal_flip=True)))


def test_the_torch_evaluation_flips_at_test_time_as_cnn_jax():
  torch = pytest.importorskip('torch')

  class LeftHalf(torch.nn.Module):  # Class 0 if the left half is brighter, else 1 (biased).
    def forward(self, x):
      left, right = x[..., :2].mean((1, 2, 3)), x[..., 2:].mean((1, 2, 3))
      return torch.stack([left - right, right - left + 0.5], 1)

  images = torch.zeros(1, 1, 4, 4)
  images[..., :2] = 1.0  # Logits (1, -0.5): p(0) = 0.82; mirrored (-1, 1.5): p(0) = 0.08.
  labels, mask = torch.tensor([0]), torch.ones(1)
  assert torch_reference._correct(LeftHalf(), False, images, labels, mask) == 1
  assert torch_reference._correct(LeftHalf(), True, images, labels, mask) == 0  # Mean p(0) 0.45.
