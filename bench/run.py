"""exp_lib benchmarks. Each measurement runs against its baseline in the same process, interleaved, several
times after a warm-up; the table shows median times, the ratio (the median of the ratios of the rounds, each one's pair run back to
back) and whether the target (issues 7, 16, 21 and 26) is met. The CPU rows run on the CPU whatever the machine has; on a machine with a
CUDA GPU, the GPU rows (6) are added.
Run with `make bench` (or `python bench/run.py [--reps N] [--only NAME]`)."""
import argparse, gc, statistics, subprocess, sys, tempfile, time
from functools import partial
from pathlib import Path
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn, optim
import torch.utils.data as tud
from exp_lib.all import (Learner, DataBunch, DataLoader, Dataset, accuracy, make_optimizer, Adam, SGD, RMSProp, Lamb, SyncCounter, Callback,
                         DistributedTrainer, flat_parts, AvgStatsCallback, Recorder, MoveToDevice)
from exp_lib.compiled import CompiledPass

def interleaved(fns, reps, warmup=2):
    """Median seconds of each function in `fns`, run alternately so that machine noise hits them alike; and, for each, the median over the
    rounds of the first function's time over its own in the same round (a burst of noise moves that less than a ratio of the medians)."""
    for _ in range(warmup):
        for f in fns: f()
    times = [[] for _ in fns]
    for _ in range(reps):
        for t, f in zip(times, fns):
            start = time.perf_counter(); f(); t.append(time.perf_counter() - start)
    return [statistics.median(t) for t in times], [statistics.median(a / b for a, b in zip(times[0], t)) for t in times]

def mlp(): return nn.Sequential(nn.Linear(784, 50), nn.ReLU(), nn.Linear(50, 10))

def task(n=20_000, bs=64):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 784, generator=g), torch.randint(0, 10, (n,), generator=g), bs

def epoch_fns(device='cpu', where='cpu', n=20_000):
    """One epoch of Learner.fit (device, TrainEval, Recorder, AvgStats(accuracy); no progress) and of a hand-written loop, on `device` with the
    data in `where`'s memory: `n` items to train on, then `n // 4` to validate, averaging loss and accuracy weighted by batch size. The
    hand-written loop gathers its batches as a user would (`x[idx]`, then `.to(device)`), and, to show the Learner's own cost, as exp_lib's
    DataLoader does (index_select). Returns the three functions: the Learner's (its last epoch's stats), the loop's and the index_select loop's
    (validation loss and accuracy)."""
    dev = torch.device(device)
    (x, y, bs), (xv, yv, _) = task(n), task(n // 4)
    x, y, xv, yv = (t.to(where) for t in (x, y, xv, yv))
    def handwritten(gather=lambda t, idx: t[idx]):
        torch.manual_seed(0)
        model = mlp().to(dev); opt = optim.SGD(model.parameters(), lr=0.1)
        model.train()
        perm = torch.randperm(len(x)).to(where)
        for i in range(0, len(x), bs):
            idx = perm[i:i + bs]
            loss = F.cross_entropy(model(gather(x, idx).to(dev)), gather(y, idx).to(dev))
            loss.backward(); opt.step(); opt.zero_grad()
        model.eval()
        with torch.no_grad():
            tot_loss, tot_acc = 0., 0.
            for i in range(0, len(xv), 2 * bs):
                xb, yb = xv[i:i + 2 * bs].to(dev), yv[i:i + 2 * bs].to(dev)
                pred = model(xb)
                tot_loss += F.cross_entropy(pred, yb) * len(yb)
                tot_acc += accuracy(pred, yb) * len(yb)
        return float(tot_loss) / len(xv), float(tot_acc) / len(xv)
    def learner():
        torch.manual_seed(0)
        data = DataBunch(DataLoader(Dataset(x, y), bs, shuffle=True), DataLoader(Dataset(xv, yv), 2 * bs))
        learn = Learner(mlp(), data, opt_func=optim.SGD, lr=0.1, metrics=[accuracy], progress=False, logger=lambda row: None, device=dev)
        learn.fit(1)
        assert [type(cb).__name__ for cb in learn.cbs] == ['MoveToDevice', 'TrainEvalCallback', 'AvgStatsCallback', 'Recorder']
        return learn.avg_stats.history[-1]
    return learner, handwritten, partial(handwritten, gather=lambda t, idx: t.index_select(0, idx))

def epoch_rows(reps, device='cpu', where='cpu'):
    "The Learner's epoch against the hand-written loops' (`epoch_fns`), once each results are checked equal."
    dev = torch.device(device)
    learner, handwritten, same_gather = epoch_fns(device, where)
    row, (vloss, vacc) = learner(), handwritten()
    tol = (1e-5, 1e-6) if dev.type == 'cpu' else (1e-4, 1e-3)  # the GPU's kernels round otherwise than the CPU's
    assert abs(row['valid_loss'] - vloss) < tol[0] and abs(row['accuracy'] - vacc) < tol[1], (row, vloss, vacc)
    (ours, base, same), (_, r_base, r_same) = interleaved([learner, handwritten, same_gather], reps)
    name = 'Learner.fit, 1 epoch MLP (20k+5k, bs 64)' + ('' if dev.type == 'cpu' else f', on the GPU, data in {where} memory')
    return [(name, ours, 'hand-written loop, x[idx]', base, 1.05, 'max', r_base),
            (name, ours, 'the same, gathering with index_select', same, None, 'max', r_same)]

def where_the_time_goes(reps, device='cpu', where='cpu', top=12):
    """Printed, not a row: where the Learner's epoch spends the time the hand-written loop does not (`epoch_fns`). Its extra cost split into
    a part per batch and a part per fit (epochs of 20k and 5k items, interleaved); the operations each launches per training batch (GPU
    kernels and copies on CUDA, top-level torch operations on the CPU; torch.profiler); the calls that make the CPU wait for the GPU in
    one fit (torch.cuda.set_sync_debug_mode); and the Learner's Python functions that take longest in one epoch (cProfile)."""
    import cProfile, io, pstats, warnings
    from torch.profiler import profile, ProfilerActivity
    dev, bs = torch.device(device), task(1)[2]
    say = lambda s: print(f'  {s}')
    print(f'Where the Learner spends its time beyond a hand-written loop ({dev.type}, data in {where} memory):')
    fns = {n: epoch_fns(device, where, n)[:2] for n in (20_000, 5_000)}
    times = {n: interleaved(list(f), reps)[0] for n, f in fns.items()}
    batches = {n: -(-n // bs) + -(-(n // 4) // (2 * bs)) for n in fns}
    extra = {n: t[0] - t[1] for n, t in times.items()}
    per_batch = (extra[20_000] - extra[5_000]) / (batches[20_000] - batches[5_000])
    say(f'{per_batch * 1e6:.1f} us per batch and {(extra[5_000] - per_batch * batches[5_000]) * 1e3:.1f} ms per fit more than the loop '
        f'({times[20_000][1] / batches[20_000] * 1e6:.0f} us per batch for the loop)')
    cuda = dev.type == 'cuda'
    acts = [ProfilerActivity.CPU] + [ProfilerActivity.CUDA] * cuda
    kind = torch.autograd.DeviceType.CUDA if cuda else torch.autograd.DeviceType.CPU
    counts = {}
    for name, fn in zip(('Learner', 'hand loop'), fns[5_000]):
        with profile(activities=acts) as prof: fn()
        evs = prof.events()
        counts[name] = sum(1 for e in evs if e.device_type == kind and (cuda or (e.cpu_parent is None and e.name.startswith('aten::'))))
        if cuda:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter('always')
                torch.cuda.set_sync_debug_mode('warn')
                try: fn()
                finally: torch.cuda.set_sync_debug_mode('default')
            say(f'{name}: {len(caught)} calls made the CPU wait for the GPU in one fit of {batches[5_000]} batches')
    what = 'GPU kernels and copies' if cuda else 'top-level torch operations'
    say(f'{what} per batch: Learner {counts["Learner"] / batches[5_000]:.2f}, hand loop {counts["hand loop"] / batches[5_000]:.2f}')
    pr = cProfile.Profile()
    pr.runcall(fns[20_000][0])
    out = io.StringIO()
    pstats.Stats(pr, stream=out).sort_stats('tottime').print_stats(top)
    say('the Learner\'s epoch by Python function, most time first (cProfile; tottime is time in the function itself):')
    lines = out.getvalue().splitlines()
    start = next(i for i, l in enumerate(lines) if l.lstrip().startswith('ncalls'))
    for l in lines[start:start + top + 1]: say(l)
    print()

def python_bound_rows(reps, n=20_000, bs=64):
    """One epoch of a 10-4-2 model, whose batches cost almost nothing to compute: the Learner (its default callbacks, no metric) against the
    same loop by hand over the same DataLoader, on one thread. Python sets the pace there, as it does for the lesson's MLP on a GPU (kernels
    queued far faster than the CPU can launch them), so this row shows on any CPU the per-batch cost of the callbacks that a GPU exposes."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, 10, generator=g), torch.randint(0, 2, (n,), generator=g)
    def parts():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(10, 4), nn.ReLU(), nn.Linear(4, 2)), DataBunch(DataLoader(Dataset(x, y), bs, shuffle=True), None)
    def learner(bare=False):
        model, data = parts()
        learn = Learner(model, data, opt_func=optim.SGD, lr=0.1, progress=False, logger=lambda row: None)
        if bare: learn.remove_cbs([AvgStatsCallback, Recorder, MoveToDevice])  # the loop and TrainEvalCallback, which cannot be removed
        learn.fit(1)
    def handwritten():
        model, data = parts()
        opt = optim.SGD(model.parameters(), lr=0.1)
        model.train()
        for xb, yb in data.train_dl:
            F.cross_entropy(model(xb), yb).backward(); opt.step(); opt.zero_grad()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try: (ours, base, bare), (_, ratio, _) = interleaved([learner, handwritten, partial(learner, bare=True)], reps)
    finally: torch.set_num_threads(threads)
    batches = -(-n // bs)
    return [('Learner.fit, 1 epoch of a 10-4-2 model (Python-bound, as the MLP on a GPU), per batch', ours / batches,
             'the same loop by hand, same DataLoader', base / batches, None, 'max', ratio),
            ('  the loop alone: no callback but TrainEvalCallback, per batch (the floor of fastai\'s shape)', bare / batches,
             'the same loop by hand, same DataLoader', base / batches, None, 'max', bare / base)]

def bench_fit(reps):
    """1. One epoch of Learner.fit on the CPU against a hand-written loop (`epoch_rows`); where Python sets the pace, as on a GPU
    (`python_bound_rows`); what the defaults cost a short fit and the import (`default_rows`, issue 41)."""
    return epoch_rows(2 * reps) + python_bound_rows(reps) + default_rows(reps)

def default_rows(reps):
    """Issue 41: a short fit with the default optimizer costs no more than the eager flat step (target 1.05): the report's 1.2M-parameter
    MLP, fit_one_cycle(3) on the MNIST sample, against the same with compile=False (28.9 s against 3.5 s when compiling was the default
    for parts of 2**20 numbers). And `import exp_lib.all` after `import torch`, in a fresh interpreter: at most 0.3 s (it was 3.5 s)."""
    from exp_lib.all import get_mnist, get_dls
    x, y, xv, yv = get_mnist()
    data = DataBunch(*get_dls(Dataset(x, y), Dataset(xv, yv), 64), c=10)
    def fit(opt_func=None):
        def run():
            torch.manual_seed(0)
            model = nn.Sequential(nn.Linear(784, 1500), nn.ReLU(), nn.Linear(1500, 10))
            Learner(model, data, opt_func=opt_func, metrics=[accuracy], progress=False, logger=lambda row: None).fit_one_cycle(3)
        return run
    (ours, base), (_, r) = interleaved([fit(), fit(partial(Adam, compile=False))], max(reps // 3, 3), warmup=1)
    code = "import time, torch; t = time.perf_counter(); import exp_lib.all; print(time.perf_counter() - t)"
    imports = [float(subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True).stdout) for _ in range(5)]
    return [('fit_one_cycle(3), 1.2M MLP, default optimizer', ours, 'Adam(compile=False)', base, 1.05, 'max', r),
            ('import exp_lib.all after torch, seconds', statistics.median(imports), '', None, 0.3, 'abs')]

def layer_params(width, n=40, device='cpu'):
    "160 tensors: n layers Linear(width, width) + BatchNorm1d(width), with gradients (width 32: 45k parameters; 256: 2.6M; 1024: 42M)."
    torch.manual_seed(0)
    ps = [p for _ in range(n) for m in (nn.Linear(width, width, device=device), nn.BatchNorm1d(width, device=device)) for p in m.parameters()]
    for p in ps: p.grad = torch.randn_like(p) * 1e-2
    return ps

def few_large_params():
    "2.6M parameters in 6 tensors: two Linear(1024, 1024) and one Linear(1024, 512), with biases, with gradients."
    torch.manual_seed(0)
    ps = [p for m in (nn.Linear(1024, 1024), nn.Linear(1024, 1024), nn.Linear(1024, 512)) for p in m.parameters()]
    for p in ps: p.grad = torch.randn_like(p) * 1e-2
    return ps

# Chapter 16's callbacks as a user types them from the book (new averages at each step; only the deprecated argument
# order of add_/addcdiv_ is updated): the Optimizer must run them on its flat path with no extra code. The momentum section's
# average, then the damped one of the Adam section.
def chapter_momentum_average(p, mom, grad_avg=None, **kwargs):
    if grad_avg is None: grad_avg = torch.zeros_like(p.grad.data)
    return {'grad_avg': grad_avg * mom + p.grad.data}
def chapter_average_grad(p, mom, dampening=False, grad_avg=None, **kwargs):
    if grad_avg is None: grad_avg = torch.zeros_like(p.grad.data)
    damp = 1 - mom if dampening else 1.
    return {'grad_avg': grad_avg * mom + damp * p.grad.data}
def chapter_momentum_step(p, lr, grad_avg, **kwargs): p.data.add_(grad_avg, alpha=-lr)
def chapter_average_sqr_grad(p, sqr_mom, dampening=True, sqr_avg=None, **kwargs):
    if sqr_avg is None: sqr_avg = torch.zeros_like(p.grad.data)
    damp = 1 - sqr_mom if dampening else 1.
    return {'sqr_avg': sqr_avg * sqr_mom + damp * p.grad.data ** 2}
def chapter_step_stat(p, step=0, **kwargs): return {'step': step + 1}
def chapter_debias(mom, damp, step): return damp * (1 - mom ** step) / (1 - mom)
def chapter_adam_step(p, lr, mom, step, sqr_mom, grad_avg, sqr_avg, eps, **kwargs):
    debias1, debias2 = chapter_debias(mom, 1 - mom, step), chapter_debias(sqr_mom, 1 - sqr_mom, step)
    p.data.addcdiv_(grad_avg, (sqr_avg / debias2).sqrt() + eps, value=-lr / debias1)
def chapter_weight_decay(p, lr, wd, **kwargs): p.data.mul_(1 - lr * wd)

# The same callbacks as a user would write them in place (the arithmetic of the shipped ones, but plain functions of
# this script): the Optimizer knows nothing of them, so they show what the flat path gives any callback of the chapter's form.
def user_average_grad(p, mom, dampening=False, grad_avg=None, **kwargs):
    if grad_avg is None: grad_avg = torch.zeros_like(p.grad)
    if dampening: grad_avg.lerp_(p.grad, 1 - mom)
    else: grad_avg.mul_(mom).add_(p.grad)
    return {'grad_avg': grad_avg}
def user_average_sqr_grad(p, sqr_mom, sqr_avg=None, **kwargs):
    if sqr_avg is None: sqr_avg = torch.zeros_like(p.grad)
    sqr_avg.mul_(sqr_mom).addcmul_(p.grad, p.grad, value=1 - sqr_mom)
    return {'sqr_avg': sqr_avg}
def user_adam_step(p, lr, mom, step, sqr_mom, grad_avg, sqr_avg, eps, **kwargs):
    debias1, root2 = chapter_debias(mom, 1 - mom, step), chapter_debias(sqr_mom, 1 - sqr_mom, step) ** 0.5
    p.addcdiv_(grad_avg, sqr_avg.sqrt().add_(eps * root2), value=-lr * root2 / debias1)
def user_momentum_step(p, lr, grad_avg, **kwargs): p.add_(grad_avg, alpha=-lr)
# The two callbacks of that Adam that 16 wrote differently when issue 21 measured "the chapter's callbacks typed by a user" (38x the
# shipped Adam then): the damped average in two passes, and the squared average divided by its debias term (two temporaries more).
def filed_average_grad(p, mom, dampening=False, grad_avg=None, **kwargs):
    if grad_avg is None: grad_avg = torch.zeros_like(p.grad)
    grad_avg.mul_(mom).add_(p.grad, alpha=1 - mom if dampening else 1.)
    return {'grad_avg': grad_avg}
def filed_adam_step(p, lr, mom, step, sqr_mom, grad_avg, sqr_avg, eps, **kwargs):
    debias1, debias2 = chapter_debias(mom, 1 - mom, step), chapter_debias(sqr_mom, 1 - sqr_mom, step)
    p.addcdiv_(grad_avg, (sqr_avg / debias2).sqrt() + eps, value=-lr / debias1)
def user_weight_decay(p, lr, wd, **kwargs): p.mul_(1 - lr * wd)

def bench_opt(reps):
    """2. One optimizer step (flat buffers, the default) over 160 small tensors (45k parameters: per-tensor overhead dominates), 160 large
    ones and 6 larger ones (2.6M: memory traffic dominates), against torch.optim: fused where torch has it (target 0.5 when small),
    foreach (target 1). torch has no LAMB: it is shown against AdamW, a target only when small.
    Issue 21's targets for "the chapter's callbacks typed by a user" (1.2 of the shipped factories and, for Adam, 0.5 of fused AdamW,
    when small) apply to callbacks in the chapter's form, written as 16 teaches them (in place), but plain functions of this script
    that the Optimizer knows nothing of: today's 16, and Adam as 16 wrote it when the issue was filed. The fastai book's callbacks
    exactly as printed (a new tensor per operation) are held to the same targets, but for its Adam against the shipped one, which is
    reported only: as printed it makes 12 tensor operations per step where the shipped callbacks make 7, arithmetic of its own that
    no way of running it removes.
    Issue 28 (one compiled pass per group, asked for with compile=True where a part holds 2**20 numbers or more: `compiled_if_large`): on one thread, Adam, SGD-momentum and RMSProp at 2.6M
    in 160 and in 6 tensors at most 1.0 of torch's fused step (foreach for RMSProp), and a user's Adam callbacks at most 1.2 of the
    shipped Adam there too; the first compiled step's seconds are reported (a cold cache compiles for longer). And what one call of a
    compiled step costs beside a fused op's, warm and with the caches cold (`call_rows`)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try: return opt_rows(reps) + call_rows(reps)
    finally: torch.set_num_threads(threads)

def compiled_if_large(make, ps):
    """`make(ps)`, an exp_lib optimizer asked to compile (`compile=True`) where `ps` hold 2**20 parameters or more: issue 28's rows time the
    compiled pass from there (the default until issue 41 made compiling opt-in), the eager flat step below; a torch optimizer as it is."""
    opt = make(ps)
    return make(ps, compile=True) if hasattr(opt, 'cbs') and sum(p.numel() for p in ps) >= 1 << 20 else opt

def compile_seconds(opt, sync=lambda: None):
    "The longest of an optimizer's first three steps, in seconds: a part compiles at its first step with its state made (Adam's second)."
    first = 0.
    for _ in range(3):
        start = time.perf_counter(); opt.step(); sync(); first = max(first, time.perf_counter() - start)
    return first

def opt_rows(reps):
    adamw = lambda **kw: lambda ps: optim.AdamW(ps, 1e-3, betas=(0.9, 0.99), eps=1e-5, weight_decay=0.01, **kw)
    adam = lambda ps, **how: Adam(ps, 1e-3, wd=0.01, **how)
    sgd_mom = lambda ps, **how: SGD(ps, 1e-2, mom=0.9, **how)
    adam_chain = lambda wd, avg, sqr, stat, step: lambda ps, **how: make_optimizer(ps, [wd, partial(avg, dampening=True), sqr, stat, step],
                                                                                   dict(lr=1e-3, mom=0.9, sqr_mom=0.99, eps=1e-5, wd=0.01), **how)
    chapter_adam = adam_chain(chapter_weight_decay, chapter_average_grad, chapter_average_sqr_grad, chapter_step_stat, chapter_adam_step)
    user_adam = adam_chain(user_weight_decay, user_average_grad, user_average_sqr_grad, chapter_step_stat, user_adam_step)
    filed_adam = adam_chain(user_weight_decay, filed_average_grad, user_average_sqr_grad, chapter_step_stat, filed_adam_step)
    chapter_sgd_mom = lambda ps, **how: make_optimizer(ps, [chapter_momentum_average, chapter_momentum_step], dict(lr=1e-2, mom=0.9), **how)
    user_sgd_mom = lambda ps, **how: make_optimizer(ps, [user_average_grad, user_momentum_step], dict(lr=1e-2, mom=0.9), **how)
    cases = [  # name, ours, [(baseline name, baseline, target small, target large)]
        ('Adam', adam, [('AdamW(fused=True)', adamw(fused=True), 0.5, 1.0), ('AdamW(foreach=True)', adamw(foreach=True), None, 1.0)]),
        ('SGD momentum', sgd_mom,
         [('SGD(fused=True)', lambda ps: optim.SGD(ps, 1e-2, momentum=0.9, fused=True), 0.5, 1.0),
          ('SGD(foreach=True)', lambda ps: optim.SGD(ps, 1e-2, momentum=0.9, foreach=True), None, 1.0)]),
        ('RMSProp', lambda ps, **how: RMSProp(ps, 1e-3, **how), [('RMSprop(foreach=True), no fused form', lambda ps: optim.RMSprop(ps, 1e-3, alpha=0.99, eps=1e-8, foreach=True), 1.0, 1.0)]),
        ('LAMB', lambda ps, **how: Lamb(ps, 1e-3, **how), [('AdamW(fused=True), torch has no LAMB', adamw(fused=True), None, None), ('AdamW(foreach=True)', adamw(foreach=True), 1.0, None)]),
        ("user's Adam callbacks", user_adam, [('exp_lib Adam (shipped)', adam, 1.2, 1.2), ('AdamW(fused=True)', adamw(fused=True), 0.5, None)]),
        ("user's SGD momentum callbacks", user_sgd_mom, [('exp_lib SGD momentum (shipped)', sgd_mom, 1.2, None)]),
        ("user's Adam callbacks, 16 when filed", filed_adam, [('exp_lib Adam (shipped)', adam, 1.2, None)]),
        ("chapter's Adam as printed", chapter_adam, [('exp_lib Adam (shipped)', adam, None, None), ('AdamW(fused=True)', adamw(fused=True), 0.5, None)]),
        ("chapter's SGD momentum as printed", chapter_sgd_mom, [('exp_lib SGD momentum (shipped)', sgd_mom, 1.2, None)]),
    ]
    sizes = [('160 tensors, 45k', partial(layer_params, 32), 50, True), ('160 tensors, 2.6M', partial(layer_params, 256), 5, False),
             ('6 tensors, 2.6M', few_large_params, 5, False)]
    rows = []
    for size, make_params, steps, small in sizes:
        for name, ours_make, baselines in cases:
            if size.startswith('6') and name not in ('Adam', 'SGD momentum', 'RMSProp', "user's Adam callbacks"): continue  # the issues' targets
            def stepper(make):
                opt = compiled_if_large(make, make_params())
                def run():
                    for _ in range(steps): opt.step()
                return run, opt
            ours, opt = stepper(ours_make)
            first = compile_seconds(opt)
            ours()
            assert flat_parts(opt) and not opt.per_tensor_cbs, f"{name}: the flat path is not in use"
            if getattr(opt, 'passes', None): rows.append((f'{name}: the step that compiles ({size}), seconds', first, 'report', None, None, 'seconds'))
            for bname, make, small_target, large_target in baselines:
                # Ours against one baseline at a time, each run right after the other's: at 2.6M the buffers are about the size of the L3 cache,
                # and a step run after a third optimizer (foreach's nine passes) starts from caches that one left, not from the baseline's.
                (t_ours, t), (_, r) = interleaved([ours, stepper(make)[0]], 3 * reps if small else reps)  # small: cheap, noisy
                rows.append((f'{name} step ({size})', t_ours / steps, bname, t / steps, small_target if small else large_target, 'max', r))
    return rows

def call_rows(reps):
    """What calling a compiled step costs beside a fused op, on tiny tensors (the call, not the work): warm, and right after streaming 52 MB
    (what an SGD-momentum step over 2.6M parameters reads and writes), which leaves the caches cold for the Python of the call. Through
    `torch.compile`'s wrapper, and straight into the code it made after dynamo's own guard check, as exp_lib's compiled step calls it."""
    p, g, m = (torch.randn(64) for _ in range(3))
    lr, mom = torch.tensor(0.01), torch.tensor(0.9)
    def sgd_momentum(p, g, m, lr, mom): m.mul_(mom).add_(g); p.add_(m * -lr)
    compiled = torch.compile(sgd_momentum, fullgraph=True, dynamic=False)
    compiled(p, g, m, lr, mom)
    straight = CompiledPass()  # exp_lib's compiled step's own call: straight into what torch.compile made, once dynamo's guards pass
    straight.compile(sgd_momentum)
    straight(p, g, m, lr, mom)
    calls = (lambda: compiled(p, g, m, lr, mom), lambda: straight(p, g, m, lr, mom),
             lambda: torch._fused_sgd_([p], [g], [m], weight_decay=0., momentum=0.9, lr=0.01, dampening=0., nesterov=False, maximize=False,
                                       is_first_step=False))
    junk, rows = torch.ones(2_624_000 * 5), []
    for f in calls: f()
    for name, flush in (('warm', False), ('after 52 MB streamed', True)):
        times = [[] for _ in calls]
        for _ in range(10 * reps):
            for t, f in zip(times, calls):
                if flush: junk.mul_(1.)
                else: f()
                start = time.perf_counter(); f(); t.append(time.perf_counter() - start)
        fused = statistics.median(times[2])
        rows.append((f'one call of a torch.compiled SGD-momentum step, tiny tensors, {name}', statistics.median(times[0]),
                     'torch._fused_sgd_ op, the same', fused, None, 'max'))
        rows.append((f'the same, straight into the code torch.compile made (as exp_lib does{"" if straight.shortcut else ": not shown by this torch"}), {name}',
                     statistics.median(times[1]),
                     'torch._fused_sgd_ op, the same', fused, None, 'max'))
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
    (ours, base), (_, ratio) = interleaved([drain(ours_dl), drain(torch_dl)], reps)
    return [('DataLoader epoch, shuffled (20k, bs 64)', ours, 'torch DataLoader(TensorDataset)', base, 1 / 5, 'max', ratio)]

def bench_syncs(_reps, device='cpu', opt_func=optim.SGD):
    "4. Tensor->Python conversions (of tensors on the device trained on) during a fit: they must not grow with the number of batches."
    def count(n):
        x, y, bs = task(n)
        xv, yv, _ = task(n // 4)
        learn = Learner(mlp(), DataBunch(DataLoader(Dataset(x, y), bs, shuffle=True), DataLoader(Dataset(xv, yv), 2 * bs)),
                        opt_func=opt_func, lr=0.1, metrics=[accuracy], progress=False, logger=lambda row: None, device=device)
        with SyncCounter(device) as c: learn.fit(2)
        return c.n, 2 * (len(learn.data.train_dl) + len(learn.data.valid_dl))
    (small, nb_small), (big, nb_big) = count(2_000), count(20_000)
    per_batch = (big - small) / (nb_big - nb_small)
    where = '' if device == 'cpu' else f'{device}, {getattr(opt_func, "__name__", "")}: '
    return [(f'{where}syncs per batch ({big} syncs in {nb_big} batches, {small} in {nb_small})', per_batch, 'none per batch', 1.0, 0, 'abs')]

def ddp_model(big): return nn.Sequential(nn.Linear(784, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 10)) if big else mlp()

class NoSync(Callback):
    "Every training batch under DDP's no_sync: the same work without the gradient all-reduce (to see what communication costs)."
    run_after = DistributedTrainer
    def before_batch(self):
        if self.learn.training: self.ctx = self.learn.model.no_sync(); self.ctx.__enter__()
    def after_batch(self):
        if self.learn.training: self.ctx.__exit__(None, None, None)

def epoch_seconds(bs, big, reps, cbs=()):
    "Median seconds of one epoch (20k items, SGD), after a warm-up epoch, in this process (distributed if a group is up)."
    x, y, _ = task()
    torch.manual_seed(0)
    learn = Learner(ddp_model(big), DataBunch(DataLoader(Dataset(x, y), bs, shuffle=True), None), opt_func=optim.SGD, lr=0.01,
                    progress=False, logger=lambda r: None, cbs=list(cbs), device='cpu')
    times = []
    with learn.distrib_ctx():
        for _ in range(reps + 1):
            if dist.is_initialized(): dist.barrier()
            start = time.perf_counter(); learn.fit(1); times.append(time.perf_counter() - start)
    return statistics.median(times[1:])

def ddp_rank(rank, tmp, big, reps, no_sync):
    torch.set_num_threads(1)
    dist.init_process_group('gloo', init_method=f'file://{tmp}/init', rank=rank, world_size=2)
    t = epoch_seconds(64, big, reps, [NoSync()] if no_sync else [])
    if rank == 0: (Path(tmp)/'t').write_text(str(t))
    gc.collect()  # a DDP wrapper freed after its process group aborts the process at exit (see 18_distributed)
    dist.destroy_process_group()

def two_processes(big, reps, no_sync=False):
    tmp = tempfile.mkdtemp()
    mp.spawn(ddp_rank, args=(tmp, big, reps, no_sync), nprocs=2, join=True)
    return float((Path(tmp)/'t').read_text())

def bench_ddp(reps):
    """5. One epoch of data-parallel training on 2 processes (one thread each, batch 64 each) against one process (one thread,
    batch 128: the same global batch): the lesson's MLP, and a 784-1024-1024-10 MLP with 20x the computation per item.
    The same 2-process epoch with every batch under no_sync shows how much of it is the gradient all-reduce."""
    reps = max(3, reps // 2)
    rows, threads = [], torch.get_num_threads()
    for big, name in ((False, 'MLP 784-50-10'), (True, 'MLP 784-1024-1024-10')):
        torch.set_num_threads(1)
        one = epoch_seconds(128, big, reps)
        torch.set_num_threads(threads)
        two, quiet = two_processes(big, reps), two_processes(big, reps, no_sync=True)
        rows.append((f'DDP epoch, {name}, 2 processes (comm {max(two - quiet, 0) / two:.0%})', two, '1 process, 1 thread, batch 128', one, None, 'max'))
    return rows

def bench_gpu(reps):
    """6. On a CUDA GPU: one epoch of the Learner against a hand-written loop, with the data in CPU memory (the Learner pins it; the loop
    copies its batches with .to(device), as most loops do) and on the GPU, and where the Learner's extra time goes (`where_the_time_goes`);
    optimizer steps against torch's fused AdamW and SGD and against the memory floor (160 tensors of 45k, 2.6M and 42M parameters in all,
    80 of 168M); syncs per batch, counting conversions of GPU tensors only (torch.optim's AdamW keeps its step counts on the CPU: those
    make nobody wait)."""
    if not torch.cuda.is_available():
        print("no CUDA GPU here: no GPU rows", file=sys.stderr)
        return
    yield from epoch_rows(reps, 'cuda', 'cpu') + epoch_rows(reps, 'cuda', 'cuda')
    # the Learner's epoch misses its target on the H200 (1.11-1.14): say where the time goes, and on this machine's CPU beside it
    for device, where in (('cuda', 'cpu'), ('cuda', 'cuda'), ('cpu', 'cpu')):
        try: where_the_time_goes(reps, device, where)
        except Exception as e: print(f'  (could not say where the time goes: {e!r:.300})\n')
    adamw = lambda ps: optim.AdamW(ps, 1e-3, betas=(0.9, 0.99), eps=1e-5, weight_decay=0.01, fused=True)
    cases = [('Adam', lambda ps, **how: Adam(ps, 1e-3, wd=0.01, **how), 'AdamW(fused=True)', adamw, 28),
             ('SGD momentum', lambda ps, **how: SGD(ps, 1e-2, mom=0.9, **how), 'SGD(fused=True)', lambda ps: optim.SGD(ps, 1e-2, momentum=0.9, fused=True), 20)]
    # issue 28: at most 0.35 of fused when small, at most 1.15 of the memory floor when large (a copy of as many bytes, timed in the same run)
    for width, n, steps, size, target in ((32, 40, 50, '160 tensors, 45k', 0.35), (256, 40, 20, '160 tensors, 2.6M', 0.35),
                                          (1024, 40, 10, '160 tensors, 42M', 1.15), (2896, 20, 5, '80 tensors, 168M', 1.15)):
        for name, ours_make, bname, base_make, bytes_per_param in cases:
            def stepper(make):
                opt = compiled_if_large(make, layer_params(width, n, device='cuda'))
                first = compile_seconds(opt, torch.cuda.synchronize)
                def run():
                    for _ in range(steps): opt.step()
                    torch.cuda.synchronize()
                return run, opt, first
            (ours, opt, first), (base, *_) = stepper(ours_make), stepper(base_make)
            if getattr(opt, 'passes', None): yield (f'GPU: {name}: the step that compiles ({size}), seconds', first, 'report', None, None, 'seconds')
            numel = sum(p.numel() for p in layer_params(width, n, device='cuda'))
            src = torch.ones(numel * bytes_per_param // 8, device='cuda'); dst = torch.empty_like(src)  # a copy reads and writes 4 bytes a number
            def floor():
                for _ in range(steps): dst.copy_(src)
                torch.cuda.synchronize()
            times, ratios = interleaved([ours, base, floor], reps)
            small = target < 1
            yield (f'GPU: {name} step ({size})', times[0] / steps, bname, times[1] / steps, target if small else None, 'max', ratios[1])
            yield (f'GPU: {name} step ({size})', times[0] / steps, f'memory floor ({bytes_per_param} B/param copied)', times[2] / steps,
                   None if small else target, 'max', ratios[2])
    yield from bench_syncs(reps, 'cuda', optim.AdamW) + bench_syncs(reps, 'cuda', Adam)

def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument('--reps', type=int, default=11, help='timed repetitions per measurement (median reported)')
    ap.add_argument('--only', choices=['fit', 'opt', 'loader', 'syncs', 'ddp', 'gpu'], help='run one benchmark only')
    args = ap.parse_args()
    reps = args.reps
    if reps < 1: ap.error(f"--reps is the number of timed rounds of each measurement, at least 1; got {reps}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, medians of {reps} rounds after warm-up ({3 * reps} for the 45k optimizer steps)\n")
    # each row is printed as soon as it is measured: a run cut short (a GPU lent for minutes) keeps what it measured
    w, ok_all, n = 95, True, 0
    print(f"{'measurement':{w}}  {'ours':>10}  {'baseline':36}  {'base':>10}  {'ratio':>6}  {'target':>8}  result", flush=True)
    for b in (bench_fit, bench_opt, bench_loader, bench_syncs, bench_ddp, bench_gpu):
        if args.only and b.__name__ != f'bench_{args.only}': continue
        print(f"running {b.__name__}...", file=sys.stderr, flush=True)
        for n, row in enumerate(b(reps), n + 1): ok_all &= print_row(row, w)
    if not n:
        print('\nnothing measured')
        return 0
    print('\nall targets met' if ok_all else '\nsome targets missed')
    return 0 if ok_all else 1

def print_row(row, w):
    "Print one row of the table; whether it meets its target."
    name, ours, bname, base, target, kind, *paired = row
    if kind == 'seconds':
        print(f"{name:{w}}  {ours:9.2f}s  {'':36}  {'':>10}  {'':>6}  {'report':>8}  pass", flush=True)
        return True
    if kind == 'abs':
        ok, tgt = ours <= target, f'= {target}'
        print(f"{name:{w}}  {ours:10.3f}  {bname:36}  {'':>10}  {'':>6}  {tgt:>8}  {'pass' if ok else 'FAIL'}", flush=True)
        return ok
    ratio = paired[0] if paired else ours / base
    ok = target is None or ratio <= target
    tgt = 'report' if target is None else f'<= {target:g}'
    print(f"{name:{w}}  {ours*1e3:8.3f}ms  {bname:36}  {base*1e3:8.3f}ms  {ratio:6.2f}  {tgt:>8}  {'pass' if ok else 'FAIL'}", flush=True)
    return ok

if __name__ == '__main__': sys.exit(main())
