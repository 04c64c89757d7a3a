"""Runs the console scripts installed beside the interpreter that runs the tests.

A run is a child forked by a server (tool_zygote.py, one per test process,
started on first use) that has imported TensorFlow once, instead of a new
process that pays ~4.5 s of CPU to import it: same argv, directory,
environment, output and exit status. A call with an environment other than
ENV, a command that is not a console script, or a server that cannot start or
died (it is restarted once) runs a plain subprocess, as every call does under
MORTAR_TEST_NO_ZYGOTE=1.
"""

import atexit
import locale
import os
import subprocess
import sys
import tempfile
import threading

import tool_zygote

ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
TIMEOUT = 300  # seconds a run may take
_STARTS = 2  # fork servers each test process may start: the first, and one restart


def path(name: str) -> str:
  """Where the setup installed command `name` (e.g. "mortar-morph")."""
  return os.path.join(os.path.dirname(sys.executable), name)


def run(name: str, *args, env=None, cwd=None) -> subprocess.CompletedProcess:
  """Runs an installed command with `args` (in `cwd` if given); output
  captured as text, 5 min at most.

  Raises:
    subprocess.TimeoutExpired: the command ran for longer (it was killed).
  """
  env = ENV if env is None else env
  if os.environ.get("MORTAR_TEST_NO_ZYGOTE", "") in ("", "0"):
    result = _ZYGOTE.run([path(name), *args], os.getcwd() if cwd is None else cwd, env)
    if result is not None:
      return result
  return subprocess.run([path(name), *args], capture_output=True, text=True, env=env,
                        timeout=TIMEOUT, check=False, cwd=cwd)


class _ZygoteDied(Exception):
  """The fork server's pipe closed (it exited or was killed)."""


class _Zygote:
  """This test process's fork server, started on first use."""

  def __init__(self):
    self._lock = threading.Lock()
    self._process = None  # subprocess.Popen, while one runs
    self._channel = None
    self._owner = None  # the pid of the process that started it
    self._env = None  # the environment it runs in
    self._starts = 0

  def run(self, argv, cwd, env):
    """The CompletedProcess of `argv` run in `cwd` by a child of the fork
    server, or None where it does not run it: `env` is not the fork server's
    (ENV), or it cannot start; the caller then starts a plain subprocess.

    Raises:
      subprocess.TimeoutExpired: the run took more than TIMEOUT seconds.
    """
    cwd = os.path.abspath(cwd)
    if env != ENV or not (os.path.isdir(cwd) and os.access(argv[0], os.X_OK)):
      return None  # (subprocess.run raises the error of a bad cwd or command)
    if not self._lock.acquire(blocking=False):
      return None  # another thread's run holds the fork server
    try:
      if not self._started() or env != self._env:  # (ENV changed since it started)
        return None
      return self._run(argv, cwd)
    except (_ZygoteDied, OSError):
      # It died before this run started, or could not start: this run is a
      # plain subprocess, the next call starts another.
      self.stop()
      return None
    except subprocess.TimeoutExpired:
      raise
    except BaseException:  # e.g. ^C: a reply may still be on its way
      self.stop()
      raise
    finally:
      self._lock.release()

  def _started(self) -> bool:
    """Whether a fork server (started now if none runs) waits for requests."""
    if self._process is not None and self._owner == os.getpid():
      return True
    self._process = self._channel = None  # none, or the one of the process this forked from
    if self._starts >= _STARTS:
      return False
    self._starts += 1
    if self._starts == 1:
      atexit.register(self.stop)
    env = dict(ENV)
    # Its stderr is not this process's: that is the capture of the test now running.
    process = subprocess.Popen(
        [sys.executable, os.path.abspath(tool_zygote.__file__), os.path.dirname(sys.executable)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        env=env, cwd="/", bufsize=0)
    channel = tool_zygote.Channel(process.stdout.fileno(), process.stdin.fileno())
    try:
      ready = channel.receive(timeout=TIMEOUT)  # once TensorFlow is imported
    except TimeoutError:
      ready = None
    if ready is None:
      process.kill()
      process.wait()
      return False
    self._process, self._channel, self._owner, self._env = process, channel, os.getpid(), env
    return True

  def _run(self, argv, cwd):
    """`argv` run in a child of the running fork server."""
    with tempfile.NamedTemporaryFile(prefix="tool-out-") as out, \
         tempfile.NamedTemporaryFile(prefix="tool-err-") as err:
      self._channel.send({"argv": [os.fsdecode(a) for a in argv], "cwd": cwd,
                          "stdout": out.name, "stderr": err.name})
      if "error" in self._receive():
        return None  # not a console script: nothing ran
      try:
        status = self._receive(timeout=TIMEOUT)["status"]
      except _ZygoteDied:  # never run it twice: part of its work may be done
        self.stop()
        raise RuntimeError(f"the fork server died while {argv[0]} ran "
                           "(MORTAR_TEST_NO_ZYGOTE=1 runs plain subprocesses)") from None
      except TimeoutError:
        self._channel.send({"kill": True})
        self._receive()  # its status, once it is gone
        raise subprocess.TimeoutExpired(argv, TIMEOUT, output=out.read() or None,
                                        stderr=err.read() or None) from None
      # The child wrote through files of its own: these still read from the start.
      return subprocess.CompletedProcess(argv, status, _text(out.read()), _text(err.read()))

  def _receive(self, timeout=None):
    message = self._channel.receive(timeout)
    if message is None:
      raise _ZygoteDied()
    return message

  def stop(self):
    """Ends the fork server, if one runs (at exit, or once it failed)."""
    process, self._process, self._channel = self._process, None, None
    if process is None or self._owner != os.getpid():
      return
    process.stdin.close()  # end of its requests: it exits
    try:
      process.wait(timeout=10)
    except subprocess.TimeoutExpired:
      process.kill()
      process.wait()
    process.stdout.close()


def _text(data: bytes) -> str:
  """`data` decoded as subprocess.run(text=True) decodes output."""
  text = data.decode(locale.getpreferredencoding(False))
  return text.replace("\r\n", "\n").replace("\r", "\n")


_ZYGOTE = _Zygote()
