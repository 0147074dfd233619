"""Sweeps: grid end to end, resume after a kill, two workers on one study, pruning, the spec."""

import csv
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from cnn_jax.reporting import run_report
from cnn_jax.sweeps import space as sweep_space
from cnn_jax.sweeps.leaderboard import OPTUNA_FIGURES
from cnn_jax.training.validation import validate_config
from cnn_jax.errors import UserError
from cnn_jax.runtime.writers import read_metrics
from conftest import REPO, load_config

GRID = ('--sweep', 'model.features=[8,16]', '--sweep', 'model.kernel_size=[3,5]')


def _sweep_command(workdir, *extra, steps=66):
  return [sys.executable, '-m', 'cnn_jax.sweep', '--config', 'configs/digits.py', '--workdir',
          str(workdir), f'--config.num_steps={steps}', '--config.eval_every_steps=22', *extra]


def _sweep(workdir, *extra, steps=66):
  result = subprocess.run(_sweep_command(workdir, *extra, steps=steps), cwd=REPO,
                          capture_output=True, text=True, timeout=600, check=False)
  assert result.returncode == 0, result.stderr
  return result.stdout


def _table(workdir):
  with open(os.path.join(workdir, 'leaderboard.csv'), newline='', encoding='utf-8') as f:
    return list(csv.DictReader(f))


def _finals(workdir, trial):
  with open(os.path.join(workdir, 'trials', f'{trial:04d}', 'train.log'), encoding='utf-8') as f:
    text = f.read()
  return text.count('Final test accuracy'), 'Resuming from the checkpoint' in text


def test_a_2x2_grid_runs_every_point_and_writes_its_results(tmp_path):
  out = _sweep(tmp_path, *GRID)
  rows = _table(tmp_path)
  assert len(rows) == 4 and all(r['status'] == 'complete' for r in rows)
  assert {(r['model.features'], r['model.kernel_size']) for r in rows} == {
      ('8', '3'), ('8', '5'), ('16', '3'), ('16', '5')}
  accuracies = [float(r['best_eval_accuracy']) for r in rows]
  assert accuracies == sorted(accuracies, reverse=True) and accuracies[0] > 0.5
  assert all(r['steps'] == '66' for r in rows)
  assert '| trial | model.features | model.kernel_size |' in out
  best = load_config_file(tmp_path / 'best_config.py')
  validate_config(best)
  assert best.model.features == [int(rows[0]['model.features'])]
  for name in OPTUNA_FIGURES:  # Optuna's own plots of the study.
    with Image.open(tmp_path / name) as image:
      assert min(image.size) > 150
      assert np.asarray(image.convert('L'), np.float32).std() > 10, f'{name} is blank'
  assert _sweep(tmp_path, *GRID).count('\ntrial ') == 0  # Re-running repeats nothing.
  page = (tmp_path / 'report' / 'index.html')
  assert run_report.build_report(str(tmp_path)) == str(page)  # A sweep's workdir: its own report.
  text = page.read_text()
  assert text.count('<tr>') == 5  # Header + one row per trial.
  assert re.findall(r'<img src="([^"]+)"', text) == list(OPTUNA_FIGURES)
  # The search space as it was written, not as cnn_jax parsed it.
  assert '<code>model.features=[8,16]</code>' in text and 'Param(' not in text
  # Each trial's swept values and results, for TensorBoard's HParams view.
  events = list((tmp_path / 'trials' / '0000' / 'tensorboard' / 'hparams').iterdir())
  recorded = b''.join(path.read_bytes() for path in events)
  assert b'model.features' in recorded and b'hparam/best_eval_accuracy' in recorded


def load_config_file(path):
  import importlib.util  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location('_best', str(path))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def test_a_killed_sweep_resumes_its_trial_and_repeats_no_finished_one(tmp_path):
  command = _sweep_command(tmp_path, *GRID, '--config.checkpoint.every_steps=20', steps=220)
  process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
  second = tmp_path / 'trials' / '0001' / 'checkpoints'
  deadline = time.time() + 300
  while not (second.is_dir() and any(n.isdigit() for n in os.listdir(second))):
    assert process.poll() is None and time.time() < deadline, process.communicate()[1]
    time.sleep(0.01)
  process.send_signal(signal.SIGKILL)
  process.communicate()
  assert _finals(tmp_path, 0) == (1, False)  # Trial 0 had finished; trial 1 was mid-way.
  trained_before = max(r['time'] for r in read_metrics(str(tmp_path / 'trials' / '0001')))
  out = _sweep(tmp_path, *GRID, '--config.checkpoint.every_steps=20', steps=220)
  assert 'Resuming 1 interrupted trial(s)' in out
  assert 'trial 1: step    220/220' in out  # Its progress, under the number it started with.
  rows = _table(tmp_path)
  assert len(rows) == 4 and all(r['status'] == 'complete' for r in rows)
  assert sorted(int(r['trial']) for r in rows) == [0, 1, 2, 3]  # The retry kept its number,
  resumed = next(r for r in rows if r['trial'] == '1')  # and its whole training time.
  assert float(resumed['seconds']) > trained_before
  assert _finals(tmp_path, 0) == (1, False)  # Not run again.
  assert _finals(tmp_path, 1) == (1, True)  # Resumed from its checkpoint, finished once.


def test_two_workers_share_one_study_and_run_each_trial_once(tmp_path):
  _sweep(tmp_path, *GRID, '--workers=2', '--test_split=test')
  rows = _table(tmp_path)
  assert len(rows) == 4 and all(r['status'] == 'complete' for r in rows)
  # The best checkpoint of each trial on validation, evaluated on the test split: what the
  # trial's own run recorded at its end.
  for row in rows:
    recorded = [r for r in read_metrics(row['workdir']) if r['split'] == 'test'][-1]
    assert float(row['test_accuracy']) == pytest.approx(recorded['accuracy'], abs=1e-4)
  assert len({(r['model.features'], r['model.kernel_size']) for r in rows}) == 4
  assert all(_finals(tmp_path, int(r['trial'])) == (1, False) for r in rows)


def _workers_of(workdir) -> list[int]:
  """The pids of this machine's sweep workers on `workdir` (from /proc)."""
  pids = []
  for pid in filter(str.isdigit, os.listdir('/proc')):
    try:
      with open(f'/proc/{pid}/cmdline', 'rb') as f:
        args = f.read().decode().split('\0')
    except OSError:
      continue  # Ended meanwhile.
    if '--worker' in args and str(workdir) in args:
      pids.append(int(pid))
  return pids


@pytest.mark.skipif(not os.path.isdir('/proc'), reason='finds the workers through /proc')
def test_workers_end_with_their_sweep_even_when_it_is_killed(tmp_path):
  sweep = subprocess.Popen(_sweep_command(tmp_path, *GRID, '--workers=2', steps=20_000), cwd=REPO,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 120
  while time.time() < deadline and len(
      [t for t in ('0000', '0001') if (tmp_path / 'trials' / t / 'metrics.jsonl').exists()]) < 2:
    time.sleep(0.5)  # Both workers are training.
  workers = _workers_of(tmp_path)
  assert len(workers) == 2
  sweep.send_signal(signal.SIGKILL)
  sweep.wait()
  deadline = time.time() + 60
  while time.time() < deadline and _workers_of(tmp_path):
    time.sleep(0.5)
  assert not _workers_of(tmp_path), 'workers outlived their sweep'


def test_an_unpromising_trial_is_pruned_early(tmp_path):
  _sweep(tmp_path, '--sweep', 'optimizer.learning_rate=[0.01,1e-7]', '--pruner=median',
         '--pruner_startup_trials=1', steps=110)
  rows = {r['optimizer.learning_rate']: r for r in _table(tmp_path)}
  assert rows['0.01']['status'] == 'complete'
  assert rows['1e-07']['status'].startswith('pruned') and int(rows['1e-07']['steps']) < 110


def test_an_invalid_grid_point_fails_with_its_reason_and_the_others_run(tmp_path):
  for attempt in range(2):  # A re-run goes on as well, instead of failing as a whole.
    out = _sweep(tmp_path, '--sweep', 'model.features=[(0,16),(8,16)]', steps=22)
    assert '1 of 2 grid points give an invalid config' in out
    rows = sorted(_table(tmp_path), key=lambda r: r['trial'])
    assert [r['status'].split(':')[0] for r in rows] == ['fail', 'complete'], rows
    assert 'features=(0, 16) has 0; every entry must be a positive integer' in rows[0]['status']
    assert float(rows[1]['best_eval_accuracy']) > 0.1


def test_sweep_specs_parse_and_are_checked_against_the_config():
  config = load_config('digits')
  params = [sweep_space.parse('optimizer.learning_rate=loguniform(1e-4,1e-1)'),
            sweep_space.parse('model.features=[16,32]'), sweep_space.parse('batch_size=int(16,64)')]
  assert params[0].kind == 'loguniform' and params[0].low == 1e-4
  sweep_space.check(config, params)
  assert sweep_space.apply(config, {'model.features': 16}).model.features == (16,)
  assert sweep_space.grid(params[1:2]) == [{'model.features': 0}, {'model.features': 1}]
  with pytest.raises(UserError, match="did you mean 'learning_rate'"):
    sweep_space.check(config, [sweep_space.parse('optimizer.learnin_rate=[0.1]')])
  with pytest.raises(UserError, match='a grid needs lists'):
    sweep_space.grid(params)
  with pytest.raises(UserError, match='is a str'):
    sweep_space.check(config, [sweep_space.parse("batch_size=['big']")])
  for bad in ('nokey', 'lr=loguniform(0,1)', 'x=uniform(2,1)', 'x=[]'):
    with pytest.raises(UserError):
      sweep_space.parse(bad)


def test_two_workers_share_a_postgresql_study(tmp_path):
  """The several-machines set-up, on loopback: one database, two worker processes."""
  from postgres_server import postgres_url  # pylint: disable=g-import-not-at-top
  try:
    server = postgres_url()
    url = server.__enter__()
  except RuntimeError as reason:
    print(f'\nSKIPPED PostgreSQL sweep test: {reason}')
    pytest.skip(f'no PostgreSQL server: {reason}')
  try:
    _sweep(tmp_path, *GRID, f'--storage={url}', '--workers=2')
    rows = _table(tmp_path)
    assert len(rows) == 4 and all(r['status'] == 'complete' for r in rows)
    assert len({(r['model.features'], r['model.kernel_size']) for r in rows}) == 4
    assert not (tmp_path / 'study.journal').exists()  # The study lived in the database.
  finally:
    server.__exit__(None, None, None)


def test_a_population_sweep_trains_its_trials_together_like_a_plain_sweep(tmp_path):
  grid = ('--sweep', 'optimizer.learning_rate=[1e-3,3e-3,1e-2]')
  out = _sweep(tmp_path / 'together', *grid, '--population', '3', steps=44)
  _sweep(tmp_path / 'alone', *grid, steps=44)
  together, alone = _table(tmp_path / 'together'), _table(tmp_path / 'alone')
  assert out.count('\ntrial ') + out.startswith('trial ') == 3
  assert os.listdir(tmp_path / 'together' / 'populations') == ['0000']  # one program for all 3
  by_rate = lambda rows: {r['optimizer.learning_rate']: r for r in rows}
  for rate, row in by_rate(together).items():
    assert row['status'] == 'complete' and row['steps'] == '44'
    # The same model with the same seed and batches, trained inside the population.
    assert abs(float(row['best_eval_accuracy'])
               - float(by_rate(alone)[rate]['best_eval_accuracy'])) <= 1 / 144 + 1e-9
  workdir = together[0]['workdir']
  assert os.path.isdir(os.path.join(workdir, 'checkpoints'))  # An ordinary trial directory.


def test_a_population_sweep_refuses_keys_members_cannot_vary(tmp_path):
  result = subprocess.run(_sweep_command(tmp_path, *GRID, '--population', '4'), cwd=REPO,
                          capture_output=True, text=True, timeout=600, check=False)
  assert result.returncode == 2
  assert 'this sweep also varies model.features, model.kernel_size' in result.stderr


@pytest.mark.parametrize('text, expected', [
    ('optimizer.learning_rate=logunifrm(1e-4,1e-1)', "'logunifrm' is not a range (did you mean "
                                                     "'loguniform'?)"),
    ('optimizer.learning_rate=uniform(0.1)', 'uniform takes two numbers'),
])
def test_a_misspelled_range_is_named_with_the_valid_forms(text, expected):
  with pytest.raises(UserError) as error:
    sweep_space.parse(text)
  assert expected in str(error.value) and 'loguniform(a,b)' in str(error.value)
  assert '<ast.' not in str(error.value)


def test_a_second_sweep_on_a_workdir_in_use_is_refused_at_once(tmp_path):
  from cnn_jax.runtime import workdir_lock  # pylint: disable=g-import-not-at-top
  with workdir_lock.held(str(tmp_path)):  # As a running sweep (or train) holds it.
    result = subprocess.run(_sweep_command(tmp_path, *GRID), cwd=REPO, capture_output=True,
                            text=True, timeout=300, check=False)
  assert result.returncode == 2, result.stderr
  assert f'is in use by process {os.getpid()} on ' in result.stderr
  assert 'Traceback' not in result.stderr and not os.path.exists(tmp_path / 'trials')


@pytest.mark.skipif(not os.path.isdir('/proc'), reason='finds the workers through /proc')
def test_a_stopped_sweep_says_in_a_line_per_process_what_it_saved_and_exits_143(tmp_path):
  sweep = subprocess.Popen(_sweep_command(tmp_path, *GRID, '--workers=2', steps=20_000), cwd=REPO,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 120
  while time.time() < deadline and len(
      [t for t in ('0000', '0001') if (tmp_path / 'trials' / t / 'metrics.jsonl').exists()]) < 2:
    time.sleep(0.5)  # Both workers are training.
  sweep.send_signal(signal.SIGTERM)
  _, stderr = sweep.communicate(timeout=120)
  assert sweep.returncode == 143, stderr
  assert 'Traceback' not in stderr
  lines = [line for line in stderr.splitlines() if line.strip()]
  workers = [line for line in lines if line.startswith('Sweep worker ')]
  assert len(workers) == 2 and all(re.search(r': trial [01] stopped by SIGTERM at step [\d,]+, '
                                             r'its checkpoint saved\. Re-run', w) for w in workers)
  assert lines[-1].startswith('Sweep stopped by SIGTERM: its 2 workers saved their trials')
  assert not _workers_of(tmp_path)


def test_a_diverging_trial_is_recorded_as_failed_and_the_sweep_goes_on(tmp_path):
  out = _sweep(tmp_path, '--sweep', 'optimizer.learning_rate=[0.01,10.0]',
               '--config.optimizer.name=sgd', '--config.log_every_steps=11')
  rows = {float(r['optimizer.learning_rate']): r for r in _table(tmp_path)}
  assert rows[0.01]['status'] == 'complete'
  assert rows[10.0]['status'].startswith('fail: Training diverged by step 11')
  assert 'Best: trial 0' in out


def test_the_parallel_and_slice_figures_draw_every_trial_in_a_visible_colour():
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  import optuna  # pylint: disable=g-import-not-at-top
  from cnn_jax.sweeps import leaderboard  # pylint: disable=g-import-not-at-top
  params = [sweep_space.parse('model.features=[[8],[16]]'),
            sweep_space.parse('optimizer.learning_rate=loguniform(1e-4,1e-2)')]
  choices = optuna.distributions.CategoricalDistribution(['[8]', '[16]'])
  rate = optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)
  trials = [optuna.trial.create_trial(
      params={'model.features': features, 'optimizer.learning_rate': lr}, value=value,
      distributions={'model.features': choices, 'optimizer.learning_rate': rate})
      for features, lr, value in (('[8]', 1e-3, 0.85), ('[16]', 3e-3, 0.92), ('[8]', 1e-4, 0.88),
                                  ('[16]', 5e-3, 0.90))]
  for number, trial in enumerate(trials):
    trial.number = number
  parallel = leaderboard._parallel_figure(trials, params, plt)  # pylint: disable=protected-access
  lines = [line for line in parallel.axes[0].lines if line.get_marker() == 'o']
  assert len(lines) == 4
  assert all(sum(matplotlib.colors.to_rgb(line.get_color())) < 2.7 for line in lines)  # No white.
  figure = leaderboard._slice_figure(trials, params, plt)  # pylint: disable=protected-access
  points = figure.axes[0].collections[0]
  assert len(points.get_offsets()) == 4
  assert all(sum(colour[:3]) < 2.7 for colour in points.get_facecolors())
