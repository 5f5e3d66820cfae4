"Hardening tests of the Learner (04_callbacks) that teach nothing in the notebook: fake terminals, interrupted saves, device syncs."
import contextlib, io, re, sys
from pathlib import Path
import pytest, torch
import torch.nn.functional as F
from torch import nn
from exp_lib.all import *

def mlp(): return nn.Sequential(nn.Linear(784, 50), nn.ReLU(), nn.Linear(50, 10))

def data(n=640, bs=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n, 784, generator=g), torch.randint(0, 10, (n,), generator=g)
    return DataBunch(DataLoader(Dataset(x, y), bs, shuffle=True), DataLoader(Dataset(x[:n // 4], y[:n // 4]), 2 * bs), c=10)

class FakeTTY(io.StringIO):
    def isatty(self): return True

def on_terminal():
    "A context manager that sends stdout to a fake terminal (inside the test body: pytest resets sys.stdout between phases)."
    return contextlib.redirect_stdout(FakeTTY())

def bar_lines(out): return out.getvalue().replace('\r', '\n').splitlines()

def test_console_bars_and_table_on_a_terminal():
    learn = Learner(mlp(), data(), metrics=[accuracy])
    assert learn.progress.kind is None
    with on_terminal() as terminal: learn.fit(2)
    lines = bar_lines(terminal)
    assert lines[[i for i, l in enumerate(lines) if 'epoch' in l][0]].split() == ['epoch', 'train_loss', 'valid_loss', 'accuracy', 'time']
    assert any('Epoch 2/2' in l and '100.00% [10/10' in l for l in lines)
    assert sum(1 for l in lines if re.match(r'[01]\s+\d\.\d+\s+\d\.\d+\s+\d\.\d+', l)) == 2
    assert learn.logger is print_row

def test_explicit_console_bars_without_a_terminal(capsys):
    learn = Learner(mlp(), data(), progress=False, cbs=[ProgressCallback('console')])
    learn.fit(1)
    assert any('Epoch 1/1' in l for l in capsys.readouterr().out.replace('\r', '\n').splitlines())

def test_no_bars_into_a_pipe(capsys):
    learn = Learner(mlp(), data(), metrics=[accuracy])
    learn.fit(1)
    out = capsys.readouterr().out
    assert '\r' not in out and 'Epoch' not in out and out.splitlines()[0].split() == ['epoch', 'train_loss', 'valid_loss', 'accuracy', 'time']
    with pytest.raises(ValueError, match="kind must be 'html', 'console' or None"): Learner(mlp(), data(), progress=False, cbs=[ProgressCallback('tty')]).fit(1)

def test_ctrl_c_mid_batch_closes_the_bars_and_hands_back_the_logger():
    class CtrlC(Callback):
        def after_backward(self):
            if self.learn.iter == 3: raise KeyboardInterrupt()
    learn = Learner(mlp(), data(), metrics=[accuracy])
    with on_terminal(), pytest.raises(KeyboardInterrupt): learn.fit(1, cbs=[CtrlC()])
    assert learn.logger is print_row and learn.progress.mbar is None, 'the bars were left open'
    assert not hasattr(learn, 'ctrl_c')
    learn.fit(1)

def test_an_interrupted_save_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    learn = Learner(mlp(), data(), progress=False, logger=lambda r: None).fit(1)
    learn.save(tmp_path/'a.pt')
    good = (tmp_path/'a.pt').read_bytes()
    def dying_save(obj, f):
        f.write(b'half a checkpoint')
        raise KeyboardInterrupt()
    monkeypatch.setattr(torch, 'save', dying_save)
    with pytest.raises(KeyboardInterrupt): learn.save(tmp_path/'a.pt')
    monkeypatch.undo()
    assert (tmp_path/'a.pt').read_bytes() == good and sorted(o.name for o in tmp_path.iterdir()) == ['a.pt']

def test_loading_the_wrong_file_says_what_is_wrong(tmp_path):
    learn = Learner(mlp(), data(), progress=False, logger=lambda r: None)
    learn.save(tmp_path/'a.pt')
    wide = Learner(nn.Sequential(nn.Linear(784, 60), nn.ReLU(), nn.Linear(60, 10)), data(), progress=False)
    with pytest.raises(ValueError, match=re.escape("shape mismatch ['0.weight: saved (50, 784), model (60, 784)'")): wide.load(tmp_path/'a.pt')
    with pytest.raises(ValueError, match=re.escape("missing ['weight', 'bias']")): Learner(nn.Linear(784, 10), data(), progress=False).load(tmp_path/'a.pt')
    (tmp_path/'notes.txt').write_text('not a checkpoint')
    with pytest.raises(ValueError, match='notes.txt is not an exp_lib checkpoint'): learn.load(tmp_path/'notes.txt')
    torch.save(learn.model.state_dict(), tmp_path/'weights.pt')
    with pytest.raises(ValueError, match='it may hold bare weights'): learn.load(tmp_path/'weights.pt')
    with pytest.raises(FileNotFoundError, match='No checkpoint at'): learn.load(tmp_path/'nope.pt')

def syncs(n, bf16=False, **kw):
    learn = Learner(mlp(), data(n), metrics=[accuracy], logger=lambda r: None, **kw)
    if bf16: learn.to_bf16()
    with SyncCounter() as c: learn.fit_one_cycle(2)
    return c.n

@pytest.mark.parametrize('kw', [{}, {'opt_func': torch.optim.SGD}, {'bf16': True, 'cbs': [GradientAccumulation(128), GradientClip(1.)]}])
def test_syncs_do_not_grow_with_the_number_of_batches(kw):
    "The default learner (device, Recorder, schedules, metrics), with or without bf16, accumulation and clipping, syncs per epoch, never per batch."
    assert syncs(640, **kw) == syncs(6400, **kw)

EXPORTED = """
import sys, torch
from exp_lib.all import load_learner
learn = load_learner(sys.argv[1])
xs = torch.load(sys.argv[2], weights_only=True)
torch.save(torch.stack([learn.predict(x)[2] for x in xs]), sys.argv[3])
print(learn.data.c, learn.opt, int(learn.predict(xs[0])[0]))
"""

def test_an_exported_learner_predicts_the_same_in_a_fresh_process(tmp_path):
    "fastai's export/load_learner: the learner comes back without data or optimizer state and predicts as the exporting one."
    import subprocess
    torch.manual_seed(0)
    learn = Learner(mlp(), data(), metrics=[accuracy, error_rate], progress=False, logger=lambda r: None, cbs=[SaveModelCallback(path=tmp_path)])
    learn.fit_one_cycle(1)
    learn.export(tmp_path/'export.pkl')
    xs = torch.randn(5, 784)
    torch.save(xs, tmp_path/'xs.pt')
    p = subprocess.run([sys.executable, '-c', EXPORTED, str(tmp_path/'export.pkl'), str(tmp_path/'xs.pt'), str(tmp_path/'probs.pt')],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    c, opt, first = p.stdout.split()
    assert (c, opt) == ('10', 'None') and int(first) == int(learn.predict(xs[0])[1])
    here, there = torch.stack([learn.predict(x)[2] for x in xs]), torch.load(tmp_path/'probs.pt', weights_only=True)
    if learn.device.type == 'cpu': assert torch.equal(there, here)
    else: assert torch.allclose(there, here, rtol=0, atol=64 * torch.finfo(here.dtype).eps), (there - here).abs().max()  # the GPU rounds otherwise

def test_a_checkpoint_reaches_the_disk_before_its_name(tmp_path, monkeypatch):
    "The temporary file is synced before the rename and its folder after it: a power loss cannot leave an empty file under the final name."
    import os
    synced, real = [], os.fsync
    def fsync(fd):
        synced.append('folder' if os.path.isdir(os.readlink(f'/proc/self/fd/{fd}')) else os.path.basename(os.readlink(f'/proc/self/fd/{fd}')))
        real(fd)
    if not os.path.isdir('/proc/self/fd'): pytest.skip('reads which file a descriptor is from /proc')
    monkeypatch.setattr(os, 'fsync', fsync)
    Learner(mlp(), data(), progress=False, logger=lambda r: None).save(tmp_path/'a.pt')
    assert synced == ['.a.pt.%d.tmp' % os.getpid(), 'folder'], synced

def test_a_bar_that_cannot_start_leaves_the_learner_as_it_was():
    "HTML bars outside a notebook cannot show; whatever that raises, the fit ends with the learner's own logger back and no AttributeError."
    rows = []
    learn = Learner(mlp(), data(), logger=rows.append, progress=False, cbs=[ProgressCallback('html')])
    import warnings
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        try: learn.fit(1)
        except Exception as e: assert not isinstance(e, AttributeError), e
    assert not [w for w in caught if 'after_fit failed' in str(w.message)], [str(w.message) for w in caught]
    assert learn.logger == rows.append and learn.progress.mbar is None

class FailsToStart(Callback):
    "A callback whose before_fit raises `exc`, ordered before every other: the fit ends before the others start, and their after_fit runs all the same."
    order = -1000
    def __init__(self, exc): self.exc = exc
    def before_fit(self): raise self.exc

def shipped_callbacks(tmp_path):
    "One of each shipped callback that keeps state from before_fit to after_fit."
    return {'SaveModelCallback': lambda: SaveModelCallback(path=tmp_path), 'SaveModelCallback(at_end)': lambda: SaveModelCallback(path=tmp_path, fname='end', at_end=True),
            'EarlyStoppingCallback': EarlyStoppingCallback, 'ReduceLROnPlateau': ReduceLROnPlateau, 'CSVLogger': lambda: CSVLogger(tmp_path/'h.csv'),
            'ParamScheduler': lambda: ParamScheduler('lr', sched_cos(1e-2, 1e-3)), 'DistributedTrainer': DistributedTrainer,
            'MixedPrecision': MixedPrecision, 'GradientAccumulation': lambda: GradientAccumulation(128), 'GradientClip': GradientClip}

def test_a_fit_that_fails_to_start_leaves_every_callback_and_the_learner_as_they_were(tmp_path):
    """after_fit runs whatever ends a fit, also for the callbacks whose before_fit never ran: a first fit that fails to start, and one after a
    whole fit (whose state a callback must not act on again: SaveModelCallback loaded the earlier fit's best weights back, DistributedTrainer
    put the earlier fit's data back), end with that one error, no warning, and the learner unchanged."""
    import warnings, torch.distributed as dist
    dist.init_process_group('gloo', init_method=f'file://{tmp_path/"pg"}', rank=0, world_size=1)
    try:
        for name, make in shipped_callbacks(tmp_path).items():
            torch.manual_seed(0)
            learn = Learner(mlp(), data(), metrics=[accuracy], cbs=[make()], progress=False, logger=lambda r: None)
            for whole_fit_first in (False, True):
                if whole_fit_first:
                    learn.fit(2)
                    with torch.no_grad():  # the weights change after that fit (as a fit without SaveModelCallback would change them)
                        for p in learn.model.parameters(): p.add_(0.01)
                learn.data = dls = data(seed=1)  # and so may the data
                before = [p.detach().clone() for p in learn.model.parameters()]
                for exc in (ValueError('this fit cannot start'), CancelFitException()):  # an error, or a callback that cancels the fit
                    with warnings.catch_warnings(record=True) as caught:
                        warnings.simplefilter('always')
                        raised = None
                        try: learn.fit(1, cbs=[FailsToStart(exc)])
                        except ValueError as e: raised = e
                    assert raised is (exc if isinstance(exc, ValueError) else None), (name, exc, raised)  # the error reaches the caller, a cancel does not
                    assert not [str(w.message) for w in caught], (name, whole_fit_first, exc, [str(w.message) for w in caught])
                    assert all(torch.equal(a, b) for a, b in zip(before, learn.model.parameters())), (name, whole_fit_first, exc, 'weights changed')
                    assert learn.data is dls and not isinstance(learn.model, nn.parallel.DistributedDataParallel), (name, exc)
    finally: dist.destroy_process_group()
