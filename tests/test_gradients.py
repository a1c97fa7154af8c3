import json

import pytest
import torch
from conftest import padded_batch, tiny_model
from test_training import _trainer

from seq2seq.models.memory import Memory
from seq2seq.models.model import sequence_loss
from seq2seq.tracking import JsonlTracker
from seq2seq.train.gradients import gradient_flow, layer_name, unrolled_encoder


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_the_unrolled_encoder_equals_the_fused_one(cell):
    model = tiny_model(cell, "luong_general", enc_layers=2)
    src, lens = padded_batch([5, 2, 7, 1])
    fused = model.encoder(src, lens)
    unrolled, states = unrolled_encoder(model.encoder, src, lens)
    assert torch.allclose(fused.states, unrolled.states, atol=1e-6)
    assert torch.allclose(fused.summary, unrolled.summary, atol=1e-6)
    assert torch.equal(fused.mask, unrolled.mask)
    assert len(states) == 7 and states[0].shape == (4, 6)


def _loss(out, tgt_out):
    return sequence_loss(out.logits, tgt_out)[0]


def test_per_position_norms_equal_autograd_on_a_hand_built_rnn():
    """dL/dh_t by hand: a tanh RNN written out, a zero perturbation added to each h_t, and autograd
    on the perturbations (the total derivative through every later step and the attention)."""
    model = tiny_model("rnn", "luong_general", bidirectional=False)
    lens = [3, 6, 12]  # buckets len_1-9 (two sentences) and len_10-19
    src, src_lens = padded_batch(lens)
    tgt = torch.randint(4, 24, (3, 5), generator=torch.Generator().manual_seed(1))
    tgt_in, tgt_out = tgt[:, :-1], tgt[:, 1:]
    rnn, embed = model.encoder.rnn, model.encoder.embed
    want = []
    for i, n in enumerate(lens):
        x = embed(src[i:i + 1, :n])  # (1, n, emb)
        deltas = [torch.zeros(1, 6, requires_grad=True) for _ in range(n)]
        h, states = torch.zeros(1, 6), []
        for t in range(n):
            h = torch.tanh(x[:, t] @ rnn.weight_ih_l0.T + rnn.bias_ih_l0 + h @ rnn.weight_hh_l0.T
                           + rnn.bias_hh_l0) + deltas[t]
            states.append(h)
        memory = Memory(torch.stack(states, dim=1), torch.ones(1, n, dtype=torch.bool), h)
        logits, _ = model.decoder(tgt_in[i:i + 1], memory)
        # the probe's loss is the mean over the batch's target tokens: weigh this sentence's mean alike
        loss = sequence_loss(logits, tgt_out[i:i + 1])[0] * tgt_out.size(1) / tgt_out.numel()
        want.append(torch.stack([g.norm() for g in torch.autograd.grad(loss, deltas)]).flip(0))
    flow = gradient_flow(model, (src, src_lens), tgt_in, lambda out: _loss(out, tgt_out))
    short = flow.by_distance["len_1-9"]
    assert len(short) == 6
    assert short[:3] == pytest.approx(((want[0] + want[1][:3]) / 2).tolist(), rel=1e-4)
    assert short[3:] == pytest.approx(want[1][3:].tolist(), rel=1e-4)
    assert flow.by_distance["len_10-19"] == pytest.approx(want[2].tolist(), rel=1e-4)
    ratios = [w[-1] / w[0] for w in want]
    assert flow.first_to_last == pytest.approx(float(sum(ratios) / 3), rel=1e-4)


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_the_explicit_recurrence_hands_the_probe_the_same_state_gradients(cell, monkeypatch):
    """With model.rnn_impl=explicit the probe reads dL/dh_t from the layer's own backward loop,
    instead of rerunning it step by step: the same curves and layer norms as PyTorch's layers."""
    import seq2seq.train.gradients as gradients

    fused, explicit = (tiny_model(cell, "bahdanau", enc_layers=2, rnn_impl=impl) for impl in ("torch", "explicit"))
    src, lens = padded_batch([3, 6, 12, 1])
    tgt = torch.randint(4, 24, (4, 5), generator=torch.Generator().manual_seed(3))
    want = gradient_flow(fused, (src, lens), tgt[:, :-1], lambda out: _loss(out, tgt[:, 1:]))
    monkeypatch.setattr(gradients, "unrolled_encoder", None)  # no step-by-step rerun for the explicit layers
    got = gradient_flow(explicit, (src, lens), tgt[:, :-1], lambda out: _loss(out, tgt[:, 1:]))
    assert set(got.by_distance) == set(want.by_distance) == {"len_1-9", "len_10-19"}
    for bucket, norms in want.by_distance.items():
        assert got.by_distance[bucket] == pytest.approx(norms, rel=1e-4, abs=1e-9)
    assert got.sentences == want.sentences and got.first_to_last == pytest.approx(want.first_to_last, rel=1e-4)
    assert got.layers == pytest.approx(want.layers, rel=1e-4)
    assert explicit.encoder.rnn._record is None and all(p.grad is None for p in explicit.parameters())


def test_layer_gradient_norms_match_the_parameters_gradients():
    model = tiny_model("lstm", "bahdanau", enc_layers=2)
    src, lens = padded_batch([4, 6])
    tgt = torch.randint(4, 24, (2, 6), generator=torch.Generator().manual_seed(2))
    flow = gradient_flow(model, (src, lens), tgt[:, :-1], lambda out: _loss(out, tgt[:, 1:]))
    model.zero_grad()
    _loss(model((src, lens), tgt[:, :-1]), tgt[:, 1:]).backward()
    rnn = model.encoder.rnn
    want = torch.cat([g.grad.flatten() for g in (rnn.weight_ih_l1_reverse, rnn.weight_hh_l1_reverse,
                                                 rnn.bias_ih_l1_reverse, rnn.bias_hh_l1_reverse)]).norm()
    assert flow.layers["encoder.rnn.l1_reverse"] == pytest.approx(float(want), rel=1e-4)
    assert flow.layers["decoder.out"] == pytest.approx(float(torch.cat(
        [model.decoder.out.weight.grad.flatten(), model.decoder.out.bias.grad]).norm()), rel=1e-4)
    assert set(flow.layers) >= {"encoder.embed", "encoder.rnn.l0", "decoder.attention.query_proj", "decoder.rnn.l0"}


def test_layer_names():
    assert layer_name("encoder.rnn.weight_hh_l1_reverse") == "encoder.rnn.l1_reverse"
    assert layer_name("decoder.rnn.bias_ih_l0") == "decoder.rnn.l0"
    assert layer_name("decoder.out.weight") == "decoder.out"


def test_the_probe_leaves_no_gradient_and_draws_no_random_numbers():
    model = tiny_model("gru", "luong_general", dropout=0.3).train()
    src, lens = padded_batch([4, 6])
    tgt = torch.randint(4, 24, (2, 6), generator=torch.Generator().manual_seed(2))
    rng = torch.get_rng_state()
    gradient_flow(model, (src, lens), tgt[:, :-1], lambda out: _loss(out, tgt[:, 1:]))
    assert torch.equal(rng, torch.get_rng_state())
    assert all(p.grad is None for p in model.parameters())
    assert model.training


def _count_backward(monkeypatch):
    calls = {"backward": 0, "grad": 0}
    backward, grad = torch.autograd.backward, torch.autograd.grad

    def counting_backward(*a, **k):
        calls["backward"] += 1
        return backward(*a, **k)

    def counting_grad(*a, **k):
        calls["grad"] += 1
        return grad(*a, **k)

    monkeypatch.setattr(torch.autograd, "backward", counting_backward)
    monkeypatch.setattr(torch.autograd, "grad", counting_grad)
    return calls


def test_with_the_probe_off_a_step_runs_one_backward_only(tmp_path, monkeypatch):
    calls = _count_backward(monkeypatch)
    _trainer(tmp_path, max_steps=6).train()
    assert calls == {"backward": 6, "grad": 0}


def test_a_run_with_the_probe_logs_gradient_flow_at_initialisation_and_every_n_steps(tmp_path, monkeypatch):
    calls = _count_backward(monkeypatch)
    torch.manual_seed(0)
    probed = _trainer(tmp_path / "on", JsonlTracker(tmp_path / "on.jsonl"), max_steps=6, gradient_flow_every=3)
    probed.train()
    assert calls == {"backward": 6, "grad": 3}  # steps 0, 3 and 6
    records = [json.loads(line) for line in (tmp_path / "on.jsonl").read_text().splitlines()]
    curves = [r for r in records if "gradient_flow/by_distance" in r]
    assert [r["step"] for r in curves] == [0, 3, 6]
    assert all(len(r["gradient_flow/by_distance"]["len_1-9"]) <= 7 for r in curves)
    scalars = [r for r in records if "gradient_flow/first_to_last" in r]
    assert [r["step"] for r in scalars] == [0, 3, 6] and scalars[0]["gradient_flow/seconds"] > 0
    torch.manual_seed(0)
    plain = _trainer(tmp_path / "off", max_steps=6)
    plain.train()
    for (name, a), (_, b) in zip(probed.model.state_dict().items(), plain.model.state_dict().items()):
        assert torch.equal(a, b), name  # the probe does not change training
