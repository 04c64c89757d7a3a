"""`pip install -e .` gives a package that imports from the working tree, with both
libraries built in place and every command working.

The editable install goes into a throwaway environment that borrows the test
environment's packages (TensorFlow, setuptools, pip; not its mortar_tf), from
a copy of the tree (tracked files only); the compiled libraries come from
setup.py's build cache when it has them, so the test rarely compiles.
"""

import os
import pathlib
import shutil
import subprocess
import sys
import sysconfig

ROOT = pathlib.Path(__file__).resolve().parents[1]
COMMANDS = ["mortar-analyze", "mortar-morph", "mortar-estimate", "mortar-sweep"]


def _tracked_files():
  listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=False)
  if listed.returncode == 0:
    return [f for f in listed.stdout.decode().split("\0") if f]
  return [str(p.relative_to(ROOT)) for p in ROOT.rglob("*") if p.is_file()
          and not any(part in (".venv", "build", ".cache", ".git") for part in p.parts)]


def test_editable_install_builds_in_place_and_its_commands_run(tmp_path):
  tree = tmp_path / "tree"
  for name in _tracked_files():
    if (ROOT / name).is_file():
      (tree / name).parent.mkdir(parents=True, exist_ok=True)
      shutil.copy2(ROOT / name, tree / name)
  if (ROOT / "build" / "ops-cache").is_dir():
    shutil.copytree(ROOT / "build" / "ops-cache", tree / "build" / "ops-cache")
  env_dir = tmp_path / "env"
  subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True)
  python = env_dir / "bin" / "python"
  site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                        capture_output=True, text=True, check=True).stdout.strip()
  # the test environment's packages, all but its own installed mortar_tf (which would
  # shadow the editable one), as links in one folder named by a .pth file
  borrowed = tmp_path / "borrowed"
  borrowed.mkdir()
  for entry in pathlib.Path(sysconfig.get_path("purelib")).iterdir():
    if not entry.name.startswith(("mortar_tf", "__editable__")) and entry.suffix != ".pth":
      (borrowed / entry.name).symlink_to(entry)
  (pathlib.Path(site) / "zz_borrowed.pth").write_text(f"{borrowed}\n")
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PIP_NO_INDEX="1")
  install = subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-build-isolation",
                            "--no-deps", "-e", str(tree)], capture_output=True, text=True,
                           env=env, timeout=900, check=False)
  assert install.returncode == 0, install.stderr[-3000:]
  assert (tree / "mortar_tf" / "_native.so").exists()
  assert (tree / "mortar_tf" / "ops" / "_mortar_ops.so").exists()
  probe = subprocess.run(
      [str(python), "-c", "import mortar_tf, sys; from mortar_tf import native, tools; "
       "print(mortar_tf.__file__); assert native.is_built(), native.why_not_built(); "
       "assert 'tensorflow' not in sys.modules"],
      capture_output=True, text=True, env=env, timeout=300, check=False, cwd=tmp_path)
  assert probe.returncode == 0, probe.stderr[-3000:]
  assert probe.stdout.strip().startswith(str(tree))  # the working tree, not the installed copy
  for command in COMMANDS:
    result = subprocess.run([str(env_dir / "bin" / command), "--helpshort"], capture_output=True,
                            text=True, env=env, timeout=300, check=False, cwd=tmp_path)
    # absl's --helpshort prints the tool's docstring and flags and exits 1; a broken
    # entry point is a traceback
    assert "flags:" in result.stdout and "Traceback" not in result.stderr, (
        command, result.stderr[-3000:])
  launchers = sorted((tree / "tools").glob("mortar_*.py"))
  assert len(launchers) == len(COMMANDS) + 1  # and mortar_results
  for launcher in launchers:  # the checkout's absl programs run on the editable package
    result = subprocess.run([str(python), str(launcher), "--helpshort"], capture_output=True,
                            text=True, env=env, timeout=300, check=False, cwd=tmp_path)
    assert "flags:" in result.stdout and "Traceback" not in result.stderr, (
        launcher.name, result.stderr[-3000:])
