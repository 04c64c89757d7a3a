"""A fork server ("zygote") for installed_tool: one Python process imports
TensorFlow once, then forks a child per run, which becomes the process the
run asked for: an installed console script, `python -c CODE ...`, or
`python SCRIPT ...`. Each run is spared the ~4.5 s of CPU that
`import tensorflow` costs.

installed_tool starts it as `python tool_zygote.py BIN_DIR` with the
environment of the runs it will serve, its stdin and stdout pipes to the test
process. Only TensorFlow is imported ahead: keras and mortar_tf read
environment variables (TF_USE_LEGACY_KERAS, MORTAR_TF_DISABLE_OPS) when they
are imported, and a run should load the mortar_tf installed when it starts;
each child imports them itself, as a new process would. A child takes the
run's own environment before it starts; what TensorFlow's import read (TF_*
variables among others) is the server's, so installed_tool keeps one server
per such environment (see installed_tool.import_key).

The protocol, one JSON object a line:
  zygote -> test process: {"ready": pid} once TensorFlow is imported.
  request: {"kind": "console" | "code" | "script", "argv": [...], "env": {...},
            "cwd": dir, "stdout": file, "stderr": file}
    console: argv is [script path, *args], the path a console script's;
    code: argv is ["-c", code, *args], as python's command line;
    script: argv is [file, *args], run as python runs a file (__main__).
    -> {"pid": child pid}, then {"status": returncode} (negative: the signal
    that killed it), or {"error": why} (not a console script: nothing ran).
  {"kill": true} while a child runs: SIGKILL it (a timeout); ignored otherwise.
  End of the requests (the test process closed its pipe or died): the zygote
  kills the child it waits for, if any, and exits.

This module imports only the standard library: installed_tool imports it for
Channel.
"""

import functools
import gc
import importlib.metadata
import json
import os
import runpy
import select
import signal
import sys
import time
import types


class Channel:
  """JSON messages, one a line, read from file descriptor `inbox` and written
  to `outbox`."""

  def __init__(self, inbox: int, outbox: int):
    self.inbox, self.outbox, self._pending = inbox, outbox, b""

  def send(self, message) -> None:
    """Writes `message` (raises OSError, e.g. BrokenPipeError, if the reader is gone)."""
    data = json.dumps(message).encode() + b"\n"
    while data:
      data = data[os.write(self.outbox, data):]

  def receive(self, timeout=None):
    """The next message, or None at end of file.

    Raises:
      TimeoutError: no whole message within `timeout` seconds (None: no limit).
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    while b"\n" not in self._pending:
      left = None if deadline is None else max(0.0, deadline - time.monotonic())
      if not select.select([self.inbox], [], [], left)[0]:
        raise TimeoutError
      chunk = os.read(self.inbox, 1 << 16)
      if not chunk:
        return None
      self._pending += chunk
    line, self._pending = self._pending.split(b"\n", 1)
    return json.loads(line)


def _entry_point(command: str) -> importlib.metadata.EntryPoint:
  """The console_scripts entry point installed as `command` (LookupError if none)."""
  found = importlib.metadata.entry_points(group="console_scripts",
                                          name=os.path.basename(command))
  if not found:
    raise LookupError(f"{command} is not a console script")
  return tuple(found)[0]


def _wait(channel: Channel, pid: int) -> int:
  """Waits for child `pid` and returns its wait status; kills it (SIGKILL) on a
  request or at end of file (then the zygote exits after it: see _serve)."""
  try:
    pidfd = [os.pidfd_open(pid)]  # readable once the child ends (Linux 5.3+)
  except (AttributeError, OSError):
    pidfd = []  # poll instead
  try:
    while True:
      done, status = os.waitpid(pid, os.WNOHANG)
      if done:
        return status
      readable = select.select([channel.inbox, *pidfd], [], [], None if pidfd else 0.05)[0]
      if channel.inbox in readable:
        channel.receive()  # {"kill": true} or end of file: either way the child goes
        os.kill(pid, signal.SIGKILL)
        return os.waitpid(pid, 0)[1]
  finally:
    for fd in pidfd:
      os.close(fd)


def _serve(channel: Channel):
  """Answers requests until end of file (returns None there, in the zygote);
  in each forked child returns (request, program) for it to run."""
  while True:
    request = channel.receive()
    if request is None:
      return None
    if "argv" not in request:
      continue  # a kill that came after its child had ended
    try:
      program = _program(request)
    except LookupError as e:
      channel.send({"error": str(e)})
      continue
    sys.stdout.flush()
    sys.stderr.flush()
    # The garbage collector leaves the zygote's objects alone in the child: it
    # would copy their pages (copy-on-write) to traverse them, and exiting,
    # which collects, would take 0.7 s instead of 0.2 s.
    gc.freeze()
    pid = os.fork()
    if pid == 0:
      return request, program
    channel.send({"pid": pid})
    status = _wait(channel, pid)
    channel.send({"status": os.waitstatus_to_exitcode(status)})


def _run_code(code: str) -> None:
  """What `python -c code` runs, in the fresh __main__."""
  exec(compile(code, "<string>", "exec"), sys.modules["__main__"].__dict__)  # pylint: disable=exec-used


def _run_script(path: str) -> None:
  """What `python path` runs."""
  runpy.run_path(path, run_name="__main__")


def _program(request):
  """The function a child calls to run `request` (LookupError: a console
  script that is not installed)."""
  kind, argv = request.get("kind", "console"), request["argv"]
  if kind == "console":
    entry_point = _entry_point(argv[0])
    return lambda: entry_point.load()()
  if kind == "code":
    return functools.partial(_run_code, argv[1])
  if kind == "script":
    return functools.partial(_run_script, argv[0])
  raise LookupError(f"unknown kind of run {kind!r}")


def _become(channel: Channel, request, program):
  """In a forked child: turns the process into the one the run would start
  (environment, argv, sys.path[0], directory, stdio, __main__); returns the
  function that runs it."""
  os.close(channel.inbox)  # the tool never sees the zygote's pipes
  os.close(channel.outbox)
  if "env" in request:
    os.environ.clear()
    os.environ.update(request["env"])
  os.chdir(request["cwd"])
  null = os.open(os.devnull, os.O_RDONLY)
  os.dup2(null, 0)
  os.close(null)
  for fd, name in ((1, "stdout"), (2, "stderr")):
    out = os.open(request[name], os.O_WRONLY | os.O_TRUNC)
    os.dup2(out, fd)
    os.close(out)
  kind, argv = request.get("kind", "console"), list(request["argv"])
  if kind == "code":
    sys.argv, sys.path[0] = ["-c", *argv[2:]], ""
  elif kind == "script":
    sys.argv, sys.path[0] = argv, os.path.dirname(os.path.realpath(argv[0]))
  else:  # a console script's sys.path[0] is its own directory
    sys.argv, sys.path[0] = argv, os.path.dirname(argv[0])
  # A fresh __main__ as python (or pip's wrapper script) starts with (the
  # tools lend it their docstring for --help); the zygote's stays referenced.
  sys.modules["__zygote__"] = sys.modules["__main__"]
  main = types.ModuleType("__main__")
  if kind != "code":
    main.__file__ = sys.argv[0]
  sys.modules["__main__"] = main
  # numpy's global generator is seeded at import, i.e. once in the zygote: a
  # new process would draw a fresh seed (Python's random reseeds at fork itself).
  if "numpy" in sys.modules:
    sys.modules["numpy"].random.seed()
  return program


if __name__ == "__main__":
  # The pipes move off fds 0 and 1 (non-inheritable duplicates), so that
  # nothing TensorFlow prints can corrupt them and no child starts with them.
  _channel = Channel(os.dup(0), os.dup(1))
  _null = os.open(os.devnull, os.O_RDWR)
  os.dup2(_null, 0)
  os.dup2(_null, 1)
  os.close(_null)
  sys.path[0] = sys.argv[1]  # not this file's directory (tests/): each child sets its own
  import tensorflow  # pylint: disable=g-import-not-at-top,unused-import
  try:
    _channel.send({"ready": os.getpid()})
    _job = _serve(_channel)
  except (OSError, KeyboardInterrupt):  # the test process is gone, or ^C
    _job = None
  if _job is None:
    sys.exit(0)
  # A child: run it and leave as the process would, through the
  # interpreter's normal exit (SystemExit's status, a traceback and status 1
  # for an uncaught exception, atexit handlers, stdio flushed).
  sys.exit(_become(_channel, *_job)())
