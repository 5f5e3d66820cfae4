"""Hardening checks of the Learner (04_callbacks) that guard against mistakes rather than teach: models and batches of unusual shapes,
bad input explained before anything trains, fastai habits that must do what they do there, errors that name the problem and the fix."""
import collections
from functools import partial
import pytest, torch
import torch.nn.functional as F
import torch.utils.data as tud
from torch import nn, optim
from torch.utils._python_dispatch import TorchDispatchMode
import fastcore.test as ft  # under its module's name: pytest would collect test_eq itself as a test
from exp_lib.all import Learner, DataBunch, DataLoader, Dataset, Callback, accuracy

QUIET = dict(progress=False, logger=lambda r: None)

def tiny_data():
    ds = Dataset(torch.randn(4, 3), torch.tensor([0, 1, 1, 0]))  # both classes: a one-output model must fail on them
    return DataBunch(DataLoader(ds, 2), DataLoader(Dataset(torch.randn(2, 3), torch.randint(0, 2, (2,))), 4), c=2)

class TwoHeads(nn.Module):
    def __init__(self): super().__init__(); self.a, self.b = nn.Linear(3, 2), nn.Linear(3, 1)
    def forward(self, x): return self.a(x), {'aux': self.b(x)}

def test_a_model_with_nested_outputs_trains_and_its_outputs_are_detached():
    def two_head_loss(pred, y): return F.cross_entropy(pred[0], y) + pred[1]['aux'].pow(2).mean()
    def first_acc(pred, y): return accuracy(pred[0], y)
    learn = Learner(TwoHeads(), tiny_data(), loss_func=two_head_loss, metrics=[first_acc], **QUIET)
    learn.fit(1)
    ft.test_eq(list(learn.avg_stats.history[-1])[:4], ['epoch', 'train_loss', 'valid_loss', 'first_acc'])

class Sum2(nn.Module):
    def __init__(self): super().__init__(); self.lin = nn.Linear(3, 2)
    def forward(self, x1, x2): return self.lin(x1 + x2)

def test_batches_of_several_inputs_and_several_targets():
    "As in fastai, a batch holds `n_inp` inputs and then the targets; unless the DataBunch says otherwise, every item but the last is an input."
    ds2 = tud.TensorDataset(torch.randn(4, 3), torch.randn(4, 3), torch.randint(0, 2, (4,)))
    learn = Learner(Sum2(), DataBunch(tud.DataLoader(ds2, 2), tud.DataLoader(ds2, 4)), **QUIET)
    learn.fit(1)
    ft.test_eq((learn.data.n_inp, len(learn.xb), len(learn.yb)), (2, 2, 1))
    ds3 = tud.TensorDataset(torch.randn(4, 3), torch.randint(0, 2, (4,)), torch.randn(4))
    def two_targets(pred, y1, y2): return F.cross_entropy(pred, y1) + (pred[:, 0] - y2).pow(2).mean()
    learn = Learner(nn.Linear(3, 2), DataBunch(tud.DataLoader(ds3, 2), None, n_inp=1), loss_func=two_targets, **QUIET)
    learn.fit(1)
    ft.test_eq((len(learn.xb), len(learn.yb)), (1, 2))

def test_bad_input_to_the_loop_is_explained_before_anything_trains():
    empty = DataBunch(DataLoader(Dataset(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long))), None)
    ft.test_fail(lambda: Learner(nn.Linear(3, 2), empty, progress=False).fit(1), contains='yields no batch')
    learn = Learner(nn.Linear(3, 2), tiny_data(), **QUIET)
    ft.test_fail(lambda: learn.fit(1, lr=[0.1, 0.2]), contains='2 values given')
    ft.test_fail(lambda: Learner(nn.Linear(3, 2), tiny_data(), splitter=lambda m: []).create_opt(), contains='The splitter returned no parameters')
    one_class = Learner(nn.Linear(3, 1), tiny_data(), **QUIET)
    ft.test_fail(lambda: one_class.fit(1), contains='cross_entropy failed on predictions of shape (2, 1) and targets of shape (2,)')
    unreduced = Learner(nn.Linear(3, 2), tiny_data(), loss_func=nn.CrossEntropyLoss(reduction='none'), **QUIET)
    ft.test_fail(lambda: unreduced.fit(1), contains="CrossEntropyLoss gave (2,) values for one batch")
    for n, msg in ((0, 'n_epoch must be a whole number >= 1, got n_epoch=0'), (-3, 'got n_epoch=-3'), (1.5, 'got n_epoch=1.5')):
        ft.test_fail(lambda: learn.fit(n), contains=msg)
    ft.test_fail(lambda: learn.fit(2, start_epoch=2), contains='start_epoch=2 must be below n_epoch=2')
    ft.test_fail(lambda: Learner(nn.Linear(3, 2), tiny_data(), lr=float('nan')), contains='lr must be a finite number >= 0, got lr=nan')
    ft.test_fail(lambda: learn.set_hyper('lr', -1), contains='got lr=-1')
    ft.test_fail(lambda: learn.fit(1, lr=float('inf')), contains='got lr=inf')
    reg = DataBunch(DataLoader(Dataset(torch.randn(8, 3), torch.randn(8)), 4), DataLoader(Dataset(torch.randn(4, 3), torch.randn(4)), 4))
    ft.test_fail(lambda: Learner(nn.Linear(3, 1), reg, loss_func=F.mse_loss, progress=False).fit(1),
              contains='mse_loss got predictions of shape (4, 1) and targets of shape (4,), which broadcast to (4, 4)')
    Learner(nn.Sequential(nn.Linear(3, 1), nn.Flatten(0)), reg, loss_func=F.mse_loss, **QUIET).fit(1)

def test_a_learner_says_what_it_is():
    learn = Learner(nn.Linear(3, 2), tiny_data(), opt_func=optim.SGD, lr=0.1, **QUIET)
    ft.test_eq(repr(learn), "Learner(Linear (8 parameters), DataBunch(train: 4 items in 2 batches, valid: 2 items in 1 batches, c=2), "
                         "loss_func=cross_entropy, opt=SGD (not made yet), lr=0.1, cbs=[MoveToDevice, TrainEvalCallback, AvgStatsCallback, Recorder])")
    learn.fit(1)
    assert 'opt=OptimWrapper(SGD)' in repr(learn), repr(learn)

class Pct(Callback):
    "Notes `pct_train` before and after each training batch."
    def __init__(self): self.before, self.after = [], []
    def before_batch(self):
        if self.training: self.before.append(self.pct_train)
    def after_batch(self):
        if self.training: self.after.append(self.pct_train)

def test_fastai_code_does_what_it_does_in_fastai():
    """Each check guards a case that once ran without error and did something else: a model put in place of the learner's trains with an
    optimizer made for it; an `lr` fixed in a `partial` `opt_func` is the learner's; `learn.metrics = [...]` takes effect at the next fit and
    `final_record` holds the last epoch's values; `pct_train` moves after each training batch and ends at 1.0; fastai's argument order is refused
    with the fix; events fired by hand work on a fresh learner; `cbs` takes one callback or a class as well as a list; `dls.one_batch()`."""
    learn = Learner(nn.Linear(3, 2), tiny_data(), lr=0.5, **QUIET)
    ft.test_is(learn.opt, None)
    learn.fit(1)
    new = nn.Linear(3, 2); w0 = new.weight.detach().clone()
    learn.model = new
    learn.fit(1)
    assert not torch.equal(new.weight.detach(), w0), 'the new model trains'
    ft.test_is(learn.opt.param_groups[0]['params'][0], new.weight)

    learn = Learner(nn.Linear(3, 2), tiny_data(), opt_func=partial(optim.SGD, lr=0.3), **QUIET)
    learn.fit(1)
    ft.test_eq((learn.lr, learn.opt.param_groups[0]['lr']), (0.3, 0.3))
    learn.metrics = [accuracy]
    learn.fit(1)
    ft.test_eq(learn.avg_stats.names[3], 'accuracy')
    ft.test_eq(learn.final_record, [learn.avg_stats.history[-1][k] for k in ('train_loss', 'valid_loss', 'accuracy')])
    ft.test_fail(lambda: Learner(nn.Linear(3, 2), tiny_data(), wd=-1), contains='wd must be a finite number >= 0, got wd=-1')
    pct = Pct()
    learn.fit(2, cbs=[pct])
    ft.test_eq(pct.before, [0, 0.25, 0.5, 0.75]); ft.test_eq(pct.after, [0.25, 0.5, 0.75, 1.0]); ft.test_eq(learn.pct_train, 1.0)

    ft.test_fail(lambda: Learner(tiny_data(), nn.Linear(3, 2)), contains="where fastai's takes (dls, model): swap the first two arguments")
    fresh = Learner(nn.Linear(3, 2), tiny_data(), **QUIET)
    fresh('before_fit'); fresh('before_epoch')
    ft.test_eq((fresh.train_iter, fresh.pct_train, fresh.epochs_done), (0, 0., 0))
    ft.test_is(learn.dls, learn.data)

    learn = Learner(nn.Linear(3, 2), tiny_data(), cbs=Pct(), **QUIET)  # one callback, not a list
    learn.fit(1); ft.test_eq(len(learn.pct.after), 2)
    learn.remove_cb(Pct)
    learn.fit(1, cbs=Pct)  # a class: made for this fit, then removed
    assert not hasattr(learn, 'pct')
    ft.test_eq([type(cb) for cb in learn.add_cbs(Pct)], [Pct])
    xb, yb = learn.dls.one_batch()
    ft.test_eq((xb, yb), learn.dls.train_ds[:2])

def test_errors_name_the_problem_and_the_fix():
    """Mistakes that used to end in an error from deep inside PyTorch (or in none) are caught where they enter, with the value seen and what
    to do: an optimizer named by a string; nothing left to train; inputs of another dtype than the model's; an empty validation set; a metric
    that returns a value per item, or is named by a string; data given in another form than a DataBunch of loaders."""
    ft.test_fail(lambda: Learner(nn.Linear(3, 2), tiny_data(), opt_func='adam'), contains="opt_func must be a function that makes an optimizer")
    ft.test_fail(lambda: Learner(nn.Linear(3, 2), tiny_data(), loss_func='ce'), contains="loss_func must be a function of (pred, *targets)")
    frozen = nn.Linear(3, 2).requires_grad_(False)
    ft.test_fail(lambda: Learner(frozen, tiny_data(), progress=False).fit(1), contains='No parameter of the model trains')
    x64 = DataBunch(DataLoader(Dataset(torch.randn(4, 3, dtype=torch.float64), torch.randint(0, 2, (4,))), 2))
    ft.test_fail(lambda: Learner(nn.Linear(3, 2), x64, **QUIET).fit(1), contains="The inputs are torch.float64 but the model's parameters are torch.float32")
    no_valid = DataBunch(tiny_data().train_dl, DataLoader(Dataset(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long))))
    ft.test_fail(lambda: Learner(nn.Linear(3, 2), no_valid, progress=False).fit(1), contains='The validation DataLoader yields no batch')
    def vector_metric(pred, y): return (pred.argmax(-1) == y).float()
    ft.test_fail(lambda: Learner(nn.Linear(3, 2), tiny_data(), metrics=[vector_metric], **QUIET).fit(1),
              contains='The metric vector_metric returned (2,) values for one batch')
    data = tiny_data(); ds = data.train_ds
    ft.test_fail(lambda: DataBunch(ds, data.valid_ds), contains='got two datasets: write DataBunch(*get_dls(train_ds, valid_ds, bs=64))')
    ft.test_fail(lambda: DataBunch(data.train_dl, data.valid_ds), contains="DataBunch's valid_dl takes a DataLoader (or any iterable of batches); got a dataset")
    ft.test_fail(lambda: Learner(nn.Linear(3, 2), (data.train_dl, data.valid_dl)), contains='got a tuple: write Learner(model, DataBunch(*data))')
    ft.test_fail(lambda: Learner(nn.Linear(3, 2), data.train_dl), contains='got a DataLoader: write Learner(model, DataBunch(train_dl, valid_dl))')
    ft.test_fail(lambda: Learner(nn.Linear(3, 2), ds), contains='got a Dataset: write Learner(model, DataBunch(*get_dls(train_ds, valid_ds, bs=64)))')
    ft.test_fail(lambda: Learner(nn.Linear(3, 2), data, metrics=['accuracy']),
              contains="A metric is a function metric(pred, *yb) (such as accuracy, imported from exp_lib) or a Metric; got 'accuracy' (a str)")

class Computes(TorchDispatchMode):
    "Counts the operations that compute something (a kernel each, on a GPU), leaving out views and detaches, which only alias their input."
    def __init__(self, aliases=False): super().__init__(); self.n, self.aliases = collections.Counter(), aliases
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if self.aliases or not any(r.alias_info is not None for r in func._schema.returns): self.n[str(func)] += 1
        return func(*args, **(kwargs or {}))

def test_a_training_batch_computes_what_a_hand_written_loop_computes():
    "With its default callbacks (and torch's SGD), a training batch of the Learner launches no operation a hand-written loop does not."
    x, y = torch.randn(640, 10), torch.randint(0, 2, (640,))
    def parts(n):
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(10, 4), nn.ReLU(), nn.Linear(4, 2)), DataLoader(Dataset(x[:n], y[:n]), 64, shuffle=True)
    def learner(n, aliases=False):
        model, dl = parts(n)
        learn = Learner(model, DataBunch(dl, None), opt_func=optim.SGD, lr=0.1, **QUIET)
        with Computes(aliases) as c: learn.fit(1)
        return c.n
    def by_hand(n, aliases=False):
        model, dl = parts(n)
        opt = optim.SGD(model.parameters(), lr=0.1)
        with Computes(aliases) as c:
            for xb, yb in dl: F.cross_entropy(model(xb), yb).backward(); opt.step(); opt.zero_grad()
        return c.n
    per_batch = lambda count: count(640) - count(320)  # 5 batches more: what a fit does once cancels out
    ours, theirs = per_batch(learner), per_batch(by_hand)
    assert ours == theirs, (ours, theirs)
    assert theirs['aten.addmm.default'] == 10, theirs  # it counts: two layers, five batches
    # Each torch call costs Python time, which a GPU shows: beside the loop's own `loss = loss_grad.detach()`, no callback adds one
    # per batch, not even a view (the epoch's averages stack the batches' losses at once; the Recorder keeps the loop's loss as it is)
    ours, theirs = per_batch(partial(learner, aliases=True)), per_batch(partial(by_hand, aliases=True))
    ft.test_eq((ours - theirs, theirs - ours), (collections.Counter({'aten.detach.default': 5}), collections.Counter()))

def test_the_records_of_the_loss_keep_no_graph():
    "A callback that makes `learn.loss` a tensor with a graph (against the loop's contract) makes neither the Recorder nor the epoch's averages keep it."
    import warnings
    class Graphed(Callback):
        def after_loss(self): self.learn.loss = self.learn.loss_grad * 1
    class Kept(Callback):
        order = 60  # after AvgStatsCallback: what it kept of the epoch, before the next epoch resets it
        def after_epoch(self): self.kept = list(self.learn.avg_stats.train_stats.loss.vals)
    learn = Learner(nn.Linear(3, 2), tiny_data(), cbs=[Graphed(), kept := Kept()], **QUIET)
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # float() of a tensor with a graph warns
        learn.fit(1)
    assert learn.recorder.losses and not any(l.requires_grad for l in learn.recorder.losses)
    assert kept.kept and not any(l.requires_grad for l in kept.kept)

def test_callback_mistakes_are_reported():
    "An old event name is reported by add_cb with the event it means; a callback setting learner state on itself is warned about."
    import warnings
    class Old(Callback):
        def begin_fit(self): pass
        def on_batch_end(self): pass
    learn = Learner(nn.Linear(3, 2), tiny_data(), **QUIET)
    with warnings.catch_warnings(record=True) as ws:
        warnings.simplefilter('always')
        learn.add_cb(Old())
    msgs = [str(w.message) for w in ws]
    assert any('Old.begin_fit is not an event' in m and 'before_fit' in m for m in msgs), msgs
    assert any('Old.on_batch_end' in m and 'after_batch' in m for m in msgs), msgs
    class Sloppy(Callback):
        def after_loss(self): self.loss = 0
    with warnings.catch_warnings(record=True) as ws:
        warnings.simplefilter('always')
        Learner(nn.Linear(3, 2), tiny_data(), **QUIET).fit(1, cbs=[Sloppy()])
    assert any('write self.learn.loss' in str(w.message) for w in ws)

def test_parameter_groups_from_a_splitter_reach_the_optimizer_when_it_is_made():
    m2 = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    learn = Learner(m2, tiny_data(), splitter=lambda m: [list(m[0].parameters()), list(m[1].parameters())], opt_func=optim.SGD, **QUIET)
    assert learn.opt is None  # made lazily, as in fastai
    learn.fit(1, lr=[0.01, 0.2])
    ft.test_eq([pg['lr'] for pg in learn.opt.param_groups], [0.01, 0.2])

def test_the_recorded_loss_is_a_copy_only_where_a_callback_could_change_loss_grad_in_place():
    class HalveInPlace(Callback):
        "A penalty written as fastai's regularisers write theirs, in place."
        def after_loss(self): self.learn.loss_grad *= 0.5
    class Seen(Callback):
        "The recorded loss and the loss the gradients came from, at the end of each batch."
        order = 100
        def before_fit(self): self.pairs = []
        def after_batch(self): self.pairs.append((self.learn.loss, self.learn.loss_grad.detach()))
    for cbs in ([HalveInPlace()], []):
        seen = Seen()
        Learner(nn.Linear(3, 2), tiny_data(), cbs=cbs + [seen], **QUIET).fit(1)
        if cbs: ft.test_eq([loss for loss, grad in seen.pairs], [2 * grad for loss, grad in seen.pairs])
        else: assert all(loss.data_ptr() == grad.data_ptr() for loss, grad in seen.pairs), 'no callback could change it: no copy'

def test_a_metric_of_one_element_in_any_shape_is_averaged():
    "Batch values of shape () and (1,), mixed in one phase, average as numbers (the epoch's values are stacked at once when shapes agree)."
    calls = []
    def odd_shapes(pred, y):
        calls.append(1)
        v = accuracy(pred, y)
        return v.reshape(1) if len(calls) % 2 else v
    torch.manual_seed(0)
    data = DataBunch(DataLoader(Dataset(torch.randn(8, 3), torch.randint(0, 2, (8,))), 2),
                     DataLoader(Dataset(torch.randn(6, 3), torch.randint(0, 2, (6,))), 2))
    learn = Learner(nn.Linear(3, 2), data, metrics=[odd_shapes, accuracy], **QUIET)
    learn.fit(1)
    row = learn.avg_stats.history[-1]
    ft.test_close(row['odd_shapes'], row['accuracy'])

def test_a_loss_of_shape_1_is_recorded_and_smoothed_as_a_number():
    "A loss function returning one value of shape (1,) (which trains, and which the epoch's averages take) gives the Recorder numbers too."
    def loss1(pred, y): return F.cross_entropy(pred, y).reshape(1)
    learn = Learner(nn.Linear(3, 2), tiny_data(), loss_func=loss1, **QUIET)
    learn.fit(2)
    ft.test_eq(learn.recorder.smooth_losses.shape, (4,))
    assert isinstance(learn.smooth_loss, float)
    learn.recorder.plot_loss()
