"""Builds and installs mortar_tf.

Install the way the README and CI do (the C++ op of a later issue builds
against the TensorFlow already installed, hence no build isolation):

  pip install setuptools wheel
  pip install --no-build-isolation '.[test]'
"""

from setuptools import find_packages
from setuptools import setup

INSTALL_REQUIRES = [
    "tensorflow==2.21.0",
    "tf-keras==2.21.0",
    "tensorflow-model-optimization==0.8.1",
    "keras==3.15.1",
    "protobuf==7.36.2",
    "numpy==2.4.6",
    "absl-py==1.4.0",
    "h5py==3.14.0",
]
TEST_REQUIRES = [
    "pytest==9.2.0",
    "hypothesis==6.170.17",
]

setup(
    name="mortar_tf",
    version="0.1.0",
    description="Mantissa morphing of float32 weights for bit-serial DNN accelerators (Mortar)",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["mortar_tf", "mortar_tf.*"]) + ["mortar_tf_tools"],
    package_dir={"mortar_tf_tools": "tools"},
    install_requires=INSTALL_REQUIRES,
    extras_require={"test": TEST_REQUIRES},
    entry_points={
        "console_scripts": [
            "mortar-analyze = mortar_tf_tools.analyze_weights:run",
        ],
    },
)
