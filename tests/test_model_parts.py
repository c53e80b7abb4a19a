"""Each formula of GRSer against a plain float64 reference written here."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gres_cli.errors import GresError
from gres_cli.model.config import GRSerConfig
from gres_cli.model.grser import GRSer, presence
from gres_cli.model.hierarchizer import expert_order
from gres_cli.model.tqm import TriphasicQueryModule


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-6 * 1e-6))


def test_tqm_heatmaps_and_prototypes_match_reference():
    torch.manual_seed(0)
    n, c, cl, h, w = 4, 6, 5, 3, 2
    tqm = TriphasicQueryModule(cl, c).double()
    v = torch.randn(1, n, c, h, w, dtype=torch.float64)
    sentence = torch.randn(1, cl, dtype=torch.float64)
    m_l = tqm.language_heatmap(v[0], sentence.expand(n, -1))
    p = tqm.prototypes(v[0], m_l)
    m_v = tqm.visual_heatmaps(v, p[None])[0]

    wl = tqm.w_l.weight.detach().numpy()
    bl = tqm.w_l.bias.detach().numpy()
    lp = wl @ sentence[0].numpy() + bl  # L' = w_l(L)
    vn = v[0].numpy()
    for i in range(n):
        ref_ml = np.array([[_cos(vn[i, :, y, x], lp) for x in range(w)] for y in range(h)])
        np.testing.assert_allclose(m_l[i].detach().numpy(), ref_ml, atol=1e-9)
        ref_p = (vn[i] * ref_ml[None]).mean(axis=(1, 2))
        np.testing.assert_allclose(p[i].detach().numpy(), ref_p, atol=1e-9)
    pn = p.detach().numpy()
    for i in range(n):
        for j in range(n):
            ref = np.array([[_cos(vn[i, :, y, x], pn[j]) for x in range(w)] for y in range(h)])
            np.testing.assert_allclose(m_v[i, j].detach().numpy(), ref, atol=1e-9)


def _reference_order(s_pos: list[float], s_neg: list[float]) -> list[int]:
    n = len(s_pos)
    r_pos = {i: r for r, i in enumerate(sorted(range(n), key=lambda i: (s_pos[i], i)))}
    r_neg = {i: r for r, i in enumerate(sorted(range(n), key=lambda i: (-s_neg[i], i)))}
    return sorted(range(n), key=lambda i: (r_pos[i] + r_neg[i], s_pos[i] - s_neg[i], i))


@pytest.mark.parametrize("seed", range(5))
def test_hierarchizer_order_matches_rank_sum_reference(seed: int):
    rng = np.random.default_rng(seed)
    s_pos, s_neg = rng.random(7), rng.random(7)
    got = expert_order(torch.tensor(s_pos), torch.tensor(s_neg)).tolist()
    assert got == _reference_order(list(s_pos), list(s_neg))


def test_hierarchizer_ties_are_deterministic():
    s = torch.tensor([0.5, 0.5, 0.5, 0.5])
    assert expert_order(s, s).tolist() == [0, 1, 2, 3]
    s_pos = torch.tensor([0.3, 0.1, 0.3, 0.2])
    s_neg = torch.tensor([0.9, 0.9, 0.9, 0.8])
    first = expert_order(s_pos, s_neg).tolist()
    assert first == expert_order(s_pos.clone(), s_neg.clone()).tolist()
    assert first == _reference_order(s_pos.tolist(), s_neg.tolist())


def test_negative_heavy_group_ranks_the_one_positive_first():
    # one prototype close to L and far from L_anti; the rest (negatives) the other way round
    s_pos = torch.tensor([0.9, 0.8, 0.1, 0.95, 0.85])
    s_neg = torch.tensor([0.2, 0.3, 1.0, 0.1, 0.25])
    assert expert_order(s_pos, s_neg)[0].item() == 2


def test_invalid_images_are_never_first():
    s_pos = torch.tensor([[0.1, 0.5, 0.9]])
    s_neg = torch.tensor([[0.9, 0.5, 0.1]])
    valid = torch.tensor([[False, True, True]])
    assert expert_order(s_pos, s_neg, valid).tolist() == [[1, 2, 0]]


def test_margin_never_adds_positives():
    rng = np.random.default_rng(0)
    d_pos, d_neg = torch.tensor(rng.random(200)), torch.tensor(rng.random(200))
    previous = presence(d_pos, d_neg, -1.0)
    for m in np.linspace(-1, 1, 21):
        now = presence(d_pos, d_neg, float(m))
        assert not (now & ~previous).any()
        assert torch.equal(now, d_pos + float(m) < d_neg)
        previous = now


@pytest.fixture(scope="module")
def tiny() -> GRSer:
    torch.manual_seed(0)
    return GRSer(GRSerConfig.preset("grser-tiny", image_size=64, swin_window_size=4)).eval()


def test_forward_shapes(tiny: GRSer):
    x = torch.randn(2, 3, 3, 64, 64)
    out = tiny(x, ["the red circle", "a blue square"])
    assert out.mask_logits.shape == (2, 3, 64, 64)
    assert out.d_pos.shape == out.d_neg.shape == (2, 3)
    assert out.heatmaps.shape[:3] == (2, 3, tiny.config.experts)
    assert out.expert_order.shape == (2, 3)  # N < K: every image is an expert
    with torch.no_grad():
        as_list = tiny(list(x[0]), "the red circle")
        as_tensor = tiny(x[0], "the red circle")
    assert torch.equal(as_list.mask_logits, as_tensor.mask_logits)


@torch.no_grad()
def test_permutation_equivariance(tiny: GRSer):
    torch.manual_seed(1)
    x = torch.randn(5, 3, 64, 64)
    perm = torch.tensor([3, 0, 4, 1, 2])
    a = tiny(x, "the red circle")
    b = tiny(x[perm], "the red circle")
    torch.testing.assert_close(b.mask_logits[0], a.mask_logits[0][perm], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(b.d_pos[0], a.d_pos[0][perm], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(b.d_neg[0], a.d_neg[0][perm], atol=1e-5, rtol=1e-5)
    assert perm[b.expert_order[0]].tolist() == a.expert_order[0].tolist()


@torch.no_grad()
def test_two_pass_equals_all_pairs_for_small_groups(tiny: GRSer):
    torch.manual_seed(2)
    x = torch.randn(4, 3, 64, 64)  # N = K
    text = tiny.encode_text(["the small red circle"])
    full = tiny(x, text)
    scores = tiny.expert_scores(x, text)
    experts = scores.prototypes[tiny.select_experts(scores)]
    two = torch.cat([tiny.query(c, text, experts).mask_logits[0] for c in x.split(3)])
    torch.testing.assert_close(two, full.mask_logits[0], atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_fixed_expert_slots_equal_zero_padded_heatmaps(tiny: GRSer):
    """Pass 2 always takes K expert slots (what query.onnx runs): with K' < K experts it
    gives what zero-padding the K' heatmaps to K channels gave before, and padding slots count
    for nothing whatever they hold."""
    import torch.nn.functional as F

    from gres_cli.model.grser import expert_slots

    torch.manual_seed(4)
    x = torch.randn(3, 3, 64, 64)
    text = tiny.encode_text(["the small red circle"])
    enc = tiny.encode(x, text)
    scores = tiny.expert_scores(x, text, enc)
    k = tiny.config.experts
    v = enc.maps[tiny.config.query_stage]
    sentence, anti = text.sentence.expand(3, -1), text.anti.expand(3, -1)
    for kept in range(1, k):
        experts = scores.prototypes[tiny.select_experts(scores, kept)]
        out = tiny.query(None, text, experts, enc)
        heat = tiny.tqm.visual_heatmaps(v[None], experts[None])[0]  # the K' heatmaps
        padded = F.pad(heat, (0, 0, 0, 0, 0, k - kept))
        logits, *_, d_pos, d_neg = tiny._decode(enc.maps, padded, sentence, anti, (64, 64))
        torch.testing.assert_close(out.mask_logits[0], logits, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out.d_pos[0], d_pos, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(out.d_neg[0], d_neg, atol=1e-6, rtol=1e-6)
        assert not out.heatmaps[0, :, kept:].any()
        slots, valid = expert_slots(experts, k)
        assert valid.tolist() == [1.0] * kept + [0.0] * (k - kept)
        junk = slots.clone()
        junk[kept:] = torch.randn(k - kept, slots.shape[1])
        a = tiny.query_slots(enc.maps, sentence, anti, slots, valid)
        b = tiny.query_slots(enc.maps, sentence, anti, junk, valid)
        assert all(torch.equal(s, t) for s, t in zip(a, b, strict=True))


@torch.no_grad()
def test_padded_images_change_nothing(tiny: GRSer):
    torch.manual_seed(3)
    x = torch.randn(1, 3, 3, 64, 64)
    padded = torch.cat([x, torch.randn(1, 2, 3, 64, 64)], dim=1)
    mask = torch.tensor([[True, True, True, False, False]])
    a = tiny(x, "the red circle")
    b = tiny(padded, "the red circle", image_mask=mask)
    torch.testing.assert_close(b.mask_logits[:, :3], a.mask_logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(b.d_pos[:, :3], a.d_pos, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("film", [False, True])
def test_gradients_reach_every_parameter(film: bool):
    torch.manual_seed(0)
    config = GRSerConfig.preset("grser-tiny", image_size=64, swin_window_size=4, decoder_film=film)
    model = GRSer(config).train()
    out = model(torch.randn(2, 3, 3, 64, 64), ["the red circle", "the blue square"])
    target = torch.rand_like(out.mask_logits).round()
    loss = torch.nn.functional.binary_cross_entropy_with_logits(out.mask_logits, target)
    loss = loss + (out.d_pos - out.d_neg).mean() + (out.s_pos - out.s_neg).mean()
    loss = loss + out.pixel_embedding.mean()
    loss.backward()
    unused = {"text_encoder.bert.pooler.dense.weight", "text_encoder.bert.pooler.dense.bias"}
    missing = [
        n
        for n, p in model.named_parameters()
        if n not in unused and (p.grad is None or not p.grad.any())
    ]
    assert missing == []


def test_decoder_film_starts_as_the_paper_decoder(tmp_path):
    """FiLM's gamma and beta start at zero: the same weights give the same outputs with and
    without it, and a saved FiLM model loads back exactly."""
    torch.manual_seed(0)
    plain = GRSer(GRSerConfig.preset("grser-tiny", image_size=64, swin_window_size=4)).eval()
    film_cfg = GRSerConfig.preset(
        "grser-tiny", image_size=64, swin_window_size=4, decoder_film=True
    )
    film = GRSer(film_cfg).eval()
    missing, unexpected = film.load_state_dict(plain.state_dict(), strict=False)
    assert unexpected == [] and all(k.startswith("decoder.film.") for k in missing) and missing
    x = torch.randn(1, 3, 3, 64, 64)
    with torch.no_grad():
        a, b = plain(x, ["the red circle"]), film(x, ["the red circle"])
    assert torch.equal(a.mask_logits, b.mask_logits) and torch.equal(a.d_pos, b.d_pos)
    torch.nn.init.normal_(film.decoder.film[0].weight)
    film.save_pretrained(tmp_path / "m")
    back = GRSer.from_pretrained(tmp_path / "m").eval()
    assert back.config.decoder_film
    with torch.no_grad():
        c, d = film(x, ["the red circle"]), back(x, ["the red circle"])
    assert torch.equal(c.mask_logits, d.mask_logits)
    assert not torch.equal(c.mask_logits, a.mask_logits)  # FiLM now changes the decoder


def test_negation_token_is_one_trainable_token(tiny: GRSer):
    ids = tiny.tokenizer("<no> the red circle")["input_ids"]
    no_id = tiny.tokenizer.convert_tokens_to_ids("<no>")
    assert ids[1] == no_id and ids.count(no_id) == 1
    assert tiny.text_encoder.bert.get_input_embeddings().weight.shape[0] > no_id


def test_base_preset_is_the_paper_architecture():
    config = GRSerConfig.preset("grser-base")
    assert config.image_size == 480 and config.swin_embed_dim == 128
    assert config.stage_dims == [128, 256, 512, 1024]
    assert config.swin_pretrained and config.text_model == "bert-base-uncased"
    # the same architecture with random weights (no download): Swin-B + a BERT-base-sized encoder
    offline = GRSerConfig.preset(
        "grser-base",
        swin_pretrained=None,
        text_model=None,
        text_config={"model_type": "bert"},  # BERT-base sizes: 12 layers, 768-d
        image_size=96,
        swin_window_size=3,
    )
    model = GRSer(offline).eval()
    # LAVT's PWAM: key/value width = the stage's own width; LAVT's gate: no bias, zero weights
    assert [f.key.out_features for f in model.image_encoder.fusions] == [128, 256, 512, 1024]
    assert config.fusion_dims == [128, 256, 512, 1024]
    params = model.num_parameters()
    assert 85e6 < params["image_encoder"] < 100e6  # Swin-B (87.8 M) + PWAMs and gates
    assert model.text_encoder.dim == 768 and model.text_encoder.bert.config.num_hidden_layers == 12
    with torch.no_grad():
        out = model(torch.randn(1, 2, 3, 96, 96), "the red umbrella")
    assert out.mask_logits.shape == (1, 2, 96, 96)


def test_coordinate_option_builds_and_round_trips(tmp_path):
    torch.manual_seed(0)
    config = GRSerConfig.preset("grser-tiny", image_size=64, swin_window_size=4, fusion_coords=True)
    model = GRSer(config).eval()
    assert model.image_encoder.fusions[0].vis[0].in_channels == config.stage_dims[0] + 2
    model.save_pretrained(tmp_path)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        a, b = model(x, "the red circle"), GRSer.from_pretrained(tmp_path)(x, "the red circle")
    assert torch.equal(a.mask_logits, b.mask_logits)


def _stage_outputs_without_gates(model: GRSer, pixels: torch.Tensor, text) -> list[torch.Tensor]:
    """The encoder's maps when each stage passes its Swin output on unchanged (no gate)."""
    enc = model.image_encoder
    x, maps = enc.swin.patch_embed(pixels), []
    for stage, fuse, norm in zip(enc.swin.layers, enc.fusions, enc.norms, strict=True):
        x = stage(x)
        fused = fuse(x.permute(0, 3, 1, 2), text.words, text.word_mask).permute(0, 2, 3, 1)
        maps.append(norm(fused).permute(0, 3, 1, 2))
    return maps


def _gate_training_steps(gate: str, steps: int) -> GRSer:
    torch.manual_seed(0)
    config = GRSerConfig.preset("grser-tiny", image_size=64, swin_window_size=4, language_gate=gate)
    model = GRSer(config).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    x = torch.randn(1, 2, 3, 64, 64)
    for _ in range(steps):
        out = model(x, ["the red circle"])
        loss = out.mask_logits.sigmoid().mean() + (out.d_pos - out.d_neg).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


@pytest.mark.parametrize("gate", ["lavt", "lavt-open"])
def test_lavt_gates_start_closed_without_bias(gate: str):
    torch.manual_seed(0)
    config = GRSerConfig.preset("grser-tiny", image_size=64, swin_window_size=4, language_gate=gate)
    model = GRSer(config).eval()
    for g in model.image_encoder.gates:
        assert g.net[0].bias is None and g.net[2].bias is None
        assert not g.net[2].weight.any()  # W_2 = 0: gamma = tanh(0) = 0
        assert g.net[0].weight.any() == (gate == "lavt-open")
    pixels = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        text = model.encode_text(["the red circle"]).expand(2)
        got = model.image_encoder(pixels, text)
        want = _stage_outputs_without_gates(model, pixels, text)
    assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))


def test_lavt_gate_gets_zero_gradient_and_never_opens():
    model = _gate_training_steps("lavt", steps=5)
    for g in model.image_encoder.gates:
        assert not g.net[0].weight.any() and not g.net[2].weight.any()
        assert not g.net[0].weight.grad.any() and not g.net[2].weight.grad.any()
    # the control: the same steps open a gate whose W_1 starts random
    opened = _gate_training_steps("lavt-open", steps=5)
    assert all(g.net[2].weight.abs().max() > 1e-3 for g in opened.image_encoder.gates)


def test_configs_without_gate_keys_keep_the_shipped_architecture():
    config = GRSerConfig.from_dict({"image_size": 64, "swin_window_size": 4})
    assert config.language_gate == "random" and config.fusion_dims == [32, 64, 64, 64]
    model = GRSer(config)
    assert model.image_encoder.gates[0].net[2].bias is not None
    with pytest.raises(GresError, match="language_gate"):
        GRSerConfig.from_dict({"language_gate": "open"})
