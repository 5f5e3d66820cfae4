"""The command tried at scale: random values for every numeric and path option, in random combinations, run in this process
(`exp_lib.train.main`). Whatever the input: the exit status is 0, 1, 2 or 130; a usage error (2) is one line on stderr with no
traceback; and a usage error changes no file in --out."""
import contextlib, io, os, tempfile
from pathlib import Path
import pytest, torch
from hypothesis import given, settings, HealthCheck, strategies as st
import matplotlib
matplotlib.use('Agg')
from exp_lib.train import main

NUMBERS = {  # valid values kept cheap (a run trains at most 2 epochs of the sample), mixed with every kind of bad one
    '--lr': ['0.01', '1e-3', '1e6', 'auto', '0', '-0.1', 'nan', 'inf', '1e400', 'x', ''],
    '--epochs': ['1', '2', '0', '-1', '1.5', 'x', ''],
    '--bs': ['64', '500', '4000', '0', '-3', '2.5', '1e3', 'x'],
    '--wd': ['0', '0.1', '-1', 'nan', 'inf', 'x'],
    '--accum': ['1', '2', '0', '-1', '2.5', 'x'],
    '--clip': ['1', '0.5', '0', '-1', 'nan', 'x'],
    '--seed': ['0', '42', '-5', '2.5', 'x'],
    '--nproc': ['1', '0', '-2', '1.5', 'x'],
}
CHOICES = {'--arch': ['mlp', 'cnn', 'rnn'], '--opt': ['sgd', 'adam', 'momentum', 'nadam'], '--sched': ['one_cycle', 'const', 'cos'],
           '--precision': ['fp32', 'bf16', 'fp16', 'fp64'], '--device': ['auto', 'cpu', 'cuda', 'tpu'],
           '--compare': ['sgd,adam', 'adam', 'sgd,nadam', ',']}
PATHS = ['new dir', 'existing dir', 'a file', 'under a file', 'in /proc', 'missing file', 'not a checkpoint', 'a checkpoint']
PATH_OPTIONS = ['--out', '--save', '--checkpoint-every-epoch', '--tensorboard', '--resume', '--data']

settings.register_profile('cli', deadline=None, max_examples=int(os.environ.get('EXP_LIB_CLI_EXAMPLES', 150)),
                          suppress_health_check=[HealthCheck.too_slow])

@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory):
    "A real checkpoint of a one-epoch run, for --resume to meet."
    d = tmp_path_factory.mktemp('ck')
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert main(['--epochs', '2', '--out', str(d/'out'), '--no-progress', '--checkpoint-every-epoch', str(d/'ck.pt')]) == 0
    return d/'ck.pt'

def path_for(kind, tmp, checkpoint):
    (tmp/'afile').write_text('not MNIST, not a checkpoint')
    return {'new dir': tmp/'new'/'deeper', 'existing dir': tmp, 'a file': tmp/'afile', 'under a file': tmp/'afile'/'x',
            'in /proc': Path('/proc/exp_lib_x'), 'missing file': tmp/'missing.pt', 'not a checkpoint': tmp/'afile',
            'a checkpoint': checkpoint}[kind]

def snapshot(folder):
    "Name, size and modification time of every file under `folder` (empty if it is not a folder)."
    folder = Path(folder)
    if not folder.is_dir() or str(folder).startswith('/proc'): return {}
    return {str(f): (f.stat().st_size, f.stat().st_mtime_ns) for f in folder.rglob('*') if f.is_file()}

options = st.fixed_dictionaries({}, optional={**{k: st.sampled_from(v) for k, v in {**NUMBERS, **CHOICES}.items()},
                                              **{k: st.sampled_from(PATHS) for k in PATH_OPTIONS}})

@settings(settings.get_profile('cli'))
@given(opts=options)
def test_any_command_line_ends_in_a_known_way(opts, checkpoint):
    tmp = Path(tempfile.mkdtemp())
    argv = ['--no-progress']
    for k, v in opts.items(): argv += [k, str(path_for(v, tmp, checkpoint)) if k in PATH_OPTIONS else v]
    if '--out' not in opts: argv += ['--out', str(tmp/'out')]
    out = Path(argv[argv.index('--out') + 1])
    if out.is_dir() and not str(out).startswith('/proc'): (out/'history.csv').write_text('from an earlier run\n')
    before = snapshot(out)
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        try: code = main(argv)
        except SystemExit as e: code = e.code
    err = err.getvalue()
    assert code in (0, 1, 2, 130), (argv, code, err[-2000:])
    assert 'Traceback' not in err, (argv, err[-2000:])
    if code == 2:
        assert len(err.strip().splitlines()) == 1, (argv, err)
        assert snapshot(out) == before, (argv, 'a usage error changed files in --out')
