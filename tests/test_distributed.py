"""Data parallel across devices and processes: the same training as one device, within rounding."""

import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import portpicker
import pytest

from cnn_jax.serving import inference

from cnn_jax.training import checkpoint, train
from cnn_jax.runtime.writers import read_metrics
from conftest import REPO, load_config

STEPS = 66  # Three epochs of digits at batch 64; evaluation after each.
FLAGS = (f'--config.num_steps={STEPS}', '--config.eval_every_steps=22')


def _command(workdir, *extra):
  return [sys.executable, '-m', 'cnn_jax.main', '--config', 'configs/digits.py', '--workdir',
          str(workdir), *FLAGS, *extra]


def _run(workdir, devices=1, *extra):
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}')
  result = subprocess.run(_command(workdir, *extra), cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300, check=False)
  assert result.returncode == 0, result.stderr
  return result.stdout


def _params(workdir):
  return jax.tree.map(np.asarray, checkpoint.read_state(str(workdir))[0]['params'])


@pytest.fixture(scope='module')
def one_device(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('one')
  _run(workdir)
  return workdir


def _assert_close(workdir, reference):
  # Gradients are averaged over shards in another order: float32 rounding (measured ≤ 1e-7).
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               _params(workdir), _params(reference))
  evals = lambda w: [r['accuracy'] for r in read_metrics(str(w)) if r['split'] == 'eval']
  np.testing.assert_allclose(evals(workdir), evals(reference), atol=1 / 360)


def test_four_devices_train_like_one(tmp_path, one_device):
  out = _run(tmp_path, devices=4)
  assert 'on 4 CPU device(s)' in out
  _assert_close(tmp_path, one_device)


def _run_two_processes(workdir, *extra) -> list[tuple[str, str]]:
  port = portpicker.pick_unused_port()
  processes = [subprocess.Popen(
      _command(workdir, f'--coordinator_address=127.0.0.1:{port}', '--num_processes=2',
               f'--process_id={i}', *extra), cwd=REPO, stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True,
      env=dict(os.environ, JAX_PLATFORMS='cpu',
               XLA_FLAGS='--xla_force_host_platform_device_count=1'))
               for i in range(2)]
  outputs = [p.communicate(timeout=300) for p in processes]
  assert [p.returncode for p in processes] == [0, 0], outputs[1][1]
  return outputs


def test_two_processes_train_like_one_and_their_checkpoint_restores_in_one(tmp_path, one_device):
  outputs = _run_two_processes(tmp_path)
  assert 'on 2 CPU device(s) in 2 processes' in outputs[0][0]
  assert 'Final test accuracy' not in outputs[1][0]  # Only process 0 speaks.
  _assert_close(tmp_path, one_device)
  # This test process: one process, one device.
  report = inference.evaluate_workdir(str(tmp_path), 'latest')
  final = [r for r in read_metrics(str(tmp_path)) if r['split'] == 'eval'][-1]
  assert report['accuracy'] == pytest.approx(final['accuracy'], abs=1e-9)


def test_a_signal_to_one_process_stops_both_at_the_same_step_with_a_checkpoint(tmp_path):
  """Preemption reaches one host first: both agree on the step, save it together and end."""
  port = portpicker.pick_unused_port()
  processes = [subprocess.Popen(
      [sys.executable, '-m', 'cnn_jax.main', '--config', 'configs/digits.py', '--workdir',
       str(tmp_path), '--config.num_steps=100000', '--config.log_every_steps=5',
       '--config.eval_every_steps=1000', f'--coordinator_address=127.0.0.1:{port}',
       '--num_processes=2', f'--process_id={i}'], cwd=REPO, stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True,
      env=dict(os.environ, JAX_PLATFORMS='cpu',
               XLA_FLAGS='--xla_force_host_platform_device_count=1'))
               for i in range(2)]
  deadline = time.time() + 120
  while time.time() < deadline and not any(r['step'] >= 50 for r in read_metrics(str(tmp_path))):
    time.sleep(0.2)  # Both are training (each step needs both).
  processes[1].send_signal(signal.SIGTERM)
  outputs = [p.communicate(timeout=120) for p in processes]
  assert [p.returncode for p in processes] == [128 + signal.SIGTERM] * 2, outputs
  steps = [int(err.split('SIGTERM at step ')[1].split(':')[0].replace(',', ''))
           for _, err in outputs]
  assert steps[0] == steps[1] and steps[0] % 5 == 0  # Agreed at a log step.
  saved = [int(n) for n in os.listdir(tmp_path / checkpoint.CHECKPOINT_DIR) if n.isdigit()]
  assert max(saved) == steps[0]
  # Both resume from the agreed step and finish (a shorter run: the saved step is far from its end).
  outputs = _run_two_processes(tmp_path, f'--config.num_steps={steps[0] + 20}',
                               '--config.log_every_steps=5', '--config.eval_every_steps=1000')
  assert f'Resuming from the checkpoint at step {steps[0]:,}' in outputs[0][0]
  assert f'after {steps[0] + 20:,} steps' in outputs[0][0].strip().splitlines()[-1]


def test_timed_saves_are_agreed_so_two_processes_with_their_own_clocks_finish(tmp_path):
  """A save is due by each process's own clock at a slightly different step; agreed at each log,
  every process saves together instead of waiting for the other forever."""
  outputs = _run_two_processes(tmp_path, '--config.checkpoint.every_minutes=1e-9',
                               '--config.log_every_steps=3', '--config.checkpoint.keep_last=50')
  assert 'Final test accuracy' in outputs[0][0]
  saved = sorted(int(n) for n in os.listdir(tmp_path / checkpoint.CHECKPOINT_DIR) if n.isdigit())
  assert set(range(3, STEPS, 3)) <= set(saved)  # A timed save at every agreed log step.


def test_two_processes_stream_their_own_shards_and_evaluate_every_example_once(tmp_path):
  # Each process reads, shuffles and batches only every other example; evaluation pads both
  # shards to the same number of batches. The one-process evaluate tool must agree exactly.
  _run_two_processes(tmp_path, '--config.data.stream=True')
  records = read_metrics(str(tmp_path))
  evals = [r for r in records if r['split'] == 'eval']
  assert [r['count'] for r in evals] == [144] * 3  # The validation split, every example once.
  assert [r['count'] for r in records if r['split'] == 'test'] == [360]
  assert evals[-1]['accuracy'] > 0.8  # Chance is 10%.
  report = inference.evaluate_workdir(str(tmp_path), 'latest')
  assert report['accuracy'] == pytest.approx(evals[-1]['accuracy'], abs=1e-9)


def test_bfloat16_trains_digits_above_the_same_bar(tmp_path):
  config = load_config('digits')
  config.dtype, config.progress_bar = 'bfloat16', False
  assert train.train_and_evaluate(config, str(tmp_path))['accuracy'] >= 0.97


def test_processes_given_different_workdirs_stop_with_a_message_instead_of_waiting(tmp_path):
  port = portpicker.pick_unused_port()
  processes = [subprocess.Popen(
      _command(tmp_path / f'run_{i}', f'--coordinator_address=127.0.0.1:{port}',
               '--num_processes=2', f'--process_id={i}'), cwd=REPO, stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True,
      env=dict(os.environ, JAX_PLATFORMS='cpu',
               XLA_FLAGS='--xla_force_host_platform_device_count=1'))
               for i in range(2)]
  outputs = [p.communicate(timeout=120) for p in processes]
  assert [p.returncode for p in processes] == [2, 2], outputs
  for _, err in outputs:
    assert 'the processes were given different workdirs' in err and 'run_1' in err
  assert not os.path.exists(tmp_path / 'run_0' / 'checkpoints')  # Refused before any work.


def test_a_workdir_url_is_refused_rather_than_made_a_local_directory(tmp_path):
  result = subprocess.run([sys.executable, '-m', 'cnn_jax.main', '--config', 'digits',
                           '--workdir', 'gs://bucket/runs/digits'], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120, check=False)
  assert result.returncode == 2 and 'mount the bucket' in result.stderr
  assert not os.path.exists(tmp_path / 'gs:')


@pytest.mark.parametrize('flags, message', [
    (['--cluster=slurm'], '--cluster=slurm: JAX cannot join the processes of this job'),
    (['--local_device_ids=zero'], '--local_device_ids=zero: give device numbers'),
    (['--num_processes=2'], 'need all of --coordinator_address, --num_processes and --process_id'),
])
def test_cluster_mistakes_are_named(tmp_path, flags, message):
  env = {k: v for k, v in os.environ.items() if not k.startswith(('SLURM_', 'OMPI_'))}
  result = subprocess.run(_command(tmp_path, *flags), cwd=REPO, capture_output=True, text=True,
                          timeout=120, check=False, env=dict(env, JAX_PLATFORMS='cpu'))
  assert result.returncode == 2 and message in result.stderr, result.stderr[-2000:]
