import os, shutil, subprocess, sys
from pathlib import Path
import pytest

BIN = Path(sys.executable).parent

def run_cli(*args, cwd=None, timeout=600):
    "Run the installed `exp_lib_train` console script; returns the CompletedProcess."
    exe = shutil.which('exp_lib_train', path=str(BIN)) or shutil.which('exp_lib_train')
    assert exe, 'exp_lib_train is not installed: pip install -e . first'
    env = {**os.environ, 'MPLBACKEND': 'Agg'}
    return subprocess.run([exe, *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)

@pytest.fixture
def cli(): return run_cli
