"""What every cnn_jax command shares: flag parsing and user errors printed without a traceback.

A user mistake (a misspelled `--config.` key, a missing config file, a bad value) ends the command
with a short message on stderr and exit status 2. Anything else is a bug and keeps its traceback.
"""

import importlib.util
import os
import re
import sys
import traceback
from typing import Callable

import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from cnn_jax.configs import default
from cnn_jax.errors import UserError

EXIT_USER_ERROR = 2


def _innermost_message(error: BaseException) -> str:
  # ConfigDict wraps a KeyError inside an AttributeError; the readable text is at the bottom.
  message = error
  while isinstance(message, BaseException) and message.args:
    message = message.args[0]
  return str(message)


def _exit_with(message: str) -> None:
  print(f'error: {message}', file=sys.stderr)
  sys.exit(EXIT_USER_ERROR)


def _without_traceback(message: str) -> str:
  """A flag error's text with an embedded traceback (a config file's get_config raised) cut down
  to the exception's own line."""
  before, traceback, after = message.partition('Traceback (most recent call last):')
  if not traceback:
    return message
  lines = [line for line in after.splitlines() if line.strip()]
  return before.strip() + ' ' + (lines[-1].strip() if lines else '')


def _config_file(argv: list[str]) -> str:
  """The --config argument of `argv` (as given, with any ':variant'), or '' if there is none."""
  for i, arg in enumerate(argv):
    if arg.startswith('--config='):
      return arg.split('=', 1)[1]
    if arg == '--config' and i + 1 < len(argv):
      return argv[i + 1]
  return ''


def config_module(value: str):
  """Runs the config file `value` names (a path or a shipped config's name, with any ':argument')
  and returns it as a module, for its get_config() and get_sweep().

  Raises:
    UserError: no such file, or its code failed.
  """
  path = config_path(value).partition(':')[0]
  if not os.path.exists(path):
    raise UserError(_missing_config(path))
  try:
    spec = importlib.util.spec_from_file_location('_cnn_jax_config', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
  except Exception as e:  # pylint: disable=broad-except  # The file's own code failed.
    raise UserError(f'could not load the config file {path!r}{_config_location(e)}: '
                    f'{type(e).__name__}: {e}') from None
  return module


def config_path(value: str) -> str:
  """A --config value as a path: 'digits' or 'digits:small' names cnn_jax/configs/digits.py of the
  installed configs, so a command runs from anywhere; a path is kept as it is."""
  name, colon, argument = value.partition(':')
  if os.path.exists(name) or not name.isidentifier():
    return value
  try:
    spec = importlib.util.find_spec(f'cnn_jax.configs.{name}')
  except ImportError:
    spec = None
  return spec.origin + colon + argument if spec and spec.origin else value


def _with_named_configs(argv: list[str]) -> list[str]:
  """`argv` with each --config NAME (or --config=NAME) turned into its file's path."""
  out = list(argv)
  for i, arg in enumerate(out):
    if arg.startswith('--config='):
      out[i] = '--config=' + config_path(arg.split('=', 1)[1])
    elif arg == '--config' and i + 1 < len(out):
      out[i + 1] = config_path(out[i + 1])
  return out


# What --checkpoint takes (evaluate, predict, report, export), the default first.
CHECKPOINT_HELP = ("Which checkpoint: 'best' (default), the one the run chose on validation and "
                   "its final line scored (the latest where it ranked none); 'latest'; or a step.")

HELP_FLAGS = frozenset({'--help', '-h', '-?', '--helpshort', '--helpfull', '--helpxml'})


def _parse_flags(argv: list[str]) -> list[str]:
  # ml_collections reads the overrides from sys.argv itself: both must name the same file.
  argv = sys.argv = _with_named_configs(argv)
  try:
    return flags.FLAGS(argv)
  except SystemExit as e:
    # absl exits with status 1 after printing help it was asked for: that is no failure.
    if e.code == 1 and HELP_FLAGS.intersection(argv[1:]):
      sys.exit(0)
    raise
  except flags.Error as e:
    _exit_with(f'{_without_traceback(str(e))}\nPass --helpfull to see every flag.')
  except (AttributeError, KeyError) as e:  # An override names a key the config does not have.
    text = _innermost_message(e)
    if "has no attribute 'get_config'" in text:
      _exit_with(f'the config file {_config_file(argv)!r} has no get_config(): it must define '
                 'get_config() returning an ml_collections.ConfigDict (see '
                 'cnn_jax/configs/digits.py).')
    bad = re.match(r"'([^']+)'", text)
    overrides = [a for a in argv[1:] if bad and a.startswith('--config.')
                 and bad.group(1) in re.split(r'[.=]', a[2:])]
    where = f' in {overrides[0]}' if overrides else ''
    hint = text.split('\n', 1)[1].strip() if '\n' in text else ''
    hint = hint or _moved_key_hint(bad.group(1) if bad else '')
    _exit_with(f"unknown config key {bad.group(1) if bad else text!r}{where}. {hint}\n"
               'Every key and its meaning is listed in cnn_jax/configs/default.py.')
  except Exception as e:  # pylint: disable=broad-except  # The config file itself failed to run.
    where = _config_location(e)
    _exit_with(f'could not load the config file {_config_file(argv)!r}{where}: '
               f'{type(e).__name__}: {e}')
  return []  # Not reached: _exit_with exits.


def _moved_key_hint(key: str) -> str:
  """Where a key that an older config or command line used now lives, or ''."""
  speed = default.get_config().speed
  moved = {**{name: f'speed.{name}' for name in speed}, 'vectorize': 'speed.population_vectorize'}
  return f'It is now config.{moved[key]}: --config.{moved[key]}=...' if key in moved else ''


def _config_location(error: BaseException) -> str:
  """' (line N of FILE)': where running a config file raised; '' for a syntax error."""
  if isinstance(error, SyntaxError):
    return ''  # Its message names the file and the line.
  frames = traceback.extract_tb(error.__traceback__)
  return f' (line {frames[-1].lineno} of {frames[-1].filename})' if frames else ''


def _missing_config(path: str) -> str:
  return (f'config file {path!r} does not exist; give the path of a config file, or the name '
          'of a shipped config: ' + ', '.join(shipped_configs()))


def shipped_configs() -> list[str]:
  """The names --config accepts without a path (the installed configs package's modules)."""
  spec = importlib.util.find_spec('cnn_jax.configs')
  directories = list(spec.submodule_search_locations or []) if spec else []
  return sorted(name[:-3] for d in directories for name in os.listdir(d)
                if name.endswith('.py') and not name.startswith('_') and name != 'default.py')


def parsed_config(flag_name: str = 'config') -> ml_collections.ConfigDict:
  """Returns the parsed `--config` value, or exits with a message if it could not be loaded."""
  try:
    path = config_flags.get_config_filename(flags.FLAGS[flag_name])
  except Exception:  # pylint: disable=broad-except
    path = None
  try:
    value = flags.FLAGS[flag_name].value
    if isinstance(value, ml_collections.ConfigDict):
      return value
    value.seed  # pylint: disable=pointless-statement  # An _ErrorConfig raises its load error here.
  except Exception as e:  # pylint: disable=broad-except
    problem = e
  else:
    problem = 'it did not return a ConfigDict from get_config()'
  if path is not None and not os.path.exists(path.split(':')[0]):
    _exit_with(_missing_config(path.split(':')[0]))
  _exit_with(f'could not load the config {path!r}: {problem}')


def run(main: Callable[[list[str]], None], takes_arguments: bool = False) -> None:
  """Runs `main(argv)` as an absl app; a UserError it raises becomes a message and exit 2.

  A command that does not `takes_arguments` (every one but predict's files) refuses words that
  are not flags, rather than ignoring them: a forgotten `--` or `=` is a mistake to report.
  """

  def guarded_main(argv):
    # Library log lines (JAX's "Unable to initialize backend 'tpu'", orbax's note that a periodic
    # checkpoint has no metrics) are noise to a user; cnn_jax prints what matters itself.
    logging.set_verbosity(logging.ERROR)
    try:
      if len(argv) > 1 and not takes_arguments:
        raise UserError(f'unexpected arguments {argv[1:]}: this command takes flags only (--help '
                        'lists them); config settings go in --config.KEY=VALUE')
      main(argv)
    except UserError as e:
      _exit_with(str(e))

  app.run(guarded_main, flags_parser=_parse_flags)
