"""Files and faults a user can trust (issue 44), tried as an attacker and as bad luck would: a data file that would run code, two runs on
one folder, a kill while files are written, flipped bytes in checkpoints and exports, non-finite gradients and data, a full disk,
errors inside the processes of `--nproc`, a Ctrl-C while the command imports."""
import errno, gzip, os, pickle, random, signal, subprocess, sys, textwrap, time, warnings
from pathlib import Path
import numpy as np
import pytest, torch
from torch import nn
from exp_lib.all import Learner, DataBunch, Dataset, DataLoader, get_dls, load_learner, Adam, SGD, RMSProp, flat_parts

ENV = {**os.environ, 'MPLBACKEND': 'Agg', 'OMP_NUM_THREADS': '1'}

def one_line(r):
    "The stderr of a finished command, which must be one line."
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr[-3000:]
    return lines[0]

def mnist_pkl(path, x_train, y_train, x_valid, y_valid):
    "A file laid out as the course's mnist.pkl.gz: ((x, y) train, (x, y) valid, (x, y) test), numpy arrays."
    with gzip.open(path, 'wb') as f: pickle.dump(((x_train, y_train), (x_valid, y_valid), (x_valid, y_valid)), f, protocol=2)
    return path

def small_mnist(tmp, scale=1., nan_in=None):
    "A 600/100-item MNIST-like file; `nan_in` ('train' or 'valid') puts one NaN pixel in that set."
    g = np.random.default_rng(0)
    xt, xv = g.random((600, 784), dtype=np.float32) * scale, g.random((100, 784), dtype=np.float32) * scale
    if nan_in == 'train': xt[123, 45] = np.nan
    if nan_in == 'valid': xv[70, 45] = np.nan
    return mnist_pkl(tmp/f'mnist_{scale:g}_{nan_in}.pkl.gz', xt, g.integers(0, 10, 600), xv, g.integers(0, 10, 100))

# 1. A data file runs no code

class Payload:
    def __init__(self, marker): self.marker = marker
    def __reduce__(self): return os.system, (f"touch {self.marker}",)

@pytest.mark.parametrize('how', ['--data', 'EXP_LIB_DATA'])
def test_a_crafted_data_file_runs_nothing(cli, tmp_path, how):
    evil = tmp_path/'mnist.pkl.gz'
    with gzip.open(evil, 'wb') as f: pickle.dump(((Payload(tmp_path/'ran'), np.zeros(3)), (np.zeros((3, 784)), np.zeros(3))), f)
    if how == '--data': r = cli('--data', evil, '--out', tmp_path/'out', '--no-progress')
    else: r = subprocess.run([sys.executable, '-m', 'exp_lib.train', '--out', str(tmp_path/'out')], env={**ENV, 'EXP_LIB_DATA': str(evil)},
                             capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and f"is not the course's MNIST pickle: it asks to run {os.system.__module__}.system" in one_line(r)
    assert not (tmp_path/'ran').exists(), 'the payload ran'

# 2. Exports: a damaged or foreign file is one ValueError

def trained_learner():
    torch.manual_seed(0)
    x, y = torch.randn(64, 6), torch.randint(0, 3, (64,))
    learn = Learner(nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)), DataBunch(*get_dls(Dataset(x[:48], y[:48]), Dataset(x[48:], y[48:]), 16)),
                    progress=False, logger=lambda r: None)
    learn.fit(1)
    return learn

def test_a_damaged_export_is_one_value_error(tmp_path):
    learn = trained_learner()
    learn.export(tmp_path/'good.pkl')
    good = (tmp_path/'good.pkl').read_bytes()
    rng = random.Random(0)
    cases = [good[:n] for n in (0, 10, len(good) // 3, len(good) - 1)] + [os.urandom(len(good)), b'\x80\x04' + os.urandom(300)]
    cases += [good[:i] + bytes([good[i] ^ (1 << rng.randrange(8))]) + good[i + 1:] for i in rng.sample(range(len(good)), 80)]
    loaded = 0
    for n, bad in enumerate(cases):
        (tmp_path/'bad.pkl').write_bytes(bad)
        try: other = load_learner(tmp_path/'bad.pkl', trusted=True)
        except ValueError as e: assert 'bad.pkl' in str(e), e; continue
        loaded += 1  # a byte torch.load never reads (a zip timestamp, a CRC it does not check): the very learner that was exported
        assert all(torch.equal(a, b) for a, b in zip(other.model.state_dict().values(), learn.model.state_dict().values())), n
    assert loaded < 40, loaded

# 3. Checkpoints: a flipped byte never loads other weights

def test_a_flipped_byte_in_a_checkpoint_loads_nothing_else(tmp_path):
    learn = trained_learner()
    learn.save(tmp_path/'good.pt')
    good = (tmp_path/'good.pt').read_bytes()
    saved = {k: v.clone() for k, v in learn.model.state_dict().items()}
    rng, errors = random.Random(1), 0
    for i in rng.sample(range(len(good)), 200):
        (tmp_path/'bad.pt').write_bytes(good[:i] + bytes([good[i] ^ (1 << rng.randrange(8))]) + good[i + 1:])
        for p in learn.model.parameters(): p.data.fill_(7.)  # what a failed load must leave as it is
        try: learn.load(tmp_path/'bad.pt')
        except ValueError as e:
            errors += 1
            assert 'bad.pt' in str(e)
            assert all((p == 7.).all() for p in learn.model.parameters()), f'byte {i}: the learner changed before the error'
            continue
        assert all(torch.equal(v, saved[k]) for k, v in learn.model.state_dict().items()), f'byte {i}: other weights loaded'
    assert errors > 150, errors

# 4. Non-finite gradients step as torch.optim's do

@pytest.mark.parametrize('g', [float('nan'), float('inf'), -float('inf'), 1e38])
@pytest.mark.parametrize('ours,theirs', [
    (lambda ps: Adam(ps, 1e-3, wd=0.), lambda ps: torch.optim.AdamW(ps, 1e-3, betas=(0.9, 0.99), eps=1e-5, weight_decay=0.)),
    (lambda ps: SGD(ps, 0.1), lambda ps: torch.optim.SGD(ps, 0.1)),
    (lambda ps: RMSProp(ps, 1e-3), lambda ps: torch.optim.RMSprop(ps, 1e-3, alpha=0.99, eps=1e-8))], ids=['adam', 'sgd', 'rmsprop'])
def test_a_non_finite_gradient_steps_as_torch_optim_does(ours, theirs, g):
    res = []
    for make in (ours, theirs):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(5, 4), nn.Linear(4, 2))
        opt = make(list(model.parameters()))
        for _ in range(2):
            for p in model.parameters(): p.grad = torch.full_like(p, g)
            opt.step()
        res.append([p.detach().clone() for p in model.parameters()])
        if hasattr(opt, 'per_tensor_cbs'): assert flat_parts(opt) and not opt.per_tensor_cbs, 'the group left its flat buffers'
    for a, b in zip(*res): assert torch.allclose(a, b, rtol=1e-5, atol=1e-7, equal_nan=True), (a, b)

# 5. The cause of a NaN, in one line

def test_inputs_a_million_million_times_too_large_are_one_line(cli, tmp_path):
    "The report's run: the optimizers crashed on the gradients; stepping as torch's, the run trained to a loss of 1e29 and exit 0."
    r = cli('--data', small_mnist(tmp_path, scale=1e30), '--out', tmp_path/'out', '--no-progress', '--epochs', '1')
    assert r.returncode == 2 and "images of" in one_line(r) and "reach 1e+30, where MNIST's pixels lie in [0, 1]" in r.stderr, r.stderr
    assert not (tmp_path/'out').exists()

@pytest.mark.parametrize('where', ['train', 'valid'])
def test_nan_in_the_data_is_named_as_such(cli, tmp_path, where):
    "The command refuses such a file before it trains, naming the set and the image (the Learner's own check, by batch: `16_accel_sgd`)."
    r = cli('--data', small_mnist(tmp_path, nan_in=where), '--out', tmp_path/'out', '--no-progress', '--epochs', '3')
    name, image = ('training', 123) if where == 'train' else ('validation', 70)
    line = one_line(r)
    assert r.returncode == 2 and f'the {name} images of' in line and f'hold NaN or infinite values (image {image} first)' in line and '--lr' not in line, line

# 6. One run per output folder

def start_long_run(out, *extra):
    "A run that trains long enough to be caught running, and the moment it holds its lock."
    proc = subprocess.Popen([sys.executable, '-m', 'exp_lib.train', '--epochs', '50', '--bs', '4', '--no-progress', '--out', str(out), *map(str, extra)],
                            env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    for _ in range(600):
        if (out/'.exp_lib_train.lock').exists() and (out/'history.csv').exists(): return proc
        if proc.poll() is not None: raise AssertionError(proc.stderr.read())
        time.sleep(0.1)
    raise AssertionError('the run did not start')

def test_a_second_run_on_the_same_folder_or_checkpoint_is_refused_until_the_first_ends(cli, tmp_path):
    out, ck = tmp_path/'o', tmp_path/'ck'/'run.pt'
    first = start_long_run(out, '--checkpoint-every-epoch', ck)
    try:
        second = cli('--epochs', '1', '--no-progress', '--out', out)
        assert second.returncode == 2 and f'--out {out} is in use by another exp_lib_train run (PID {first.pid})' in one_line(second)
        while not ck.exists(): time.sleep(0.1)
        resumed = cli('--epochs', '50', '--bs', '4', '--no-progress', '--out', tmp_path/'other', '--resume', ck)
        assert resumed.returncode == 2 and f'--resume {ck} is in use by another exp_lib_train run (PID {first.pid})' in one_line(resumed)
    finally:
        first.send_signal(signal.SIGKILL); first.wait()
    assert (out/'.exp_lib_train.lock').exists()  # a killed run leaves its file: it is not a lock
    (out/f'.loss.png.{first.pid}.tmp').write_bytes(b'half a plot')  # and a half-written file, as a kill mid-write leaves
    third = cli('--epochs', '1', '--no-progress', '--out', out)
    assert third.returncode == 0, third.stderr
    assert sorted(p.name for p in out.iterdir() if p.name.startswith('.')) == [], 'a lock or a temporary file left behind'

# 7. A full disk

def tiny_disk(tmp_path):
    "A 192 KB tmpfs where this machine lets us mount one (root), else None."
    disk = tmp_path/'disk'; disk.mkdir()
    r = subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=192k', 'tmpfs', str(disk)], capture_output=True)
    return disk if r.returncode == 0 else None

FULL_AFTER = """
import errno, sys, builtins
import exp_lib.core as core
real, limit = builtins.open, sys.argv.pop(1)
class Full:
    "A file on a disk that is full: every write under the folder `limit` fails with ENOSPC."
    def __init__(self, f): self.f = f
    def write(self, b): raise OSError(errno.ENOSPC, 'No space left on device')
    def __getattr__(self, k): return getattr(self.f, k)
    def __enter__(self): return self
    def __exit__(self, *a): self.f.close()
def full_open(path, mode='r', *a, **k):
    f = real(path, mode, *a, **k)
    return Full(f) if 'w' in mode and str(path).startswith(limit) else f
core.open = full_open
from exp_lib.train import main
sys.exit(main(sys.argv[1:]))
"""

def test_a_full_disk_is_one_line_and_keeps_what_was_written(tmp_path):
    disk = tiny_disk(tmp_path)
    try:
        where = disk or tmp_path/'sim'
        (where/'out').mkdir(parents=True)
        (where/'ck.pt').write_bytes(b'the last good checkpoint')  # what the run's first checkpoint would replace
        if disk: (disk/'filler').write_bytes(b'x' * 150_000)
        args = ['--epochs', '2', '--no-progress', '--out', str(where/'out'), '--checkpoint-every-epoch', str(where/'ck.pt')]
        cmd = [sys.executable, '-m', 'exp_lib.train', *args] if disk else [sys.executable, '-c', FULL_AFTER, str(where), *args]
        r = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
        line = one_line(r)
        assert r.returncode == 2 and 'the disk is full' in line and str(where) in line, line
        assert (where/'ck.pt').read_bytes() == b'the last good checkpoint'  # replaced only by a whole new one
        assert not [p for p in where.rglob('*.tmp')], 'a temporary file left behind'
    finally:
        if disk: subprocess.run(['umount', str(disk)])

# 8. Under --nproc: one line, whatever a process meets

def test_an_error_in_one_process_of_nproc_is_one_line(tmp_path):
    (tmp_path/'sitecustomize.py').write_text(textwrap.dedent("""
        import os
        if 'LOCAL_RANK' in os.environ and os.environ.get('RANK') == '1':  # the second process of the job fails as it starts to train
            import exp_lib.accel_sgd  # which patches fit_one_cycle on, first
            from exp_lib.callbacks import Learner
            def boom(*a, **k): raise ValueError('boom in the second process')
            Learner.fit_one_cycle = boom
    """))
    out = tmp_path/'out'
    env = {**ENV, 'PYTHONPATH': f"{tmp_path}{os.pathsep}{ENV.get('PYTHONPATH', '')}"}
    r = subprocess.run([sys.executable, '-m', 'exp_lib.train', '--nproc', '2', '--device', 'cpu', '--epochs', '1', '--no-progress', '--out', str(out)],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and one_line(r) == 'exp_lib_train: error in process 1: ValueError: boom in the second process', (r.returncode, r.stderr)

def test_an_empty_validation_set_is_refused_before_anything_starts(cli, tmp_path):
    g = np.random.default_rng(0)
    data = mnist_pkl(tmp_path/'empty.pkl.gz', g.random((100, 784), dtype=np.float32), g.integers(0, 10, 100), np.zeros((0, 784), np.float32), np.zeros(0, np.int64))
    r = cli('--data', data, '--nproc', '2', '--device', 'cpu', '--out', tmp_path/'out')
    assert r.returncode == 2 and 'the validation set of' in one_line(r) and 'holds no item' in r.stderr
    assert not (tmp_path/'out').exists()

# 9. Ctrl-C while the command imports

def test_ctrl_c_while_the_command_imports_is_one_line(tmp_path):
    exe = Path(sys.executable).parent/'exp_lib_train'
    proc = subprocess.Popen([str(exe), '--out', str(tmp_path/'out')], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # as a terminal's: pytest's workers ignore SIGINT
    time.sleep(0.3)  # torch is still importing
    for _ in range(120):  # a library's bare `except:` can swallow a Ctrl-C that lands inside it: press again, as a user would
        proc.send_signal(signal.SIGINT)
        try: _, err = proc.communicate(timeout=0.5); break
        except subprocess.TimeoutExpired: pass
    assert proc.returncode == 130 and err.strip() == 'exp_lib_train: interrupted', (proc.returncode, err)
