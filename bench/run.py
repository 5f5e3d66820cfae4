"""exp_lib benchmarks. Each measurement runs against its baseline in the same process, interleaved, several
times after a warm-up; the table shows medians, the ratio and whether the target (issue 7) is met.
Run with `make bench` (or `python bench/run.py [--reps N]`)."""
import argparse, statistics, sys, time
import torch
import torch.nn.functional as F
from torch import nn, optim
import torch.utils.data as tud
from exp_lib.all import (Learner, DataBunch, DataLoader, Dataset, accuracy, Adam, SGD, RMSProp, SyncCounter)

def interleaved(fns, reps, warmup=2):
    "Median seconds of each function in `fns`, run alternately so that machine noise hits them alike."
    for _ in range(warmup):
        for f in fns: f()
    times = [[] for _ in fns]
    for _ in range(reps):
        for t, f in zip(times, fns):
            start = time.perf_counter(); f(); t.append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]

def mlp(): return nn.Sequential(nn.Linear(784, 50), nn.ReLU(), nn.Linear(50, 10))

def task(n=20_000, bs=64):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 784, generator=g), torch.randint(0, 10, (n,), generator=g), bs

def bench_fit(reps):
    """1. One epoch of Learner.fit (TrainEval, Recorder, AvgStats(accuracy); no progress) vs a hand-written loop.
    Both train on 20k items and then validate on 5k, averaging loss and accuracy weighted by batch size."""
    x, y, bs = task()
    xv, yv, _ = task(5_000)
    def handwritten():
        torch.manual_seed(0)
        model = mlp(); opt = optim.SGD(model.parameters(), lr=0.1)
        model.train()
        perm = torch.randperm(len(x))
        for i in range(0, len(x), bs):
            idx = perm[i:i + bs]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            loss.backward(); opt.step(); opt.zero_grad()
        model.eval()
        with torch.no_grad():
            tot_loss, tot_acc = 0., 0.
            for i in range(0, len(xv), 2 * bs):
                xb, yb = xv[i:i + 2 * bs], yv[i:i + 2 * bs]
                pred = model(xb)
                tot_loss += F.cross_entropy(pred, yb) * len(yb)
                tot_acc += accuracy(pred, yb) * len(yb)
        return float(tot_loss) / len(xv), float(tot_acc) / len(xv)
    def learner():
        torch.manual_seed(0)
        data = DataBunch(DataLoader(Dataset(x, y), bs, shuffle=True), DataLoader(Dataset(xv, yv), 2 * bs))
        learn = Learner(mlp(), data, opt_func=optim.SGD, lr=0.1, metrics=[accuracy], progress=False, logger=lambda row: None)
        learn.fit(1)
        assert [type(cb).__name__ for cb in learn.cbs] == ['MoveToDevice', 'TrainEvalCallback', 'AvgStatsCallback', 'Recorder']
        return learn.avg_stats.history[-1]
    row, (vloss, vacc) = learner(), handwritten()
    assert abs(row['valid_loss'] - vloss) < 1e-5 and abs(row['accuracy'] - vacc) < 1e-6, (row, vloss, vacc)
    ours, base = interleaved([learner, handwritten], reps)
    return [('Learner.fit, 1 epoch MLP (20k+5k, bs 64)', ours, 'hand-written loop, torch SGD', base, 1.15, 'max')]

def param_set(n=160):
    "160 small tensors, as a 40-layer MLP of width 64 would have (weights and biases alternating)."
    torch.manual_seed(0)
    ps = [torch.randn(64, 64, requires_grad=True) if i % 2 == 0 else torch.randn(64, requires_grad=True) for i in range(n)]
    for p in ps: p.grad = torch.randn_like(p) * 1e-2
    return ps

def bench_opt(reps, steps=50):
    "2. One optimizer step over 160 tensors: exp_lib (vectorised path) vs torch.optim with foreach (and fused for Adam)."
    def stepper(make):
        ps = param_set(); opt = make(ps)
        def run():
            for _ in range(steps): opt.step()
        return run, opt
    cases = [
        ('Adam step', lambda ps: Adam(ps, 1e-3, wd=0.01),
         [('AdamW(foreach=True)', lambda ps: optim.AdamW(ps, 1e-3, betas=(0.9, 0.99), eps=1e-5, weight_decay=0.01, foreach=True), 1.0),
          ('AdamW(fused=True)', lambda ps: optim.AdamW(ps, 1e-3, betas=(0.9, 0.99), eps=1e-5, weight_decay=0.01, fused=True), None)]),
        ('SGD momentum step', lambda ps: SGD(ps, 1e-2, mom=0.9),
         [('SGD(momentum=0.9, foreach=True)', lambda ps: optim.SGD(ps, 1e-2, momentum=0.9, foreach=True), 1.0)]),
        ('RMSProp step', lambda ps: RMSProp(ps, 1e-3),
         [('RMSprop(foreach=True)', lambda ps: optim.RMSprop(ps, 1e-3, alpha=0.99, eps=1e-8, foreach=True), 1.0)]),
    ]
    rows = []
    for name, ours_make, baselines in cases:
        ours, opt = stepper(ours_make)
        assert opt.foreach, f"{name}: the vectorised path is not in use"
        fns = [ours] + [stepper(m)[0] for _, m, _ in baselines]
        times = interleaved(fns, reps)
        for (bname, _, target), t in zip(baselines, times[1:]):
            rows.append((f'{name} (160 tensors)', times[0] / steps, f'torch {bname}', t / steps, target, 'max'))
    return rows

def bench_loader(reps):
    "3. One shuffled epoch of exp_lib's DataLoader vs torch's over the same in-memory tensors, bs 64; same batches."
    x, y, bs = task()
    perm = torch.randperm(len(x))
    class Fixed:
        def __init__(self): self.bs = bs
        def __iter__(self): return iter(perm.split(bs))
        def __len__(self): return -(-len(perm) // bs)
    ours_b = list(DataLoader(Dataset(x, y), sampler=Fixed()))
    theirs_b = list(tud.DataLoader(tud.TensorDataset(x, y), batch_size=bs, sampler=perm.tolist()))
    assert len(ours_b) == len(theirs_b) and all(torch.equal(a, c) and torch.equal(b, d) for (a, b), (c, d) in zip(ours_b, theirs_b))
    ours_dl, torch_dl = DataLoader(Dataset(x, y), bs, shuffle=True), tud.DataLoader(tud.TensorDataset(x, y), batch_size=bs, shuffle=True)
    def drain(dl):
        def run():
            for _ in dl: pass
        return run
    ours, base = interleaved([drain(ours_dl), drain(torch_dl)], reps)
    return [('DataLoader epoch, shuffled (20k, bs 64)', ours, 'torch DataLoader(TensorDataset)', base, 1 / 5, 'max')]

def bench_syncs(_reps):
    "4. Tensor->Python conversions during a fit: they must not grow with the number of batches."
    def count(n):
        x, y, bs = task(n)
        xv, yv, _ = task(n // 4)
        learn = Learner(mlp(), DataBunch(DataLoader(Dataset(x, y), bs, shuffle=True), DataLoader(Dataset(xv, yv), 2 * bs)),
                        opt_func=optim.SGD, lr=0.1, metrics=[accuracy], progress=False, logger=lambda row: None)
        with SyncCounter() as c: learn.fit(2)
        return c.n, 2 * (len(learn.data.train_dl) + len(learn.data.valid_dl))
    (small, nb_small), (big, nb_big) = count(2_000), count(20_000)
    per_batch = (big - small) / (nb_big - nb_small)
    return [(f'syncs per batch ({big} syncs in {nb_big} batches, {small} in {nb_small})', per_batch, 'none per batch', 1.0, 0, 'abs')]

def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument('--reps', type=int, default=7, help='timed repetitions per measurement (median reported)')
    reps = ap.parse_args().reps
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, median of {reps} runs after warm-up\n")
    rows = []
    for b in (bench_fit, bench_opt, bench_loader, bench_syncs):
        print(f"running {b.__name__}...", file=sys.stderr, flush=True)
        rows += b(reps)
    w = max(len(r[0]) for r in rows)
    print(f"{'measurement':{w}}  {'ours':>10}  {'baseline':36}  {'base':>10}  {'ratio':>6}  {'target':>8}  result")
    ok_all = True
    for name, ours, bname, base, target, kind in rows:
        if kind == 'abs':
            ratio, ok, tgt = ours, ours <= target, f'= {target}'
            print(f"{name:{w}}  {ours:10.3f}  {bname:36}  {'':>10}  {'':>6}  {tgt:>8}  {'pass' if ok else 'FAIL'}")
        else:
            ratio = ours / base
            ok = target is None or ratio <= target
            tgt = 'report' if target is None else f'<= {target:g}'
            print(f"{name:{w}}  {ours*1e3:8.3f}ms  {bname:36}  {base*1e3:8.3f}ms  {ratio:6.2f}  {tgt:>8}  {'pass' if ok else 'FAIL'}")
        ok_all &= ok
    print('\nall targets met' if ok_all else '\nsome targets missed')
    return 0 if ok_all else 1

if __name__ == '__main__': sys.exit(main())
