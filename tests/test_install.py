"A wheel of the package, installed into a fresh virtual environment the way a user would, imports and runs."
import gzip, os, pickle, shutil, subprocess, sys, venv
from pathlib import Path
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]

def sh(*args, **kw):
    r = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=1200, **kw)
    assert r.returncode == 0, f"{args}\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
    return r

def tiny_mnist(fn, n_train=640, n_valid=200):
    "A course-format mnist.pkl.gz of random digits, so the bare install needs no data package."
    g = np.random.default_rng(0)
    part = lambda n: (g.random((n, 784), dtype=np.float32), g.integers(0, 10, n))
    with gzip.open(fn, 'wb') as f: pickle.dump((part(n_train), part(n_valid), part(n_valid)), f)
    return fn

@pytest.mark.slow
def test_wheel_installs_into_a_fresh_venv(tmp_path):
    """A plain `pip install` (no extras) gets the newest fastcore (2.x), which nbdev 2 cannot use: the package must work with it.
    The wheel is built from a copy: building in the source tree would rewrite the editable install's metadata under other tests."""
    src = tmp_path/'src'
    shutil.copytree(ROOT/'exp_lib', src/'exp_lib', ignore=shutil.ignore_patterns('__pycache__'))
    for f in ('settings.ini', 'setup.py', 'README.md'): shutil.copy(ROOT/f, src/f)
    sh(sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation', '-w', tmp_path/'dist', src)
    wheel, = (tmp_path/'dist').glob('exp_lib-*.whl')
    venv.create(tmp_path/'env', with_pip=True)
    py, env = tmp_path/'env'/'bin'/'python', {**os.environ, 'MPLBACKEND': 'Agg', 'EXP_LIB_CACHE': str(tmp_path/'cache')}
    env.pop('EXP_LIB_DATA', None)
    sh(py, '-m', 'pip', 'install', '--quiet', os.environ.get('TORCH', 'torch==2.13.0'))
    before = set(sh(py, '-m', 'pip', 'list', '--format=freeze').stdout.split())
    sh(py, '-m', 'pip', 'install', '--quiet', wheel)
    added = {l.split('==')[0].lower() for l in set(sh(py, '-m', 'pip', 'list', '--format=freeze').stdout.split()) - before}
    print(f"fresh venv: installing exp_lib added {len(added)} packages: {sorted(added)}")
    assert not added & {'starlette', 'uvicorn', 'python-fasthtml', 'anyio', 'httpx'}, sorted(added)
    code = ("from exp_lib.all import *; import fastcore, exp_lib; "
            "assert hasattr(Learner, 'fit_one_cycle') and hasattr(Learner, 'lr_find') and hasattr(Learner, 'to_fp16'); "
            "print(exp_lib.__version__, fastcore.__version__)")
    version, fastcore_version = sh(py, '-c', code, cwd=tmp_path).stdout.split()
    assert version == exp_lib_version() and int(fastcore_version.split('.')[0]) >= 2, fastcore_version
    print(f"fresh venv: exp_lib {version} with fastcore {fastcore_version}")
    exe = tmp_path/'env'/'bin'/'exp_lib_train'
    assert '--compare' in sh(exe, '--help', cwd=tmp_path).stdout
    r = subprocess.run([exe, '--epochs', '1', '--out', tmp_path/'out0', '--no-progress'], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 2 and 'pip install "exp_lib[data]"' in r.stderr, r.stderr
    r = sh(exe, '--epochs', '2', '--data', tiny_mnist(tmp_path/'mnist.pkl.gz'), '--out', tmp_path/'out', '--no-progress', cwd=tmp_path, env=env)
    assert 'final validation accuracy' in r.stdout and (tmp_path/'out'/'confusion.png').exists()

def exp_lib_version():
    import configparser
    cfg = configparser.ConfigParser(); cfg.read(ROOT/'settings.ini')
    return cfg['DEFAULT']['version']

def old_python():
    "A Python older than 3.10 on this machine, if there is one."
    import glob, shutil
    for exe in [shutil.which('python3.9')] + sorted(glob.glob('/root/.pyenv/versions/3.[6-9].*/bin/python')):
        if exe and subprocess.run([exe, '-c', 'import sys; sys.exit(sys.version_info >= (3, 10))']).returncode == 0: return exe

def test_make_refuses_an_old_python_before_creating_anything(tmp_path):
    exe = old_python()
    if exe is None: pytest.skip('no Python older than 3.10 on this machine')
    (tmp_path/'Makefile').write_text((ROOT/'Makefile').read_text())
    r = subprocess.run(['make', 'install', f'PYTHON={exe}'], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    assert 'exp_lib needs Python 3.10 to 3.13' in r.stderr and 'run make PYTHON=python3.11' in r.stderr, r.stderr
    assert not (tmp_path/'.venv').exists()
