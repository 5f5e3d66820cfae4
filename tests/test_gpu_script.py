"""`.ci/test-gpu` (make test-gpu) on a machine without a GPU: it refuses in one line, naming the torch that sees none, unless
GPU_REHEARSAL is set, in which case it goes on to what it needs next (the wheels in .whl/)."""
import os, shutil, subprocess, sys
from pathlib import Path
import pytest, torch

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason='this machine has a GPU: make test-gpu runs for real there')

def run_script(tmp_path, **env):
    "`.ci/test-gpu` copied into an empty project folder (no .whl/), run with this interpreter as GPU_PYTHON and `env` set."
    (tmp_path/'.ci').mkdir(parents=True)
    shutil.copy(ROOT/'.ci'/'test-gpu', tmp_path/'.ci'/'test-gpu')
    env = {**os.environ, 'GPU_PYTHON': sys.executable, **env}
    return subprocess.run(['bash', str(tmp_path/'.ci'/'test-gpu')], capture_output=True, text=True, env=env, timeout=120)

def test_without_a_gpu_it_refuses_and_says_how_to_rehearse(tmp_path):
    r = run_script(tmp_path, GPU_REHEARSAL='')
    assert r.returncode == 1, r
    assert f'({torch.__version__}) sees none' in r.stderr and 'GPU_REHEARSAL=1' in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr

def test_a_rehearsal_skips_the_gpu_check(tmp_path):
    r = run_script(tmp_path, GPU_REHEARSAL='1')
    assert r.returncode == 2, r
    assert 'no wheels in .whl/' in r.stderr and 'sees none' not in r.stderr, r.stderr

def test_rehearsal_off_or_unclear_is_not_a_rehearsal(tmp_path):
    "GPU_REHEARSAL=0 keeps the GPU check; a value that is neither 0 nor 1 is refused, rather than read as on."
    off = run_script(tmp_path/'off', GPU_REHEARSAL='0')
    assert off.returncode == 1 and 'sees none' in off.stderr, off
    bad = run_script(tmp_path/'bad', GPU_REHEARSAL='yes')
    assert bad.returncode == 2 and "GPU_REHEARSAL is 1 (run without a GPU) or 0 (the default), got 'yes'" in bad.stderr, bad
