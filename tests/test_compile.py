"""The compiled optimizer step (16d_compiled, issue 28) where it must not change a number: no C++ compiler, a device torch.compile does not
support, copies and pickles of a compiled optimizer, Lookahead, a checkpoint between compiled and eager optimizers; and no compile unless asked."""
import copy, math, pickle, warnings
import pytest, torch
import torch.nn.functional as F
from torch import nn
import fastcore.test as ft
import exp_lib.compiled as compiled
from exp_lib.all import Adam, Lookahead

def train(make, steps=8, model=None, change=None):
    "`steps` steps of `make(params)` on a small two-layer model, the lr changed at every step; the weights and the optimizer."
    torch.manual_seed(0)
    model = model or nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 4))
    opt = make(list(model.parameters()))
    g = torch.Generator().manual_seed(1)
    for i in range(steps):
        for pg in opt.param_groups: pg['lr'] = 0.01 * (1 + math.sin(i / 3))
        F.cross_entropy(model(torch.randn(16, 6, generator=g)), torch.randint(0, 4, (16,), generator=g)).backward()
        opt.step(); opt.zero_grad()
        if change: opt = change(i, opt) or opt
    return [p.detach().clone() for p in model.parameters()], opt

def max_diff(a, b): return max(float((x - y).detach().abs().max()) for x, y in zip(a, b))

def eager_said(fn):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        res = fn()
    return res, [str(w.message) for w in caught if 'steps eagerly' in str(w.message)]

def test_without_a_cpp_compiler_the_step_is_eager_exact_and_says_why_once(monkeypatch):
    import torch._inductor.config as ic
    monkeypatch.setattr(compiled, '_compile_blockers', {})
    with ic.patch({'cpp.cxx': (None, 'no-such-c++-compiler')}):
        (ws, opt), said = eager_said(lambda: train(lambda ps: Adam(ps, 0.01, compile=True)))
    ft.test_eq(len(said), 1)
    assert 'no C++ compiler' in said[0] and 'CXX' in said[0], said
    ft.test_eq(opt.passes, {})
    ft.test_eq(max_diff(ws, train(lambda ps: Adam(ps, 0.01))[0]), 0.)

def test_a_device_torch_compile_does_not_support_is_named():
    assert "'mps'" in compiled._cannot_compile(torch.device('mps'))
    assert compiled._cannot_compile(torch.device('cpu')) is None

def test_compile_is_checked():
    with pytest.raises(ValueError, match='compile is True'): Adam([nn.Parameter(torch.ones(2))], 0.1, compile='yes')
    with pytest.raises(ValueError, match='needs flat=True'): Adam([nn.Parameter(torch.ones(2))], 0.1, flat=False, compile=True)

def test_the_default_never_compiles_whatever_the_size():
    "Compiling is opt-in: a part of 2.4M numbers (past the old size rule's 2**20) steps eagerly, and the compiler is never imported."
    import subprocess, sys
    code = ("import sys, torch; from torch import nn; from exp_lib.all import Adam\n"
            "m = nn.Linear(1500, 1600); opt = Adam(list(m.parameters()), 1e-3)\n"
            "for _ in range(3): m(torch.randn(4, 1500)).sum().backward(); opt.step(); opt.zero_grad()\n"
            "assert type(opt).__name__ == 'FlatOptimizer' and not hasattr(opt, 'passes'), type(opt)\n"
            "print(sorted(m for m in sys.modules if m.startswith(('torch._dynamo', 'torch._inductor'))))")
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    ft.test_eq(r.stdout.strip(), '[]')

def test_a_copy_or_a_pickle_of_a_compiled_optimizer_steps_on():
    _, opt = train(lambda ps: Adam(ps, 0.01, compile=True), steps=5)
    assert opt.passes
    twins = [copy.deepcopy(opt), pickle.loads(pickle.dumps(opt))]  # without the compiled passes: each copy compiles its own
    ft.test_eq([t.passes for t in twins], [{}, {}])
    for o in [opt] + twins:
        for _ in range(4):
            for p in o.all_params: p.grad = torch.full_like(p, 0.1)
            o.step()
    for t in twins: assert max_diff(t.all_params, opt.all_params) < 1e-6

def test_lookahead_and_a_checkpoint_between_compiled_and_eager():
    la = lambda c: (lambda ps: Lookahead(Adam(ps, 0.01, compile=c), k=3))
    assert max_diff(train(la(True), steps=12)[0], train(la(False), steps=12)[0]) < 1e-6
    def reload(compile_after):
        def change(i, opt):
            if i == 5:
                new = Adam(opt.all_params, 0.01, compile=compile_after); new.load_state_dict(copy.deepcopy(opt.state_dict()))
                return new
        return change
    eager = train(lambda ps: Adam(ps, 0.01, compile=False), steps=12)[0]
    for before, after in ((True, False), (False, True), (True, True)):
        ws, opt = train(lambda ps: Adam(ps, 0.01, compile=before), steps=12, change=reload(after))
        assert max_diff(ws, eager) < 1e-6, (before, after, max_diff(ws, eager))
        ft.test_eq({s['step'] for s in opt.state_dict()['state'].values()}, {12})
        if before == after: ft.test_eq(max_diff(ws, train(lambda ps: Adam(ps, 0.01, compile=before), steps=12)[0]), 0.)  # bit for bit


def boosted_step(p, lr, boost, **kwargs):
    "SGD whose step doubles while `boost` is over a half: a branch on a hyper, which compiles as a constant."
    p.add_(p.grad, alpha=-lr * (2. if boost > 0.5 else 1.))

def split_step(p, lr, n, **kwargs):
    "SGD in `n` small steps: a loop over `range(n)`, which torch.compile unrolls for each value of `n`."
    for _ in range(n): p.add_(p.grad, alpha=-lr / n)


def test_a_hyper_a_callback_needs_as_a_number_is_a_constant_compiled_for_a_few_values_then_eager():
    from exp_lib.all import make_optimizer
    def changing(i, opt):
        for pg in opt.param_groups: pg['boost'], pg['n'] = 0.1 * i, 1 + i
    for cb, warns in ((boosted_step, False), (split_step, True)):
        make = lambda c: (lambda ps: make_optimizer(ps, [cb], dict(lr=0.01, boost=0., n=1), compile=c))
        start = compiled._graphs_made_in_process()
        (ws, opt), said = eager_said(lambda: train(make(True), steps=10, change=changing))
        made = compiled._graphs_made_in_process() - start
        ft.test_eq(len(said), int(warns))
        if warns:  # one graph for each value until one too many; eager from there
            assert "'n' in split_step" in said[0], said
            ft.test_eq(made, compiled.MAX_GRAPHS_PER_PART + 1)
        else: assert 1 < made <= compiled.MAX_GRAPHS_PER_PART, made  # a graph for each side of the branch, not one per value
        ft.test_eq(opt.passes[(0, 0)].graphs_made, made)
        assert max_diff(ws, train(make(False), steps=10, change=changing)[0]) < 1e-6


def test_state_edited_through_opt_state_reaches_the_compiled_pass():
    def edit(i, opt):
        if i == 4:
            for s in opt.state.values(): s['grad_avg'].zero_()
    a = train(lambda ps: Adam(ps, 0.01, compile=True), change=edit)[0]
    b = train(lambda ps: Adam(ps, 0.01, compile=False), change=edit)[0]
    assert max_diff(a, b) < 1e-6
    assert max_diff(a, train(lambda ps: Adam(ps, 0.01, compile=False))[0]) > 1e-5  # the edit did something

def test_a_callback_s_python_side_effect_happens_at_every_step_compiled():
    "A compiled step runs the code torch.compile made for the part, side effects and all: none is skipped by the call straight into it."
    from exp_lib.all import make_optimizer
    class Box: p = None
    box = Box()
    def noting_sgd(p, lr, **kwargs):
        box.p = p  # a Python side effect, which dynamo's code replays after the graph
        p.add_(p.grad, alpha=-lr)
    model = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 12), nn.ReLU(), nn.Linear(12, 4))
    res = {}
    for compile in (True, False):
        seen = []
        def look(i, opt):
            seen.append(box.p is opt.buffers.parts[0][0].param)
            box.p = None
        res[compile] = train(lambda ps: make_optimizer(ps, [noting_sgd], dict(lr=0.01), compile=compile), steps=8, model=copy.deepcopy(model), change=look)
        ft.test_eq(seen, [True] * 8)
    (c,) = res[True][1].passes.values()
    ft.test_eq((c.graphs_made, c.shortcut_ok, len(c.shortcut)), (1, True, 1))  # one graph, called straight into from the second step
    assert max_diff(res[True][0], res[False][0]) < 1e-6

def test_a_stance_set_on_torch_compile_is_obeyed():
    "`torch.compiler.set_stance('force_eager')` makes torch.compile run the Python: the compiled step then goes through it, not straight in."
    _, opt = train(lambda ps: Adam(ps, 0.01, compile=True), steps=4)
    (c,) = opt.passes.values()
    assert c.shortcut, "nothing to call straight into"
    calls = []
    fn = c.fn
    c.fn = lambda *a: calls.append(1) or fn(*a)
    opt.step()
    ft.test_eq(calls, [])
    torch.compiler.set_stance('force_eager')
    try: opt.step()
    finally: torch.compiler.set_stance('default')
    ft.test_eq(calls, [1])

def test_guards_this_torch_cannot_check_send_the_step_through_torch_compile():
    "A guard check that raises (a torch whose guards want other arguments) sends every later step through torch.compile, with the same numbers."
    def break_checks(i, opt):
        if i == 3:
            for c in opt.passes.values(): c.shortcut = [(lambda local: 1 / 0, run) for _, run in c.shortcut]
    ws, opt = train(lambda ps: Adam(ps, 0.01, compile=True), change=break_checks)
    assert opt.passes and not any(c.shortcut_ok for c in opt.passes.values())
    assert max_diff(ws, train(lambda ps: Adam(ps, 0.01, compile=False))[0]) < 1e-6
    ft.test_eq(compiled._made_code(lambda: None), [])  # a function torch.compile made nothing of

def test_on_an_untested_torch_the_step_goes_through_torch_compile(monkeypatch):
    "The shortcut into compiled code uses dynamo internals only on the torch releases it was tested on; elsewhere every call is torch.compile's."
    monkeypatch.setattr(compiled, '_SHORTCUT_TORCH', ((9, 0), (9, 9)))
    compiled._dynamo_internals.cache_clear()
    try:
        assert compiled._dynamo_internals() is None
        ws, opt = train(lambda ps: Adam(ps, 0.01, compile=True))
        assert opt.passes and all(c.fn is not None and c.shortcut == [] for c in opt.passes.values())
        assert compiled._graphs_made_in_process() is None and all(c.graphs_made == 0 for c in opt.passes.values())  # torch's own limit bounds them
        assert max_diff(ws, train(lambda ps: Adam(ps, 0.01))[0]) < 1e-6
    finally:
        monkeypatch.undo()
        compiled._dynamo_internals.cache_clear()
    assert compiled._dynamo_internals() is not None, f"torch {torch.__version__} is not among the releases the shortcut was tested on"

def test_a_torch_without_the_compiler_probes_still_compiles(monkeypatch):
    "The probes for a C++ compiler or Triton are torch internals: where this torch lacks one, compiling is tried (and a failure caught at the first step)."
    monkeypatch.delattr(torch._dynamo, 'is_dynamo_supported')
    assert compiled._missing_compiler(torch.device('cpu')) is None
    monkeypatch.undo()
    assert compiled._missing_compiler(torch.device('cpu')) is None  # this machine has g++
