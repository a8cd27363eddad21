"""Stand-in for pip's get-pip.py bootstrap script, for ansible-test on hosts that cannot reach the host
that serves get-pip.py. ansible-test runs it in a fresh venv with the arguments get-pip.py takes; this
installs the same pip release from its wheel (downloaded from PyPI next to this file by the Makefile).
"""

import glob
import os
import runpy
import sys

here = os.path.dirname(os.path.abspath(__file__))
wheel = sorted(glob.glob(os.path.join(here, "pip-*.whl")))[-1]
args = [a for a in sys.argv[1:] if a not in ("--no-setuptools", "--no-wheel")]
sys.path.insert(0, wheel)
sys.argv = ["pip", "install", "--find-links", here, *args]
runpy.run_module("pip", run_name="__main__", alter_sys=True)
