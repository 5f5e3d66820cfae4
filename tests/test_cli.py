"The `exp_lib_train` command, run as a user runs it: a subprocess of the installed console script."
import csv, os, re, subprocess, sys
import pytest, torch

def final_accuracy(stdout):
    m = re.search(r'final validation accuracy: ([0-9.]+)', stdout)
    assert m, stdout
    return float(m.group(1))

def test_default_run_reaches_the_bar_and_writes_plots(cli, tmp_path):
    r = cli(cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    header = next(l for l in r.stdout.splitlines() if l.split()[:1] == ['epoch'])
    assert header.split() == ['epoch', 'train_loss', 'valid_loss', 'accuracy', 'time']
    rows = [l.split() for l in r.stdout.splitlines() if re.match(r'\s*\d+\s+\d', l)]
    assert [int(o[0]) for o in rows] == [0, 1, 2, 3, 4]
    assert final_accuracy(r.stdout) >= 0.93
    out = tmp_path/'exp_lib_out'
    for name in ('loss.png', 'schedule.png', 'confusion.png', 'top_losses.png'):
        assert (out/name).read_bytes()[:8] == b'\x89PNG\r\n\x1a\n', name
    history = list(csv.reader(open(out/'history.csv')))
    assert history[0] == header.split() and [r[1:4] for r in history[1:]] == [o[1:4] for o in rows]

def test_compare_writes_table_and_plot(cli, tmp_path):
    r = cli('--compare', 'sgd,momentum,rmsprop,adam', '--epochs', '2', '--out', tmp_path, '--no-progress')
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(open(tmp_path/'compare.csv')))
    assert [o['optimizer'] for o in rows] == ['sgd', 'momentum', 'rmsprop', 'adam']
    assert all(0.5 < float(o['accuracy']) <= 1 for o in rows)
    md = (tmp_path/'compare.md').read_text()
    assert md.startswith('| optimizer | lr | train_loss | valid_loss | accuracy | time |') and md.count('\n') == 6
    assert '| adam |' in r.stdout
    assert (tmp_path/'compare.png').read_bytes()[:4] == b'\x89PNG'

def test_save_writes_a_checkpoint_the_package_loads(cli, tmp_path):
    r = cli('--epochs', '1', '--out', tmp_path, '--no-progress', '--save', tmp_path/'m.pt', '--opt', 'momentum')
    assert r.returncode == 0, r.stderr
    code = ("import sys; from exp_lib.all import *; from functools import partial\n"
            "x, y, xv, yv = get_mnist(); data = DataBunch(*get_dls(Dataset(x, y), Dataset(xv, yv), 64), c=10)\n"
            "learn = Learner(make_model(), data, opt_func=partial(SGD, mom=0.9), lr=0.1, metrics=[accuracy], progress=False, logger=lambda r: None)\n"
            "learn.load(sys.argv[1]); learn.fit(1, lr=0.)\n"
            "print(learn.epochs_done, learn.avg_stats.history[-1]['accuracy'])")
    p = subprocess.run([sys.executable, '-c', code, str(tmp_path/'m.pt')], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    epochs, acc = p.stdout.split()
    assert int(epochs) == 1 and abs(float(acc) - final_accuracy(r.stdout)) < 1e-6

def test_lr_auto_runs_lr_find_first_and_the_cnn_learns_at_its_suggestion(cli, tmp_path):
    r = cli('--arch', 'cnn', '--lr', 'auto', '--epochs', '1', '--out', tmp_path, '--no-progress')
    assert r.returncode == 0, r.stderr
    lr = float(re.search(r'lr_find suggests lr=([0-9.e-]+)', r.stdout).group(1))
    assert 1e-4 < lr < 1, lr
    assert final_accuracy(r.stdout) > 0.8
    assert (tmp_path/'lr_find.png').exists()

def test_compare_honours_lr_and_wd(cli, tmp_path):
    r = cli('--compare', 'sgd,adam', '--lr', '0.02', '--wd', '0.1', '--epochs', '1', '--out', tmp_path, '--no-progress')
    assert r.returncode == 0, r.stderr
    assert [o['lr'] for o in csv.DictReader(open(tmp_path/'compare.csv'))] == ['0.02', '0.02']

def test_a_diverging_run_exits_1_naming_epoch_and_batch(cli, tmp_path):
    r = cli('--lr', '1e6', '--epochs', '2', '--out', tmp_path, '--no-progress')
    assert r.returncode == 1, (r.returncode, r.stderr)
    assert re.search(r'became NaN or infinite at epoch 0, batch \d+', r.stderr), r.stderr
    assert 'final validation accuracy' not in r.stdout

UNAVAILABLE = 'mps' if torch.cuda.is_available() else 'cuda'  # a choice of --device that this machine lacks, whatever it is

@pytest.mark.parametrize('args, message', [
    (['--opt', 'adamax'], "invalid choice: 'adamax' (choose from 'sgd', 'momentum'"),
    (['--compare', 'sgd,nadam'], "unknown optimizer(s) ['nadam']"),
    (['--lr', '-0.1'], 'must be a finite number > 0, got -0.1'),
    (['--lr', '0'], 'must be a finite number > 0, got 0'),
    (['--lr', 'nan'], 'must be a finite number > 0, got nan'),
    (['--lr', 'inf'], 'must be a finite number > 0, got inf'),
    (['--wd', 'nan'], 'must be a finite number >= 0, got nan'),
    (['--wd', '-5'], 'must be a finite number >= 0, got -5'),
    (['--epochs', '0'], 'must be a whole number > 0, got 0'),
    (['--bs', '-3'], 'must be a whole number > 0, got -3'),
    (['--save', '{tmp}'], 'is a folder; give the checkpoint'),
    (['--save', '{tmp}/notes.pkl.gz/m.pt'], 'Cannot write the checkpoint m.pt: {tmp}/notes.pkl.gz is a file, not a folder'),
    (['--save', '/proc/m.pt'], 'cannot write the checkpoint m.pt in /proc'),
    (['--compare', 'sgd,adam', '--save', '{tmp}/m.pt'], '--save is for one run; --compare trains several'),
    (['--compare', 'sgd,adam', '--resume', '{tmp}/m.pt'], '--resume is for one run'),
    (['--resume', '{tmp}/nowhere.pt'], '--resume: No checkpoint at'),
    (['--resume', '{tmp}/notes.pkl.gz'], 'notes.pkl.gz is not an exp_lib checkpoint: it is not a complete file written by torch.save'),
    (['--checkpoint-every-epoch', '{tmp}'], '--checkpoint-every-epoch'),
    (['--accum', '0'], 'must be a whole number > 0, got 0'),
    (['--clip', '-1'], 'must be a finite number > 0, got -1'),
    (['--clip', 'nan'], 'must be a finite number > 0, got nan'),
    (['--precision', 'fp64'], "invalid choice: 'fp64'"),
    (['--device', UNAVAILABLE], f"device={UNAVAILABLE!r}, but this machine has no such device"),
    (['--data', '{tmp}/nowhere'], 'nowhere does not exist'),
    (['--data', '{tmp}/notes.pkl.gz'], 'notes.pkl.gz is not a complete gzip file'),
    (['--out', '{tmp}/notes.pkl.gz/sub'], 'Cannot write the plots and tables: {tmp}/notes.pkl.gz is a file, not a folder'),
    (['--out', '{tmp}/notes.pkl.gz'], 'notes.pkl.gz is a file, not a folder'),
    (['--out', '/proc/exp_lib_out'], '--out: Cannot write the plots and tables'),
    (['--tensorboard', '{tmp}/notes.pkl.gz/tb'], '--tensorboard: Cannot write the TensorBoard logs: {tmp}/notes.pkl.gz is a file'),
    (['--tensorboard', '/proc/tb'], '--tensorboard: Cannot write the TensorBoard logs'),
    (['--bs', '2.5'], "'2.5' is not a whole number"),
])
def test_bad_input_is_one_line_and_exit_2(cli, tmp_path, args, message):
    (tmp_path/'notes.pkl.gz').write_text('not MNIST')
    args = [a.format(tmp=tmp_path) for a in args]
    r = cli(*args, '--no-progress', *([] if '--out' in args else ['--out', tmp_path/'o']))
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert message.format(tmp=tmp_path) in r.stderr, r.stderr
    assert 'weights_only' not in r.stderr
    assert 'Traceback' not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert 'epoch' not in r.stdout, 'the error must come before any training'


def test_an_unavailable_device_from_the_environment_is_a_usage_error(cli, tmp_path, monkeypatch):
    monkeypatch.setenv('EXP_LIB_DEVICE', 'cuda:99')
    r = cli('--out', tmp_path, '--no-progress')
    assert r.returncode == 2 and "EXP_LIB_DEVICE='cuda:99', but this machine has no such device" in r.stderr, r.stderr

def test_mixed_precision_accumulation_and_clipping_train(cli, tmp_path):
    r = cli('--precision', 'fp16', '--accum', '2', '--clip', '1', '--device', 'cpu', '--epochs', '2', '--out', tmp_path, '--no-progress')
    assert r.returncode == 0, r.stderr
    assert final_accuracy(r.stdout) > 0.9

KILLED_AFTER = """
import os, signal, sys
from exp_lib.callbacks import Callback, defaults
import exp_lib.train
class KillAfter(Callback):
    "SIGKILL this process at the end of epoch `sys.argv[1]`, after everything else the epoch does (the checkpoint included)."
    order = 1000
    def after_epoch(self):
        if self.learn.epoch == int(sys.argv[1]): os.kill(os.getpid(), signal.SIGKILL)
defaults.callbacks += (KillAfter,)
sys.exit(exp_lib.train.main(sys.argv[2:]))
"""

def test_a_killed_run_resumes_to_the_same_weights_bitwise(cli, tmp_path):
    import torch
    run = ['--epochs', '4', '--no-progress', '--precision', 'fp16', '--accum', '2', '--seed', '3']
    killed = subprocess.run([sys.executable, '-c', KILLED_AFTER, '1', *run, '--out', str(tmp_path/'a'), '--checkpoint-every-epoch', str(tmp_path/'ck.pt')],
                            capture_output=True, text=True, timeout=600, env={**os.environ, 'MPLBACKEND': 'Agg'})
    assert killed.returncode == -9, (killed.returncode, killed.stderr)
    assert torch.load(tmp_path/'ck.pt', weights_only=True)['epochs_done'] == 2
    resumed = cli(*run, '--out', tmp_path/'a', '--resume', tmp_path/'ck.pt', '--save', tmp_path/'resumed.pt')
    assert resumed.returncode == 0 and 'resuming from' in resumed.stdout, resumed.stderr
    whole = cli(*run, '--out', tmp_path/'b', '--save', tmp_path/'whole.pt')
    assert whole.returncode == 0, whole.stderr
    a, b = (torch.load(tmp_path/f, weights_only=True)['model'] for f in ('whole.pt', 'resumed.pt'))
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows = lambda d: [r[:4] for r in csv.reader(open(tmp_path/d/'history.csv'))]
    assert rows('a') == rows('b') and len(rows('a')) == 5
    other = cli(*run, '--opt', 'sgd', '--out', tmp_path/'c', '--resume', tmp_path/'ck.pt')
    assert other.returncode == 2 and "--opt 'adam' (this run: 'sgd')" in other.stderr and len(other.stderr.strip().splitlines()) == 1, other.stderr

def test_a_resumed_run_is_not_taken_for_a_diverging_one(cli, tmp_path):
    """Killed after its second checkpoint, this run resumed and exited 1, "the training loss rose far above its minimum": the check read
    the resumed fit's first smoothed loss as where training began. The loss record now goes on from the checkpoint's, as one run's."""
    run = ['--epochs', '4', '--bs', '8', '--no-progress']  # the default seed: the run of the report
    killed = subprocess.run([sys.executable, '-c', KILLED_AFTER, '1', *run, '--out', str(tmp_path/'a'), '--checkpoint-every-epoch', str(tmp_path/'ck.pt')],
                            capture_output=True, text=True, timeout=600, env={**os.environ, 'MPLBACKEND': 'Agg'})
    assert killed.returncode == -9, (killed.returncode, killed.stderr)
    resumed = cli(*run, '--out', tmp_path/'a', '--resume', tmp_path/'ck.pt', '--save', tmp_path/'resumed.pt')
    assert resumed.returncode == 0, resumed.stderr
    whole = cli(*run, '--out', tmp_path/'b', '--save', tmp_path/'whole.pt')
    assert whole.returncode == 0, whole.stderr
    rec = lambda f: torch.load(tmp_path/f, weights_only=True)['cbs']['recorder']
    assert torch.equal(rec('resumed.pt')['losses'], rec('whole.pt')['losses']) and rec('whole.pt')['epoch_ends'] == rec('resumed.pt')['epoch_ends']

def test_tensorboard_logs_are_written(cli, tmp_path):
    r = cli('--epochs', '1', '--out', tmp_path, '--no-progress', '--tensorboard', tmp_path/'tb')
    assert r.returncode == 0, r.stderr
    assert any(f.name.startswith('events.out.tfevents') for f in (tmp_path/'tb').iterdir())

def test_a_bad_path_touches_no_file_of_the_previous_run(cli, tmp_path):
    "Every output path is checked before anything is written: a bad --tensorboard leaves the last run's history.csv as it was."
    out = tmp_path/'out'; out.mkdir()
    (out/'history.csv').write_text('epoch,train_loss\n0,1.0\n')
    (tmp_path/'afile').write_text('x')
    r = cli('--out', out, '--tensorboard', tmp_path/'afile'/'tb', '--no-progress')
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert (out/'history.csv').read_text() == 'epoch,train_loss\n0,1.0\n'

def test_a_run_that_diverges_without_nan_says_so(cli, tmp_path):
    r = cli('--opt', 'sgd', '--lr', '1e6', '--epochs', '2', '--out', tmp_path, '--no-progress')
    assert r.returncode == 1 and 'rose far above its minimum' in r.stderr and 'Try a lower --lr' in r.stderr, (r.returncode, r.stderr)
    assert 'final validation accuracy' not in r.stdout
