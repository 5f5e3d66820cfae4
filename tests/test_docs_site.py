"""The documentation site (`make docs`, docs/build.py): built offline from the notebooks, every internal link resolving,
nothing loaded from another host; then, where Debian's Chromium and its driver are installed, opened in a headless browser
that must see no console error and no request beyond 127.0.0.1, the lessons' text, plots and API entries, and a working
search. Screenshots of three pages go to _proc/screenshots/ (not committed)."""
import functools, http.server, json, os, re, shutil, subprocess, sys, threading
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlsplit, unquote
import pytest

ROOT = Path(__file__).resolve().parent.parent
SITE = ROOT/'_docs'
LESSONS = {'04_callbacks': ['Learner.fit'], '05_anneal': ['ParamScheduler'], '16_accel_sgd': ['Optimizer', 'Adam', 'Learner.fit_one_cycle']}

class _Links(HTMLParser):
    "The ids of a page, and the (tag, attribute, value) of each link and resource it names."
    def __init__(self):
        super().__init__(); self.ids, self.refs = set(), []
    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        for k in ('id', 'name'):
            if a.get(k): self.ids.add(a[k])
        for k in ('href', 'src'):
            if a.get(k): self.refs.append((tag, k, a[k]))

@functools.cache
def _parsed(path):
    p = _Links(); p.feed(path.read_text(errors='replace')); return p

@pytest.fixture(scope='module')
def site():
    subprocess.run([sys.executable, str(ROOT/'docs'/'build.py')], check=True, cwd=ROOT, capture_output=True, env={**os.environ, 'NO_MKDOCS_2_WARNING': '1'})
    return SITE

def test_every_notebook_is_a_page_in_readmes_order(site):
    order = re.findall(r'^\| `(\w+)` \| `exp_lib', (ROOT/'README.md').read_text(), re.M)
    for stem in order: assert (site/f'{stem}.html').exists(), stem
    nav = re.findall(r'href="(\w+)\.html"', (site/'index.html').read_text())
    first = {s: nav.index(s) for s in order if s in nav}
    assert sorted(first, key=first.get) == order, 'the sidebar follows README\'s table'

def test_internal_links_resolve_and_nothing_loads_from_another_host(site):
    bad, external = [], []
    for page in site.rglob('*.html'):
        for tag, attr, ref in _parsed(page).refs:
            u = urlsplit(ref)
            if u.scheme in ('mailto', 'data', 'javascript'): continue
            if u.scheme or u.netloc:
                if attr == 'src' or tag == 'link': external.append((page.name, ref))  # a resource the browser would fetch
                continue
            base = site if u.path.startswith('/') else page.parent  # the 404 page names its files from the site's root
            target = (base/unquote(u.path).lstrip('/')).resolve() if u.path else page
            if target.is_dir(): target = target/'index.html'
            if not target.exists(): bad.append((page.relative_to(site), ref)); continue
            if u.fragment and target.suffix == '.html' and unquote(u.fragment) not in _parsed(target).ids: bad.append((page.relative_to(site), ref))
    assert not bad, bad[:20]
    assert not external, external[:20]
    css = [p for p in site.rglob('*.css') if re.search(r'url\(["\']?(https?:)?//|@import', p.read_text(errors='replace'))]
    assert not css, css  # no web fonts (scripts are watched in the browser below: their fallbacks to a CDN must never run)

def test_lesson_pages_hold_their_text_plots_and_api_entries(site):
    for stem, names in LESSONS.items():
        html = (site/f'{stem}.html').read_text()
        assert '#| export' not in html and '#| hide' not in html and '"cell_type"' not in html
        assert re.search(r'<img [^>]*src="\w+_files/out\d+\.png"', html) or stem == '04_callbacks', f'{stem}: no plot'
        text = re.sub(r'<[^>]+>', '', html)
        for name in names: assert f'id="{name.replace(".", "-")}"' in html and f'{name}(' in text, f'{stem}: no API entry for {name}'
    sd = (site/'16_accel_sgd.html').read_text()
    assert 'source/accel_sgd.html#L-' in sd

def test_search_index_finds_one_cycle(site):
    docs = json.loads((site/'search'/'search_index.json').read_text())['docs']
    hits = {d['location'].split('#')[0] for d in docs if re.search(r'one[\s_]cycle', d['text'] + d['title'], re.I)}
    assert '16_accel_sgd.html' in hits, hits

def _browser():
    chromium = shutil.which('chromium') or shutil.which('chromium-browser')
    driver = shutil.which('chromedriver')
    if not (chromium and driver): pytest.skip("no Chromium here (Debian: apt-get install chromium chromium-driver; .ci/run installs them)")
    try: from selenium import webdriver
    except ImportError: pytest.skip("selenium is not installed (pip install -e '.[dev]')")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for a in ('--headless=new', '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--window-size=1280,900', '--no-first-run'):
        opts.add_argument(a)
    opts.set_capability('goog:loggingPrefs', {'browser': 'ALL', 'performance': 'ALL'})
    return webdriver.Chrome(options=opts, service=webdriver.ChromeService(driver))

@pytest.fixture(scope='module')
def served(site):
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args): pass
    handler = functools.partial(Quiet, directory=str(site))
    srv = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f'http://127.0.0.1:{srv.server_port}'
    srv.shutdown()

def test_the_site_in_a_real_browser(served):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    shots = ROOT/'_proc'/'screenshots'; shots.mkdir(parents=True, exist_ok=True)
    drv = _browser()
    try:
        for page in sorted(p.name for p in SITE.glob('*.html')):
            drv.get(f'{served}/{page}')
            WebDriverWait(drv, 20).until(lambda d: d.execute_script('return document.readyState') == 'complete')
            errors = [e['message'] for e in drv.get_log('browser') if e['level'] == 'SEVERE' and not (page == '404.html' and '404' in e['message'])]
            assert not errors, (page, errors)
            hosts = set()
            for e in drv.get_log('performance'):
                m = json.loads(e['message'])['message']
                if m['method'] == 'Network.requestWillBeSent':
                    u = urlsplit(m['params']['request']['url'])
                    if u.scheme in ('http', 'https', 'ws', 'wss'): hosts.add(u.hostname)
            assert hosts <= {'127.0.0.1'}, (page, hosts)
            stem = page[:-5]
            if stem in LESSONS:
                text = drv.find_element(By.CSS_SELECTOR, 'article').text
                assert len(text) > 5000 and '#| export' not in text, stem
                for name in LESSONS[stem]: assert drv.find_elements(By.ID, name.replace('.', '-')), (stem, name)
                sizes = drv.execute_script("return [...document.querySelectorAll('article img')].map(i => i.naturalWidth)")
                assert stem == '04_callbacks' or (sizes and all(sizes)), (stem, sizes)
                assert drv.find_elements(By.CSS_SELECTOR, 'article pre code'), stem
            if stem == '03_minibatch':  # the LogSumExp formula, typeset by the local MathJax
                WebDriverWait(drv, 20).until(lambda d: d.find_elements(By.CSS_SELECTOR, 'mjx-container svg'))
            if stem in ('index', '04_callbacks', '16_accel_sgd'): drv.save_screenshot(str(shots/f'{stem}.png'))
        drv.get(f'{served}/index.html')
        box = drv.find_element(By.CSS_SELECTOR, 'input.md-search__input')
        drv.execute_script("arguments[0].focus()", box); box.send_keys('one cycle')
        WebDriverWait(drv, 20).until(lambda d: d.find_elements(By.CSS_SELECTOR, '.md-search-result__item a'))
        links = [a.get_attribute('href') for a in drv.find_elements(By.CSS_SELECTOR, '.md-search-result__item a')]
        assert any('16_accel_sgd.html' in l for l in links), links
    finally: drv.quit()
