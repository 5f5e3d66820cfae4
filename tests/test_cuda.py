"""What only a CUDA GPU can show: state and data on the device, resuming bitwise with dropout drawn on the GPU, mixed precision there,
one process per GPU, NCCL, a learner exported on a GPU used where there is none, and the optimizers against torch.optim on the GPU.
`make test-gpu` runs them on a GPU machine; elsewhere they are skipped, and the skip says why."""
import os, subprocess, sys
from functools import partial
import pytest, torch
from torch import nn

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU: run make test-gpu on a machine with one')

from exp_lib.all import (Learner, DataBunch, Dataset, DataLoader, Callback, CancelFitException, ClassificationInterpretation, SyncCounter,
                         DistributedTrainer, OptimWrapper, Adam, SGD, RMSProp, ranger, accuracy, get_mnist, get_dls)

QUIET = dict(progress=False, logger=lambda r: None)

def data(device='cpu', n=2000, n_valid=500, bs=64):
    "MNIST sample tensors on `device`, in exp_lib loaders: the first `n` training and `n_valid` validation images."
    x, y, xv, yv = get_mnist()
    train, valid = Dataset(x[:n].to(device), y[:n].to(device)), Dataset(xv[:n_valid].to(device), yv[:n_valid].to(device))
    return DataBunch(*get_dls(train, valid, bs), c=10)

def mlp(p=0.): return nn.Sequential(nn.Linear(784, 50), nn.ReLU(), nn.Dropout(p), nn.Linear(50, 10))

def weights(learn): return [p.detach().cpu().clone() for p in learn.model.parameters()]

def same(a, b): return all(torch.equal(x, y) for x, y in zip(a, b))

class StopAfter(Callback):
    "Ends the fit after `n` epochs, once the epoch is recorded (as exp_lib_train's checkpoint is written)."
    order = 90
    def __init__(self, n): self.n = n
    def after_epoch(self):
        if self.learn.epoch + 1 == self.n: raise CancelFitException()

def test_a_run_with_dropout_resumed_on_the_gpu_equals_the_run_that_never_stopped(tmp_path):
    "The checkpoint is loaded while the model is still on the CPU: the optimizer state must follow the model to the GPU, and the GPU's generator (dropout) must be restored."
    def learner(seed):
        torch.manual_seed(seed)
        return Learner(mlp(0.3), data(), metrics=[accuracy], **QUIET)
    whole = learner(0); whole.fit_one_cycle(4, 1e-2)
    first = learner(0); first.fit_one_cycle(4, 1e-2, cbs=[StopAfter(2)]); first.save(tmp_path/'ck.pt')
    ckpt = torch.load(tmp_path/'ck.pt', weights_only=True)
    assert first.device.type == 'cuda' and len(ckpt['rng']['cuda']) == torch.cuda.device_count()
    resumed = learner(7).load(tmp_path/'ck.pt')
    resumed.fit_one_cycle(4, 1e-2, start_epoch=2)
    assert same(weights(resumed), weights(whole)), 'bitwise, as the run that never stopped'
    assert [r['valid_loss'] for r in resumed.avg_stats.history] == [r['valid_loss'] for r in whole.avg_stats.history]
    resumed.save(tmp_path/'after.pt')  # its record: the checkpoint's batches on the CPU, the resumed fit's on the GPU
    recorded = torch.load(tmp_path/'after.pt', weights_only=True)['cbs']['recorder']['losses']
    assert torch.equal(recorded, torch.stack(whole.recorder.losses).cpu()) and torch.equal(resumed.recorder.smooth_losses, whole.recorder.smooth_losses)
    del ckpt['rng']['cuda']; torch.save(ckpt, tmp_path/'no_cuda_rng.pt')
    other = learner(7).load(tmp_path/'no_cuda_rng.pt')
    torch.cuda.manual_seed_all(123)
    other.fit_one_cycle(4, 1e-2, start_epoch=2)
    assert not same(weights(other), weights(whole)), "without the GPU's generator the dropout masks differ"

def state_devices(opt):
    "The device types of an optimizer's state tensors (PyTorch's step counts aside: PyTorch keeps them on the CPU)."
    inner = getattr(opt, 'opt', opt)
    res = {v.device.type for s in inner.state.values() for k, v in s.items() if isinstance(v, torch.Tensor) and k != 'step'}
    return res | ({s.device.type for s in opt.slow} if getattr(opt, 'slow', None) else set())

@pytest.mark.parametrize('opt_func', [Adam, partial(Adam, flat=False), ranger, partial(OptimWrapper, opt=torch.optim.AdamW)],
                         ids=['flat', 'per-parameter', 'lookahead', 'torch'])
def test_optimizer_state_follows_the_model_from_fit_to_fit(opt_func):
    torch.manual_seed(0)
    learn = Learner(mlp(), data(), opt_func=opt_func, lr=1e-3, metrics=[accuracy], **QUIET)
    for device in ('cuda', 'cpu', 'cuda'):
        learn.device = device
        learn.fit(1)
        assert state_devices(learn.opt) == {torch.device(device).type}, (device, state_devices(learn.opt))
    learn.model.cpu()
    learn.fit(1)
    assert state_devices(learn.opt) == {'cuda'} and learn.avg_stats.history[-1]['accuracy'] > 0.7

def test_a_checkpoint_moves_between_gpu_and_cpu(tmp_path):
    torch.manual_seed(0)
    gpu = Learner(mlp(), data(), **QUIET); gpu.fit(1); gpu.save(tmp_path/'gpu.pt')
    cpu = Learner(mlp(), data(), device='cpu', **QUIET).load(tmp_path/'gpu.pt')
    assert state_devices(cpu.opt) == {'cpu'}
    a, b = gpu.get_preds()[0], cpu.get_preds()[0]
    assert torch.allclose(a, b, rtol=0, atol=1e-5), (a - b).abs().max()
    cpu.fit(1); cpu.save(tmp_path/'cpu.pt')
    back = Learner(mlp(), data(), **QUIET).load(tmp_path/'cpu.pt')
    back.fit(1)
    assert state_devices(back.opt) == {'cuda'} and back.avg_stats.history[-1]['valid_loss'] < 1

class Arrival(Callback):
    "Where each batch comes from, before `MoveToDevice` (order -20) moves it."
    order = -30
    def before_fit(self): self.devices, self.pinned = set(), set()
    def before_batch(self): self.devices.add(self.learn.xb[0].device.type); self.pinned.add(self.learn.xb[0].is_pinned())

def test_data_on_the_gpu_is_indexed_there_and_trains_as_data_on_the_cpu():
    runs = {}
    for where in ('cuda', 'cpu'):
        torch.manual_seed(0)
        arrival = Arrival()
        learn = Learner(mlp(), data(where), metrics=[accuracy], cbs=[arrival], **QUIET)
        with SyncCounter() as syncs: learn.fit(2)
        runs[where] = learn, arrival, syncs.n
    (on_gpu, gpu_arrival, gpu_syncs), (on_cpu, cpu_arrival, cpu_syncs) = runs['cuda'], runs['cpu']
    assert gpu_arrival.devices == {'cuda'}, 'batches built on the GPU: no copy per batch'
    assert cpu_arrival.devices == {'cpu'} and cpu_arrival.pinned == {True}, 'CPU batches built in pinned memory'
    assert not on_cpu.data.train_dl.pin_memory, 'the fit put the loader back as it was'
    assert same(weights(on_gpu), weights(on_cpu)), 'the same batches, in the same order'
    assert gpu_syncs == cpu_syncs, (gpu_syncs, cpu_syncs)
    preds, targs = on_gpu.get_preds()
    assert preds.device.type == targs.device.type == 'cpu' and len(preds) == 500
    x = on_gpu.data.valid_ds.x[0]
    assert x.device.type == 'cuda' and on_gpu.predict(x)[1] == preds[0].argmax()
    interp = ClassificationInterpretation.from_learner(on_gpu)
    assert int(interp.confusion_matrix().sum()) == 500

def test_predictions_come_back_in_dataset_order_whatever_device_the_sampler_draws_on():
    "A sampler of the user's may draw its indices on the GPU: get_preds still puts its predictions, on the CPU, back in dataset order."
    torch.manual_seed(0)
    learn = Learner(mlp(), data('cuda'), **QUIET)
    learn.fit(1)
    ds = learn.data.valid_ds
    drawn = DataLoader(ds, sampler=list(torch.randperm(len(ds), device='cuda').split(64)))
    (preds, targs), (in_order, targs_in_order) = learn.get_preds(dl=drawn), learn.get_preds()
    assert torch.equal(targs, targs_in_order) and torch.equal(targs, ds.y.cpu())
    assert torch.allclose(preds, in_order, rtol=0, atol=1e-5), (preds - in_order).abs().max()

def test_the_lessons_losses_index_on_the_targets_device():
    "exp_lib's nll (and so cross_entropy) picks each row's target on the GPU: a row index made on the CPU is a copy, and a wait, at every batch."
    from exp_lib.all import nll, cross_entropy, log_softmax
    torch.manual_seed(0)
    x, y = torch.randn(64, 10, device='cuda') * 5, torch.randint(0, 10, (64,), device='cuda')
    try:
        torch.cuda.set_sync_debug_mode('error')
        ours = cross_entropy(x, y), nll(log_softmax(x), y)
    finally: torch.cuda.set_sync_debug_mode('default')
    for o in ours: torch.testing.assert_close(o, nn.functional.cross_entropy(x, y))

class NoWaits(Callback):
    """From a fit's third training batch on, a CUDA call that makes the CPU wait for the GPU raises, from the start of each batch (before any
    other callback's `before_batch`) to `NoWaitsEnd`: the first two build what the fit keeps (flat buffers, the probe of the callbacks)."""
    order = -1000
    def before_fit(self): self.seen = 0
    def before_batch(self):
        if not self.learn.training: return
        self.seen += 1
        if self.seen > 2: torch.cuda.set_sync_debug_mode('error')

class NoWaitsEnd(Callback):
    "Ends `NoWaits`' check after every other callback's `after_batch`."
    order = 1000
    def after_batch(self): torch.cuda.set_sync_debug_mode('default')

@pytest.mark.parametrize('where', ['cuda', 'cpu'])
@pytest.mark.parametrize('opt_func, lr', [(torch.optim.SGD, 0.1), (partial(SGD, mom=0.9), 1e-2), (Adam, 1e-3)],
                         ids=['torch SGD', 'exp_lib SGD', 'exp_lib Adam'])
def test_no_training_batch_makes_the_cpu_wait_for_the_gpu(where, opt_func, lr):
    """What SyncCounter cannot see (a copy to the CPU, a sort, a mask) either: torch.cuda.set_sync_debug_mode raises at any synchronizing
    call, in the batches (the model, the loss, the optimizer, the callbacks) and in the loader between them (pinned CPU batches too)."""
    torch.manual_seed(0)
    learn = Learner(mlp(), data(where), opt_func=opt_func, lr=lr, metrics=[accuracy], cbs=[NoWaits(), NoWaitsEnd()], logger=lambda r: None)  # bars on
    try:
        learn.fit(2)
        dl = learn.data.train_dl
        dl.pin_memory = where == 'cpu'
        it = iter(dl)
        next(it)  # an epoch's indices go to the data's device in one copy, before its first batch
        torch.cuda.set_sync_debug_mode('error')
        moved = [t.to('cuda', non_blocking=True) for b in it for t in b]
    finally: torch.cuda.set_sync_debug_mode('default')
    assert learn.avg_stats.history[-1]['accuracy'] > 0.7 and len(moved) == 2 * (len(dl) - 1)

def test_a_compiled_step_waits_for_nothing_while_its_hypers_change():
    """A one-cycle schedule changes lr and mom at every batch: the compiled step writes them into the tensors its pass reads, on the GPU,
    with no copy to or from the CPU, and compiles nothing more."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 5)).cuda()
    opt = Adam(model.parameters(), 0.01, wd=0.01, compile=True)
    x, y = torch.randn(16, 20, device='cuda'), torch.randint(0, 5, (16,), device='cuda')
    def step(i):
        for pg in opt.param_groups: pg['lr'], pg['mom'] = 0.01 * (1 + i % 3), 0.9 - 0.02 * (i % 4)
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step(); opt.zero_grad()
    for i in range(3): step(i)  # the state made (Adam's first step), the pass compiled (its second)
    graphs, before = sum(c.graphs_made for c in opt.passes.values()), [p.detach().clone() for p in model.parameters()]
    try:
        torch.cuda.set_sync_debug_mode('error')
        for i in range(3, 12): step(i)
    finally: torch.cuda.set_sync_debug_mode('default')
    assert opt.passes and all(c.shortcut_ok and c.shortcut for c in opt.passes.values()), 'stepping straight into the compiled code'
    assert sum(c.graphs_made for c in opt.passes.values()) == graphs, 'nothing compiled anew'
    assert not same(before, [p.detach() for p in model.parameters()]), 'the weights moved'

def test_a_torch_dataloader_of_gpu_tensors_trains():
    x, y, xv, yv = get_mnist()
    tds = lambda a, b: torch.utils.data.TensorDataset(a.cuda(), b.cuda())
    dls = DataBunch(torch.utils.data.DataLoader(tds(x[:2000], y[:2000]), 64, shuffle=True),
                    torch.utils.data.DataLoader(tds(xv[:500], yv[:500]), 128), c=10)
    learn = Learner(mlp(), dls, metrics=[accuracy], **QUIET)
    learn.fit(2)
    assert learn.avg_stats.history[-1]['accuracy'] > 0.7

@pytest.mark.parametrize('precision', ['to_bf16', 'to_fp16'])
def test_mixed_precision_on_the_gpu_trains_as_float32(precision):
    def run(p):
        torch.manual_seed(0)
        learn = Learner(mlp(), data(n=4000, n_valid=1000), metrics=[accuracy], lr=3e-3, **QUIET)
        if p: getattr(learn, p)()
        learn.fit(2)
        return learn
    fp32, half = run(None), run(precision)
    assert abs(half.avg_stats.history[-1]['accuracy'] - fp32.avg_stats.history[-1]['accuracy']) < 0.02, (half.avg_stats.history, fp32.avg_stats.history)
    if precision == 'to_fp16': assert half.mixed_precision.scaler._device == 'cuda'

def test_more_processes_than_gpus_is_one_line_and_exit_2(cli, tmp_path):
    n = torch.cuda.device_count()
    r = cli('--nproc', str(n + 1), '--epochs', '1', '--out', tmp_path, '--no-progress')
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert f'--nproc {n + 1} starts one process per GPU, and this machine has {n} GPU(s)' in r.stderr and '--device cpu' in r.stderr, r.stderr
    assert 'epoch' not in r.stdout and not (tmp_path/'history.csv').exists()

NCCL = """
import sys, torch, torch.distributed as dist
from torch import nn
from exp_lib.all import Learner, DataBunch, Dataset, DataLoader, DistributedTrainer, get_mnist, get_dls
dist.init_process_group('nccl', init_method=f'file://{sys.argv[1]}', rank=0, world_size=1)
x, y, xv, yv = get_mnist()
def run(cbs):
    torch.manual_seed(0)
    learn = Learner(nn.Sequential(nn.Linear(784, 50), nn.ReLU(), nn.Linear(50, 10)), DataBunch(*get_dls(Dataset(x[:1000], y[:1000]), Dataset(xv[:300], yv[:300]), 64)),
                    progress=False, logger=lambda r: None)
    with learn.distrib_ctx(): learn.fit(2, cbs=cbs)
    return learn
ddp, plain = run([DistributedTrainer()]), run([])
print(dist.get_backend(), max(float((a - b).abs().max()) for a, b in zip(ddp.model.parameters(), plain.model.parameters())),
      ddp.avg_stats.history[-1]['valid_loss'] - plain.avg_stats.history[-1]['valid_loss'])
del ddp, plain
import gc; gc.collect()  # a DDP wrapper freed after its process group aborts the process
dist.destroy_process_group()
"""

def test_nccl_data_parallel_on_one_process_trains_as_one_process(tmp_path):
    r = subprocess.run([sys.executable, '-c', NCCL, str(tmp_path/'init')], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    backend, wdiff, vdiff = r.stdout.split()[-3:]
    assert backend == 'nccl' and float(wdiff) <= 1e-6 and abs(float(vdiff)) <= 1e-6, r.stdout

PREDICT = """
import sys, torch
from exp_lib.all import load_learner
assert not torch.cuda.is_available()
learn = load_learner(sys.argv[1])
torch.save(torch.stack([learn.predict(x)[2] for x in torch.load(sys.argv[2], weights_only=True)]), sys.argv[3])
"""

def test_a_learner_exported_on_the_gpu_predicts_where_there_is_none(tmp_path):
    torch.manual_seed(0)
    learn = Learner(mlp(), data(), metrics=[accuracy], **QUIET)
    learn.fit(1)
    learn.export(tmp_path/'export.pkl')
    xs = data().valid_ds.x[:5]
    torch.save(xs, tmp_path/'xs.pt')
    r = subprocess.run([sys.executable, '-c', PREDICT, *(str(tmp_path/f) for f in ('export.pkl', 'xs.pt', 'probs.pt'))],
                       capture_output=True, text=True, timeout=300, env={**os.environ, 'CUDA_VISIBLE_DEVICES': ''})
    assert r.returncode == 0, r.stderr[-3000:]
    there, here = torch.load(tmp_path/'probs.pt', weights_only=True), torch.stack([learn.predict(x)[2] for x in xs])
    assert torch.allclose(there, here, rtol=0, atol=1e-5), (there - here).abs().max()

@pytest.mark.parametrize('flat', [True, False, 'compiled'])
@pytest.mark.parametrize('ours, theirs', [
    (lambda g, **how: Adam(g, 0.01, wd=0.01, **how), lambda g: torch.optim.AdamW(g, 0.01, betas=(0.9, 0.99), eps=1e-5, weight_decay=0.01)),
    (lambda g, **how: SGD(g, 0.1, mom=0.9, **how), lambda g: torch.optim.SGD(g, 0.1, momentum=0.9)),
    (lambda g, **how: RMSProp(g, 0.01, **how), lambda g: torch.optim.RMSprop(g, 0.01, alpha=0.99, eps=1e-8)),
], ids=['adamw', 'sgd-momentum', 'rmsprop'])
def test_optimizers_match_torch_optim_on_the_gpu(ours, theirs, flat):
    def trajectory(make, **how):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 5)).cuda()
        opt = make([{'params': list(model[0].parameters()), 'lr': 0.01}, {'params': list(model[2].parameters()), 'lr': 0.003}], **how)  # compiled: every part
        g = torch.Generator('cuda').manual_seed(1)
        for _ in range(30):
            nn.functional.cross_entropy(model(torch.randn(16, 20, device='cuda', generator=g)), torch.randint(0, 5, (16,), device='cuda', generator=g)).backward()
            opt.step(); opt.zero_grad()
        return [p.detach() for p in model.parameters()]
    a, b = trajectory(ours, flat=bool(flat), compile=flat == 'compiled'), trajectory(theirs)
    torch.manual_seed(0)
    start = [p.detach() for p in nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 5)).parameters()]
    assert max(float((x - y).abs().max()) for x, y in zip(a, b)) <= 1e-6
    assert max(float((x.cpu() - y).abs().max()) for x, y in zip(a, start)) > 1e-3, 'the weights moved'

def test_a_compiled_optimizer_resumed_on_the_gpu_is_the_run_that_never_stopped():
    "Adam compiled for every part, its state saved at step 7 and loaded into a new compiled optimizer: the same weights, bit for bit."
    import copy
    def run(resume_at=None):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 5)).cuda()
        opt = Adam(model.parameters(), 0.01, wd=0.01, compile=True)
        g = torch.Generator('cuda').manual_seed(1)
        for i in range(15):
            for pg in opt.param_groups: pg['lr'] = 0.01 * (1 + i % 3)
            nn.functional.cross_entropy(model(torch.randn(16, 20, device='cuda', generator=g)), torch.randint(0, 5, (16,), device='cuda', generator=g)).backward()
            opt.step(); opt.zero_grad()
            if i == resume_at:
                sd = copy.deepcopy(opt.state_dict())
                opt = Adam(model.parameters(), 0.01, wd=0.01, compile=True); opt.load_state_dict(sd)
        assert opt.passes and all(c.fn is not None for c in opt.passes.values()), 'compiled'
        assert all(c.shortcut_ok and c.shortcut for c in opt.passes.values()), 'stepping straight into the code torch.compile made, as on the CPU'
        return weights(type('L', (), {'model': model}))
    assert same(run(), run(resume_at=7))

def test_an_lstm_keeps_its_weights_in_cudnns_buffer():
    "Moved out of cuDNN's buffer by flat optimizer buffers, an LSTM's weights made PyTorch warn and copy them back at every call."
    import warnings
    torch.manual_seed(0)
    lstm = nn.LSTM(8, 16, batch_first=True).cuda()
    home, w0 = lstm.weight_ih_l0.untyped_storage().data_ptr(), lstm.weight_ih_l0.detach().clone()
    opt = Adam(lstm.parameters(), 1e-2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        for _ in range(3):
            out, _ = lstm(torch.randn(4, 5, 8, device='cuda'))
            out.sum().backward(); opt.step(); opt.zero_grad()
    assert not [w for w in caught if 'contiguous chunk' in str(w.message)], [str(w.message) for w in caught]
    assert {p.untyped_storage().data_ptr() for p in lstm.parameters()} == {home} and not torch.equal(lstm.weight_ih_l0, w0)

def test_a_compiled_model_trains_in_a_learner():
    torch.manual_seed(0)
    learn = Learner(torch.compile(mlp()), data(), metrics=[accuracy], lr=3e-3, **QUIET)
    learn.fit(2)
    assert learn.avg_stats.history[-1]['accuracy'] > 0.8
