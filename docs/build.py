"""Build the documentation site into `_docs/` from the notebooks, offline: `make docs`.

Each notebook becomes a Markdown page (in README's table order, titled by its first heading) with nbdev's directives
applied (`#| hide` cells left out, `echo: false` and `output: false` honoured, the directive lines themselves not shown),
its stored outputs (text, tables, plots) and, after each exported cell, an API entry for every public function, class,
method and patched method it defines: the signature, the docstring and a link to the line of the module's source, which
the site holds as a page of its own. MkDocs with the Material theme renders the pages: pure Python from PyPI, search
built from the files alone, no web fonts, math by a local copy of MathJax 3 (from the `django-static-mathjax` wheel, its files only).
Nothing here runs a notebook or calls nbdev's Quarto commands."""
import ast, html, importlib, inspect, json, re, shutil, subprocess, sys
from base64 import b64decode
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SRC, OUT = ROOT/'_proc'/'site_src', ROOT/'_docs'
DIRECTIVE = re.compile(r'^\s*#\|\s*(.*)$')

def notebook_order():
    "The notebooks in README's table order (the table of `## The notebooks`)."
    names = re.findall(r'^\| `(\w+)` \| `exp_lib[.\w]*` \|', (ROOT/'README.md').read_text(), re.M)
    return ['index'] + [n for n in names if (ROOT/'nbs'/f'{n}.ipynb').exists()]

def directives(src):
    "The nbdev directives of a cell (`{'hide': None, 'echo': 'false', ...}`) and its source without them."
    found, rest = {}, []
    for line in src.splitlines():
        m = DIRECTIVE.match(line)
        if m and not rest:
            key, val = (re.split(r'[:\s]\s*', m.group(1).strip(), maxsplit=1) + [None])[:2]
            found[key] = val.strip() if val else None
        else: rest.append(line)
    return found, '\n'.join(rest).strip('\n')

def exported_names(src, module):
    "The public objects a cell defines, as (qualified name, object): functions, classes, their public methods, patched methods."
    try: tree = ast.parse(src)
    except SyntaxError: return []
    res = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and any(
                getattr(d, 'id', getattr(d, 'attr', None)) == 'patch' for d in node.decorator_list):
            ann = node.args.args[0].annotation if node.args.args else None
            cls = getattr(ann, 'id', None)
            if cls and not node.name.startswith('_') and hasattr(module, cls): res.append((f'{cls}.{node.name}', getattr(getattr(module, cls), node.name, None)))
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and not node.name.startswith('_'):
            obj = getattr(module, node.name, None)
            res.append((node.name, obj))
            if isinstance(node, ast.ClassDef):
                res += [(f'{node.name}.{f.name}', getattr(obj, f.name, None)) for f in node.body
                        if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef)) and not f.name.startswith('_')]
    return [(n, o) for n, o in res if o is not None]

def signature(name, obj):
    f = obj.fget if isinstance(obj, property) else obj
    if isinstance(obj, property): return f'{name}  (property)'
    try: return f'{name}{inspect.signature(f)}'
    except (TypeError, ValueError): return name

def api_entry(name, obj, module):
    "Markdown for one exported name: heading, signature, docstring, link to its source line."
    f = obj.fget if isinstance(obj, property) else getattr(obj, '__func__', obj)
    doc = inspect.getdoc(f) or ''
    try: where, line = Path(inspect.getsourcefile(inspect.unwrap(f))), inspect.getsourcelines(inspect.unwrap(f))[1]
    except (OSError, TypeError): where, line = Path(module.__file__), None
    if where.parent != Path(module.__file__).parent: where, line = Path(module.__file__), None  # defined outside the package
    src = f"source/{where.stem}.md" + (f'#L-{line}' if line else '')
    anchor = name.replace('.', '-')
    return (f'<div class="api-entry" markdown>\n\n#### `{name}` {{ #{anchor} }}\n\n```python\n{signature(name, obj)}\n```\n\n'
            f'{doc}\n\n[source]({src})\n\n</div>\n')

def outputs_md(outputs, stem, files):
    parts = []
    for o in outputs:
        data = o.get('data', {})
        if o.get('output_type') == 'stream': parts.append('```text\n' + ''.join(o['text']).rstrip() + '\n```')
        elif 'image/png' in data or 'image/svg+xml' in data:
            ext = 'png' if 'image/png' in data else 'svg'
            name = f'{stem}_files/out{len(files)}.{ext}'
            files[name] = b64decode(data['image/png']) if ext == 'png' else ''.join(data['image/svg+xml']).encode()
            parts.append(f'![output]({name})')
        elif 'text/html' in data and '<table' in ''.join(data['text/html']):
            parts.append('<div class="output-html">\n' + ''.join(data['text/html']).strip() + '\n</div>')
        elif 'text/markdown' in data: parts.append(''.join(data['text/markdown']))
        elif 'text/plain' in data: parts.append('```text\n' + ''.join(data['text/plain']).rstrip() + '\n```')
    return '\n\n'.join(parts)

def page(stem):
    "The Markdown page of notebook `stem`, the files its outputs need, and its title."
    nb = json.loads((ROOT/'nbs'/f'{stem}.ipynb').read_text())
    cells, files, title, module = nb['cells'], {}, stem, None
    for c in cells:
        src = ''.join(c['source'])
        if c['cell_type'] == 'code':
            d, _ = directives(src)
            if 'default_exp' in d: module = importlib.import_module(f"exp_lib.{d['default_exp']}")
    out = []
    for c in cells:
        src = ''.join(c['source'])
        if c['cell_type'] == 'markdown':
            if title == stem and src.lstrip().startswith('# '): title = src.lstrip()[2:].splitlines()[0].strip().replace('`', '')
            out.append(src)
            continue
        if c['cell_type'] != 'code': continue
        d, code = directives(src)
        if 'hide' in d or 'default_exp' in d or ('exporti' in d) or not code and not c.get('outputs'): continue
        if d.get('echo') != 'false' and code: out.append('```python\n' + code + '\n```')
        if d.get('output') != 'false' and c.get('outputs'): out.append(outputs_md(c['outputs'], stem, files))
        if module is not None and ({'export', 'exports'} & set(d)):
            out += [api_entry(n, o, module) for n, o in exported_names(code, module)]
    return '\n\n'.join(o for o in out if o.strip()) + '\n', files, title, module

def source_page(module):
    "A page holding the module's source, each line with an anchor `L<n>` that the API entries link to."
    from pygments import highlight
    from pygments.lexers import PythonLexer
    from pygments.formatters import HtmlFormatter
    body = highlight(Path(module.__file__).read_text(), PythonLexer(), HtmlFormatter(linenos='inline', lineanchors='L', anchorlinenos=True, cssclass='source'))
    return f'# `{module.__name__}`\n\nThe module as exported from its notebook (never edited by hand).\n\n{body}\n'

def mkdocs_yml(nav):
    return {'site_name': 'exp_lib', 'docs_dir': str(SRC), 'site_dir': str(OUT), 'use_directory_urls': False,
            'site_description': 'A training loop you can read: lesson 9 and chapter 16, built up in notebooks.',
            'theme': {'name': 'material', 'font': False, 'features': ['navigation.sections', 'search.highlight', 'content.code.copy']},
            'plugins': [{'search': {'separator': r'[\s\-_.,:;!=\[\]()"/]+'}}],
            'markdown_extensions': ['tables', 'attr_list', 'md_in_html', 'admonition', 'toc', 'pymdownx.superfences',
                                    {'pymdownx.highlight': {'use_pygments': True}}, {'pymdownx.arithmatex': {'generic': True}}],
            'extra_css': ['assets/exp_lib.css'],
            'extra_javascript': ['assets/mathjax-config.js', 'assets/mathjax/tex-svg.js'],
            'nav': nav}

MATHJAX_CONFIG = """window.MathJax = {  // read by tex-svg.js as it loads: the math arithmatex marks, drawn as SVG (no font to fetch)
  tex: {inlineMath: [["\\\\(", "\\\\)"]], displayMath: [["\\\\[", "\\\\]"]], processEscapes: true, processEnvironments: true},
  options: {ignoreHtmlClass: ".*|", processHtmlClass: "arithmatex", enableMenu: false}, svg: {fontCache: "global"}};
"""
CSS = """.api-entry { border-left: 3px solid var(--md-primary-fg-color); padding-left: .8em; margin: 1em 0; }
.output-html { overflow-x: auto; }
.source .linenos { color: #999; padding-right: 1em; }
"""

def main():
    import yaml, importlib.util
    shutil.rmtree(SRC, ignore_errors=True); SRC.mkdir(parents=True)
    nav, modules = [], {}
    for stem in notebook_order():
        md, files, title, module = page(stem)
        (SRC/f'{stem}.md').write_text(md)
        for name, data in files.items():
            (SRC/name).parent.mkdir(parents=True, exist_ok=True); (SRC/name).write_bytes(data)
        nav.append({title if stem != 'index' else 'Home': f'{stem}.md'})
        if module is not None and module.__name__ != 'exp_lib.all': modules[module.__name__] = module
    (SRC/'source').mkdir()
    for name, module in modules.items(): (SRC/'source'/f"{name.split('.')[-1]}.md").write_text(source_page(module))
    nav.append({'Source': [{name: f"source/{name.split('.')[-1]}.md"} for name in modules]})
    assets = SRC/'assets'; assets.mkdir()
    shutil.copytree(Path(importlib.util.find_spec('mathjax').origin).parent/'static'/'mathjax'/'es5', assets/'mathjax')  # MathJax 3, from the django-static-mathjax wheel
    (assets/'mathjax-config.js').write_text(MATHJAX_CONFIG); (assets/'exp_lib.css').write_text(CSS)
    cfg = ROOT/'_proc'/'mkdocs.yml'
    cfg.write_text(yaml.safe_dump(mkdocs_yml(nav), sort_keys=False))
    subprocess.run([sys.executable, '-m', 'mkdocs', 'build', '--strict', '-q', '-f', str(cfg)], check=True)
    print(f"built {OUT} ({len(nav) - 1} notebooks, {len(modules)} source pages)")

if __name__ == '__main__': main()
