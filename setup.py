"""Builds and installs mortar_tf with its two C++ libraries.

mortar_tf/_native.so holds the kernels behind the numpy entry points (ctypes,
no TensorFlow); mortar_tf/ops/_mortar_ops.so the same kernels as TensorFlow
ops. Install the way scripts/setup.sh and CI do: the dependencies first, then
the package without build isolation, because the op library compiles against
the TensorFlow that is installed (its headers and libtensorflow_framework):

  pip install -r requirements.txt -r requirements-test.txt
  pip install --no-build-isolation --no-deps .      # or: -e . (editable)
"""

import concurrent.futures
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile

from setuptools import Extension
from setuptools import find_packages
from setuptools import setup
from setuptools.command.build_ext import build_ext

ROOT = os.path.dirname(os.path.abspath(__file__))

# The kernels both libraries compile in (plain C++, no TensorFlow).
KERNEL_HEADERS = [
    "mortar_tf/cc/float_bits.h",
    "mortar_tf/cc/kernels.h",
]
# The numpy entry points (ctypes, no TensorFlow). BUILD's cc_binary of each
# library must list exactly its sources and KERNEL_HEADERS (a test checks).
NATIVE_SOURCES = [
    "mortar_tf/cc/kernels.cc",
    "mortar_tf/cc/c_api.cc",
]
# The TensorFlow op library.
OP_SOURCES = [
    "mortar_tf/cc/kernels.cc",
    "mortar_tf/ops/cc/ops/mortar_ops.cc",
    "mortar_tf/ops/cc/kernels/bit_count_kernels.cc",
    "mortar_tf/ops/cc/kernels/morph_kernels.cc",
]
CXX_FLAGS = [
    "-std=c++17", "-fPIC", "-O3", "-pthread",
    "-ffp-contract=off",  # no fused multiply-add: results must match numpy bit for bit
    "-Wno-psabi",  # vector arguments of always-inline helpers: no ABI is crossed
    "-Wno-deprecated-declarations", "-Wno-interference-size",
]
LINK_FLAGS = ["-shared", "-pthread"]


def _requirements(name):
  with open(os.path.join(ROOT, name), encoding="utf-8") as f:
    return [line.strip() for line in f if line.strip() and not line.startswith("#")]


class BuildLibraries(build_ext):
  """Compiles the two shared libraries with g++.

  The op library takes TensorFlow's own compile and link flags; the native one
  (ctypes) takes none. Each result is cached under build/ops-cache by a hash
  of the sources, flags, compiler and (for the op library) TensorFlow version,
  so reinstalling does not recompile. The libraries build in parallel threads
  (build_ext's own `parallel`, on by default here), and within each its
  sources compile side by side (one g++ each), then link.
  """

  def finalize_options(self):
    super().finalize_options()
    if not self.parallel:  # the two libraries compile side by side (one g++ each)
      self.parallel = True

  def get_ext_filename(self, fullname):
    return os.path.join(*fullname.split(".")) + ".so"  # no ABI tag: loaded by path

  def build_extension(self, ext):
    cxx = os.environ.get("CXX", "g++")
    compile_flags, link_flags, version = [], [], b""
    if ext.name == "mortar_tf.ops._mortar_ops":
      import tensorflow as tf  # pylint: disable=import-outside-toplevel
      compile_flags = tf.sysconfig.get_compile_flags()
      link_flags = tf.sysconfig.get_link_flags()
      version = tf.__version__.encode()
    compile_command = [cxx, *CXX_FLAGS, f"-I{ROOT}", *compile_flags, "-c"]
    digest = hashlib.sha256()
    digest.update(" ".join([*compile_command, *ext.sources, *LINK_FLAGS, *link_flags])
                  .replace(ROOT, "<root>").encode())  # copies share the cache
    digest.update(version)
    digest.update(subprocess.run([cxx, "--version"], capture_output=True, check=True).stdout)
    for source in ext.sources + ext.depends:
      with open(os.path.join(ROOT, source), "rb") as f:
        digest.update(f.read())
    cached = os.path.join(ROOT, "build", "ops-cache", digest.hexdigest()[:24] + ".so")
    if not os.path.exists(cached):
      os.makedirs(os.path.dirname(cached), exist_ok=True)
      print(f"compiling {ext.name} ({len(ext.sources)} sources)", file=sys.stderr)
      partial = cached + f".{os.getpid()}.partial"
      with tempfile.TemporaryDirectory(dir=os.path.dirname(cached)) as objects:
        # one g++ per source, side by side (the op library's four take ~5 s each)
        outputs = [os.path.join(objects, f"{i}.o") for i in range(len(ext.sources))]
        with concurrent.futures.ThreadPoolExecutor(len(ext.sources)) as pool:
          for done in [pool.submit(subprocess.check_call,
                                   [*compile_command, os.path.join(ROOT, source), "-o", out])
                       for source, out in zip(ext.sources, outputs)]:
            done.result()
        subprocess.check_call([cxx, *LINK_FLAGS, *outputs, "-o", partial, *link_flags])
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
    packages=find_packages(include=["mortar_tf", "mortar_tf.*"]),
    install_requires=_requirements("requirements.txt"),
    # zstd: compressed sizes also measured with zstd (mortar_tf.compression);
    # never required.
    extras_require={"test": _requirements("requirements-test.txt"),
                    "zstd": ["zstandard>=0.18"]},
    ext_modules=[
        Extension("mortar_tf._native", sources=NATIVE_SOURCES, depends=KERNEL_HEADERS),
        Extension("mortar_tf.ops._mortar_ops", sources=OP_SOURCES, depends=KERNEL_HEADERS),
    ],
    cmdclass={"build_ext": BuildLibraries},
    entry_points={
        "console_scripts": [
            "mortar-analyze = mortar_tf.tools.analyze_weights:run",
            "mortar-morph = mortar_tf.tools.morph_saved_model:run",
            "mortar-estimate = mortar_tf.tools.estimate:run",
            "mortar-sweep = mortar_tf.tools.sweep:run",
            "mortar-results = mortar_tf.tools.results:run",
        ],
    },
)
