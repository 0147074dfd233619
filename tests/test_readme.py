"""README.md's set-up commands are the ones CI runs, so the README cannot drift from the truth."""

import os
import re

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
  assert 'configs/digits.py' in commands[0] and 'pytest' in commands[1]
