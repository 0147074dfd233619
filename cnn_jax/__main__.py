"""`cnn-jax COMMAND [FLAGS]` (or `python -m cnn_jax COMMAND`): every command under one name.

    cnn-jax train --config digits --workdir runs/digits
    cnn-jax evaluate --workdir runs/digits --split test
    cnn-jax predict --workdir runs/digits my_digit.png

Each command is also `python -m cnn_jax.<module>` (train is cnn_jax.main), with the same flags.
"""

import difflib
import importlib
import runpy
import sys

from cnn_jax import cli

# Command → the module that implements it.
COMMANDS = {
    'train': 'cnn_jax.main',
    'evaluate': 'cnn_jax.evaluate',
    'predict': 'cnn_jax.predict',
    'report': 'cnn_jax.report',
    'sweep': 'cnn_jax.sweep',
    'score': 'cnn_jax.score',
    'benchmark': 'cnn_jax.benchmark',
    'summary': 'cnn_jax.summary',
    'export': 'cnn_jax.export',
}


def usage() -> str:
  """The commands, each with the first line of its module's description."""
  lines = ['usage: cnn-jax COMMAND [FLAGS]   (cnn-jax COMMAND --help for its flags)', '',
           'commands:']
  for name, module in COMMANDS.items():
    summary = importlib.import_module(module).__doc__.strip().split(':')[0]
    lines.append(f'  {name:<10} {summary}')
  return '\n'.join(lines)


def main(argv: list[str] | None = None) -> None:
  """Runs the command named by argv[1] with the rest of argv as its flags."""
  argv = list(sys.argv if argv is None else argv)
  if len(argv) < 2 or argv[1] in ('-h', '--help', 'help'):
    print(usage())
    sys.exit(0 if len(argv) >= 2 else cli.EXIT_USER_ERROR)
  name = argv[1]
  if name not in COMMANDS:
    close = difflib.get_close_matches(name, list(COMMANDS), n=1)
    print(f'error: unknown command {name!r}' + (f" (did you mean '{close[0]}'?)" if close else '')
          + f'; the commands are: {", ".join(COMMANDS)}', file=sys.stderr)
    sys.exit(cli.EXIT_USER_ERROR)
  sys.argv = [f'cnn-jax {name}', *argv[2:]]  # What absl parses, and names in --help.
  # Exactly as `python -m cnn_jax.<module>`: the command runs as the main module, so its --help
  # shows its own description and flags.
  runpy.run_module(COMMANDS[name], run_name='__main__', alter_sys=True)


if __name__ == '__main__':
  main()
