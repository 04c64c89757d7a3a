"""What a mistyped command line prints: the cause, then where the help is, never
the whole help first; multi-input shape errors in the command line's own syntax."""

import pathlib
import subprocess
import sys

import keras
import pytest

import installed_tool

# Each tool with a usage error of its own (the required flags given).
CASES = [
    ("mortar-analyze", ["--model=m.keras", "--precisions=abc"],
     "--precisions must be a list of floats"),
    ("mortar-morph", ["--input=in", "--output=out", "--verify_inputs=x.npz"],
     "--verify_inputs is for --verify"),
    ("mortar-estimate", ["--saved_model=m", "--input_shape=a:1,x"], "--input_shape"),
    ("mortar-sweep", ["--model=m.keras", "--data=d.npz", "--methods=magic"],
     "unknown methods ['magic']"),
    ("mortar-results", ["--models=m.json", "stray"], "unexpected arguments: stray"),
    ("mortar-morph", ["--input=in", "--output=out", "--precision=0.1",
                      "--precision_map=p.json"], "give --precision or --precision_map"),
    # absl's own parsing errors, in the same form
    ("mortar-morph", ["--output=out"], "--input must have a value other than None"),
    ("mortar-estimate", ["--saved_model=m", "--bogus=1"], "Unknown command line flag 'bogus'"),
    ("mortar-sweep", ["--model=m.keras", "--data=d.npz", "--budget=abc"], "--budget"),
    ("mortar-analyze", ["--model=m.keras", "--domain=bits"], "--domain"),
    ("mortar-analyze", ["--model=m.keras", "--domain=compressed", "--nocompressed"],
     "--domain=compressed needs the compressed sizes"),
]


@pytest.mark.parametrize("tool,args,cause", CASES)
def test_a_usage_error_is_its_cause_and_a_pointer_to_the_help(tool, args, cause, tmp_path):
  (tmp_path / "p.json").write_text("{}")
  result = installed_tool.run(tool, *[a.replace("p.json", str(tmp_path / "p.json"))
                                      for a in args])
  assert result.returncode == 1
  lines = [l for l in result.stderr.splitlines() if l.strip()]
  assert len(lines) == 2, result.stderr
  assert lines[0].startswith(f"{tool}: error: ") and cause in lines[0], lines[0]
  assert lines[1] == f"see {tool} --helpshort"
  help_ = installed_tool.run(tool, "--helpshort")
  assert "--" in help_.stdout and "--helpfull" in help_.stdout  # the pointer leads somewhere


@pytest.fixture(scope="module")
def two_inputs(tmp_path_factory):
  d = tmp_path_factory.mktemp("two")
  a, b = keras.Input((5,), name="token_ids"), keras.Input((5,), name="padding_mask")
  out = keras.layers.Dense(3, name="fc")(keras.layers.Concatenate()([a, b]))
  keras.Model([a, b], out).export(str(d / "m"), verbose=False)
  return d / "m"


@pytest.mark.parametrize("tool,args", [
    ("mortar-estimate", ["--saved_model={m}", "--input_shape=1,5"]),
    ("mortar-morph", ["--input={m}", "--output={out}", "--input_shape=1,5"]),
])
def test_multi_input_shape_errors_speak_the_flags_syntax(two_inputs, tmp_path, tool, args):
  result = installed_tool.run(tool, *[a.format(m=two_inputs, out=tmp_path / "out")
                                      for a in args])
  assert result.returncode == 1
  assert "--input_shape='padding_mask:1,5;token_ids:1,5'" in result.stderr, result.stderr
  assert "{name: shape}" not in result.stderr and "dict" not in result.stderr
  # The syntax it shows works.
  ok = installed_tool.run("mortar-estimate", f"--saved_model={two_inputs}",
                          "--input_shape=padding_mask:1,5;token_ids:1,5")
  assert ok.returncode == 0, ok.stderr


def test_a_shape_for_some_inputs_only_is_refused(tmp_path):
  """Free sequence lengths: a shape for one input leaves the other's unknown."""
  a, b = keras.Input((None, 4), name="token_ids"), keras.Input((None, 4), name="padding_mask")
  out = keras.layers.Dense(3, name="fc")(keras.layers.Add()([a, b]))
  keras.Model([a, b], out).export(str(tmp_path / "m"), verbose=False)
  result = installed_tool.run("mortar-estimate", f"--saved_model={tmp_path / 'm'}",
                              "--input_shape=token_ids:1,5,4")
  assert result.returncode == 1
  assert "gives token_ids but not padding_mask" in result.stderr, result.stderr
  assert "--input_shape='padding_mask:1,?,4;token_ids:1,5,4'" in result.stderr
  ok = installed_tool.run("mortar-estimate", f"--saved_model={tmp_path / 'm'}",
                          "--input_shape=token_ids:1,5,4;padding_mask:1,5,4")
  assert ok.returncode == 0, ok.stderr


LAUNCHERS = {"mortar-analyze": "mortar_analyze", "mortar-morph": "mortar_morph",
             "mortar-estimate": "mortar_estimate", "mortar-sweep": "mortar_sweep",
             "mortar-results": "mortar_results"}


def _flag_lines(text):
  return sorted(l.strip() for l in text.splitlines() if l.strip().startswith("--"))


@pytest.mark.parametrize("tool", sorted(LAUNCHERS))
def test_the_checkout_launcher_is_the_installed_command(tool, tmp_path):
  """python tools/<name>.py (from any directory) prints the installed command's
  help, flag for flag, and its usage errors name the launcher."""
  launcher = pathlib.Path(__file__).resolve().parents[1] / "tools" / f"{LAUNCHERS[tool]}.py"
  def launch(*args):
    return subprocess.run([sys.executable, str(launcher), *args], capture_output=True,
                          text=True, env=installed_tool.ENV, timeout=300, check=False,
                          cwd=tmp_path)
  mine, installed = launch("--helpshort"), installed_tool.run(tool, "--helpshort")
  assert "Traceback" not in mine.stderr, mine.stderr[-3000:]
  assert _flag_lines(mine.stdout) and _flag_lines(mine.stdout) == _flag_lines(installed.stdout)
  assert mine.stdout.splitlines()[0] == installed.stdout.splitlines()[0]  # the tool's docstring
  bad = launch("--bogus_flag=1")
  assert bad.returncode == 1
  assert bad.stderr.splitlines()[0].startswith(f"python {launcher}: error: "), bad.stderr


# A missing input, past flag parsing: the tool's own error, named as it was started.
MISSING_INPUT = {"mortar-analyze": ["--model=missing.keras"],
                 "mortar-morph": ["--input=missing", "--output=out"],
                 "mortar-estimate": ["--saved_model=missing"]}


@pytest.mark.parametrize("tool", sorted(MISSING_INPUT))
def test_a_tools_own_error_names_the_command_as_it_was_started(tool, tmp_path):
  launcher = pathlib.Path(__file__).resolve().parents[1] / "tools" / f"{LAUNCHERS[tool]}.py"
  args = MISSING_INPUT[tool]
  installed = installed_tool.run(tool, *args, cwd=tmp_path)
  mine = subprocess.run([sys.executable, str(launcher), *args], capture_output=True, text=True,
                        env=installed_tool.ENV, timeout=300, check=False, cwd=tmp_path)
  assert installed.returncode == mine.returncode == 1
  first = [l for l in installed.stderr.splitlines() if ": error: " in l][0]
  assert first.startswith(f"{tool}: error: ") and "missing" in first, installed.stderr
  assert f"python {launcher}: error: " + first.split(": error: ", 1)[1] in mine.stderr
