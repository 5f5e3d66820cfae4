"""README.md is the landing page's source: `make index` writes nbs/index.ipynb from it (one Markdown cell per `## ` section)
and nbs/sidebar.yml (Quarto's sidebar, for `nbdev_docs` where Quarto is installed) in the order of its table of notebooks;
`--check` (run by `make export-check`) fails when they say different things. Edit README.md, then `make index`."""
import json, re, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
INDEX, SIDEBAR = ROOT/'nbs'/'index.ipynb', ROOT/'nbs'/'sidebar.yml'

def sidebar(text):
    "Quarto's sidebar: the landing page, then the notebooks in the order of README's table."
    names = ['index'] + re.findall(r'^\| `(\w+)` \| `exp_lib[.\w]*` \|', text, re.M)
    return 'website:\n  sidebar:\n    contents:\n' + ''.join(f'      - {n}.ipynb\n' for n in names)

def sections(text):
    "README's text cut before each `## ` heading (outside fenced code), each part without its trailing blank lines."
    parts, cur, fenced = [], [], False
    for line in text.splitlines():
        if line.startswith('```'): fenced = not fenced
        if line.startswith('## ') and not fenced and cur: parts.append(cur); cur = []
        cur.append(line)
    parts.append(cur)
    return ['\n'.join(p).strip('\n') for p in parts if '\n'.join(p).strip()]

def notebook(text):
    cells = [{'cell_type': 'markdown', 'id': f'readme{i:02d}', 'metadata': {}, 'source': s.splitlines(keepends=True)}
             for i, s in enumerate(sections(text))]
    return {'cells': cells, 'metadata': {'kernelspec': {'display_name': 'python3', 'language': 'python', 'name': 'python3'}},
            'nbformat': 4, 'nbformat_minor': 5}

def main(check=False):
    text = (ROOT/'README.md').read_text()
    want = sections(text)
    if check:
        have = [''.join(c['source']).strip('\n') for c in json.loads(INDEX.read_text())['cells']]
        if have != want or not SIDEBAR.exists() or SIDEBAR.read_text() != sidebar(text):
            sys.exit("nbs/index.ipynb or nbs/sidebar.yml and README.md disagree: edit README.md (the source), then run `make index` and commit both.")
        print("index check: nbs/index.ipynb matches README.md")
        return
    INDEX.write_text(json.dumps(notebook(text), indent=1, ensure_ascii=False) + '\n')
    SIDEBAR.write_text(sidebar(text))
    print(f"wrote {INDEX.relative_to(ROOT)} ({len(want)} cells) and {SIDEBAR.relative_to(ROOT)} from README.md")

if __name__ == '__main__': main('--check' in sys.argv)
