"""Defaults a user can trust (issue 41): the same `Learner` whatever was imported, no module rewriting another's defaults, a light import,
the default loss refusing targets it would train on wrongly, the signatures `help()` shows, fastai's classification report."""
import contextlib, inspect, io, json, subprocess, sys, textwrap
import pytest, torch
from torch import nn
from exp_lib.all import Learner, DataBunch, Dataset, get_dls, ClassificationInterpretation

def in_fresh_python(code):
    r = subprocess.run([sys.executable, '-c', textwrap.dedent(code)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])

DESCRIBE = """
    import json, torch
    from torch import nn
    from exp_lib.minibatch import Dataset, get_dls
    x, y = torch.randn(64, 4), torch.randint(0, 3, (64,))
    learn = Learner(nn.Linear(4, 3), DataBunch(*get_dls(Dataset(x[:48], y[:48]), Dataset(x[48:], y[48:]), 16)))
    print(json.dumps({'opt_func': learn.opt_func.__module__ + '.' + learn.opt_func.__name__, 'lr': learn.lr, 'loss': learn.loss_func.__name__,
                      'cbs': [type(cb).__name__ for cb in learn.cbs], 'opt': learn.create_opt().kind,
                      'methods': sorted(m for m in dir(Learner) if not m.startswith('_') and callable(getattr(Learner, m)))}))
"""

def test_the_learner_is_the_same_whatever_was_imported():
    alone = in_fresh_python("from exp_lib.callbacks import Learner, DataBunch\n" + textwrap.dedent(DESCRIBE))
    everything = in_fresh_python("from exp_lib.all import *\n" + textwrap.dedent(DESCRIBE))
    assert alone == everything
    assert (alone['opt_func'], alone['lr'], alone['loss']) == ('exp_lib.accel_sgd.Adam', 1e-3, 'cross_entropy')  # fastai's defaults
    assert alone['cbs'] == ['MoveToDevice', 'TrainEvalCallback', 'Recorder', 'ProgressCallback', 'AvgStatsCallback']  # the table under the bars
    assert {'fit_one_cycle', 'lr_find', 'fine_tune', 'export', 'get_preds', 'distrib_ctx', 'to_fp16'} <= set(alone['methods'])

def test_no_module_changes_the_defaults_when_imported_and_the_lesson_module_stays_light():
    res = in_fresh_python("""
        import json, sys
        from exp_lib.callbacks import defaults
        before, light = repr(vars(defaults)), 'exp_lib.accel_sgd' not in sys.modules
        import exp_lib.all
        print(json.dumps([before == repr(vars(defaults)), light]))
    """)
    assert res == [True, True]

def test_importing_the_library_imports_no_compiler():
    "torch.compile's machinery (dynamo, inductor) is imported by the first compiled step, not with the library: it cost 1.7 s of 3.5."
    res = in_fresh_python("""
        import json, sys, exp_lib.all
        print(json.dumps(sorted(m for m in sys.modules if m.startswith(('torch._dynamo', 'torch._inductor')))))
    """)
    assert res == []

def regression_data():
    x = torch.randn(64, 10)
    return DataBunch(*get_dls(Dataset(x[:48], x[:48, :1] * 2), Dataset(x[48:], x[48:, :1] * 2), 16))

@pytest.mark.parametrize('how', ['fit_one_cycle', 'lr_find'])
def test_the_default_loss_refuses_float_targets_in_every_way_to_train(how):
    learn = Learner(nn.Linear(10, 1), regression_data(), progress=False, logger=lambda r: None)
    w = learn.model.weight.detach().clone()
    with pytest.raises(ValueError, match=r'made without a loss_func.*Pass loss_func=nn.MSELoss\(\) for regression'):
        learn.fit_one_cycle(1) if how == 'fit_one_cycle' else learn.lr_find(show_plot=False)
    assert torch.equal(learn.model.weight, w)

def test_an_explicit_cross_entropy_takes_class_probabilities():
    "Only the default is checked: F.cross_entropy given by the user takes float targets (class probabilities), as PyTorch's does."
    x = torch.randn(32, 4)
    probs = torch.softmax(torch.randn(32, 3), -1)
    data = DataBunch(*get_dls(Dataset(x[:24], probs[:24]), Dataset(x[24:], probs[24:]), 8))
    Learner(nn.Linear(4, 3), data, loss_func=torch.nn.functional.cross_entropy, progress=False, logger=lambda r: None).fit(1)

def test_every_public_learner_method_shows_its_own_signature():
    "A wrapper (distributed's lr_find) that hid its parameters as (*args, **kwargs) from help() and the docs would be listed here."
    hidden = [n for n, f in vars(Learner).items() if not n.startswith('_') and inspect.isfunction(f)
              and [p.kind for p in inspect.signature(f).parameters.values()][1:] == [inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD]]
    assert hidden == []
    assert list(inspect.signature(Learner.lr_find).parameters)[:4] == ['self', 'start_lr', 'end_lr', 'num_it']

def test_the_classification_report_reads_as_scikit_learns():
    skm = pytest.importorskip('sklearn.metrics')
    g = torch.Generator().manual_seed(0)
    targs, preds = torch.randint(0, 4, (200,), generator=g), torch.randn(200, 4, generator=g)
    preds[torch.arange(200), targs] += 1.5 * torch.rand(200, generator=g)  # better than chance, unevenly
    vocab = ['cat', 'dog', 'a long class name', 'eel']
    interp = ClassificationInterpretation(None, preds, targs, torch.zeros(200), vocab=vocab)
    out = io.StringIO()
    with contextlib.redirect_stdout(out): interp.print_classification_report()
    theirs = skm.classification_report(targs.numpy(), preds.argmax(-1).numpy(), target_names=vocab, zero_division=0)
    assert out.getvalue().rstrip() == theirs.rstrip()
