"""The speed layer: each trick computes what the textbook layer computes (values, gradients,
running averages), `resolve` decides 'auto' for the platform, and nothing outside cnn_jax/speed
decides by platform."""

import os
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnn_jax import speed
from cnn_jax.configs import default
from cnn_jax.models import create_model
from cnn_jax.models.layers import TEXTBOOK, Pool
from cnn_jax.speed.fast_layers import ReshapePool, SplitBiasConv
from conftest import REPO
from test_models import SHAPES, images, with_random_head

POOL_FIRST = speed.Speed('cpu', pool_first=True).layer_set
MATMUL_BATCH_NORM = speed.Speed('cpu', batch_norm_by_matmul=True).layer_set


@pytest.mark.parametrize('size', [(8, 8), (7, 7), (9, 6)])
@pytest.mark.parametrize('window', [2, 3])
def test_fast_max_pool_equals_nn_max_pool(size, window):
  x = images((*size, 3))
  fast = ReshapePool('max', window, window).apply({}, x)
  reference = nn.max_pool(x, (window, window), (window, window), 'VALID')
  assert fast.shape == reference.shape
  np.testing.assert_array_equal(fast, reference)


@pytest.mark.parametrize('size, window', [((8, 8), 2), ((7, 9), 2), ((9, 9), 3)])
def test_fast_max_pool_gradient_equals_nn_max_pool_even_with_ties(size, window):
  # Each window's gradient goes to its first maximum, as XLA's select-and-scatter and PyTorch do;
  # the rounded inputs below make many ties, and the odd sizes leave rows outside every window.
  x = jnp.round(images((*size, 2), batch=3) * 2) / 2
  weights = images((size[0] // window, size[1] // window, 2), batch=3, seed=1)
  loss = lambda pool: lambda x: jnp.sum(pool(x) * weights)
  fast = jax.grad(loss(lambda x: ReshapePool('max', window, window).apply({}, x)))(x)
  reference = jax.grad(loss(lambda x: nn.max_pool(x, (window, window), (window, window))))(x)
  np.testing.assert_array_equal(fast, reference)


@pytest.mark.parametrize('kind', ['max', 'avg', 'l2'])
def test_pooling_by_reshape_equals_the_textbook_pool(kind):
  x = images((7, 9, 2))
  fast = ReshapePool(kind, 2, 2).apply({}, x)
  textbook = Pool(kind, 2, 2).apply({}, x)  # XLA's reduce_window.
  np.testing.assert_allclose(fast, textbook, rtol=1e-6, atol=1e-6)
  grads = [jax.grad(lambda x, p=p: jnp.sum(jnp.sin(p.apply({}, x))))(x)
           for p in (ReshapePool(kind, 2, 2), Pool(kind, 2, 2))]
  np.testing.assert_allclose(*grads, rtol=1e-5, atol=1e-6)


def test_overlapping_windows_pool_as_the_textbook_pool_does():
  x = images((7, 7, 2))
  out = ReshapePool('max', 3, 2).apply({}, x)
  np.testing.assert_array_equal(out, nn.max_pool(x, (3, 3), (2, 2), 'VALID'))


@pytest.mark.parametrize('kwargs', [
    dict(activation='relu'), dict(activation='tanh', pool_window=3, pool_stride=2),
    dict(activation='leaky_relu', batch_norm=True)])
def test_pool_first_training_equals_the_textbook_order(kwargs):
  # The fast order (conv → max pool → bias → activation) must compute the textbook network:
  # equal logits, and gradients equal up to float summation order.
  shape = (12, 12, 3)
  fast = create_model('convnet', 4, features=(6, 8), dense=(), layer_set=POOL_FIRST, **kwargs)
  textbook = fast.clone(layer_set=TEXTBOOK)
  variables = with_random_head(fast.init(jax.random.key(0), jnp.zeros((1, *shape))))
  x = images(shape, batch=4)

  def loss(params, model):
    logits, _ = model.apply({**variables, 'params': params}, x, train=True,
                            mutable=['batch_stats'])
    return jnp.sum(logits ** 2), logits

  (_, fast_logits), fast_grads = jax.value_and_grad(loss, has_aux=True)(variables['params'], fast)
  (_, book_logits), book_grads = jax.value_and_grad(loss, has_aux=True)(variables['params'],
                                                                      textbook)
  np.testing.assert_array_equal(fast_logits, book_logits)
  for a, b in zip(jax.tree.leaves(fast_grads), jax.tree.leaves(book_grads)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  assert any(jnp.any(g != 0) for g in jax.tree.leaves(fast_grads))


def test_split_bias_conv_has_the_parameters_and_outputs_of_flax_conv():
  # Checkpoints and warm starts rely on the same names, shapes and initial values as nn.Conv.
  x = images((9, 9, 2))
  for padding, stride in (('SAME', 1), ('VALID', 2)):
    ours = SplitBiasConv(5, (3, 3), (stride, stride), padding)
    flax_conv = nn.Conv(5, (3, 3), (stride, stride), padding)
    variables = ours.init(jax.random.key(1), x)
    assert jax.tree.map(jnp.shape, variables) == jax.tree.map(
        jnp.shape, flax_conv.init(jax.random.key(1), x))
    variables = jax.tree.map(lambda v: v + 0.5, variables)  # a non-zero bias too
    np.testing.assert_array_equal(ours.apply(variables, x), flax_conv.apply(variables, x))


@pytest.mark.parametrize('name, kwargs', [
    ('convnet', dict(features=(6, 8), dense=(5,), batch_norm=True)),
    ('resnet_small', {}),
])
def test_batch_norm_by_matmul_computes_flax_batch_norm(name, kwargs):
  # The statistics as matrix products and the hand-written gradient must be Flax's BatchNorm:
  # the same parameters, logits, gradients and running averages, up to float summation order
  # (with JAX_ENABLE_X64 and float64 models the two agree to 1e-15).
  shape = SHAPES.get(name, (12, 12, 3))
  fast = create_model(name, 4, layer_set=MATMUL_BATCH_NORM, **kwargs)
  plain = fast.clone(layer_set=TEXTBOOK)
  x = images(shape, batch=4) * 3.0 + 1.0  # Batch statistics far from the initial 0 and 1.
  variables = with_random_head(fast.init(jax.random.key(0), x))
  assert (jax.tree.structure(variables)
          == jax.tree.structure(plain.init(jax.random.key(0), x)))
  # A non-trivial scale and bias, so their gradients and the input's all matter.
  variables = {**variables, 'params': jax.tree.map(
      lambda p: p + 0.3 * jax.random.normal(jax.random.key(p.size), p.shape),
      variables['params'])}

  def loss(params, model):
    logits, updates = model.apply({**variables, 'params': params}, x, train=True,
                                  mutable=['batch_stats'])
    return jnp.sum(jnp.sin(logits)), (logits, updates['batch_stats'])

  results = [jax.value_and_grad(loss, has_aux=True)(variables['params'], m) for m in (fast, plain)]
  (_, (fast_logits, fast_stats)), fast_grads = results[0]
  (_, (plain_logits, plain_stats)), plain_grads = results[1]
  np.testing.assert_allclose(fast_logits, plain_logits, rtol=1e-4, atol=1e-5)
  for a, b in zip(jax.tree.leaves((fast_grads, fast_stats)),
                  jax.tree.leaves((plain_grads, plain_stats))):
    # Float32 sums of hundreds of terms in another order: off by ~1e-5 of the largest entry.
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4 * float(jnp.abs(b).max()))
  assert any(jnp.any(g != 0) for g in jax.tree.leaves(fast_grads))
  # Evaluation uses the running averages the same way.
  np.testing.assert_array_equal(fast.apply(variables, x), plain.apply(variables, x))


def _lowered_text(model, shape=(2, 8, 8, 1)) -> str:
  """The StableHLO of a training step's forward and backward pass through `model`."""
  x = jnp.ones(shape)
  variables = model.init(jax.random.key(0), x)

  def loss(params):
    logits, _ = model.apply({**variables, 'params': params}, x, train=True,
                            mutable=['batch_stats'])
    return logits.sum()
  return jax.jit(jax.grad(loss)).lower(variables['params']).as_text()


def test_auto_turns_the_cpu_tricks_on_on_a_cpu_only_and_each_can_be_set():
  """'auto': pool-before-bias, pooling by reshape, batch-norm sums by matmul and kept memory on a
  CPU only, where they were measured to win; a population looped there and vmapped elsewhere."""
  settings = default.get_config().speed
  on_cpu, on_gpu = speed.resolve(settings, 'cpu'), speed.resolve(settings, 'gpu')
  switches = lambda s: (s.pool_first, s.pool_by_reshape, s.batch_norm_by_matmul,
                        s.keep_freed_memory)
  assert switches(on_cpu) == (True,) * 4 and switches(on_gpu) == (False,) * 4
  assert (on_cpu.population_vectorize, on_gpu.population_vectorize) == ('loop', 'vmap')
  assert on_gpu.compiler_options() is None
  model = create_model('convnet', 10, features=(4,), batch_norm=True, dense=())
  cpu_model = model.clone(layer_set=on_cpu.layer_set)
  assert 'reduce_window' not in _lowered_text(cpu_model)
  assert 'reduce_window' in _lowered_text(model.clone(layer_set=on_gpu.layer_set))
  settings.pool_by_reshape = False  # Switched off by hand, on a CPU.
  assert 'reduce_window' in _lowered_text(model.clone(layer_set=speed.resolve(settings,
                                                                            'cpu').layer_set))
  settings.batch_norm_by_matmul = True  # Forced on, on a GPU.
  assert speed.resolve(settings, 'gpu').batch_norm_by_matmul
  x = images((8, 8, 1), batch=4)
  variables = model.init(jax.random.key(0), x)
  np.testing.assert_allclose(cpu_model.apply(variables, x), model.apply(variables, x), rtol=1e-5)


def test_steps_per_call_scan_on_an_accelerator_only_unless_set():
  settings = default.get_config().speed
  periods = (50, 100, 100)
  assert speed.resolve(settings, 'gpu').steps_per_call(True, 468, periods) == 50
  assert speed.resolve(settings, 'gpu').steps_per_call(False, 468, periods) == 1
  assert speed.resolve(settings, 'cpu').steps_per_call(True, 468, periods) == 1
  settings.steps_per_dispatch = 8
  assert speed.resolve(settings, 'cpu').steps_per_call(True, 468, periods) == 8


def test_no_module_outside_the_speed_layer_decides_by_platform():
  """'auto' is resolved in one place: no other module compares the platform or names a trick."""
  platform_test = re.compile(r"""(platform|default_backend\(\))\s*[!=]=\s*'(cpu|gpu|tpu)'""")
  tricks = re.compile(r'\b(pool_first|pool_by_reshape|batch_norm_by_matmul|MatmulBatchNorm|'
                      r'ReshapePool|SplitBiasConv)\b')
  found = []
  package = os.path.join(REPO, 'cnn_jax')
  for directory, _, names in os.walk(package):
    if os.path.relpath(directory, package).startswith('speed'):
      continue
    for name in names:
      if name.endswith('.py'):
        path = os.path.join(directory, name)
        with open(path, encoding='utf-8') as f:
          text = f.read()
        rel = os.path.relpath(path, REPO)
        found += [f'{rel}: {m.group(0)}' for m in platform_test.finditer(text)]
        if not rel.startswith('cnn_jax/configs/'):  # default.py defines config.speed's fields.
          found += [f'{rel}: {m.group(0)}' for m in tricks.finditer(text)]
  assert not found, found
  # And the check sees what it looks for.
  assert platform_test.search("if jax.devices()[0].platform == 'cpu':")


def test_a_speed_setting_out_of_range_is_named():
  settings = default.get_config().speed
  settings.pool_first, settings.steps_per_dispatch = 'maybe', 4
  problems = speed.problems(settings, on_device=False)
  assert any(p.startswith("config.speed.pool_first='maybe'") for p in problems)
  assert any('config.data.on_device=True' in p for p in problems)
  assert speed.problems(default.get_config().speed, on_device=False) == []
