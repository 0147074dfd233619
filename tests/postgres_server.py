"""A throwaway PostgreSQL server on loopback for tests, or the reason there cannot be one."""

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile

import portpicker


def _binary(name: str) -> str | None:
  found = shutil.which(name)
  if found:
    return found
  candidates = sorted(glob.glob(f'/usr/lib/postgresql/*/bin/{name}'))
  return candidates[-1] if candidates else None


def _as_postgres(command: list[str]) -> list[str]:
  # PostgreSQL refuses to run as root; the Debian package creates a 'postgres' user for it.
  if os.geteuid() == 0:
    return ['runuser', '-u', 'postgres', '--', *command]
  return command


@contextlib.contextmanager
def postgres_url():
  """Yields a postgresql:// URL of a fresh server on 127.0.0.1, or raises RuntimeError(reason)."""
  initdb, pg_ctl = _binary('initdb'), _binary('pg_ctl')
  if not initdb or not pg_ctl:
    raise RuntimeError('PostgreSQL server binaries (initdb, pg_ctl) are not installed')
  try:
    import psycopg  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    raise RuntimeError('psycopg (the PostgreSQL driver) is not installed') from None
  directory = tempfile.mkdtemp(prefix='cnn_jax_pg_')
  data = os.path.join(directory, 'data')
  if os.geteuid() == 0:
    shutil.chown(directory, 'postgres')
  port = portpicker.pick_unused_port()
  run = lambda command: subprocess.run(_as_postgres(command), capture_output=True, text=True,
                                       timeout=120, check=False)
  result = run([initdb, '-D', data, '-A', 'trust', '-U', 'postgres'])
  if result.returncode:
    raise RuntimeError(f'initdb failed: {result.stderr.strip()[-300:]}')
  result = run([pg_ctl, '-D', data, '-l', os.path.join(directory, 'log'), '-w', '-o',
                f'-p {port} -h 127.0.0.1 -k {directory}', 'start'])
  if result.returncode:
    raise RuntimeError(f'pg_ctl start failed: {result.stderr.strip()[-300:]}')
  try:
    yield f'postgresql://postgres@127.0.0.1:{port}/postgres'
  finally:
    run([pg_ctl, '-D', data, '-m', 'immediate', 'stop'])
    shutil.rmtree(directory, ignore_errors=True)
