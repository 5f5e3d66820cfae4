"Several processes filling the same MNIST cache at once must all get the same, complete data."
import subprocess, sys, textwrap

SCRIPT = textwrap.dedent("""
    import sys, hashlib
    from exp_lib.data import get_mnist
    xt, yt, xv, yv = get_mnist(cache_dir=sys.argv[1])
    h = hashlib.sha1()
    for t in (xt, yt, xv, yv): h.update(t.numpy().tobytes())
    print(tuple(xt.shape), tuple(xv.shape), h.hexdigest())
""")

def test_concurrent_first_calls_share_one_cache(tmp_path):
    procs = [subprocess.Popen([sys.executable, '-c', SCRIPT, str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(4)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs): assert p.returncode == 0, err
    results = {out.strip() for out, _ in outs}
    assert len(results) == 1, results
    assert results.pop().startswith('(4000, 784) (1000, 784)')
    files = [f.name for f in tmp_path.iterdir()]
    assert len(files) == 1 and files[0].startswith('mnist-'), f'expected one cache file, found {files}'
    again = subprocess.run([sys.executable, '-c', SCRIPT, str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert again.stdout.strip() == outs[0][0].strip()
