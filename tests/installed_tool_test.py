"""installed_tool.python runs a program as `python ARGS` would: each case is run
both ways, by a fork server and by a plain subprocess, and the two must agree
(exit status, stdout, what the program sees of its process). A server that
reported success for a failing test script would hide every failure of the
tests that use it."""

import os
import subprocess
import sys
import textwrap
import uuid

import pytest

import installed_tool

# What a program sees of its process, printed one fact a line.
PROBE = textwrap.dedent("""\
    import os, sys
    print("argv", sys.argv)
    print("path0", repr(sys.path[0]))
    print("cwd", os.getcwd())
    print("name", __name__)
    print("file", globals().get("__file__", "-"))
    print("probe", os.environ.get("MORTAR_PROBE", "-"))
    print("numpy", "numpy" in sys.modules and "mortar_tf" not in sys.modules)
    """)

CASES = {
    "exit status": "import sys; print('out'); sys.exit(3)",
    "uncaught exception": "print('before'); raise ValueError('broken')",
    "assertion": "assert 1 == 2, 'not equal'",
    "signal": "import os, signal; os.kill(os.getpid(), signal.SIGKILL)",
    "success": "print('fine')",
}


def _plain(*args, env, cwd=None):
  return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env,
                        timeout=300, check=False, cwd=cwd)


# MORTAR_TEST_NO_ZYGOTE=1: no server runs anything, every run is a plain subprocess
SERVED = os.environ.get("MORTAR_TEST_NO_ZYGOTE", "") in ("", "0")


def _by_server(parent: int) -> bool:
  """Whether a run whose parent process was `parent` ran as servers are on:
  a server's child, or this process's own subprocess under MORTAR_TEST_NO_ZYGOTE."""
  return (parent != os.getpid()) == SERVED


def _served(*args, env, cwd=None):
  """installed_tool.python's result, asserting a server's child ran it
  (a plain subprocess under MORTAR_TEST_NO_ZYGOTE=1)."""
  parent = "import os; print('parent', os.getppid()); "
  if args[0] == "-c":
    args = ("-c", parent + args[1], *args[2:])
  result = installed_tool.python(*args, env=env, cwd=cwd)
  first, _, rest = result.stdout.partition("\n")
  if args[0] == "-c":
    assert first.startswith("parent ") and _by_server(int(first.split()[1])), (
        f"servers {'on' if SERVED else 'off'}, yet run {first!r} from pid {os.getpid()}")
    result.stdout = rest
  return result


@pytest.mark.parametrize("case", sorted(CASES))
def test_exit_status_and_output_are_pythons(case):
  env = dict(installed_tool.ENV)
  served, plain = _served("-c", CASES[case], env=env), _plain("-c", CASES[case], env=env)
  assert served.returncode == plain.returncode
  assert served.stdout == plain.stdout
  # the same last line of a traceback (the frames above it differ: the server's)
  last = lambda text: text.strip().splitlines()[-1] if text.strip() else ""  # pylint: disable=unnecessary-lambda-assignment
  assert last(served.stderr) == last(plain.stderr)


def test_a_program_sees_its_argv_directory_environment_and_main(tmp_path):
  env = dict(installed_tool.ENV, MORTAR_PROBE="seen")
  script = tmp_path / "probe.py"
  script.write_text(PROBE)
  for args in (("-c", PROBE, "a", "b c"), (str(script), "a", "--flag=1")):
    served = _served(*args, env=env, cwd=str(tmp_path))
    plain = _plain(*args, env=env, cwd=str(tmp_path))
    assert served.returncode == plain.returncode == 0, served.stderr + plain.stderr
    # numpy: the server imported it with TensorFlow; a bare interpreter did not
    strip = lambda out: [l for l in out.splitlines() if not l.startswith("numpy")]  # pylint: disable=unnecessary-lambda-assignment
    assert strip(served.stdout) == strip(plain.stdout)
    assert "probe seen" in served.stdout


def test_one_server_serves_environments_that_differ_only_after_the_import():
  env = dict(installed_tool.ENV)
  code = "import os; print(os.environ.get('MORTAR_TF_DISABLE_OPS', '-'))"
  parents = set()
  for value in ("1", "0", "1"):
    result = installed_tool.python(
        "-c", "import os; print(os.getppid()); " + code,
        env=dict(env, MORTAR_TF_DISABLE_OPS=value))
    parent, seen = result.stdout.split()
    assert seen == value
    parents.add(parent)
  assert len(parents) == 1 and _by_server(int(parents.pop()))


def test_an_environment_tensorflow_reads_at_import_gets_its_own_server():
  code = "import os; print(os.getppid(), os.environ.get('SERVER_KEY_PROBE', 'env'))"
  fresh = str(uuid.uuid4())  # a key no earlier run of this process had
  other = dict(installed_tool.ENV, SERVER_KEY_PROBE=fresh)
  runs = [installed_tool.python("-c", code, env=env)
          for env in (installed_tool.ENV, other, other, other)]
  assert [r.stdout.split()[1] for r in runs] == ["env", fresh, fresh, fresh]
  parents = [int(r.stdout.split()[0]) for r in runs]
  # ENV's server, then the new key's first run as a plain subprocess (its
  # parent: this process), then the new key's own server, twice
  assert parents[1] == os.getpid()
  if SERVED:
    assert os.getpid() not in (parents[0], parents[2]) and parents[0] != parents[2] == parents[3]
  else:
    assert parents == [os.getpid()] * 4


def test_a_run_past_its_timeout_is_killed_and_raises():
  with pytest.raises(subprocess.TimeoutExpired):
    installed_tool.python("-c", "import time; print('started', flush=True); time.sleep(60)",
                          timeout=3)
  assert installed_tool.python("-c", "print('next')").stdout == "next\n"  # the server still serves
