"""Training: the pure steps, determinism by seed, the written run record, and real learning."""

import dataclasses
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import tensorflow_datasets as tfds

from jax.sharding import Mesh, NamedSharding, PartitionSpec

from cnn_jax import data, models, speed
from cnn_jax.data import sources
from cnn_jax.runtime import compilation_cache
from cnn_jax.training import loop, losses, optim, runners, setup, steps, train
from cnn_jax.errors import UserError
from cnn_jax.runtime.writers import read_metrics
from conftest import REPO, load_config


def _setup(seed=0, model_name='tiny', **model_kwargs):
  model = models.create_model(model_name, 10, **model_kwargs)
  tx = optax.adam(1e-2)
  state = steps.create_train_state(model, tx, jax.random.key(seed), (8, 8, 1))
  rng = np.random.default_rng(0)
  batch = {'image': jnp.asarray(rng.normal(size=(16, 8, 8, 1)), jnp.float32),
           'label': jnp.asarray(rng.integers(0, 10, 16), jnp.int32)}
  return model, tx, state, batch


def test_one_step_changes_params_and_a_second_does_not_retrace():
  model, tx, state, batch = _setup()
  before = jax.tree.map(np.array, state.params)  # Copy: the step donates the state's buffers.
  train_step = steps.build_steps(model, tx).jit_train()
  state, metrics = train_step(state, batch)
  state, metrics = train_step(state, batch)
  assert int(state.step) == 2 and np.isfinite(float(metrics['loss']))
  changed = jax.tree.map(lambda a, b: not np.allclose(a, b), before, jax.device_get(state.params))
  assert all(jax.tree.leaves(changed))
  assert train_step._cache_size() == 1  # pylint: disable=protected-access


def test_dropout_and_batch_norm_models_train():
  model, tx, state, batch = _setup(model_name='convnet', features=(4,), batch_norm=True,
                                   dense_dropout=0.5)
  stats_before = jax.tree.map(np.array, state.batch_stats)
  state, _ = steps.build_steps(model, tx).jit_train()(state, batch)
  moved = jax.tree.map(lambda a, b: not np.allclose(a, b), stats_before,
                       jax.device_get(state.batch_stats))
  assert any(jax.tree.leaves(moved))


def test_eval_step_counts_only_real_examples():
  model, tx, state, batch = _setup()
  batch = dict(batch, mask=jnp.asarray([1.0] * 10 + [0.0] * 6))
  sums = steps.build_steps(model, tx).jit_eval()(state, batch)
  assert float(sums['count']) == 10
  full = steps.build_steps(model, tx).jit_eval()(state, dict(batch, mask=jnp.ones(16)))
  assert float(sums['correct']) <= float(full['correct']) and float(sums['loss_sum']) > 0


def test_label_smoothing_raises_the_loss_of_a_confident_prediction():
  logits = jnp.asarray([[10.0, 0.0, 0.0]])
  labels = jnp.asarray([0])
  assert float(losses.cross_entropy(logits, labels, 0.1)[0]) > float(
      losses.cross_entropy(logits, labels)[0])


@pytest.mark.parametrize('name', optim.OPTIMIZERS)
@pytest.mark.parametrize('schedule', optim.SCHEDULES)
def test_every_optimizer_and_schedule_takes_a_step(name, schedule):
  sched = optim.create_schedule(schedule, 0.1, total_steps=10, warmup_steps=2)
  tx = optim.create_optimizer(name, sched, weight_decay=1e-4, grad_clip_norm=1.0)
  params = {'w': jnp.ones(3)}
  updates, _ = tx.update({'w': jnp.ones(3)}, tx.init(params), params)
  assert np.all(np.isfinite(np.asarray(updates['w'])))
  assert float(sched(10)) <= 0.1 + 1e-6


def test_gradient_clipping_bounds_the_update():
  tx = optim.create_optimizer('sgd', optim.create_schedule('constant', 1.0, 1), momentum=0.0,
                              grad_clip_norm=1.0)
  params = {'w': jnp.zeros(4)}
  updates, _ = tx.update({'w': jnp.full(4, 100.0)}, tx.init(params), params)
  assert float(jnp.linalg.norm(updates['w'])) == pytest.approx(1.0, rel=1e-5)


def _short_digits_config(seed=0):
  config = load_config('digits')
  config.seed = seed
  config.num_steps = 30
  config.eval_every_steps = 15
  config.log_every_steps = 10
  config.progress_bar = False
  return config


def test_same_seed_gives_identical_metrics_and_a_different_seed_does_not(tmp_path):
  runs = {}
  for name, seed in (('a', 0), ('b', 0), ('c', 1)):
    train.train_and_evaluate(_short_digits_config(seed), str(tmp_path / name))
    runs[name] = [{k: v for k, v in r.items() if k != 'time'}
                  for r in read_metrics(str(tmp_path / name))]
  assert runs['a'] == runs['b']
  assert runs['a'] != runs['c']


def test_a_run_writes_metrics_config_and_versions(tmp_path):
  workdir = str(tmp_path / 'run')
  train.train_and_evaluate(_short_digits_config(), workdir)
  records = read_metrics(workdir)
  assert [r['step'] for r in records if r['split'] == 'train'] == [10, 20, 30]
  assert [r['step'] for r in records if r['split'] == 'eval'] == [15, 30]
  assert all(r['count'] == 144 for r in records if r['split'] == 'eval')  # Validation.
  assert [(r['step'], r['count']) for r in records if r['split'] == 'test'] == [(30, 360)]
  with open(os.path.join(workdir, 'config.json'), encoding='utf-8') as f:
    assert json.load(f)['num_steps'] == 30
  with open(os.path.join(workdir, 'versions.json'), encoding='utf-8') as f:
    assert json.load(f)['jax'] == jax.__version__
  # TensorBoard: one run per split, as Keras writes them, so train and validation overlay.
  for run, tags in (('train', (b'loss', b'accuracy', b'learning_rate')),
                    ('validation', (b'loss', b'accuracy')), ('test', (b'loss', b'accuracy'))):
    events = os.listdir(os.path.join(workdir, 'tensorboard', run))
    assert len(events) == 1 and events[0].startswith('events.out.tfevents')
    with open(os.path.join(workdir, 'tensorboard', run, events[0]), 'rb') as f:
      recorded = f.read()
    assert all(tag in recorded for tag in tags) and b'train/' not in recorded


def test_digits_default_learns_far_above_chance(tmp_path):
  """The README's main job, as shipped: ≥ 97% test accuracy on real handwritten digits."""
  config = load_config('digits')
  config.progress_bar = False
  metrics = train.train_and_evaluate(config, str(tmp_path / 'digits'))
  assert metrics['count'] == 144 and metrics['test']['count'] == 360
  assert metrics['test']['accuracy'] >= 0.97  # Chance is 10%; seeds 0–4: see experiments/.


@pytest.mark.parametrize('name, stream', [('mnist', False), ('mnist', True),
                                          ('fashion_mnist', False), ('cats_vs_dogs', False),
                                          ('cats_vs_dogs', True), ('keras_seed', False)])
def test_tfds_configs_run_end_to_end_under_mock_data(tmp_path, monkeypatch, name, stream):
  """The same path a user runs, on TFDS's mock examples (no download is attempted), with the
  splits in memory or streamed (cats_vs_dogs streams by default)."""
  monkeypatch.setattr(sources, 'SYSTEM_COPIES', {})  # TFDS's path even where Debian's files are.
  config = load_config(name, 'small')
  config.data.stream = stream
  config.batch_size = config.eval_batch_size = 8
  config.num_steps = 3
  config.progress_bar = False
  with tfds.testing.mock_data(num_examples=24):
    metrics = train.train_and_evaluate(config, str(tmp_path / name))
  # Mock data serves num_examples for any split, slices included: all 24 are evaluated once,
  # except that a validation split holds out a tenth of the training split's.
  validation = config.data.eval_split == 'validation'
  assert metrics['count'] == (2 if validation else 24) and 0.0 <= metrics['accuracy'] <= 1.0
  assert (metrics['test'] or {}).get('count') == (24 if config.data.test_split else None)


def test_dataset_on_the_device_trains_exactly_like_batches_from_the_host(tmp_path):
  records = {}
  for on_device in (False, True):
    config = _short_digits_config()
    config.data.on_device = on_device
    train.train_and_evaluate(config, str(tmp_path / str(on_device)))
    records[on_device] = [{k: v for k, v in r.items() if k != 'time'}
                          for r in read_metrics(str(tmp_path / str(on_device)))]
  assert records[True] == records[False]  # Same indices, same normalised pixels: bit for bit.


def test_pixels_normalised_on_the_device_train_exactly_like_pixels_normalised_on_the_host(
    tmp_path, monkeypatch):
  """uint8 batches (a quarter of the bytes) normalised inside the step, and a split kept uint8 on
  the device, give the host's float32 pixels bit for bit: the same run, metric for metric."""
  config = _short_digits_config()
  dataset = setup.load_data(config, data.open_source(setup.data_spec(config)))
  sharding = NamedSharding(Mesh(np.asarray(jax.devices()), ('data',)), PartitionSpec('data'))
  table = runners.pixel_table(dataset)
  raw = next(runners.device_train_batches(dataset, 64, 0, 0, sharding, raw_pixels=True))
  assert table is not None and raw['image'].dtype == np.uint8
  records = {}
  for where in ('device', 'host'):
    if where == 'host':  # The training split's pixels normalised by NumPy, as floats travel.
      monkeypatch.setattr(runners, 'pixel_table', lambda dataset: None)
    for on_device in (False, True):
      config.data.on_device = on_device
      workdir = str(tmp_path / f'{where}_{on_device}')
      train.train_and_evaluate(config, workdir)
      records[where, on_device] = [{k: v for k, v in r.items() if k != 'time'}
                                   for r in read_metrics(workdir)]
  assert records['device', False] == records['host', False]
  assert records['device', True] == records['host', True]


def test_several_steps_per_dispatch_train_like_one_step_per_call(tmp_path):
  # lax.scan over on-device batches: the same batches, the same updates, logs at the same steps.
  records = {}
  for per_dispatch in (1, 7):
    config = _short_digits_config()
    config.data.on_device = True
    config.speed.steps_per_dispatch = per_dispatch
    config.log_every_steps = 4  # Dispatches must stop at every log, eval and end.
    workdir = str(tmp_path / str(per_dispatch))
    records[per_dispatch] = (train.train_and_evaluate(config, workdir),
                             [r for r in read_metrics(workdir)])
  (final_1, log_1), (final_7, log_7) = records[1], records[7]
  assert [(r['step'], r['split']) for r in log_7] == [(r['step'], r['split']) for r in log_1]
  for a, b in zip(log_1, log_7):
    np.testing.assert_allclose(a['loss'], b['loss'], rtol=1e-5)
    assert a['accuracy'] == pytest.approx(b['accuracy'], abs=1e-6)
  assert final_7['accuracy'] == pytest.approx(final_1['accuracy'], abs=1 / 360 + 1e-9)


def test_scanned_calls_compile_one_program_whatever_the_cadence(tmp_path, monkeypatch):
  """The accelerator default (auto: scan the steps between stops), forced on this CPU. Calls end
  at every log, eval and save, so their lengths vary (here 10, 2, 8, 4, 6, ...); each would be a
  compilation of its own (autotuned, on a GPU). The shorter ones run the same program with steps
  skipped: JAX's compile events show one program."""
  steps_per_call = speed.Speed.steps_per_call
  monkeypatch.setattr(speed.Speed, 'steps_per_call', lambda self, *args: steps_per_call(
      dataclasses.replace(self, platform='gpu'), *args))
  config = _short_digits_config()
  config.data.on_device, config.speed.steps_per_dispatch = True, 0
  config.num_steps, config.log_every_steps, config.eval_every_steps = 150, 10, 22
  config.compilation_cache = ''  # Count compilations, not loads from the disk cache.
  plan = setup.make_plan(config, 1_293, setup.build_speed(config))
  assert plan.steps_per_dispatch == 10  # The shortest period: logs every 10 steps.
  compiled = []

  def on_compile(event, seconds, fun_name='', **kwargs):
    del seconds, kwargs
    if event == compilation_cache.BACKEND_COMPILE_EVENT:
      compiled.append(fun_name)

  jax.monitoring.register_event_duration_secs_listener(on_compile)
  try:
    scanned = train.train_and_evaluate(config, str(tmp_path / 'scanned'))
  finally:
    jax.monitoring.unregister_event_duration_listener(on_compile)
  assert sum('scanned_train_steps' in name for name in compiled) == 1, compiled
  config.speed.steps_per_dispatch = 1  # The same run, one step per call.
  stepped = train.train_and_evaluate(config, str(tmp_path / 'stepped'))
  logs = [read_metrics(str(tmp_path / w)) for w in ('scanned', 'stepped')]
  assert [(r['step'], r['split']) for r in logs[0]] == [(r['step'], r['split']) for r in logs[1]]
  for a, b in zip(*logs):
    np.testing.assert_allclose(a['loss'], b['loss'], rtol=1e-5)
  assert scanned['accuracy'] == pytest.approx(stepped['accuracy'], abs=1 / 360 + 1e-9)


def test_steps_per_dispatch_needs_the_data_on_the_device(tmp_path):
  config = _short_digits_config()
  config.speed.steps_per_dispatch = 8
  with pytest.raises(UserError, match='data.on_device=True'):
    train.train_and_evaluate(config, str(tmp_path))


def test_choices_are_made_on_validation_and_the_test_split_is_scored_once_at_the_end(tmp_path):
  """The best checkpoint is the one with the best validation accuracy; the test split is
  evaluated once, after training, on that checkpoint, and never during training."""
  from cnn_jax.serving import inference  # pylint: disable=g-import-not-at-top
  config = load_config('digits')
  config.num_steps, config.eval_every_steps, config.progress_bar = 120, 20, False
  config.optimizer.learning_rate = 1e-2  # Noisy enough that the last checkpoint is not the best.
  result = train.train_and_evaluate(config, str(tmp_path))
  records = read_metrics(str(tmp_path))
  evals = {r['step']: r for r in records if r['split'] == 'eval'}
  tests = [r for r in records if r['split'] == 'test']
  assert sorted(evals) == [20, 40, 60, 80, 100, 120] and all(r['count'] == 144 for r in evals.values())
  assert len(tests) == 1 and records[-1] is tests[0] and tests[0]['step'] == 120
  chosen = int(tests[0]['checkpoint_step'])
  assert evals[chosen]['accuracy'] == max(r['accuracy'] for r in evals.values())
  again = inference.evaluate_workdir(str(tmp_path), str(chosen), 'test')
  assert again['count'] == 360 and again['accuracy'] == pytest.approx(tests[0]['accuracy'])
  assert result['test']['accuracy'] == tests[0]['accuracy']
  assert result['accuracy'] == evals[120]['accuracy']  # The last validation result.


def _lowered_text(model, shape=(2, 8, 8, 1)) -> str:
  """The StableHLO of a training step's forward and backward pass through `model`."""
  x = jnp.ones(shape)
  variables = model.init(jax.random.key(0), x)

  def loss(params):
    logits, _ = model.apply({**variables, 'params': params}, x, train=True,
                            rngs={'dropout': jax.random.key(1)}, mutable=['batch_stats'])
    return logits.sum()
  return jax.jit(jax.grad(loss)).lower(variables['params']).as_text()


@pytest.mark.parametrize('name', ['digits', 'resnet'])
def test_precision_reaches_every_convolution_and_product(name):
  config = _short_digits_config()
  if name == 'resnet':
    config.model = type(config.model)({'name': 'resnet_small', 'stage_sizes': (1,),
                                       'num_filters': 4})
    # (The textbook's layers: batch-norm sums by matmul are float32 products at any precision.)
  assert 'HIGHEST' not in _lowered_text(setup.build_model(config, 10))  # 'default'
  config.precision = 'highest'
  text = _lowered_text(setup.build_model(config, 10))
  products = text.count('stablehlo.convolution') + text.count('stablehlo.dot_general')
  assert products >= 6 and text.count('HIGHEST') >= products  # [HIGHEST, HIGHEST] each.


def test_train_steps_are_built_and_compiled_in_one_place():
  """Training, populations, the benchmark and time to accuracy build their steps with
  `steps.build_steps` and compile them with `Steps.jit_train`: one jit of a train step."""
  found = []
  for directory, _, names in os.walk(os.path.join(REPO, 'cnn_jax')):
    for name in names:
      if name.endswith('.py'):
        path = os.path.join(directory, name)
        with open(path, encoding='utf-8') as f:
          found += [os.path.relpath(path, REPO) for line in f if 'donate_argnums' in line]
  assert found == ['cnn_jax/training/steps.py'], found


def test_a_diverging_run_stops_at_the_next_log_and_keeps_the_checkpoint_before_it(tmp_path):
  config = _short_digits_config()
  config.optimizer.name, config.optimizer.learning_rate = 'sgd', 10.0  # Overflows by step 20.
  config.num_steps, config.eval_every_steps, config.log_every_steps = 100, 10, 10
  workdir = str(tmp_path / 'diverged')
  with pytest.raises(loop.TrainingDiverged, match=r'by step 20: .*last finite: .* at step 10\)\. '
                     r'Its checkpoints up to step 10 are kept') as raised:
    train.train_and_evaluate(config, workdir)
  assert 'learning_rate' in str(raised.value)
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['10']
  records = read_metrics(workdir)
  assert [r['step'] for r in records if r['split'] == 'train'] == [10]  # Nothing non-finite.
  config.stop_on_nan = False  # Switched off: the same run trains to the end, nan and all.
  train.train_and_evaluate(config, str(tmp_path / 'unchecked'))
  losses_logged = [r['loss'] for r in read_metrics(str(tmp_path / 'unchecked'))
                   if r['split'] == 'train']
  assert len(losses_logged) == 10 and not np.isfinite(losses_logged[-1])


def test_a_batch_larger_than_the_training_split_is_refused_with_its_size(tmp_path):
  config = _short_digits_config()
  config.batch_size = 100_000
  with pytest.raises(UserError, match=r'batch_size=100,000 is larger than the training split '
                     r'\(1,293 examples\).*77.3 times'):
    train.train_and_evaluate(config, str(tmp_path))
  assert not os.path.exists(os.path.join(str(tmp_path), 'checkpoints'))


def test_a_second_run_on_a_workdir_in_use_is_refused_and_a_killed_ones_lock_is_not(tmp_path):
  workdir = str(tmp_path / 'run')
  holder = subprocess.Popen(
      [sys.executable, '-c', 'import sys, time\nfrom cnn_jax.runtime import workdir_lock\n'
       'with workdir_lock.held(sys.argv[1]):\n  print("held", flush=True)\n  time.sleep(600)',
       workdir], stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline() == 'held\n'
    with pytest.raises(UserError, match=rf'{workdir} is in use by process {holder.pid} on '):
      train.train_and_evaluate(_short_digits_config(), workdir)
    assert not os.path.exists(os.path.join(workdir, 'checkpoints'))  # Refused before any work.
  finally:
    holder.kill()  # As kill -9 would: the kernel releases its lock.
    holder.wait()
  train.train_and_evaluate(_short_digits_config(), workdir)
  assert os.path.isdir(os.path.join(workdir, 'checkpoints'))
