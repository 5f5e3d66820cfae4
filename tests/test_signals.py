"""`exp_lib_train --nproc 2` (two CPU processes, whatever GPUs the machine has) stopped as job schedulers, IDE stop buttons, `timeout` and Ctrl-C stop it: every process it started ends
within seconds, nothing is written after, one line says why, and a run killed with --checkpoint-every-epoch resumes bitwise."""
import os, shutil, signal, subprocess, sys, time
from pathlib import Path
import pytest, torch
from conftest import BIN

pytestmark = pytest.mark.skipif(not Path('/proc').is_dir(), reason='reads the process tree from /proc')

def exe(): return shutil.which('exp_lib_train', path=str(BIN)) or shutil.which('exp_lib_train')

def descendants(pid):
    "Every process under `pid`, as `ps` lists them (independently of the command's own reading of /proc)."
    children = {}
    for line in subprocess.run(['ps', '-eo', 'pid=,ppid='], capture_output=True, text=True).stdout.splitlines():
        child, parent = map(int, line.split())
        children.setdefault(parent, []).append(child)
    res, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        res += kids; todo += kids
    return res

def running(pid):
    try: return Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()[0] != 'Z'
    except OSError: return False

def start(out, *extra, prefix=()):
    "A long 2-process run, in a session of its own (so the test can signal its group as a terminal's Ctrl-C does); returns once it trains."
    cmd = [*prefix, exe(), '--nproc', '2', '--device', 'cpu', '--epochs', '1000', '--no-progress', '--out', str(out), *map(str, extra)]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                         env={**os.environ, 'MPLBACKEND': 'Agg'})
    deadline = time.monotonic() + 120
    while not ((out/'history.csv').exists() and len((out/'history.csv').read_text().splitlines()) >= 3):
        assert p.poll() is None and time.monotonic() < deadline, p.communicate()
        time.sleep(0.2)
    procs = descendants(p.pid)
    assert len(procs) >= 3, procs  # torchrun and two workers (and timeout's child, with a prefix)
    return p, procs

def stopped(p, procs, out):
    "Wait for the command; check that no process it started runs 10 s later and that nothing was written after it ended."
    _, err = p.communicate(timeout=30)
    files = {f.name: f.stat().st_mtime_ns for f in out.iterdir()}
    deadline = time.monotonic() + 10
    while any(running(q) for q in procs) and time.monotonic() < deadline: time.sleep(0.1)
    assert not [q for q in procs if running(q)], 'processes left running'
    time.sleep(2)
    assert {f.name: f.stat().st_mtime_ns for f in out.iterdir()} == files, 'files written after the command ended'
    assert not (out/'confusion.png').exists()
    return err

def test_sigterm_to_the_parent_stops_every_process(tmp_path):
    p, procs = start(tmp_path)
    os.kill(p.pid, signal.SIGTERM)
    err = stopped(p, procs, tmp_path)
    assert p.returncode == 143 and err == 'exp_lib_train: stopped by SIGTERM\n', (p.returncode, err)

def test_ctrl_c_to_the_group_says_interrupted_once(tmp_path):
    p, procs = start(tmp_path)
    os.killpg(p.pid, signal.SIGINT)
    err = stopped(p, procs, tmp_path)
    assert p.returncode == 130 and err == 'exp_lib_train: interrupted\n', (p.returncode, err)

def test_timeout_gives_one_line(tmp_path):
    # A fixed `timeout 20` raced the start-up: on a loaded machine it fired before the run trained. GNU timeout takes SIGALRM as
    # its time running out (it TERMs the command and exits 124), so the time runs out here once the run trains, whatever its pace.
    p, procs = start(tmp_path, prefix=('timeout', '-s', 'TERM', '600'))
    os.kill(p.pid, signal.SIGALRM)
    err = stopped(p, procs, tmp_path)
    assert p.returncode == 124 and err == 'exp_lib_train: stopped by SIGTERM\n', (p.returncode, err)

def test_sigkill_to_the_parent_takes_the_rest_with_it(tmp_path):
    p, procs = start(tmp_path)
    os.kill(p.pid, signal.SIGKILL)
    stopped(p, procs, tmp_path)
    assert p.returncode == -9

def test_a_killed_distributed_run_resumes_bitwise(tmp_path, cli):
    run = ['--nproc', '2', '--device', 'cpu', '--epochs', '4', '--bs', '32', '--no-progress', '--seed', '3']
    ck = tmp_path/'ck.pt'
    p = subprocess.Popen([exe(), *run, '--out', str(tmp_path/'a'), '--checkpoint-every-epoch', str(ck)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env={**os.environ, 'MPLBACKEND': 'Agg'})
    deadline = time.monotonic() + 120
    while True:
        assert p.poll() is None and time.monotonic() < deadline, p.communicate()
        try:
            if torch.load(ck, weights_only=True)['epochs_done'] >= 2: break
        except Exception: time.sleep(0.1)
    os.kill(p.pid, signal.SIGTERM)
    p.communicate(timeout=30)
    assert p.returncode == 143
    resumed = cli(*run, '--out', tmp_path/'a', '--resume', ck, '--save', tmp_path/'resumed.pt')
    assert resumed.returncode == 0 and 'resuming from' in resumed.stdout, resumed.stderr[-2000:]
    whole = cli(*run, '--out', tmp_path/'b', '--save', tmp_path/'whole.pt')
    assert whole.returncode == 0, whole.stderr[-2000:]
    a, b = (torch.load(tmp_path/f, weights_only=True)['model'] for f in ('whole.pt', 'resumed.pt'))
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows = lambda d: [r.split(',')[:4] for r in (tmp_path/d/'history.csv').read_text().splitlines()]
    assert rows('a') == rows('b') and len(rows('a')) == 5
