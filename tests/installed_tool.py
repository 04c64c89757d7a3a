"""Runs the console scripts installed beside the interpreter that runs the
tests (run), and Python programs as that interpreter would (python: `-c CODE`
or a script file).

A run is a child forked by a server (tool_zygote.py, started on first use)
that has imported TensorFlow once, instead of a new process that pays ~4.5 s
of CPU to import it: same argv, directory, environment, output and exit
status. What TensorFlow's import reads from the environment is the server's,
so a test process keeps one server per import_key of its runs' environments:
ENV's from the first run, any other's from its second (a one-off environment
is not worth a server). A command that is not a console script, a server that
cannot start or died (each key's is restarted once), or MORTAR_TEST_NO_ZYGOTE=1
runs a plain subprocess.

A program whose point is a bare interpreter (what importing TensorFlow does,
the order of imports, a process without TensorFlow) or that must run beside
another (servers run one child at a time) starts its own subprocess instead.
Two differences remain: TensorFlow is in sys.modules from the start, and a run
ends when its process exits, so output a process it started writes after that
is not captured (subprocess.run waits for the pipes to close).
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
_STARTS = 2  # servers each test process may start per key: the first, and one restart

# Read after TensorFlow's import (mortar_tf reads MORTAR_TF_*; pytest names the
# running test): a server serves runs whatever their values.
_AFTER_IMPORT = ("MORTAR_", "PYTEST_CURRENT_TEST")


def import_key(env) -> tuple:
  """The part of `env` a server's `import tensorflow` may have read."""
  return tuple(sorted((k, v) for k, v in env.items() if not k.startswith(_AFTER_IMPORT)))


def path(name: str) -> str:
  """Where the setup installed command `name` (e.g. "mortar-morph")."""
  return os.path.join(os.path.dirname(sys.executable), name)


def run(name: str, *args, env=None, cwd=None) -> subprocess.CompletedProcess:
  """Runs an installed command with `args` (in `cwd` if given); output
  captured as text, 5 min at most.

  Raises:
    subprocess.TimeoutExpired: the command ran for longer (it was killed).
  """
  return _run("console", [path(name), *args], env, cwd, TIMEOUT)


def python(*args, env=None, cwd=None, timeout=TIMEOUT) -> subprocess.CompletedProcess:
  """Runs `python *args` (args: "-c", code, ... or a script's path, ...) with
  the interpreter of the tests; output captured as text.

  Raises:
    subprocess.TimeoutExpired: it ran for longer than `timeout` seconds.
  """
  if args and args[0] == "-c":
    return _run("code", list(args), env, cwd, timeout)
  return _run("script", list(args), env, cwd, timeout)


def _run(kind, argv, env, cwd, timeout) -> subprocess.CompletedProcess:
  env = ENV if env is None else dict(env)
  argv = [os.fsdecode(a) for a in argv]
  if os.environ.get("MORTAR_TEST_NO_ZYGOTE", "") in ("", "0"):
    result = _SERVERS.run(kind, argv, os.getcwd() if cwd is None else cwd, env, timeout)
    if result is not None:
      return result
  command = argv if kind == "console" else [sys.executable, *argv]
  return subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout,
                        check=False, cwd=cwd)


class _Servers:
  """This test process's servers, one per import_key."""

  def __init__(self):
    self._lock = threading.Lock()
    self._servers = {}
    self._seen = {import_key(ENV)}

  def run(self, kind, argv, cwd, env, timeout):
    """The CompletedProcess of the run by a server, or None where no server
    runs it (the caller starts a subprocess)."""
    key = import_key(env)
    with self._lock:
      if key not in self._seen:
        self._seen.add(key)
        return None
      server = self._servers.get(key)
      if server is None:
        server = self._servers[key] = _Zygote(env)
    return server.run(kind, argv, cwd, env, timeout)


class _ZygoteDied(Exception):
  """The fork server's pipe closed (it exited or was killed)."""


class _Zygote:
  """This test process's fork server, started on first use."""

  def __init__(self, env):
    self._lock = threading.Lock()
    self._process = None  # subprocess.Popen, while one runs
    self._channel = None
    self._owner = None  # the pid of the process that started it
    self._env = dict(env)  # the environment it starts in
    self._starts = 0

  def run(self, kind, argv, cwd, env, timeout):
    """The CompletedProcess of `argv` (a run of `kind`, see tool_zygote) run
    in `cwd` with `env` by a child of the server, or None where it does not
    run it (it cannot start, or another thread's run holds it); the caller
    then starts a plain subprocess.

    Raises:
      subprocess.TimeoutExpired: the run took more than `timeout` seconds.
    """
    cwd = os.path.abspath(cwd)
    runnable = (os.access(argv[0], os.X_OK) if kind == "console" else
                os.path.isfile(argv[0]) if kind == "script" else True)
    if not (os.path.isdir(cwd) and runnable):
      return None  # (subprocess.run raises the error of a bad cwd or command)
    if not self._lock.acquire(blocking=False):
      return None
    try:
      if not self._started():
        return None
      return self._run(kind, argv, cwd, env, timeout)
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
    env = self._env
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
    self._process, self._channel, self._owner = process, channel, os.getpid()
    return True

  def _run(self, kind, argv, cwd, env, timeout):
    """`argv` run in a child of the running server."""
    with tempfile.NamedTemporaryFile(prefix="tool-out-") as out, \
         tempfile.NamedTemporaryFile(prefix="tool-err-") as err:
      self._channel.send({"kind": kind, "argv": argv, "env": env, "cwd": cwd,
                          "stdout": out.name, "stderr": err.name})
      if "error" in self._receive():
        return None  # not a console script: nothing ran
      try:
        status = self._receive(timeout=timeout)["status"]
      except _ZygoteDied:  # never run it twice: part of its work may be done
        self.stop()
        raise RuntimeError(f"the fork server died while {argv[0]} ran "
                           "(MORTAR_TEST_NO_ZYGOTE=1 runs plain subprocesses)") from None
      except TimeoutError:
        self._channel.send({"kill": True})
        self._receive()  # its status, once it is gone
        raise subprocess.TimeoutExpired(argv, timeout, output=out.read() or None,
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


_SERVERS = _Servers()
