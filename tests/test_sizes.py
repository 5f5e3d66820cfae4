"""The sizes the split of 04 and 16 set (DESIGN.md, issue 42), so that the lessons stay readable as they grow: no notebook over 50k
characters of code, no exported cell over 60 lines, no module over 600 lines, and in the lesson notebooks at least half as much prose
as code shown (cells hidden with `#| hide` are not shown on the site or read as the lesson)."""
import json, re
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT/'nbs').glob('[0-9]*.ipynb'))
LESSONS = ('02_init', '03_minibatch', '04_callbacks', '05_anneal', '16_accel_sgd')

def cells(nb, kind): return [''.join(c['source']) for c in json.loads(nb.read_text())['cells'] if c['cell_type'] == kind]
def directive(src, name): return re.search(rf'^#\|\s*{name}\b', src, re.M) is not None

def test_the_notebooks_are_found():
    assert len(NOTEBOOKS) > 15 and all((ROOT/'nbs'/f'{n}.ipynb').exists() for n in LESSONS)

@pytest.mark.parametrize('nb', NOTEBOOKS, ids=lambda p: p.stem)
def test_a_notebook_holds_at_most_50k_characters_of_code_and_no_exported_cell_over_60_lines(nb):
    code = cells(nb, 'code')
    assert sum(map(len, code)) <= 50_000, f"{nb.name}: {sum(map(len, code))} characters of code"
    long = [(len(s.strip().splitlines()), s.splitlines()[1:2]) for s in code if directive(s, 'export') and len(s.strip().splitlines()) > 60]
    assert not long, f"{nb.name}: exported cells over 60 lines (lines, first line after the directive): {long}"

def test_no_module_is_over_600_lines():
    long = {p.name: n for p in (ROOT/'exp_lib').glob('*.py') if p.name != '_modidx.py' and (n := len(p.read_text().splitlines())) > 600}
    assert not long, long

@pytest.mark.parametrize('name', LESSONS)
def test_a_lesson_has_at_least_half_as_much_prose_as_shown_code(name):
    nb = ROOT/'nbs'/f'{name}.ipynb'
    shown = sum(len(s) for s in cells(nb, 'code') if not directive(s, 'hide'))
    prose = sum(map(len, cells(nb, 'markdown')))
    assert prose >= shown / 2, f"{name}: {prose} characters of prose for {shown} of shown code ({prose / shown:.2f})"
