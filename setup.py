"""Builds and installs mortar_tf, with its C++ TensorFlow ops.

Install the way scripts/setup.sh and CI do: the dependencies first, then the
package without build isolation, because the op library compiles against the
TensorFlow that is installed (its headers and libtensorflow_framework):

  pip install -r requirements.txt -r requirements-test.txt
  pip install --no-build-isolation --no-deps .
"""

import hashlib
import os
import shutil
import subprocess
import sys

from setuptools import Extension
from setuptools import find_packages
from setuptools import setup
from setuptools.command.build_ext import build_ext

ROOT = os.path.dirname(os.path.abspath(__file__))

# The op library's sources; BUILD's cc_binary must list exactly these (a test checks).
OP_SOURCES = [
    "mortar_tf/ops/cc/ops/mortar_ops.cc",
    "mortar_tf/ops/cc/kernels/bit_count_kernels.cc",
    "mortar_tf/ops/cc/kernels/morph_kernels.cc",
]
OP_HEADERS = [
    "mortar_tf/ops/cc/kernels/float_bits.h",
]
CXX_FLAGS = [
    "-std=c++17", "-shared", "-fPIC", "-O3",
    "-ffp-contract=off",  # no fused multiply-add: results must match numpy bit for bit
    "-Wno-deprecated-declarations", "-Wno-interference-size",
]


def _requirements(name):
  with open(os.path.join(ROOT, name), encoding="utf-8") as f:
    return [line.strip() for line in f if line.strip() and not line.startswith("#")]


class BuildTfOps(build_ext):
  """Compiles the op library with g++ and TensorFlow's own flags.

  The result is cached under build/ops-cache by a hash of the sources, flags,
  compiler and TensorFlow version, so reinstalling does not recompile.
  """

  def get_ext_filename(self, fullname):
    return os.path.join(*fullname.split(".")) + ".so"  # tf.load_op_library needs no ABI tag

  def build_extension(self, ext):
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    cxx = os.environ.get("CXX", "g++")
    command = [cxx, *CXX_FLAGS, f"-I{ROOT}", *tf.sysconfig.get_compile_flags(),
               *[os.path.join(ROOT, s) for s in ext.sources], "-o", "{out}",
               *tf.sysconfig.get_link_flags()]
    digest = hashlib.sha256()
    digest.update(" ".join(command).encode())
    digest.update(tf.__version__.encode())
    digest.update(subprocess.run([cxx, "--version"], capture_output=True, check=True).stdout)
    for source in ext.sources + ext.depends:
      with open(os.path.join(ROOT, source), "rb") as f:
        digest.update(f.read())
    cached = os.path.join(ROOT, "build", "ops-cache", digest.hexdigest()[:24] + ".so")
    if not os.path.exists(cached):
      os.makedirs(os.path.dirname(cached), exist_ok=True)
      print(f"compiling the op library ({len(ext.sources)} sources)", file=sys.stderr)
      partial = cached + ".partial"
      subprocess.check_call([partial if a == "{out}" else a for a in command])
      os.replace(partial, cached)
    out = self.get_ext_fullpath(ext.name)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    shutil.copyfile(cached, out)


setup(
    name="mortar_tf",
    version="0.1.0",
    description="Mantissa morphing of float32 weights for bit-serial DNN accelerators (Mortar)",
    long_description=open(os.path.join(ROOT, "README.md"), encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["mortar_tf", "mortar_tf.*"]) + ["mortar_tf_tools"],
    package_dir={"mortar_tf_tools": "tools"},
    install_requires=_requirements("requirements.txt"),
    extras_require={"test": _requirements("requirements-test.txt")},
    ext_modules=[Extension("mortar_tf.ops._mortar_ops", sources=OP_SOURCES, depends=OP_HEADERS)],
    cmdclass={"build_ext": BuildTfOps},
    entry_points={
        "console_scripts": [
            "mortar-analyze = mortar_tf_tools.analyze_weights:run",
            "mortar-morph = mortar_tf_tools.morph_saved_model:run",
            "mortar-estimate = mortar_tf_tools.estimate:run",
            "mortar-sweep = mortar_tf_tools.sweep:run",
        ],
    },
)
