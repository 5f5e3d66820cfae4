"""Every numbered notebook runs top to bottom in a real Jupyter kernel (what "Run All" does), not only under nbdev_test:
in a kernel fastprogress draws HTML bars and matplotlib draws inline, so code that assumes a terminal breaks there."""
import os, shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
import nbformat, pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

NBS = Path(__file__).resolve().parents[1]/'nbs'
NOTEBOOKS = sorted(NBS.glob('[0-9]*.ipynb'))

def kernel_env():
    "The environment of a notebook server: no forced matplotlib backend (the kernel draws inline), one thread per kernel."
    env = {k: v for k, v in os.environ.items() if k != 'MPLBACKEND'}
    return {**env, 'OMP_NUM_THREADS': '1'}

def run(fn, where):
    "Execute notebook `fn` in a fresh kernel, in the folder `where`; returns the executed notebook and the error, if any."
    nb = nbformat.read(fn, as_version=4)
    try: NotebookClient(nb, timeout=900, kernel_name='python3', resources={'metadata': {'path': str(where)}}).execute(env=kernel_env())
    except CellExecutionError as e: return nb, e
    return nb, None

@pytest.fixture(scope='module')
def executed(tmp_path_factory):
    """Every notebook executed, two kernels at a time (one per core), in a copy of the project: each notebook's last cell runs
    nbdev_export, which would otherwise rewrite exp_lib/ under the other tests' feet (a half-written module fails their imports)."""
    root = tmp_path_factory.mktemp('project')
    shutil.copy(NBS.parent/'settings.ini', root/'settings.ini')
    shutil.copytree(NBS, root/'nbs')
    with ThreadPoolExecutor(2) as ex: return dict(zip(NOTEBOOKS, ex.map(lambda fn: run(root/'nbs'/fn.name, root/'nbs'), NOTEBOOKS)))

@pytest.mark.parametrize('fn', NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_in_a_kernel(fn, executed):
    nb, err = executed[fn]
    if err is not None:
        cell = next((i for i, c in enumerate(nb.cells) if any(o.get('output_type') == 'error' for o in c.get('outputs', []))), '?')
        pytest.fail(f"{fn.name}, cell {cell} failed in a Jupyter kernel:\n{str(err)[-3000:]}", pytrace=False)
    warned = [(i, o['text'][:300]) for i, c in enumerate(nb.cells) for o in c.get('outputs', [])
              if o.get('name') == 'stderr' and 'Warning' in o.get('text', '')]
    assert not warned, f"{fn.name}: cells print warnings: {warned}"

ONE_FIT = """
import torch
from torch import nn
from exp_lib.all import Learner, DataBunch, DataLoader, Dataset
ds = Dataset(torch.randn(64, 3), torch.randint(0, 2, (64,)))
Learner(nn.Linear(3, 2), DataBunch(DataLoader(ds, 16), DataLoader(ds, 32))).fit(2)
"""

def _html(o): return o.get('data', {}).get('text/html', '') if o.get('output_type') in ('display_data', 'execute_result') else ''

def test_one_fit_in_a_notebook_leaves_one_progress_output(tmp_path):
    "A fit shows one bar, which ends as the epoch table: no second, frozen bar, and no object's repr printed as text."
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(ONE_FIT)])
    NotebookClient(nb, timeout=300, kernel_name='python3', resources={'metadata': {'path': str(tmp_path)}}).execute(env=kernel_env())
    outs = nb.cells[0].outputs
    shown = [_html(o) for o in outs if '<progress' in _html(o) or '<table' in _html(o)]
    assert len(shown) == 1, shown
    assert '<progress' not in shown[0] and shown[0].count('<tr') == 3, shown[0]  # the header and two epochs
    assert not [o for o in outs if 'object at 0x' in str(o)], outs
