"Properties that must hold for any input, checked with hypothesis over many generated cases."
import math
import torch
from hypothesis import given, settings, strategies as st
from exp_lib.all import (Dataset, DataLoader, Sampler, sched_lin, sched_cos, sched_no, sched_exp, combine_scheds,
                         SGD, Adam, RMSProp, Optimizer)

# These machines are shared and noisy: one slow case is load, not a bug, so no per-case deadline.
settings.register_profile('exp_lib', deadline=None)
settings.load_profile('exp_lib')

def ds(n): return Dataset(torch.arange(n).float().unsqueeze(1), torch.arange(n))

@given(n=st.integers(1, 500), bs=st.integers(1, 600), shuffle=st.booleans())
def test_sampler_yields_every_index_once_per_epoch(n, bs, shuffle):
    s = Sampler(ds(n), bs, shuffle=shuffle)
    for _ in range(2):
        batches = list(s)
        assert sorted(torch.cat(batches).tolist()) == list(range(n))
        assert all(len(b) == bs for b in batches[:-1]) and 1 <= len(batches[-1]) <= bs
        assert len(batches) == len(s)

@given(n=st.integers(1, 500), bs=st.integers(1, 600), drop_last=st.booleans(), shuffle=st.booleans())
def test_dataloader_batch_sizes(n, bs, drop_last, shuffle):
    dl = DataLoader(ds(n), bs, shuffle=shuffle, drop_last=drop_last)
    sizes = [len(yb) for _, yb in dl]
    assert len(sizes) == len(dl)
    full, rest = divmod(n, bs)
    assert sizes == [bs] * full + ([] if drop_last or not rest else [rest])
    xs = torch.cat([xb for xb, _ in dl]) if sizes else torch.zeros(0, 1)
    assert len(set(xs.squeeze(1).tolist())) == len(xs)

finite = st.floats(-1e6, 1e6, allow_nan=False)
positive = st.floats(1e-6, 1e6)
pos = st.floats(0, 1)

def between(v, a, b): return min(a, b) - 1e-9 * (1 + abs(a) + abs(b)) <= v <= max(a, b) + 1e-9 * (1 + abs(a) + abs(b))

@given(a=finite, b=finite, p=pos, sched=st.sampled_from([sched_lin, sched_cos, sched_no]))
def test_annealers_stay_between_their_endpoints(a, b, p, sched):
    f = sched(a, b)
    assert between(f(p), a, b)
    assert f(0.) == a and f(1.) == (a if sched is sched_no else b)

@given(a=positive, b=positive, p=pos, sign=st.sampled_from([1, -1]))
def test_sched_exp_stays_between_and_hits_its_endpoints(a, b, p, sign):
    f = sched_exp(sign * a, sign * b)
    assert between(f(p), sign * a, sign * b)
    assert f(0.) == sign * a and f(1.) == sign * b

@st.composite
def pieces(draw):
    n = draw(st.integers(1, 5))
    raw = draw(st.lists(st.one_of(st.just(0.), st.floats(1e-3, 1)), min_size=n, max_size=n).filter(lambda w: sum(w) > 0))
    pcts = [w / sum(raw) for w in raw]
    ends = draw(st.lists(finite, min_size=n + 1, max_size=n + 1))
    kinds = draw(st.lists(st.sampled_from([sched_lin, sched_cos]), min_size=n, max_size=n))
    return pcts, [k(a, b) for k, a, b in zip(kinds, ends, ends[1:])], ends

@given(pieces(), pos)
def test_combine_scheds_is_continuous_for_continuous_pieces(spec, p):
    pcts, scheds, ends = spec
    f = combine_scheds(pcts, scheds)
    scale = 1 + max(abs(e) for e in ends)
    h = 1e-7
    assert abs(f(min(p + h, 1.)) - f(p)) <= 1e-3 * scale
    assert f(0.) == ends[min(i for i, w in enumerate(pcts) if w > 0)]
    last = max(i for i, w in enumerate(pcts) if w > 0)
    assert f(1.) == ends[last + 1]

@given(sizes=st.lists(st.lists(st.integers(1, 6), min_size=1, max_size=4), min_size=1, max_size=4),
       make=st.sampled_from([lambda g: SGD(g, 0.1, mom=0.9), lambda g: Adam(g, 0.01), lambda g: RMSProp(g, 0.01, mom=0.5)]),
       steps=st.integers(0, 3))
@settings(max_examples=50, deadline=None)
def test_optimizer_state_dict_round_trips(sizes, make, steps):
    torch.manual_seed(0)
    groups = [[torch.randn(s, requires_grad=True) for s in g] for g in sizes]
    opt = make(groups)
    for gi, g in enumerate(groups): opt.param_groups[gi]['lr'] = 0.01 * (gi + 1)
    for _ in range(steps):
        for p in (p for g in groups for p in g): p.grad = torch.randn_like(p)
        opt.step()
    clone = make([[p.detach().clone().requires_grad_() for p in g] for g in groups])
    clone.load_state_dict(opt.state_dict())
    a, b = opt.state_dict(), clone.state_dict()
    assert a['hypers'] == b['hypers'] and a['state'].keys() == b['state'].keys()
    for i in a['state']:
        for k, v in a['state'][i].items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(b['state'][i][k])), (i, k)
