"A wheel of the package, installed into a fresh virtual environment the way a user would, imports and runs."
import os, subprocess, sys, venv
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]

def sh(*args, **kw):
    r = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=1200, **kw)
    assert r.returncode == 0, f"{args}\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
    return r

@pytest.mark.slow
def test_wheel_installs_into_a_fresh_venv(tmp_path):
    sh(sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation', '-w', tmp_path/'dist', ROOT)
    wheel, = (tmp_path/'dist').glob('exp_lib-*.whl')
    venv.create(tmp_path/'env', with_pip=True)
    py = tmp_path/'env'/'bin'/'python'
    torch_req = os.environ.get('TORCH', 'torch==2.13.0')
    sh(py, '-m', 'pip', 'install', '--quiet', torch_req)
    sh(py, '-m', 'pip', 'install', '--quiet', f'{wheel}[data]')
    code = ("from exp_lib.all import *; import fastcore, exp_lib; "
            "assert hasattr(Learner, 'fit_one_cycle') and hasattr(Learner, 'lr_find'); "
            "print(exp_lib.__version__, fastcore.__version__)")
    r = sh(py, '-c', code, cwd=tmp_path)
    version, fastcore_version = r.stdout.split()
    assert version == exp_lib_version()
    print(f"fresh venv: exp_lib {version} with fastcore {fastcore_version}")
    r = sh(tmp_path/'env'/'bin'/'exp_lib_train', '--help', cwd=tmp_path)
    assert '--compare' in r.stdout and '--opt' in r.stdout
    r = sh(tmp_path/'env'/'bin'/'exp_lib_train', '--epochs', '1', '--out', tmp_path/'out', '--no-progress', cwd=tmp_path,
           env={**os.environ, 'MPLBACKEND': 'Agg', 'EXP_LIB_CACHE': str(tmp_path/'cache')})
    assert 'final validation accuracy' in r.stdout

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
