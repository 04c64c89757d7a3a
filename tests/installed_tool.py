"""Runs the console scripts installed beside the interpreter that runs the tests."""

import os
import subprocess
import sys

ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")


def path(name: str) -> str:
  """Where the setup installed command `name` (e.g. "mortar-morph")."""
  return os.path.join(os.path.dirname(sys.executable), name)


def run(name: str, *args, env=None, cwd=None) -> subprocess.CompletedProcess:
  """Runs an installed command with `args` (in `cwd` if given); output
  captured as text, 5 min at most."""
  return subprocess.run([path(name), *args], capture_output=True, text=True,
                        env=ENV if env is None else env, timeout=300, check=False, cwd=cwd)
