"""Population training: N models in one vmapped program, each member an ordinary, usable run."""

import json
import os

import numpy as np
import pytest
from conftest import load_config

from cnn_jax.serving import inference

from cnn_jax.training import population, setup, train
from cnn_jax.errors import UserError
from cnn_jax.runtime.writers import read_metrics
from cnn_jax.training.workdir import load_run_config as load_saved_config


def small_population(**population_fields):
  config = load_config('digits')
  config.num_steps = 30
  config.eval_every_steps = 15
  config.log_every_steps = 10
  config.progress_bar = False
  config.population.size = 4
  for key, value in population_fields.items():
    config.population[key] = value
  return config


@pytest.fixture(scope='module')
def trained_population(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('population'))
  config = small_population(learning_rates=(1e-3, 3e-3, 1e-3, 2e-3),
                            weight_decays=(0.0, 0.0, 1e-4, 0.0),
                            label_smoothings=(0.0, 0.1, 0.0, 0.0),
                            dense_dropouts=(0.0, 0.0, 0.0, 0.3))
  config.model.dense = (32,)
  best = train.train_and_evaluate(config, workdir)
  return config, workdir, best


def test_each_member_equals_the_same_model_trained_alone(trained_population, tmp_path):
  _, workdir, _ = trained_population
  summary = json.load(open(os.path.join(workdir, population.SUMMARY_FILE)))['members']
  for index in (1, 2, 3):  # learning rate and label smoothing; weight decay; dropout
    member = population.member_dir(workdir, index)
    alone = train.train_and_evaluate(load_saved_config(member), str(tmp_path / f'alone{index}'))
    assert abs(alone['accuracy'] - summary[index]['accuracy']) <= 1 / 144 + 1e-9
    np.testing.assert_allclose(alone['loss'], summary[index]['loss'], rtol=2e-3)
    # The whole curve, not just the end: every logged train loss agrees too.
    ours = [r['loss'] for r in read_metrics(member) if r['split'] == 'train']
    theirs = [r['loss'] for r in read_metrics(str(tmp_path / f'alone{index}'))
              if r['split'] == 'train']
    np.testing.assert_allclose(ours, theirs, rtol=2e-3)


def test_members_differ_and_the_best_is_reported(trained_population):
  _, workdir, best = trained_population
  summary = json.load(open(os.path.join(workdir, population.SUMMARY_FILE)))['members']
  assert [m['seed'] for m in summary] == [0, 0, 0, 0]  # Only what is listed differs.
  assert [m['optimizer.learning_rate'] for m in summary] == pytest.approx([1e-3, 3e-3, 1e-3, 2e-3])
  assert len({round(m['loss'], 6) for m in summary}) == 4
  assert best['accuracy'] == max(m['accuracy'] for m in summary) > 0.5
  assert summary[best['member']]['accuracy'] == best['accuracy']


def test_evaluating_the_population_directory_names_its_members(trained_population):
  _, workdir, _ = trained_population
  with pytest.raises(UserError, match='holds a population of models; pass one member'):
    inference.load_trained(workdir)


def test_a_member_is_evaluated_and_predicted_like_any_run(trained_population):
  _, workdir, _ = trained_population
  member = population.member_dir(workdir, 2)
  trained = inference.load_trained(member, 'latest')  # population.json: the last evaluation.
  summary = json.load(open(os.path.join(workdir, population.SUMMARY_FILE)))['members']
  from cnn_jax import data  # pylint: disable=g-import-not-at-top
  spec = setup.data_spec(trained.config)
  test = data.load_split(spec, trained.config.data.eval_split)
  logits = inference.batched_logits(trained, data.eval_batches(test, trained.normalizer, 128))
  accuracy = np.mean(logits.argmax(-1) == test.labels)
  assert accuracy == pytest.approx(summary[2]['accuracy'], abs=1e-6)


def test_resuming_a_population_continues_exactly(tmp_path):
  config = small_population(learning_rates=(1e-3, 3e-3, 1e-3, 2e-3))
  whole = train.train_and_evaluate(config, str(tmp_path / 'whole'))
  config.num_steps = 15  # Stop at step 15, then run the 30-step command again in the same dir.
  train.train_and_evaluate(config, str(tmp_path / 'split'))
  config.num_steps = 30
  resumed = train.train_and_evaluate(config, str(tmp_path / 'split'))
  assert resumed == whole
  evals = lambda run, i: [{k: v for k, v in r.items() if k != 'time'}  # every eval, to the bit
                          for r in read_metrics(population.member_dir(str(tmp_path / run), i))
                          if r['split'] == 'eval']
  for index in range(4):
    assert evals('split', index) == evals('whole', index)
    assert [r['step'] for r in evals('whole', index)] == [15, 30]


@pytest.mark.parametrize('fields, message', [
    (dict(learning_rates=(1e-3, 2e-3)), 'learning_rates has 2 values but population.size is 4'),
    (dict(learning_rates=(1e-3, -1.0, 1e-3, 1e-3)),
     r'(?s)member 1 \(population.learning_rates\[1\]=-1.0\).*learning_rate=-1.0 must be > 0'),
    (dict(dense_dropouts=(0.1, 0.2, 1.5, 0.0)), r'member 2 \(population.dense_dropouts\[2\]=1.5'),
    (dict(), 'no population list varies anything'),
])
def test_bad_population_values_are_refused_before_training(tmp_path, fields, message):
  with pytest.raises(UserError, match=message):
    train.train_and_evaluate(small_population(**fields), str(tmp_path))
  assert not os.path.exists(population.member_dir(str(tmp_path), 0))


def test_listed_seeds_are_the_members_seeds(tmp_path):
  config = small_population(seeds=(5, 6, 7, 8))
  config.num_steps = config.eval_every_steps = 2
  train.train_and_evaluate(config, str(tmp_path))
  summary = json.load(open(os.path.join(str(tmp_path), population.SUMMARY_FILE)))['members']
  assert [m['seed'] for m in summary] == [5, 6, 7, 8]


def test_a_population_refuses_data_on_the_device(tmp_path):
  config = small_population(seeds=(0, 1, 2, 3))
  config.data.on_device = True
  with pytest.raises(UserError, match='leave data.on_device off'):
    train.train_and_evaluate(config, str(tmp_path))


@pytest.mark.parametrize('size', [0, 2])
def test_timed_checkpoints_and_the_learning_rate_log_the_same_for_one_model_or_many(tmp_path,
                                                                                    size):
  """One loop serves both: a save every few microseconds (checkpoint.every_minutes) saves after
  every step of a single model and of each member alike, and every train record carries the
  member's own learning rate."""
  config = small_population(learning_rates=(1e-3, 3e-3) if size else ())
  config.population.size = size
  config.num_steps, config.eval_every_steps, config.log_every_steps = 6, 6, 2
  config.checkpoint.every_minutes = 1e-9  # Due again after every step.
  config.checkpoint.keep_last = 10
  result = train.train_and_evaluate(config, str(tmp_path))
  workdirs = ([population.member_dir(str(tmp_path), i) for i in range(size)] if size
              else [str(tmp_path)])
  for workdir, learning_rate in zip(workdirs, (1e-3, 3e-3) if size else (2e-3,)):
    saved = sorted(int(s) for s in os.listdir(os.path.join(workdir, 'checkpoints')))
    assert saved == [1, 2, 3, 4, 5, 6]  # Without the timer: only step 6, the evaluation's.
    rates = [r['learning_rate'] for r in read_metrics(workdir) if r['split'] == 'train']
    assert len(rates) == 3 and rates[0] < rates[1] < rates[2] <= learning_rate  # Warming up.
  assert set(result) == {'loss', 'accuracy', 'count', 'member', 'test'}
  assert set(result['test']) == {'loss', 'accuracy', 'count', 'checkpoint_step'}
  assert 0 <= result['member'] < max(size, 1)


def test_the_members_train_alike_stepped_by_vmap_or_one_after_another(tmp_path):
  """config.speed.population_vectorize changes how the program steps the members, not what they
  learn: the same losses to float32 rounding (measured: 2e-5 relative at most after 60 steps)."""
  losses = {}
  for vectorize in ('vmap', 'loop'):
    config = small_population(learning_rates=(1e-3, 3e-3, 1e-3, 2e-3),
                              dense_dropouts=(0.0, 0.0, 0.0, 0.3))
    config.speed.population_vectorize = vectorize
    train.train_and_evaluate(config, str(tmp_path / vectorize))
    losses[vectorize] = [[r['loss'] for r in read_metrics(population.member_dir(
        str(tmp_path / vectorize), i)) if r['split'] == 'train'] for i in range(4)]
  np.testing.assert_allclose(losses['loop'], losses['vmap'], rtol=1e-4)


def test_a_diverging_member_is_marked_and_the_others_train_on(tmp_path):
  config = small_population(learning_rates=(1e-3, 10.0))
  config.population.size = 2
  config.optimizer.name = 'sgd'
  result = train.train_and_evaluate(config, str(tmp_path))
  with open(tmp_path / 'population.json', encoding='utf-8') as f:
    members = {m['member']: m for m in json.load(f)['members']}
  assert members['member_01']['diverged_at_step'] == 15  # Seen at the save of step 15.
  assert 'diverged_at_step' not in members['member_00']
  assert result['member'] == 0 and np.isfinite(members['member_00']['loss'])
  trained = [r['step'] for r in read_metrics(population.member_dir(str(tmp_path), 0))
             if r['split'] == 'train']
  assert trained == [10, 20, 30]  # The other member trained to the end.
