"""Checkpoints: a killed run resumes to bitwise the same result; retention; refusal; warm start."""

import json
import os
import random
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import optax
import pytest

from cnn_jax import models
from cnn_jax.serving import inference
from cnn_jax.training import checkpoint, steps, train
from cnn_jax.errors import UserError
from cnn_jax.runtime.writers import read_metrics
from conftest import REPO, load_config

# A run long enough to be killed mid-way: 264 steps, checkpoints every 25, evals every 44.
RUN_FLAGS = ('--config.num_steps=264', '--config.checkpoint.every_steps=25',
             '--config.eval_every_steps=44', '--config.log_every_steps=10',
             '--config.checkpoint.keep_last=3')


def _start(workdir, *extra):
  return subprocess.Popen(
      [sys.executable, '-m', 'cnn_jax.main', '--config', 'configs/digits.py', '--workdir',
       str(workdir), *RUN_FLAGS, *extra], cwd=REPO, stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True)


def _run(workdir, *extra):
  process = _start(workdir, *extra)
  out, err = process.communicate(timeout=300)
  assert process.returncode == 0, err
  return out


def _wait_for_step(workdir, step, process):
  """Returns once metrics.jsonl has a record at or past `step` (the run is mid-way)."""
  deadline = time.time() + 120
  while time.time() < deadline:
    records = read_metrics(str(workdir))
    if records and records[-1]['step'] >= step:
      return
    assert process.poll() is None, process.communicate()[1]
    time.sleep(0.005)
  raise AssertionError(f'the run never reached step {step}')


def _final(workdir):
  """Returns (params of the latest checkpoint as numpy, metrics records without wall time)."""
  state, _, _ = checkpoint.read_state(str(workdir))
  records = [{k: v for k, v in r.items() if k != 'time'} for r in read_metrics(str(workdir))]
  return jax.tree.map(np.asarray, state['params']), records, int(state['step'])


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('uninterrupted')
  _run(workdir)
  return _final(workdir)


def _assert_same_run(result, reference):
  params, records, step = result
  ref_params, ref_records, ref_step = reference
  assert step == ref_step == 264
  assert records == ref_records  # Every logged loss, accuracy and eval, bit for bit, once each.
  jax.tree.map(np.testing.assert_array_equal, params, ref_params)


def test_sigkill_at_a_random_step_then_rerun_gives_the_uninterrupted_result(tmp_path,
                                                                           uninterrupted):
  # From step 75 on, the asynchronous saves of steps 25 and 50 have long completed: there is
  # always a checkpoint to resume from.
  kill_at = random.Random().randrange(75, 240)
  process = _start(tmp_path)
  _wait_for_step(tmp_path, kill_at, process)
  process.send_signal(signal.SIGKILL)
  process.communicate()
  killed_at = read_metrics(str(tmp_path))[-1]['step']
  assert killed_at < 264, 'the run finished before the kill'
  out = _run(tmp_path)
  assert 'Resuming from the checkpoint at step' in out
  _assert_same_run(_final(tmp_path), uninterrupted)


def test_sigkill_during_a_save_leaves_the_previous_checkpoint_usable(tmp_path, uninterrupted):
  for attempt in range(20):  # A save takes milliseconds: poll for its temporary directory.
    workdir = tmp_path / f'attempt{attempt}'
    root = workdir / checkpoint.CHECKPOINT_DIR
    process = _start(workdir)
    caught = False
    while process.poll() is None:
      names = os.listdir(root) if root.is_dir() else []
      # Kill during a save that has a finished checkpoint before it, to be resumed from.
      if any('tmp' in name for name in names) and any(name.isdigit() for name in names):
        process.send_signal(signal.SIGKILL)
        caught = any('tmp' in name for name in os.listdir(root))  # Still half-written?
        break
    process.communicate()
    if caught:
      break
  assert caught, "never caught a save in progress"
  _run(workdir)
  assert not any('tmp' in name for name in os.listdir(root))  # Leftovers were cleaned up.
  _assert_same_run(_final(workdir), uninterrupted)


@pytest.mark.parametrize('signum', [signal.SIGTERM, signal.SIGINT])  # kill, and Ctrl-C.
def test_a_stop_signal_saves_at_the_next_step_and_the_rerun_completes(tmp_path, uninterrupted,
                                                                      signum):
  process = _start(tmp_path)
  _wait_for_step(tmp_path, 60, process)
  process.send_signal(signum)
  _, err = process.communicate(timeout=120)
  assert process.returncode == 128 + signum
  assert f'{signal.Signals(signum).name} at step' in err and 'Re-run the same command' in err
  assert 'Traceback' not in err
  stopped_at = int(err.split(' at step ')[1].split(':')[0].replace(',', ''))
  saved = max(int(name) for name in os.listdir(tmp_path / checkpoint.CHECKPOINT_DIR)
              if name.isdigit())
  assert saved == stopped_at  # Saved exactly where it stopped, not at the previous checkpoint.
  _run(tmp_path)
  _assert_same_run(_final(tmp_path), uninterrupted)


def _short(tmp_path, name, **overrides):
  config = load_config('digits')
  config.num_steps = 66
  config.eval_every_steps = 22
  config.progress_bar = False
  for key, value in overrides.items():
    section, _, field = key.rpartition('__')
    (config[section] if section else config)[field] = value
  workdir = str(tmp_path / name)
  return config, workdir, train.train_and_evaluate(config, workdir)


def test_retention_keeps_the_newest_and_the_best(tmp_path):
  config, workdir, _ = _short(tmp_path, 'r', num_steps=220, checkpoint__keep_last=2,
                              checkpoint__keep_best=1)
  evals = {r['step']: r['accuracy'] for r in read_metrics(workdir) if r['split'] == 'eval'}
  kept = sorted(int(n) for n in os.listdir(os.path.join(workdir, checkpoint.CHECKPOINT_DIR)))
  # The newest two, and one checkpoint of the best accuracy (which of several tied ones is
  # orbax's choice); when one of the newest two is the best, nothing more.
  assert {198, 220} <= set(kept) and len(kept) <= 3
  assert max(evals[s] for s in kept) == max(evals.values())
  extra = set(kept) - {198, 220}
  assert not extra or evals[extra.pop()] == max(evals.values())
  assert len(evals) == 10  # Ten evals were saved, and all but these were deleted.


def test_resuming_with_another_model_is_refused_naming_the_keys(tmp_path):
  config, workdir, _ = _short(tmp_path, 'a')
  config.model.features = (16, 32)
  with pytest.raises(UserError) as error:
    train.train_and_evaluate(config, workdir)
  message = str(error.value)
  assert 'model.features: (32, 64) → (16, 32)' in message
  assert 'params/conv_0/kernel: saved (3, 3, 1, 32), this config (3, 3, 1, 16)' in message
  with open(os.path.join(workdir, 'config.json'), encoding='utf-8') as f:
    assert json.load(f)['model']['features'] == [32, 64]  # The refused run changed nothing.


def test_resuming_with_another_learning_rate_is_refused_naming_the_key(tmp_path):
  config, workdir, _ = _short(tmp_path, 'a')
  config.optimizer.learning_rate *= 3
  config.eval_every_steps = 11  # Cadence may change on resume; it is not listed.
  with pytest.raises(UserError) as error:
    train.train_and_evaluate(config, workdir)
  message = str(error.value)
  assert 'optimizer.learning_rate: 0.002 → 0.006' in message and 'eval_every_steps' not in message
  assert f'--config.init_from={workdir}' in message
  with open(os.path.join(workdir, 'config.json'), encoding='utf-8') as f:
    assert json.load(f)['optimizer']['learning_rate'] == 0.002


def test_a_finished_run_says_it_had_nothing_to_train_and_a_shorter_one_is_refused(tmp_path,
                                                                                 capsys):
  config, workdir, first = _short(tmp_path, 'a')
  capsys.readouterr()
  again = train.train_and_evaluate(config, workdir)
  assert again == first
  assert 'after 66 steps, all trained before: this run had nothing to train.' in (
      capsys.readouterr().out)
  config.num_steps = 22
  with pytest.raises(UserError, match='trained to step 66, past the 22 steps this config asks '
                                      'for: nothing to train'):
    train.train_and_evaluate(config, workdir)


def test_resuming_with_more_steps_continues(tmp_path):
  config, workdir, _ = _short(tmp_path, 'a')
  config.num_steps = 88
  train.train_and_evaluate(config, workdir)
  steps_logged = [r['step'] for r in read_metrics(workdir) if r['split'] == 'train']
  assert steps_logged == sorted(set(steps_logged)) and steps_logged[-1] == 88


def _fresh_state(**model_kwargs):
  model = models.create_model('convnet', 10, **model_kwargs)
  return steps.create_train_state(model, optax.adam(1e-3), jax.random.key(7), (8, 8, 1))


def test_warm_start_loads_all_layers_or_only_the_matching_ones(tmp_path):
  _, source, _ = _short(tmp_path, 'source')
  trained, _, _ = _final(source)
  state = checkpoint.warm_start(_fresh_state(features=(32, 64), dense=(128,)), source)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.params), trained)

  other = _fresh_state(features=(32, 64), dense=(64,))
  with pytest.raises(UserError, match='init_layers=matching'):
    checkpoint.warm_start(other, source)
  state = checkpoint.warm_start(other, source, layers='matching')
  np.testing.assert_array_equal(state.params['conv_1']['kernel'], trained['conv_1']['kernel'])
  np.testing.assert_array_equal(state.params['head']['kernel'], other.params['head']['kernel'])


def test_warm_start_through_the_config(tmp_path):
  _, source, _ = _short(tmp_path, 'source')
  _, _, metrics = _short(tmp_path, 'tuned', init_from=source, num_steps=5)
  assert metrics['accuracy'] > 0.8  # Five steps from scratch reach ~20%; from the source ~95%.


def test_a_checkpoint_written_on_two_devices_restores_on_one(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             XLA_FLAGS='--xla_force_host_platform_device_count=2')
  result = subprocess.run(
      [sys.executable, '-m', 'cnn_jax.main', '--config', 'configs/digits.py', '--workdir',
       str(tmp_path), '--config.num_steps=44', '--config.eval_every_steps=22'],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == 0, result.stderr
  assert 'on 2 CPU device(s)' in result.stdout  # The batch really was split across two devices.
  assert jax.device_count() == 1
  report = inference.evaluate_workdir(str(tmp_path), 'latest')
  final = [r for r in read_metrics(str(tmp_path)) if r['split'] == 'eval'][-1]
  assert report['accuracy'] == pytest.approx(final['accuracy'], abs=1e-9)


def test_a_save_keeps_the_progress_of_its_own_step(tmp_path):
  """The write is asynchronous: changes the loop makes afterwards must not leak into it."""
  state = _fresh_state(features=(4,), dense=())
  manager = checkpoint.open_manager(str(tmp_path))
  progress = {'train_sums': {'loss': 1.5, 'count': 3}}
  checkpoint.save(manager, state, progress)
  progress['train_sums']['loss'] += 100.0  # What the loop does at the next steps.
  progress['train_sums']['count'] += 7
  manager.wait_until_finished()
  _, restored = checkpoint.restore(manager, 0, state)
  manager.close()
  assert restored == {'train_sums': {'loss': 1.5, 'count': 3}}


def _damage(step_dir, how):
  """Damages a saved checkpoint as a full disk, a crash or a careless hand might."""
  state = os.path.join(step_dir, 'state')
  if how == 'truncated':  # Every data file of its OCDBT store cut short.
    for root, _, names in os.walk(state):
      for name in names:
        if os.path.basename(root) == 'd':
          with open(os.path.join(root, name), 'r+b') as f:
            f.truncate(10)
  elif how == 'manifest':
    for root, _, names in os.walk(state):
      if 'manifest.ocdbt' in names:
        os.remove(os.path.join(root, 'manifest.ocdbt'))
  elif how == 'progress':
    open(os.path.join(step_dir, 'progress', 'metadata'), 'w', encoding='utf-8').close()
  else:  # 'metadata'
    os.remove(os.path.join(state, '_METADATA'))


@pytest.fixture(scope='module')
def short_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('short_run') / 'run'
  config = load_config('digits')
  config.num_steps, config.eval_every_steps, config.progress_bar = 40, 20, False
  config.checkpoint.keep_last = 2
  train.train_and_evaluate(config, str(workdir))
  return workdir, config


@pytest.mark.parametrize('how', ['truncated', 'manifest', 'progress', 'metadata'])
def test_a_damaged_newest_checkpoint_gives_way_to_the_intact_one_before_it(short_run, tmp_path,
                                                                            how, capsys):
  import shutil  # pylint: disable=g-import-not-at-top
  source, config = short_run
  workdir = tmp_path / 'run'
  shutil.copytree(source, workdir)
  _damage(str(workdir / 'checkpoints' / '40'), how)
  # evaluate / predict / load: 'latest' falls back with a warning; step 40 asked for is refused.
  trained = inference.load_trained(str(workdir), 'latest')
  assert trained.step == 20
  warned = capsys.readouterr().err
  assert re.search(r'Warning: the checkpoint at step 40 .* is damaged \(.+\); using the '
                   r'checkpoint at step 20 instead', warned), warned
  with pytest.raises(UserError, match=r'checkpoint at step 40 .* is damaged .*saved steps: 20'):
    inference.load_trained(str(workdir), '40')
  # train: resumes from step 20, says which step it skipped and why, and trains on past it.
  config.num_steps = 60
  train.train_and_evaluate(config, str(workdir))
  out = capsys.readouterr().out
  assert re.search(r'The checkpoint at step 40 .* is damaged \(.+\); resuming from an earlier '
                   r'one\.\nResuming from the checkpoint at step 20', out), out
  assert sorted(int(s) for s in os.listdir(workdir / 'checkpoints') if s.isdigit())[-1] == 60


@pytest.fixture
def small_disk(tmp_path):
  """A 1,200 KiB tmpfs: room for one digits checkpoint, not two. Skipped where this user may
  not mount one."""
  mount_point = tmp_path / 'small'
  mount_point.mkdir()
  made = subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=1200k', 'tmpfs', str(mount_point)],
                        capture_output=True, text=True, check=False)
  if made.returncode:
    pytest.skip(f'cannot mount a small tmpfs here: {made.stderr.strip()}')
  try:
    yield mount_point
  finally:
    subprocess.run(['umount', str(mount_point)], check=False)


def test_a_full_disk_is_one_clear_error_the_saved_checkpoints_stay_and_a_rerun_resumes(
    small_disk):
  workdir = small_disk / 'run'
  command = [sys.executable, '-m', 'cnn_jax.main', '--config', 'configs/digits.py', '--workdir',
             str(workdir), '--config.progress_bar=False']
  full = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300,
                        check=False)
  assert full.returncode == 2, full.stderr
  assert 'Traceback' not in full.stderr and 'RESOURCE_EXHAUSTED' not in full.stderr
  assert re.search(r'No space left on the device to save the checkpoint at step 440 in '
                   rf'{re.escape(str(workdir))}/checkpoints \([\d.]+ MiB free\)\. The unfinished '
                   r'checkpoint was removed; the ones saved before it are intact', full.stderr)
  assert os.listdir(workdir / 'checkpoints') == ['220']  # No *.orbax-checkpoint-tmp left.
  subprocess.run(['mount', '-o', 'remount,size=20m', str(small_disk)], check=True)
  again = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300,
                         check=True)
  assert 'Resuming from the checkpoint at step 220.' in again.stdout
  assert re.search(r'Final test accuracy: [\d.]+% .* after 900 steps', again.stdout)
