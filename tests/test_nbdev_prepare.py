"nbdev_prepare's docs pass runs each notebook's imports and exported cells out of context; none may depend on a cell it skips."
import os, shutil, subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

def test_the_docs_pass_of_nbdev_prepare_runs_every_notebook(tmp_path):
    for name in ('settings.ini', 'setup.py', 'README.md'): shutil.copy(ROOT/name, tmp_path/name)
    shutil.copytree(ROOT/'nbs', tmp_path/'nbs')
    code = "from nbdev.quarto import proc_nbs; proc_nbs(force=True)"
    r = subprocess.run([sys.executable, '-c', code], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                       env={**os.environ, 'OMP_NUM_THREADS': '1', 'MPLBACKEND': 'Agg'})
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'Error in notebook' not in r.stderr and 'containing imports and other code' not in r.stderr, r.stderr[-3000:]
    assert {p.name for p in (tmp_path/'_proc').glob('*.ipynb')} == {p.name for p in (ROOT/'nbs').glob('*.ipynb')}
