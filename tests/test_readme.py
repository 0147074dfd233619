"""README.md's set-up commands are the ones CI runs, so the README cannot drift from the truth."""

import os
import re
import subprocess
import sys

from conftest import REPO


def _read(*parts):
  with open(os.path.join(REPO, *parts), encoding='utf-8') as f:
    return f.read()


def test_ci_runs_exactly_the_readme_quick_start_commands():
  quick_start = _read('README.md').split('## Quick start', 1)[1].split('\n## ', 1)[0]
  commands = re.findall(r'```bash\n(.+?)\n```', quick_start)
  assert len(commands) == 2, 'Quick start must have two commands: install + run, and test'
  ci_lines = [line.strip() for line in _read('.ci', 'run').splitlines()]
  for command in commands:
    assert command in ci_lines, f'.ci/run does not run the README command: {command}'
  assert 'cnn-jax train --config digits' in commands[0] and 'pytest' in commands[1]


def test_the_python_example_runs(tmp_path):
  """The README's Python example, with its workdir in a scratch directory and fewer steps."""
  example = re.search(r'### From Python\n\n```python\n(.+?)\n```', _read('README.md'), re.S)[1]
  script = example.replace("'runs/digits'", repr(str(tmp_path / 'digits'))).replace(
      "cnn_jax.train('digits',", "cnn_jax.train('digits:small',")
  assert script.count(str(tmp_path)) == 2 and ':small' in script
  # From a directory of its own: the shipped config answers to its name anywhere.
  result = subprocess.run([sys.executable, '-c', script], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300, check=False)
  assert result.returncode == 0, result.stderr
  lines = result.stdout.strip().splitlines()
  assert lines[-2] == '(3, 10)' and 0.5 < float(lines[-1]) <= 1.0
  assert all(line.split()[0] in '0123456789' for line in lines[-5:-2])


def test_every_command_in_the_readme_works_from_the_installed_distribution():
  """Commands are `cnn-jax COMMAND`, and configs are shipped names or the user's own files: no
  path into the repository's cnn_jax/ or configs/."""
  from cnn_jax.__main__ import COMMANDS  # pylint: disable=g-import-not-at-top
  from cnn_jax.cli import shipped_configs  # pylint: disable=g-import-not-at-top
  blocks = re.findall(r'```bash\n(.+?)\n```', _read('README.md'), re.S)
  text = '\n'.join(blocks).replace('\\\n', ' ')
  assert 'python -m cnn_jax' not in text
  used = re.findall(r'\bcnn-jax (\S+)', text)
  assert used and set(used) <= set(COMMANDS), set(used) - set(COMMANDS)
  configs = re.findall(r'--config[ =]([^\s\]`]+)', text)
  assert len(configs) > 20
  shipped = set(shipped_configs())
  for value in configs:
    name = value.split(':')[0]
    assert name in shipped | {'<name>', 'CONFIG'} or (
        name.endswith('.py') and not name.startswith(('configs/', 'cnn_jax/'))), value


def test_the_quoted_model_summary_is_what_the_digits_run_prints():
  """README's summary block is the digits default's summary, row for row."""
  from cnn_jax.models import summary  # pylint: disable=g-import-not-at-top
  from cnn_jax.training import setup  # pylint: disable=g-import-not-at-top
  from conftest import load_config  # pylint: disable=g-import-not-at-top
  quoted = re.search(r'FLOPs per image:\n\n```\n(.+?)\n```', _read('README.md'), re.S)[1]
  config = load_config('digits')
  model = setup.build_model(config, 10, setup.build_speed(config))
  assert summary.format_summary(summary.summarize(model, (8, 8, 1))) == quoted


def test_the_quoted_final_line_has_the_shape_and_program_count_of_a_real_run(tmp_path):
  """README's final line of the digits run: the same words, the same number of compiled programs
  (a cold cache: none from the disk), and figures in their places."""
  quoted = re.search(r'\nFinal test accuracy: .+', _read('README.md'))[0].strip()
  result = subprocess.run(
      [sys.executable, '-m', 'cnn_jax', 'train', '--config', 'digits', '--workdir',
       str(tmp_path / 'run'), '--config.progress_bar=False',
       f'--config.compilation_cache={tmp_path / "cache"}'],
      cwd=tmp_path, capture_output=True, text=True, timeout=300, check=True)
  final = result.stdout.strip().splitlines()[-1]
  shape = lambda line: re.sub(r'\d[\d,.]*', 'N', line)
  assert shape(final) == shape(quoted), (final, quoted)
  programs = lambda line: re.search(r'(\d+) of (\d+) programs', line).groups()
  assert programs(final) == programs(quoted) == ('0', programs(quoted)[1])
