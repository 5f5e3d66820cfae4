"""The callbacks exp_lib ships, together: their `order` (fastai 2.8's) decides how they run, never the order of the `cbs` list (issue 41);
and a learner carrying any of them exports (nothing left open, nothing that cannot be pickled)."""
import csv, itertools, warnings
from pathlib import Path
import pytest, torch
from torch import nn
from exp_lib.all import (Learner, DataBunch, DataLoader, Dataset, accuracy, ProgressCallback, ParamScheduler, sched_cos, CSVLogger,
                         TensorBoardCallback, SaveModelCallback, EarlyStoppingCallback, ReduceLROnPlateau, TerminateOnNaNCallback,
                         ModelResetter, MixedPrecision, GradientAccumulation, GradientClip, load_learner)

class Net(nn.Module):
    "A small classifier with the `reset` that `ModelResetter` calls."
    def __init__(self): super().__init__(); self.lin = nn.Linear(5, 3)
    def forward(self, x): return self.lin(x)
    def reset(self): pass

def data():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(48, 5, generator=g), torch.randint(0, 3, (48,), generator=g)
    return DataBunch(DataLoader(Dataset(x[:32], y[:32]), 8, shuffle=True), DataLoader(Dataset(x[32:], y[32:]), 8), c=3)

# Each shipped callback a user attaches, made fresh for a fit writing into `tmp`. EarlyStopping and ReduceLROnPlateau act at the second
# epoch (nothing improves by 1e9); left out: DistributedTrainer (a process group), RNNRegularizer (an AWD-LSTM's outputs), LRFinder (lr_find's).
SHIPPED = {
    'progress': lambda tmp: ProgressCallback(),
    'sched': lambda tmp: ParamScheduler('lr', sched_cos(1e-2, 1e-3)),
    'csv': lambda tmp: CSVLogger(tmp/'history.csv'),
    'tensorboard': lambda tmp: TensorBoardCallback(tmp/'tb'),
    'save_best': lambda tmp: SaveModelCallback(path=tmp/'models', fname='best'),
    'save_every': lambda tmp: SaveModelCallback(every_epoch=True, path=tmp/'models', fname='epoch'),
    'early_stop': lambda tmp: EarlyStoppingCallback(patience=1, min_delta=1e9),
    'reduce_lr': lambda tmp: ReduceLROnPlateau(patience=1, min_delta=1e9),
    'nan': lambda tmp: TerminateOnNaNCallback(),
    'reset': lambda tmp: ModelResetter(),
    'bf16': lambda tmp: MixedPrecision(torch.bfloat16),
    'accum': lambda tmp: GradientAccumulation(16),
    'clip': lambda tmp: GradientClip(0.5),
}

def run(names, tmp):
    "Fit 4 epochs with the callbacks `names`, in that list order; what the run leaves: its table, where it stopped, its weights, its files."
    torch.manual_seed(0)
    rows = []
    learn = Learner(Net(), data(), lr=1e-2, metrics=[accuracy], progress=False, logger=rows.append, cbs=[SHIPPED[n](tmp) for n in names])
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # autocast's warning that bfloat16 is slow on this CPU
        learn.fit(4)
    table = [r[:-1] for r in rows]  # all but the time
    files = {}
    for f in sorted(tmp.rglob('*')):
        if f.is_dir() or 'tb' in f.relative_to(tmp).parts: continue  # TensorBoard's events hold wall times
        files[str(f.relative_to(tmp))] = ([r[:-1] for r in csv.reader(open(f))] if f.suffix == '.csv' else
                                          torch.load(f, weights_only=True)['model'])
    return table, getattr(learn, 'stopped_at', None), [p.detach().clone() for p in learn.model.parameters()], learn.opt.hypers, files

PAIRS = [p for p in itertools.combinations(SHIPPED, 2) if set(p) != {'save_best', 'save_every'}]  # one SaveModelCallback per learner

@pytest.mark.parametrize('a,b', PAIRS, ids=['-'.join(p) for p in PAIRS])
def test_a_pair_runs_the_same_in_either_list_order(a, b, tmp_path):
    ab, ba = run([a, b], tmp_path/'ab'), run([b, a], tmp_path/'ba')
    table, stop, weights, hypers, files = ab
    assert (table, stop, hypers) == ba[:2] + (ba[3],), (a, b)
    assert all(torch.equal(p, q) for p, q in zip(weights, ba[2]))
    assert files.keys() == ba[4].keys()
    for k, v in files.items():
        assert v == ba[4][k] if isinstance(v, list) else all(torch.equal(v[n], ba[4][k][n]) for n in v), k

def test_early_stopping_runs_after_the_loggers_and_savers(tmp_path):
    "The report's case: the epoch that stopped training is in the CSV and has its checkpoint, whatever the list order."
    table, stop, _, _, files = run(['early_stop', 'csv', 'save_every'], tmp_path)
    assert stop == 1 and len(table) == 3  # the header and two epochs
    assert len(files['history.csv']) == 3 and {'models/epoch_0.pt', 'models/epoch_1.pt'} <= files.keys()

def test_a_learner_with_every_shipped_callback_exports(tmp_path):
    "After a fit nothing is left open (CSVLogger's file, TensorBoard's writer) and nothing unpicklable: the export loads and predicts."
    names = [n for n in SHIPPED if n != 'save_every']
    learn = Learner(Net(), data(), lr=1e-2, metrics=[accuracy], progress=False, logger=lambda r: None, cbs=[SHIPPED[n](tmp_path) for n in names])
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        learn.fit(2)
    learn.export(tmp_path/'learner.pkl')
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # load_learner's reminder that a pickle can run code
        loaded = load_learner(tmp_path/'learner.pkl')
    assert [type(cb).__name__ for cb in loaded.cbs] == [type(cb).__name__ for cb in learn.cbs]
    x = torch.randn(5)
    assert torch.equal(loaded.predict(x)[1], learn.predict(x)[1])
