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
