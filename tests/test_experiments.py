import math

import pytest
import torch

from resnorm import experiments as E
from resnorm import probes

TINY = E.Budget(steps=4, batch_size=8, d_model=16, n_heads=2, d_ff=32, eval_examples=4, val_batches=1,
                log_every=1, n_test=400)


@pytest.fixture(scope="module")
def data():
    return E.Data(TINY)


# ----------------------------------------------------------------------------- rank collapse measure


def test_rank_one_residual_is_zero_for_identical_tokens_and_scale_free():
    row = torch.randn(1, 7)
    x = row.repeat(5, 1)
    assert probes.rank_one_residual(x) == pytest.approx(0.0, abs=1e-12)
    y = torch.randn(6, 9)
    assert probes.rank_one_residual(3.0 * y) == pytest.approx(probes.rank_one_residual(y), rel=1e-6)


def test_rank_one_residual_mean_is_the_frobenius_minimizer():
    # x = argmin ||X - 1 x^T||_F by least squares, computed without assuming it is the mean
    torch.manual_seed(0)
    X = torch.randn(8, 5, dtype=torch.float64) + torch.tensor([2.0, -1.0, 0.5, 0.0, 3.0], dtype=torch.float64)
    ones = torch.ones(8, 1, dtype=torch.float64)
    x = torch.linalg.lstsq(ones, X).solution
    expected = (X - ones @ x).norm() / X.norm()
    assert probes.rank_one_residual(X) == pytest.approx(float(expected), rel=1e-10)
    # and no other shift does better
    for _ in range(20):
        other = x + 0.1 * torch.randn_like(x)
        assert (X - ones @ other).norm() / X.norm() >= expected


def test_rank_one_residual_random_tokens_near_sqrt_one_minus_one_over_T():
    torch.manual_seed(1)
    T = 10
    value = probes.rank_one_residual(torch.randn(64, T, 256))
    assert value == pytest.approx(math.sqrt(1 - 1 / T), abs=0.01)


def test_rank_one_residual_composite_norm_by_hand():
    X = torch.tensor([[1.0, 0.0], [3.0, 4.0]])
    R = X - X.mean(0)  # [[-1, -2], [1, 2]]
    l1, linf = 4.0, 3.0  # |R|: column sums 2 and 4, row sums 3 and 3
    lx1, lxinf = 4.0, 7.0  # |X|: column sums 4 and 4, row sums 1 and 7
    expected = math.sqrt(l1 * linf) / math.sqrt(lx1 * lxinf)
    assert torch.equal(R, torch.tensor([[-1.0, -2.0], [1.0, 2.0]]))
    assert probes.rank_one_residual(X, norm="l1_linf") == pytest.approx(expected)


def test_rank_one_residual_ignores_padding_rows():
    torch.manual_seed(2)
    x = torch.randn(2, 5, 4)
    mask = torch.tensor([[False, False, False, True, True], [False] * 5])
    garbage = x.clone()
    garbage[0, 3:] = 1e6
    a = probes.rank_one_residual(x, mask)
    assert probes.rank_one_residual(garbage, mask) == pytest.approx(a)
    by_hand = (probes.rank_one_residual(x[0, :3]) + probes.rank_one_residual(x[1])) / 2
    assert a == pytest.approx(by_hand)


def test_rank_one_residual_bad_input():
    with pytest.raises(ValueError, match="norm must be one of"):
        probes.rank_one_residual(torch.randn(3, 4), norm="nuclear")
    with pytest.raises(ValueError, match=r"\(T, d\) or \(B, T, d\)"):
        probes.rank_one_residual(torch.randn(3))
    with pytest.raises(ValueError, match="mask must have shape"):
        probes.rank_one_residual(torch.randn(2, 3, 4), torch.zeros(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="two or more"):
        probes.rank_one_residual(torch.randn(1, 4))


def test_token_rms_by_hand():
    x = torch.tensor([[[3.0, 4.0], [100.0, 100.0]]])
    mask = torch.tensor([[False, True]])
    assert probes.token_rms(x, mask) == pytest.approx(math.sqrt(25 / 2))
    with pytest.raises(ValueError, match="every token is masked"):
        probes.token_rms(x, torch.ones(1, 2, dtype=torch.bool))


# ----------------------------------------------------------------------------- specs and bookkeeping


def test_spec_and_budget_validation():
    with pytest.raises(ValueError, match="n_layers must be positive"):
        E.RunSpec(n_layers=0)
    with pytest.raises(ValueError, match="warmup_steps"):
        E.RunSpec(warmup_steps=-1)
    with pytest.raises(ValueError, match="final_norm=False only applies to Pre-LN"):
        E.RunSpec(norm_first=False, final_norm=False)
    with pytest.raises(ValueError, match="divisible"):
        E.Budget(d_model=10, n_heads=4)
    with pytest.raises(ValueError, match="Budget.steps"):
        E.Budget(steps=0)
    assert E.RunSpec(norm_first=False, n_layers=6, lr=1e-3, warmup_steps=5).label == "Post-LN L6 lr1e-03 warmup"
    assert E.RunSpec(name="mine").label == "mine"


def test_is_diverged():
    assert E.is_diverged(5.0, [5.0, 4.0, float("nan")])
    assert E.is_diverged(5.0, [5.0, 6.0, 7.0])
    assert not E.is_diverged(5.0, [5.0, 4.0, 3.0])
    assert E.is_diverged(5.0, [])


def test_build_model_options(data):
    pre = E.build_model(E.RunSpec(norm_first=True, n_layers=2), TINY, data)
    assert pre.encoder.norm is not None and pre.decoder.norm is not None
    bare = E.build_model(E.RunSpec(norm_first=True, n_layers=2, final_norm=False), TINY, data)
    assert bare.encoder.norm is None and bare.decoder.norm is None
    same = E.build_model(E.RunSpec(norm_first=True, n_layers=2), TINY, data)
    assert all(torch.equal(a, b) for a, b in zip(pre.parameters(), same.parameters()))  # seeded
    with pytest.raises(ValueError, match="Post-LN rule"):
        E.build_model(E.RunSpec(norm_first=True, residual="deepnorm"), TINY, data)


def test_encoder_stream_matches_encode(data):
    model = E.build_model(E.RunSpec(norm_first=True, n_layers=3), TINY, data).eval()
    src, _, _, src_mask, _ = data.train_batches(0, 1)[0]
    stream = E.encoder_stream(model, src, src_mask)
    assert len(stream) == 4
    with torch.no_grad():
        torch.testing.assert_close(model.encoder.norm(stream[-1]), model.encode(src, src_mask))
        torch.testing.assert_close(stream[0], model.embed_src(src))


def test_init_grad_profile_matches_a_manual_backward(data):
    spec = E.RunSpec(norm_first=False, n_layers=2)
    profile = E.init_grad_profile(spec, TINY, data, seeds=(0,))
    assert set(profile) == {"encoder", "decoder"} and len(profile["decoder"]) == 2
    from resnorm.train import sequence_loss

    model = E.build_model(spec, TINY, data, 0)
    src, tgt_in, tgt_out, sm, tm = data.train_batches(0, 1)[0]
    sequence_loss(model(src, tgt_in, sm, tm), tgt_out, data.tgt_vocab.PAD, 0.1).backward()
    manual = model.decoder.layers[1].ff.linear2.weight.grad.norm().item()
    assert profile["decoder"][1] == pytest.approx(manual, rel=1e-6)


# ----------------------------------------------------------------------------- training


def test_train_run_is_deterministic_and_measures(data):
    spec = E.RunSpec(norm_first=True, n_layers=1, lr=3e-3, warmup_steps=1)
    a = E.train_run(spec, TINY, data, seed=0, probe_steps=(0, 2))
    b = E.train_run(spec, TINY, data, seed=0)
    assert a.steps_done == TINY.steps and a.curve == b.curve and a.final_loss == b.final_loss
    assert math.isfinite(a.final_loss) and 0.0 <= a.val_token_accuracy <= 1.0
    assert a.exact_match is not None and 0.0 <= a.exact_match <= 1.0
    assert sorted(a.grad_norms) == [0, 2] and len(a.grad_norms[0]["encoder"]) == 1
    row = a.row()
    assert row["placement"] == "Pre-LN" and row["steps"] == TINY.steps and row["hardware"]
    assert a.model is None and E.train_run(spec, TINY, data, seed=0, keep_model=True).model is not None


def test_train_run_flags_a_blown_up_run(data):
    # Adam with lr 50 and no clipping moves every weight by ~50 per step: the loss cannot improve.
    spec = E.RunSpec(norm_first=False, n_layers=1, lr=50.0, grad_clip=None)
    r = E.train_run(spec, TINY.__class__(**{**TINY.__dict__, "steps": 6, "eval_examples": 0}), data)
    assert r.diverged


def test_sweep_and_summarize(data):
    specs = [E.RunSpec(norm_first=True, n_layers=1, name="pre"), E.RunSpec(norm_first=False, n_layers=1, name="post")]
    budget = E.Budget(**{**TINY.__dict__, "eval_examples": 0})
    results = E.sweep(specs, seeds=(0, 1), budget=budget, data=data)
    assert [(r.spec.name, r.seed) for r in results] == [("pre", 0), ("pre", 1), ("post", 0), ("post", 1)]
    rows = E.summarize(results, metrics=("final_loss",))
    pre = rows[0]
    losses = [r.final_loss for r in results[:2] if not r.diverged]
    assert pre["config"] == "pre" and pre["runs"] == 2
    assert pre["final_loss_mean"] == pytest.approx(sum(losses) / len(losses))
    table = E.format_table(rows, metrics=("final_loss",))
    assert table.count("\n") == 3 and "| pre |" in table
    with pytest.raises(ValueError, match="at least one RunSpec"):
        E.sweep([], (0,), budget, data)


# ----------------------------------------------------------------------------- statistics and new probes


def test_t_quantiles_match_scipy():
    stats = pytest.importorskip("scipy.stats")
    for df in (1, 2, 3, 5, 7, 11, 20, 30, 60):
        assert E.t_quantile(df) == pytest.approx(stats.t.ppf(0.975, df), abs=2e-3)
    with pytest.raises(ValueError):
        E.t_quantile(0)


def test_mean_ci_and_paired_difference():
    mean, low, high = E.mean_ci([1.0, 2.0, 3.0])
    assert mean == 2.0 and high - mean == pytest.approx(4.303 * 1.0 / math.sqrt(3), rel=1e-3)
    assert math.isnan(E.mean_ci([5.0])[1])

    def run(name, seed, em):
        return E.RunResult(E.RunSpec(name=name), seed, 10, 5.0, 1.0, 1.0, 0.5, em, False, 1.0, "cpu")

    a = [run("a", s, 0.9 + 0.01 * s) for s in range(4)]
    b = [run("b", s, 0.5 + 0.01 * s) for s in range(4)]
    d = E.paired_difference(a, b, "exact_match")
    assert d["pairs"] == 4 and d["mean"] == pytest.approx(0.4) and d["verdict"] == "a > b"
    assert E.paired_difference(b, a, "exact_match")["verdict"] == "a < b"
    noisy = [run("c", s, 0.5 + (0.2 if s % 2 else -0.2)) for s in range(4)]
    assert E.paired_difference(noisy, b, "exact_match")["verdict"] == "no difference shown"


def test_loss_spikes():
    curve = list(enumerate([5.0, 3.0, 2.0, 1.0, 0.9, 2.0, 0.8, float("nan"), 0.7, 0.7]))
    assert E.loss_spikes(curve) == 2  # 2.0 > 1.5 * 0.9, and the NaN
    assert E.loss_spikes(list(enumerate([3.0, 2.0, 1.0]))) == 0


def test_update_sizes_are_recorded(data):
    r = E.train_run(E.RunSpec(n_layers=1, lr=1e-3), TINY, data, update_steps=(0, 3))
    assert sorted(r.update_sizes) == [0, 3] and all(0 < v < 1 for v in r.update_sizes.values())


def test_sweep_in_worker_processes_equals_in_process(data):
    budget = E.Budget(**{**TINY.__dict__, "eval_examples": 0})
    specs = [E.RunSpec(n_layers=1, name="pre")]
    here = E.sweep(specs, (0, 1), budget, data)
    there = E.sweep(specs, (0, 1), budget, data, workers=2, keep_models=True)
    assert [r.curve for r in here] == [r.curve for r in there]
    model = E.restore_model(there[0], budget, data)
    assert isinstance(model, torch.nn.Module) and there[0].model is None


def test_rank_collapse_without_shortcuts_and_not_with_them(data):
    batches = [data.val_batches[0]]
    kw = dict(n_layers=6, batches=batches, seeds=(0,), d_model=16, n_heads=2, src_vocab_size=len(data.src_vocab),
              device="cpu")
    bare = E.rank_collapse_profile("attention", False, "xavier", **kw)
    skip = E.rank_collapse_profile("attention", True, "xavier", **kw)
    assert len(bare["median"]) == 7 and bare["median"][0] == skip["median"][0]
    assert bare["median"][-1] < 1e-3 < skip["median"][-1]
    full = E.rank_collapse_profile("pre_ln", True, "gpt2", **kw)
    assert full["min"][-1] <= full["median"][-1] <= full["max"][-1]
    with pytest.raises(ValueError, match="kind"):
        E.rank_collapse_profile("mlp", True, "xavier", **kw)
