"""Tests of resnorm.train and resnorm.evaluate: configs, the loop, checkpoints, decoding, errors."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from resnorm import train
from resnorm.train import make_config, parse_args


# ---------------------------------------------------------------------------- configuration


def test_presets_differ_and_validate():
    quick, cpu, full = (make_config(p) for p in ("quick", "cpu", "full"))
    assert quick.steps < cpu.steps and quick.d_model < cpu.d_model < full.d_model
    assert full.compile and not cpu.compile
    # the GPU chapter's budget: at most 4 minutes of training, one padded shape for compile
    assert 0 < full.time_budget_s <= 240 and full.pad_multiple == 32 and full.fast
    for cfg in (quick, cpu, full):
        assert cfg.label_smoothing == 0.1


def test_default_preset_is_the_mode(monkeypatch):
    monkeypatch.setenv("RESNORM_MODE", "quick")
    assert make_config().preset == "quick"
    assert parse_args([]).steps == train.PRESETS["quick"]["steps"]


def test_key_value_overrides_are_typed():
    cfg = parse_args(["preset=cpu", "steps=7", "lr=3e-4", "compile=true", "precision=float32", "time_budget_s=2.5",
                      "batch_size=2e2", "out=x.pt"])
    assert (cfg.preset, cfg.steps, cfg.lr, cfg.compile, cfg.precision) == ("cpu", 7, 3e-4, True, "float32")
    assert cfg.time_budget_s == 2.5 and cfg.batch_size == 200 and cfg.out == "x.pt"
    # everything not overridden keeps the preset's value
    assert cfg.d_model == make_config("cpu").d_model


def test_unknown_key_lists_valid_keys():
    with pytest.raises(ValueError, match=r"unknown config key 'stepz'.*valid keys are:.*steps"):
        parse_args(["stepz=3"])
    with pytest.raises(ValueError, match="unknown config key"):
        make_config("quick", learning_rate=1.0)
    with pytest.raises(ValueError, match="key=value"):
        parse_args(["steps"])


def test_bad_values_are_rejected_early():
    with pytest.raises(ValueError, match="steps takes a int"):
        parse_args(["steps=many"])
    with pytest.raises(ValueError, match="precision must be one of"):
        parse_args(["precision=fp8"])
    with pytest.raises(ValueError, match="divisible by n_heads"):
        make_config("quick", d_model=30, n_heads=4)
    with pytest.raises(ValueError, match="unknown preset"):
        parse_args(["preset=huge"])


def test_cli_reports_config_errors_as_exit_message():
    with pytest.raises(SystemExit, match="unknown config key 'nope'"):
        train.main(["nope=1"])


def test_lr_schedule_warmup_peak_and_decay():
    cfg = make_config("cpu", steps=1000, warmup_steps=100, lr=1e-3, min_lr_ratio=0.1)
    factors = [train.lr_factor(cfg, s) for s in range(cfg.steps)]
    assert factors[0] == pytest.approx(1 / 100)
    assert max(factors) == pytest.approx(1.0) and factors.index(max(factors)) == 99
    assert all(a <= b for a, b in zip(factors[:100], factors[1:100]))  # warmup rises
    assert all(a >= b for a, b in zip(factors[100:], factors[101:]))  # then it only falls
    assert factors[-1] == pytest.approx(0.1, abs=1e-3)
    # a time budget drives the same curve by the fraction of time spent
    assert train.lr_factor(cfg, 500, progress=1.0) == pytest.approx(0.1)


# ---------------------------------------------------------------------------- the loop

import itertools

from resnorm import tasks
from resnorm.evaluate import OutsideTaskError, Translator, beam_search, exact_match
from resnorm.transformer import Transformer, TransformerConfig, greedy_decode

TINY = dict(d_model=32, n_heads=2, n_encoder_layers=1, n_decoder_layers=1, d_ff=64, n_test=70,
            eval_examples=16, progress=False)


@pytest.fixture(scope="module")
def data():
    return train.TaskData.build(make_config("quick", **TINY))


class OneBatch(train.TaskData):
    """The task's data, but the training stream repeats one fixed batch (an overfitting check)."""

    def stream(self, batch_size, seed, workers=0, pad_multiple=1):
        batch = tasks.encode_batch(tasks.generate(8, 123), self.src_vocab, self.tgt_vocab)
        return itertools.repeat((batch.src, batch.tgt_in, batch.tgt_out, batch.src_key_padding_mask,
                                 batch.tgt_key_padding_mask))


def test_training_steps_overfit_one_batch(data):
    one = OneBatch(data.src_vocab, data.tgt_vocab, data.valid, data.test, data.listed)
    cfg = make_config("quick", **TINY, steps=40, warmup_steps=2, lr=3e-3, log_interval=1, eval_interval=40,
                      label_smoothing=0.0)
    result = train.train(cfg, data=one)
    losses = [r["loss"] for r in result.log]
    assert len(losses) == 40 and losses[0] > 3.0
    assert losses[-1] < 0.5 * losses[0], losses  # the loop really optimizes
    assert result.log[-1]["token_accuracy"] > result.log[0]["token_accuracy"]
    assert result.log[-1]["val_exact_match"] is not None and result.log[0]["val_exact_match"] is None
    assert result.log[0]["lr"] < result.log[3]["lr"]  # warmup


def test_param_groups_skip_norms_biases_embeddings(data):
    model, _ = train.init_model(make_config("quick", **TINY), data)
    decay, no_decay = train.param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(names[id(p)].endswith("weight") and p.dim() == 2 for p in decay["params"])
    assert not any("embed" in names[id(p)] or "norm" in names[id(p)] for p in decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


# ---------------------------------------------------------------------------- checkpoints


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    cfg = make_config("quick", **TINY, steps=3, log_interval=1, eval_interval=3, out=str(path))
    return train.train(cfg, data=data), path


def test_checkpoint_round_trip_weights_only(trained, data):
    result, path = trained
    payload = torch.load(path, map_location="cpu", weights_only=True)  # plain types and tensors only
    assert payload["train_config"] == result.config.to_dict()
    assert payload["model_config"] == dataclasses.asdict(result.model_config)
    assert payload["resnorm_version"] == train.__version__ and len(payload["log"]) == 3
    model = train.build_model(payload)
    batch = tasks.encode_batch(data.test[:8], data.src_vocab, data.tgt_vocab)
    args = (batch.src, batch.tgt_in, batch.src_key_padding_mask, batch.tgt_key_padding_mask)
    result.model.eval()
    assert torch.equal(model(*args), result.model(*args))
    translator = Translator.load(path)
    assert translator.src_vocab == data.src_vocab and translator.tgt_vocab == data.tgt_vocab


def test_checkpoint_from_another_config_is_named(trained):
    _, path = trained
    payload = train.load_checkpoint(path)
    with pytest.raises(ValueError, match=r"differing fields: d_model: expected 64, checkpoint has 32"):
        train.build_model(payload, make_config("quick", **{**TINY, "d_model": 64}))
    other = TransformerConfig(**{**payload["model_config"], "n_decoder_layers": 2})
    with pytest.raises(ValueError, match="n_decoder_layers: expected 2, checkpoint has 1"):
        Translator.load(path, expected_config=other)
    # weights that do not fit the stored config (a hand-edited file) are caught as well
    payload["model_state"]["generator.weight"] = torch.zeros(3, 3)
    with pytest.raises(ValueError, match="do not fit"):
        train.build_model(payload)


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint at .*nothing.pt.*python -m resnorm.train"):
        train.load_checkpoint(tmp_path / "nothing.pt")
    junk = tmp_path / "junk.pt"
    torch.save({"x": torch.zeros(1)}, junk)
    with pytest.raises(ValueError, match="not a resnorm translator checkpoint"):
        train.load_checkpoint(junk)


def test_inputs_outside_the_task_are_refused(trained):
    translator = Translator.from_result(trained[0])
    with pytest.raises(OutsideTaskError, match=r"outside the task: the character\(s\) '今' '天'"):
        translator.translate("今天三点")
    with pytest.raises(OutsideTaskError, match="empty"):
        translator.translate("   ")
    with pytest.raises(OutsideTaskError, match="not one of its expressions"):
        translator.translate("万万")
    assert isinstance(translator.translate("三分之二"), str)  # well-formed input is accepted
    assert issubclass(OutsideTaskError, ValueError)


# ---------------------------------------------------------------------------- decoding


def _random_model(tgt_vocab_size=12, seed=0):
    torch.manual_seed(seed)
    cfg = TransformerConfig(src_vocab_size=15, tgt_vocab_size=tgt_vocab_size, d_model=32, n_heads=2, d_ff=64,
                            n_encoder_layers=1, n_decoder_layers=1, dropout=0.0)
    model = Transformer(cfg).eval()
    with torch.no_grad():  # scale the logits up so that the search has clear preferences
        model.generator.weight.mul_(8.0)
    return model


def test_beam_search_with_beam_one_is_greedy():
    model = _random_model()
    src = torch.randint(3, 15, (16, 9))
    src[:5, 6:] = 0
    mask = src == 0
    greedy = greedy_decode(model, src, 1, 2, 12, mask)
    beam = beam_search(model, src, 1, 2, 12, beam_size=1, src_key_padding_mask=mask)
    assert greedy.shape[1] > 3  # non-trivial outputs
    assert torch.equal(greedy, beam)


def test_wide_beam_finds_the_most_probable_sequence():
    """With beam_size >= V**(L-1) beam search is exhaustive: compare with brute force."""
    V, L = 5, 3
    model = _random_model(tgt_vocab_size=V, seed=3)
    src = torch.randint(3, 15, (4, 6))
    best = beam_search(model, src, 1, 2, L, beam_size=V ** (L - 1))
    memory = model.encode(src)
    for b in range(src.shape[0]):
        scores = {}
        for seq in itertools.product(range(V), repeat=L):
            if 2 in seq:
                seq = seq[:seq.index(2) + 1]
            if seq in scores:
                continue
            ids = torch.tensor([[1, *seq]])
            logp = model.decode(ids[:, :-1], memory[b:b + 1]).log_softmax(-1)[0]
            scores[seq] = sum(logp[t, tok].item() for t, tok in enumerate(seq))
        want = max(scores, key=scores.get)
        got = [t for t in best[b, 1:].tolist()]
        got = tuple(got[:got.index(2) + 1]) if 2 in got else tuple(got[:L])
        assert got == want, (b, got, want)


def test_exact_match_counts_whole_sequences(trained, data):
    result, _ = trained
    examples = data.test[:10]
    preds = Translator.from_result(result).translate([e.source for e in examples])
    want = sum(p == e.target for p, e in zip(preds, examples)) / 10
    assert exact_match(result.model, examples, data.src_vocab, data.tgt_vocab) == want
    with pytest.raises(ValueError, match="at least one example"):
        exact_match(result.model, [], data.src_vocab, data.tgt_vocab)


# ---------------------------------------------------------------------------- GPU-run features, checked on CPU


def test_wilson_interval_known_values():
    from resnorm.evaluate import wilson_interval

    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)  # the textbook example
    assert wilson_interval(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    low, high = wilson_interval(2857, 2857)
    assert high == 1.0 and 0.998 < low < 0.9990  # all right still leaves room for doubt
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


def test_pad_batch_gives_one_shape_and_masks_the_padding(data):
    b = tasks.encode_batch(tasks.generate(5, 1), data.src_vocab, data.tgt_vocab)
    batch = (b.src, b.tgt_in, b.tgt_out, b.src_key_padding_mask, b.tgt_key_padding_mask)
    src, tgt_in, tgt_out, src_mask, tgt_mask = train.pad_batch(batch, 32)
    assert src.shape[1] == tgt_in.shape[1] == 32 and tgt_out.shape == tgt_in.shape
    assert torch.equal(src[:, :b.src.shape[1]], b.src) and (src[:, b.src.shape[1]:] == tasks.PAD).all()
    assert src_mask[:, b.src.shape[1]:].all() and tgt_mask[:, b.tgt_out.shape[1]:].all()
    assert torch.equal(src_mask, src == tasks.PAD) and torch.equal(tgt_mask, tgt_out == tasks.PAD)
    assert train.pad_batch(batch, 1) is batch


def test_padding_does_not_change_the_loss(data):
    model, _ = train.init_model(make_config("quick", **TINY), data)
    b = tasks.encode_batch(tasks.generate(6, 2), data.src_vocab, data.tgt_vocab)
    batch = (b.src, b.tgt_in, b.tgt_out, b.src_key_padding_mask, b.tgt_key_padding_mask)
    losses = []
    for multiple in (1, 32):
        src, tgt_in, tgt_out, sm, tm = train.pad_batch(batch, multiple)
        losses.append(float(train.sequence_loss(model(src, tgt_in, sm, tm), tgt_out, tasks.PAD, 0.1).detach()))
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


def test_hooks_compile_probe_and_padded_stream_run_on_cpu(data):
    cfg = make_config("quick", **TINY, steps=14, compile=True, pad_multiple=32, fast=True, log_interval=7,
                      eval_interval=14)
    seen = {"backward": [], "step": []}

    def on_backward(step, model):
        assert model.encoder.layers[0].ff.linear2.weight.grad is not None
        seen["backward"].append(step)

    result = train.train(cfg, data=data, on_backward=on_backward,
                         on_step=lambda step, model, loss: seen["step"].append((step, float(loss))))
    assert seen["backward"] == list(range(14)) and [s for s, _ in seen["step"]] == list(range(14))
    report = result.compile_report
    assert report["backend"] == "eager" and report["eager_ms_per_step"] > 0 and report["compiled_ms_per_step"] > 0
    assert report["graphs"] >= 1 and report["decision"] in ("compiled", "eager (compiled steps were not faster)")
    assert not result.diverged and result.log[-1]["val_exact_match"] is not None


def test_the_schedule_follows_whichever_budget_is_nearer_its_end():
    cfg = make_config("quick", steps=1000, warmup_steps=0, time_budget_s=60.0)
    # 90 % of the steps but 10 % of the time: the step budget decides; and the other way round.
    assert train.lr_factor(cfg, 900, progress=0.1) == pytest.approx(train.lr_factor(cfg, 900))
    assert train.lr_factor(cfg, 100, progress=0.9) == pytest.approx(train.lr_factor(cfg, 900))
    assert train.lr_factor(cfg, 100, progress=0.9) < train.lr_factor(cfg, 100)


def test_cuda_graphs_on_a_cpu_fall_back_to_eager_and_say_why(data):
    cfg = make_config("quick", **TINY, steps=12, cuda_graphs=True, pad_multiple=32, log_interval=6, eval_interval=12)
    result = train.train(cfg, data=data, device="cpu")
    assert result.compile_report["decision"] == "eager (CUDA graphs need a CUDA device)"
    assert result.log[-1]["step"] == 12 and not result.diverged


def test_compile_and_cuda_graphs_exclude_each_other():
    with pytest.raises(ValueError, match="exclude each other"):
        make_config("quick", compile=True, cuda_graphs=True)


def test_the_graph_path_of_the_loop_runs_with_a_stand_in_capture(data, monkeypatch):
    # The real capture needs a GPU (see the GPU test below); a stand-in that returns the module
    # unchanged runs everything around it: the sample batch, the dispatch, the timing, the report.
    captured = []

    def stand_in(module, args, **kwargs):
        captured.append([tuple(a.shape) for a in args])
        return module

    monkeypatch.setattr(train, "_can_capture", lambda device: True)
    monkeypatch.setattr(train, "_PRIMED", set())  # a fresh process: its first capture is a throwaway
    monkeypatch.setattr(torch.cuda, "make_graphed_callables", stand_in)
    cfg = make_config("quick", **TINY, steps=30, cuda_graphs=True, pad_multiple=32, log_interval=10,
                      eval_interval=30)
    seen = []
    result = train.train(cfg, data=data, device="cpu", on_backward=lambda step, model: seen.append(step))
    report = result.compile_report
    assert len(captured) == 2 and captured[0] == [(32, 64)]  # the priming capture, then the model's
    assert report["priming_capture"] == "ok"
    assert all(shape[-1] == 32 for shape in captured[1])  # one padded shape, 32 tokens
    assert report["method"] == "cuda_graphs" and report["capture_s"] is not None
    assert "capture_mode" in report and "stale_stream_override" in report
    assert report["eager_ms_per_step"] > 0 and report["graphed_ms_per_step"] > 0
    assert report["decision"] in ("cuda graphs", "eager (cuda graphs steps were not faster)")
    if report["decision"] == "cuda graphs":
        capture_step = 1 + max(2, 30 // 8)  # the probe times eager steps [1, 4), then captures
        assert report["graph_replays"] == 30 - capture_step  # every step from the capture on
        assert report["capture_attempts"] == 1
    assert seen == list(range(30)) and result.log[-1]["step"] == 30 and not result.diverged


def test_a_failed_capture_is_retried_then_falls_back_to_eager(data, monkeypatch):
    attempts = []

    def flaky(module, args, **kwargs):
        attempts.append(1)
        if len(attempts) == 1:  # the first capture in a process failed on an H200
            raise RuntimeError("operation failed due to a previous error during capture")
        return module

    monkeypatch.setattr(train, "_can_capture", lambda device: True)
    monkeypatch.setattr(train, "_PRIMED", {"cpu"})  # this process has captured before: no priming
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    monkeypatch.setattr(torch.cuda, "make_graphed_callables", flaky)
    cfg = make_config("quick", **TINY, steps=30, cuda_graphs=True, pad_multiple=32, log_interval=10,
                      eval_interval=30)
    report = train.train(cfg, data=data, device="cpu").compile_report
    assert report["capture_attempts"] == 2 and "previous error" in report["capture_errors"][0]
    assert "priming_capture" not in report

    # In a fresh process the throwaway capture meets the first failure, and the model's succeeds.
    attempts.clear()
    monkeypatch.setattr(train, "_PRIMED", set())
    report = train.train(cfg, data=data, device="cpu").compile_report
    assert "previous error" in report["priming_capture"]
    assert report["capture_attempts"] == 1 and "capture_errors" not in report

    def broken(module, args, **kwargs):
        raise RuntimeError("capture is broken")

    monkeypatch.setattr(torch.cuda, "make_graphed_callables", broken)
    result = train.train(cfg, data=data, device="cpu")
    report = result.compile_report
    assert report["decision"].startswith("eager (capture failed: RuntimeError: capture is broken")
    assert len(report["capture_errors"]) == train._SpeedProbe.CAPTURE_ATTEMPTS
    assert result.log[-1]["step"] == 30 and not result.diverged


def test_no_autograd_graph_of_an_earlier_step_is_alive_when_the_capture_starts(data, monkeypatch):
    # A graph kept alive keeps its AccumulateGrad nodes, whose stream a capture must not reuse.
    import gc

    def graphs_alive():  # plain tensors that are the output of an autograd graph
        gc.collect()
        return {id(o) for o in gc.get_objects() if type(o) is torch.Tensor and o.grad_fn is not None}

    before = graphs_alive()  # left over by other tests, not this run's
    alive = []

    def stand_in(module, args, **kwargs):
        alive.extend(graphs_alive() - before)
        return module

    monkeypatch.setattr(train, "_can_capture", lambda device: True)
    monkeypatch.setattr(torch.cuda, "make_graphed_callables", stand_in)
    cfg = make_config("quick", **TINY, steps=12, cuda_graphs=True, pad_multiple=32, log_interval=6, eval_interval=12)
    train.train(cfg, data=data, device="cpu")
    assert alive == []


def test_captures_run_in_thread_local_mode_whichever_way_torch_allows(monkeypatch):
    # In "global" mode the DataLoader's pin-memory thread can invalidate a capture; the loop
    # asks for "thread_local", as an argument where torch takes one, else as torch.cuda.graph's default.
    seen = {}

    def with_argument(module, sample, allow_unused_input=False, capture_error_mode="global"):
        seen["argument"] = capture_error_mode
        return module

    monkeypatch.setattr(torch.cuda, "make_graphed_callables", with_argument)
    report = {}
    train._make_graphed(torch.nn.Linear(2, 2), (torch.ones(1, 2),), report)
    assert seen["argument"] == "thread_local" and report["capture_mode"] == "thread_local (argument)"

    class RecordingGraph:  # stands in for torch.cuda.graph, which needs a GPU to construct
        def __init__(self, cuda_graph, pool=None, stream=None, capture_error_mode="global"):
            seen["graph"] = capture_error_mode

    def without_argument(module, sample, allow_unused_input=False):
        made = torch.cuda.graph(object(), pool=None)  # as make_graphed_callables opens its captures
        seen["class"] = type(made)  # torch.cuda.graph's own class: it keeps one capture stream per class
        return module

    monkeypatch.setattr(torch.cuda, "graph", RecordingGraph)
    monkeypatch.setattr(torch.cuda, "make_graphed_callables", without_argument)
    report = {}
    train._make_graphed(torch.nn.Linear(2, 2), (torch.ones(1, 2),), report)
    assert seen["graph"] == "thread_local" and seen["class"] is RecordingGraph
    assert report["capture_mode"] == "thread_local (lent to torch.cuda.graph)"
    assert torch.cuda.graph is RecordingGraph  # given back after the call
    torch.cuda.graph(object())
    assert seen["graph"] == "global"


def test_warnings_raised_during_a_capture_go_into_the_report(monkeypatch):
    import warnings

    def noisy(module, sample, **kwargs):
        warnings.warn("The AccumulateGrad node's stream does not match", UserWarning)
        raise RuntimeError("operation failed due to a previous error during capture")

    monkeypatch.setattr(torch.cuda, "make_graphed_callables", noisy)
    report = {}
    with pytest.raises(RuntimeError, match="previous error"):
        train._make_graphed(torch.nn.Linear(2, 2), (torch.ones(1, 2),), report)
    assert report["capture_warnings"] == ["UserWarning: The AccumulateGrad node's stream does not match"]


def test_the_installed_torch_opens_its_captures_with_torch_cuda_graph():
    # Lending the mode works only if make_graphed_callables looks torch.cuda.graph up when it
    # captures; if a torch release changes that (or takes the argument), this test says so.
    import inspect

    make = torch.cuda.make_graphed_callables
    takes_argument = "capture_error_mode" in inspect.signature(make).parameters
    assert takes_argument or "torch.cuda.graph(" in inspect.getsource(make)


def test_stale_streams_are_overridden_during_a_capture_only(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.autograd.graph, "set_override_stale_capture_stream", calls.append, raising=False)

    def capture(module, sample, **kwargs):
        calls.append("capture")
        return module

    monkeypatch.setattr(torch.cuda, "make_graphed_callables", capture)
    report = {}
    train._make_graphed(torch.nn.Linear(2, 2), (torch.ones(1, 2),), report)
    assert calls == [True, "capture", False] and report["stale_stream_override"] is True
    monkeypatch.delattr(torch.autograd.graph, "set_override_stale_capture_stream")
    report = {}
    train._make_graphed(torch.nn.Linear(2, 2), (torch.ones(1, 2),), report)
    assert report["stale_stream_override"] is False


def test_a_run_stopped_by_its_time_budget_after_a_log_record_is_still_evaluated(data):
    # Every step is logged, none evaluated, so the time budget stops the run just after a log
    # record; the run's last record must still carry its exact match (a run scored 0 without it).
    cfg = make_config("quick", **TINY, steps=10**6, time_budget_s=1.5, log_interval=1, eval_interval=10**9)
    result = train.train(cfg, data=data, device="cpu")
    assert 1 < result.log[-1]["step"] < 10**6
    assert result.log[-1]["val_exact_match"] is not None
    assert len({r["step"] for r in result.log}) == len(result.log)  # no record written twice


def test_the_graphed_forward_replays_only_the_captured_shape_with_autograd():
    import contextlib

    calls = []

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(()))

        def forward(self, src, tgt_in, src_mask, tgt_mask):
            calls.append("model")
            return self.w * src.float()

    def capture(module, args):
        def replay(*a):
            calls.append("graph")
            return module(*a)
        return replay

    model = Model()
    batch = lambda n: (torch.ones(2, n), torch.ones(2, n), torch.zeros(2, n, dtype=torch.bool),  # noqa: E731
                       torch.zeros(2, n, dtype=torch.bool))
    graphed = train._GraphedForward(model, batch(4), contextlib.nullcontext(), capture=capture)
    graphed(*batch(4))
    assert calls == ["graph", "model"] and graphed.replays == 1
    calls.clear()
    graphed(*batch(5))  # another shape: eager
    with torch.no_grad():
        graphed(*batch(4))  # no autograd (an evaluation): eager
    assert calls == ["model", "model"] and graphed.replays == 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA GPU")
def test_cuda_graphs_train_like_eager_on_a_gpu(data):
    # Same seed, same batches: graphed steps must give the eager losses (up to bf16 rounding).
    kw = dict(**TINY, steps=60, pad_multiple=32, log_interval=5, eval_interval=60)
    eager = train.train(make_config("quick", **kw), data=data)
    graphed = train.train(make_config("quick", **kw, cuda_graphs=True), data=data)
    report = graphed.compile_report
    assert report["decision"] in ("cuda graphs", "eager (cuda graphs steps were not faster)"), report
    assert report["capture_s"] is not None
    a = [r["loss"] for r in eager.log]
    b = [r["loss"] for r in graphed.log]
    assert len(a) == len(b) and all(abs(x - y) <= 0.02 * abs(x) + 1e-3 for x, y in zip(a, b)), (a, b)


def test_a_diverging_run_stops_and_says_so(data):
    cfg = make_config("quick", **TINY, steps=40, log_interval=2, eval_interval=40)

    def poison(step, model, loss):
        if step == 5:
            with torch.no_grad():
                model.generator.weight.fill_(float("nan"))

    result = train.train(cfg, data=data, on_step=poison)
    assert result.diverged and result.diverged_step == 8 and result.log[-1]["step"] == 8


def test_model_options_reach_the_model(data):
    cfg = make_config("quick", **TINY, norm_first=False, norm="rmsnorm", residual="deepnorm", init="deepnorm")
    model, mcfg = train.init_model(cfg, data)
    assert (mcfg.norm, mcfg.residual, mcfg.init, mcfg.norm_first) == ("rmsnorm", "deepnorm", "deepnorm", False)
    no_final = train.init_model(make_config("quick", **TINY, final_norm=False), data)[0]
    assert no_final.encoder.norm is None and no_final.decoder.norm is None
    with pytest.raises(ValueError, match="final_norm=False"):
        make_config("quick", norm_first=False, final_norm=False)
    with pytest.raises(ValueError, match="norm must be one of"):
        make_config("quick", norm="batchnorm")


def test_bf16_checkpoint_of_a_fast_model_loads_into_the_teaching_model(data, tmp_path):
    cfg = make_config("quick", **TINY, steps=3, fast=True)
    result = train.train(cfg, data=data)
    path = train.save_checkpoint(tmp_path / "m.pt", result, dtype=torch.bfloat16)
    payload = train.load_checkpoint(path)
    assert payload["weights_dtype"] == "bfloat16" and payload["model_config"]["fast"] is False
    assert all(v.dtype == torch.bfloat16 for v in payload["model_state"].values() if v.is_floating_point())
    model = train.build_model(payload)
    assert not model.config.fast
    rounded = {k: v.to(torch.bfloat16).float() for k, v in result.model.state_dict().items()}
    assert all(torch.equal(model.state_dict()[k], rounded[k]) for k in rounded)


def test_smoke_switch_shrinks_the_full_preset_and_keeps_its_code_paths(monkeypatch):
    from resnorm import runtime

    monkeypatch.setenv("RESNORM_MODE", "full")
    monkeypatch.setenv("RESNORM_SMOKE", "1")
    assert runtime.smoke() and runtime.pick(quick=1, cpu=2, full=3) == 1
    cfg = make_config("full")
    assert cfg.d_model == train.PRESETS["quick"]["d_model"] and cfg.steps == train.PRESETS["quick"]["steps"]
    assert cfg.compile and cfg.fast and cfg.pad_multiple == 32 and cfg.data_workers > 0
    monkeypatch.setenv("RESNORM_MODE", "cpu")
    assert not runtime.smoke() and make_config("full").d_model == train.PRESETS["full"]["d_model"]
    monkeypatch.setenv("RESNORM_SMOKE", "maybe")
    with pytest.raises(ValueError, match="RESNORM_SMOKE"):
        runtime.smoke()


def test_a_compiler_failure_falls_back_to_eager_and_is_reported(data, monkeypatch):
    def broken_compile(model, **kwargs):
        def fail(*args, **kw):
            raise RuntimeError("no C compiler")
        return fail

    monkeypatch.setattr(torch, "compile", broken_compile)
    cfg = make_config("quick", **TINY, steps=12, compile=True, log_interval=6, eval_interval=12)
    result = train.train(cfg, data=data)
    assert result.compile_report["decision"].startswith("eager (compile failed: RuntimeError: no C compiler")
    assert result.log[-1]["step"] == 12 and not result.diverged
