"""Test setup: the tests import the installed mortar_tf, never the source tree."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# TensorFlow 2.21's oneDNN kernels abort the process while training the FER
# mini-Xception (SeparableConv2D + BatchNormalization) on this CPU build; the
# plain Eigen kernels do not. Set before TensorFlow is first imported.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")


import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position


@pytest.fixture(autouse=True)
def _cwd_restored():
  """A test that changes directory must change it back (monkeypatch.chdir):
  with --dist loadfile, tests of other files run next in the same process,
  and benchmarks/scripts they start resolve relative paths from it."""
  before = os.getcwd()
  yield
  after = os.getcwd()
  if after != before:
    os.chdir(before)
    pytest.fail(f"the test left the working directory at {after!r} (was {before!r})")


@pytest.fixture
def killed_writer():
  """killed_writer(code, *args) runs `python -c code *args`, reads the first
  line it prints (the code prints the temp it made, then sleeps), kills it
  with SIGKILL and returns that line's last path component: what a writer
  killed mid-write leaves behind."""
  import signal  # pylint: disable=import-outside-toplevel
  import subprocess  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel

  def run(code: str, *args: str) -> str:
    child = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE,
                             text=True)
    try:
      line = child.stdout.readline().strip()
    finally:
      os.kill(child.pid, signal.SIGKILL)
      child.wait()
      child.stdout.close()
    assert line, "the writer printed nothing before it was killed"
    return os.path.basename(line)

  return run
