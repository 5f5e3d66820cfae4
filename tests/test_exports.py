"Every exported name imports from a fresh interpreter, and every plotting function draws there (no name the notebooks happened to define)."
import subprocess, sys, textwrap

SCRIPT = textwrap.dedent("""
    import inspect, matplotlib, torch
    matplotlib.use('Agg')
    import exp_lib.all as api
    from exp_lib.all import *
    missing = [n for n in api.__all__ if not hasattr(api, n)]
    assert not missing, missing

    def plotters():
        "Every exported plotting function, and every plotting method of an exported class."
        found = {n for n in api.__all__ if n.startswith('plot') and callable(getattr(api, n))}
        for n in api.__all__:
            o = getattr(api, n)
            if inspect.isclass(o): found |= {f'{n}.{m}' for m in vars(o) if m.startswith('plot')}
        return found

    torch.manual_seed(0)
    x, y, xv, yv = get_mnist()
    data = DataBunch(*get_dls(Dataset(x[:512], y[:512]), Dataset(xv[:256], yv[:256]), 64), c=10)
    learn = Learner(make_model(), data, metrics=[accuracy], progress=False, logger=lambda r: None)
    learn.lr_find(num_it=20)
    learn.fit_one_cycle(1, 1e-2)
    called = set()
    def call(name, f, *a, **k): called.add(name); f(*a, **k)
    call('Recorder.plot_loss', learn.recorder.plot_loss)
    call('Recorder.plot_lr', learn.recorder.plot_lr)
    call('Recorder.plot_sched', learn.recorder.plot_sched)
    call('LRFinder.plot', learn.lr_finder_result.plot)
    call('plot_comparison', plot_comparison, {'adam': learn.recorder})
    interp = ClassificationInterpretation.from_learner(learn)
    call('ClassificationInterpretation.plot_confusion_matrix', interp.plot_confusion_matrix)
    call('ClassificationInterpretation.plot_top_losses', interp.plot_top_losses)
    assert called == plotters(), f"plotting functions not exercised here: {plotters() - called}; called but not found: {called - plotters()}"
    print('ok', len(api.__all__), sorted(called))
""")

def test_every_export_imports_and_every_plot_draws_from_a_fresh_interpreter():
    r = subprocess.run([sys.executable, '-c', SCRIPT], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.startswith('ok')

def test_the_library_imports_no_plotting_and_no_web_framework():
    "`import exp_lib.all` brings neither matplotlib (imported at the first plot) nor a web framework (fastprogress 1.1 pulls python-fasthtml)."
    code = "import sys, exp_lib.all; print(sorted({m.split('.')[0] for m in sys.modules} & {'matplotlib', 'fasthtml', 'starlette', 'uvicorn'}))"
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == '[]', (r.stdout, r.stderr[-2000:])
