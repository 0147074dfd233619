"""The command line as a user meets it: mistakes are one message and exit 2, never a traceback."""

import os
import subprocess
import sys

import pytest

from cnn_jax.__main__ import COMMANDS
from conftest import REPO


def _main(*args, cwd=REPO):
  return subprocess.run([sys.executable, '-m', 'cnn_jax.main', *args], cwd=cwd,
                        capture_output=True, text=True, timeout=300, check=False)


@pytest.mark.parametrize('args,expected', [
    (['--config.optimizer.learnin_rate=3e-3'],
     'Did you mean "learning_rate" instead of "learnin_rate"?'),
    (['--config.batch_size=0'], 'config.batch_size=0 must be ≥ 1'),
    (['--config.pool_first=False'], 'It is now config.speed.pool_first'),  # An older key.
    (['--config.batch_size=abc'], '--config.batch_size=abc'),
    (['--config.model.name=resnt18'], "did you mean 'resnet18'"),
    (['--config.model.kernel_size=9', '--config.model.padding=VALID'], 'kernel 9'),
    (['--config.model.features=(0,16)'], 'features=(0, 16) has 0; every entry must be a positive'),
    (['--config.data.name=mnist', '--config.data.tfds_data_dir=/nonexistent'],
     'download_and_prepare'),
])
def test_user_mistakes_are_a_message_not_a_traceback(tmp_path, args, expected):
  result = _main('--config', 'configs/digits.py', '--workdir', str(tmp_path / 'w'), *args)
  assert result.returncode == 2, result.stderr
  assert expected in result.stderr
  assert 'Traceback' not in result.stderr and 'Traceback' not in result.stdout


def test_a_missing_config_file_is_named(tmp_path):
  result = _main('--config', 'configs/nope.py', '--workdir', str(tmp_path))
  assert result.returncode == 2 and "'configs/nope.py' does not exist" in result.stderr


def test_overrides_and_config_arguments_reach_the_run(tmp_path):
  workdir = tmp_path / 'small'
  result = _main('--config', os.path.join(REPO, 'configs', 'digits.py:small'), '--workdir',
                 str(workdir), '--config.optimizer.learning_rate=3e-3', '--config.num_steps=12',
                 '--config.log_every_steps=5', '--config.eval_every_steps=6',
                 cwd=str(tmp_path))  # Runs from anywhere, with an absolute config path.
  assert result.returncode == 0, result.stderr
  lines = result.stdout.strip().splitlines()
  assert lines[-1].startswith('Final test accuracy: ') and 'after 12 steps' in lines[-1]
  # Not a terminal: no bar, but every train log as a plain line among the evaluations.
  progress = [line.split()[1] + ' ' + line.split()[4] for line in lines
              if line.startswith('step ')]
  assert progress == ['5/12 train', '6/12 validation', '10/12 train', '12/12 train',
                      '12/12 validation'], lines
  assert 'Total params: 53,002' in result.stdout  # The model summary is printed first.
  config = (workdir / 'config.json').read_text()
  assert '"learning_rate": 0.003' in config and '"num_epochs": 2.0' in config


def test_a_shipped_config_is_named_without_a_path_from_any_directory(tmp_path):
  result = _main('--config', 'digits:small', '--workdir', str(tmp_path / 'w'),
                 '--config.num_steps=3', cwd=str(tmp_path))
  assert result.returncode == 0, result.stderr
  assert 'after 3 steps' in result.stdout.strip().splitlines()[-1]
  result = _main('--config', 'digitz', '--workdir', str(tmp_path / 'w2'), cwd=str(tmp_path))
  assert result.returncode == 2 and "config file 'digitz' does not exist" in result.stderr
  assert 'cats_vs_dogs, csv_digits, digits, fashion_mnist' in result.stderr


def test_an_unknown_config_variant_is_named(tmp_path):
  result = _main('--config', 'configs/mnist.py:smal', '--workdir', str(tmp_path))
  assert result.returncode == 2 and "unknown config variant 'smal'" in result.stderr
  assert 'small' in result.stderr and 'Traceback' not in result.stderr


@pytest.mark.parametrize('command', ['main', 'evaluate', 'predict', 'report', 'sweep',
                                     'benchmark', 'summary', 'export'])
def test_help_answers_without_loading_jax(command):
  """Each command imports its machinery after its flags are parsed, so --help (and a flag
  mistake) answers in a fraction of a second."""
  result = subprocess.run([sys.executable, '-X', 'importtime', '-m', f'cnn_jax.{command}',
                           '--helpshort'], cwd=REPO, capture_output=True, text=True, timeout=60,
                          check=False)
  assert f'cnn_jax.{command}' in result.stdout  # The help text (absl exits with 1 after it).
  imported = {line.rsplit('|', 1)[-1].strip() for line in result.stderr.splitlines()
              if line.startswith('import time:')}
  assert 'absl.flags' in imported and 'jax' not in imported


CONSOLE = os.path.join(os.path.dirname(sys.executable), 'cnn-jax')  # From [project.scripts].


@pytest.mark.parametrize('command', list(COMMANDS))
def test_every_command_answers_as_cnn_jax_command(command):
  """The same description and flags as python -m cnn_jax.<module> --help."""
  module = COMMANDS[command]
  result = subprocess.run([CONSOLE, command, '--helpshort'], cwd=REPO, capture_output=True,
                          text=True, timeout=60, check=False)
  direct = subprocess.run([sys.executable, '-m', module, '--helpshort'], cwd=REPO,
                          capture_output=True, text=True, timeout=60, check=False)
  assert result.stdout == direct.stdout and f"{module.replace('.', '/')}.py:" in result.stdout


def test_the_console_command_lists_its_commands_trains_and_names_a_mistake(tmp_path):
  listing = subprocess.run([sys.executable, '-m', 'cnn_jax', '--help'], capture_output=True,
                           text=True, timeout=60, check=False)
  assert listing.returncode == 0 and '  train      Train a CNN' in listing.stdout
  wrong = subprocess.run([CONSOLE, 'trian'], capture_output=True, text=True, timeout=60,
                         check=False)
  assert wrong.returncode == 2 and "did you mean 'train'?" in wrong.stderr
  run = subprocess.run([CONSOLE, 'train', '--config', 'configs/digits.py', '--workdir',
                        str(tmp_path), '--config.num_steps=5'], cwd=REPO, capture_output=True,
                       text=True, timeout=300, check=False)
  assert run.returncode == 0 and 'after 5 steps' in run.stdout.splitlines()[-1], run.stderr


def test_words_that_are_not_flags_are_refused(tmp_path):
  result = subprocess.run([sys.executable, '-m', 'cnn_jax.benchmark', '--config',
                           'configs/digits.py', 'steps=10'], cwd=REPO, capture_output=True,
                          text=True, timeout=60, check=False)
  assert result.returncode == 2 and "unexpected arguments ['steps=10']" in result.stderr


@pytest.mark.parametrize('text, expected', [
    ('def get_config(:\n', "could not load the config file '{path}': SyntaxError"),
    ('def get_config():\n  raise RuntimeError("boom")\n',
     "could not load the config file '{path}' (line 2 of {path}): RuntimeError: boom"),
    ('x = 1\n', "the config file '{path}' has no get_config()"),
])
def test_a_broken_config_file_is_one_message(tmp_path, text, expected):
  path = tmp_path / 'broken.py'
  path.write_text(text)
  result = _main('--config', str(path), '--workdir', str(tmp_path / 'w'))
  assert result.returncode == 2 and expected.format(path=path) in result.stderr
  assert 'Traceback' not in result.stderr


def test_an_unusable_workdir_is_refused_before_any_work(tmp_path):
  (tmp_path / 'a_file').write_text('')
  for workdir, expected in ((tmp_path / 'a_file', 'is a file; give a directory'),
                            (tmp_path / 'a_file' / 'run', f"lies under '{tmp_path / 'a_file'}'")):
    result = _main('--config', 'configs/digits.py', '--workdir', str(workdir))
    assert result.returncode == 2 and expected in result.stderr, result.stderr
    assert 'Traceback' not in result.stderr and 'digits:' not in result.stdout  # No data loaded.


@pytest.mark.skipif(os.geteuid() == 0, reason='root may write in any directory')
def test_a_read_only_workdir_is_refused(tmp_path):
  (tmp_path / 'locked').mkdir(mode=0o500)
  result = _main('--config', 'configs/digits.py', '--workdir', str(tmp_path / 'locked' / 'run'))
  assert result.returncode == 2 and 'is not writable by this user' in result.stderr
