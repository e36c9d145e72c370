"""LookWherePretraining: teacher targets, losses, gradient paths, k sampling, checkpoints, a short training run."""

import numpy as np
import pytest
import torch
from conftest import EPS32, FLOAT64_TOLERANCE, sum_rtol
from transformers import (
    Dinov2Config,
    Dinov2Model,
    Dinov2WithRegistersConfig,
    Dinov2WithRegistersModel,
)

from lookwhere_hf import (
    LookWhereForImageClassification,
    LookWhereForPreTraining,
    LookWhereModel,
)
from lookwhere_hf.models.lookwhere.distillation_losses import (
    compute_teacher_targets,
    map_distillation_loss,
    top_k_agreement,
)

TINY_TEACHER = {
    "hidden_size": 32,
    "num_attention_heads": 2,
    "mlp_ratio": 4,
    "patch_size": 14,
    "image_size": 112,
    "num_register_tokens": 4,
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models: one intra-op thread is ~9x faster than two on this shared 2-core machine (no thread contention)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def make_teacher(num_layers=3, plain=False, attn="eager", **overrides):
    torch.manual_seed(0)
    kwargs = {**TINY_TEACHER, "num_hidden_layers": num_layers, **overrides}
    if plain:
        kwargs.pop("num_register_tokens")
        return Dinov2Model(Dinov2Config(**kwargs, attn_implementation=attn)).eval()
    return Dinov2WithRegistersModel(Dinov2WithRegistersConfig(**kwargs, attn_implementation=attn)).eval()


def blob_images(n, rng, size=112):
    """Dark noisy background with two bright squares: the kind of image a teacher attends to structurally."""
    out = []
    for _ in range(n):
        img = np.full((size, size, 3), 0.1, np.float32) + rng.random((size, size, 3)).astype(np.float32) * 0.05
        for _ in range(2):
            side = rng.integers(14, 32)
            y, x = rng.integers(0, size - side, 2)
            img[y : y + side, x : x + side] = rng.random(3) * 0.5 + 0.5
        out.append(img)
    return (torch.tensor(np.stack(out)).permute(0, 3, 1, 2) - 0.45) / 0.25


def build(teacher=None, **kwargs):
    kwargs = {"selector_depth": 1, "low_res_size": 56, "k_min": 4, "k_max": 24, **kwargs}
    return LookWhereForPreTraining.from_teacher(teacher if teacher is not None else make_teacher(), **kwargs)


# ----------------------------------------------------------------------------------------------------- targets
def _absolute_attention_logits(teacher, hidden_states, num_prefix):
    """`sum_d |q_d| |k_d| scaling / heads` of the last layer's mean-query logits: the scale of their rounding error."""
    last = teacher.encoder.layer[-1]
    normed = last.norm1(hidden_states)[:, num_prefix:]
    query, keys = last.attention.q_proj(normed.mean(1)), last.attention.k_proj(normed)
    scale = last.attention.scaling / last.attention.num_attention_heads
    return torch.einsum("bd,bnd->bn", query.abs(), keys.abs()) * scale


@pytest.mark.parametrize("plain", [False, True], ids=["dinov2_with_registers", "dinov2"])
def test_teacher_targets_equal_direct_computation(plain):
    teacher = make_teacher(plain=plain).double()  # float64 teacher: its own rounding is below FLOAT64_TOLERANCE
    x = torch.randn(2, 3, 112, 112, dtype=torch.float64)
    with torch.no_grad():
        ref = teacher(x, output_attentions=True, output_hidden_states=True)
        absolute_logits = _absolute_attention_logits(teacher, ref.hidden_states[-2], 1 if plain else 5)
    num_prefix = 1 if plain else 5
    targets = compute_teacher_targets(teacher, x)

    # The targets come back in float32: float64 values rounded once (u = EPS32 / 2 relative).
    tokens = {"rtol": EPS32 / 2, "atol": FLOAT64_TOLERANCE["atol"]}
    torch.testing.assert_close(targets.cls_token.double(), ref.last_hidden_state[:, 0], **tokens)
    torch.testing.assert_close(targets.patch_tokens.double(), ref.last_hidden_state[:, num_prefix:], **tokens)
    assert targets.grid == (8, 8) and targets.attention_map.shape == (2, 64)

    # Definition from the full last-layer attention matrix: log-probabilities averaged over heads and patch queries,
    # restricted to patch keys; differs from the averaged logits only by a per-image constant.
    log_probs = ref.attentions[-1].log()[:, :, num_prefix:, num_prefix:].mean(dim=(1, 2))  # (B, N)
    # The map's q and k are rounded to float32 and their D = 32 products summed in float32: each logit is off by
    # <= (D + 3) u sum_d |q_d k_d| scaling / heads; a log-softmax moves each value by <= twice the largest such error.
    map_error = (32 + 3) * EPS32 / 2 * absolute_logits.max().item()
    torch.testing.assert_close(
        torch.log_softmax(targets.attention_map.double(), -1),
        torch.log_softmax(log_probs, -1),
        atol=2 * map_error,
        rtol=0,
    )
    # ... the constant really is there (the raw maps are not equal), and the map varies far more than its error.
    assert (targets.attention_map - log_probs).abs().min() > 1e-3
    assert (targets.attention_map.max(-1).values - targets.attention_map.min(-1).values).min() > 1000 * map_error

    # Same targets with the SDPA kernel (the cheap path never asks for attention weights): two float32 roundings
    # of float64 values that agree to FLOAT64_TOLERANCE.
    teacher.config._attn_implementation = "sdpa"
    sdpa = compute_teacher_targets(teacher, x)
    torch.testing.assert_close(sdpa.attention_map, targets.attention_map, atol=2 * map_error, rtol=0)
    torch.testing.assert_close(sdpa.patch_tokens, targets.patch_tokens, rtol=EPS32, atol=FLOAT64_TOLERANCE["atol"])


def test_map_layer_picks_the_attention_map_of_an_earlier_teacher_layer(tmp_path):
    """`map_layer` (`config.pretrain_map_layer`, `run_pretraining.py --map_layer`): the target is that layer's
    head- and query-averaged attention map, by the definition from its full attention matrix; the CLS and patch
    targets stay the last layer's; -1 is the last layer; the setting is saved; a wrong index is refused."""
    teacher = make_teacher().double()
    x = torch.randn(2, 3, 112, 112, dtype=torch.float64)
    with torch.no_grad():
        ref = teacher(x, output_attentions=True, output_hidden_states=True)
    last, first = compute_teacher_targets(teacher, x), compute_teacher_targets(teacher, x, map_layer=0)
    assert torch.equal(compute_teacher_targets(teacher, x, map_layer=2).attention_map, last.attention_map)
    assert torch.equal(compute_teacher_targets(teacher, x, map_layer=-3).attention_map, first.attention_map)
    assert torch.equal(first.cls_token, last.cls_token) and torch.equal(first.patch_tokens, last.patch_tokens)
    # Layer 0's definition, as for the last layer in the test above (same float32 rounding bound, with layer 0's
    # own |q| |k| scale): log-probabilities of its attention averaged over heads and patch queries, patch keys only.
    layer = teacher.encoder.layer[0]
    normed = layer.norm1(ref.hidden_states[0])[:, 5:]
    query, keys = layer.attention.q_proj(normed.mean(1)), layer.attention.k_proj(normed)
    scale = layer.attention.scaling / layer.attention.num_attention_heads
    map_error = (32 + 3) * EPS32 / 2 * (torch.einsum("bd,bnd->bn", query.abs(), keys.abs()) * scale).max().item()
    log_probs = ref.attentions[0].log()[:, :, 5:, 5:].mean(dim=(1, 2))
    torch.testing.assert_close(
        torch.log_softmax(first.attention_map.double(), -1),
        torch.log_softmax(log_probs, -1),
        atol=2 * map_error,
        rtol=0,
    )
    # ... and it is another map than the last layer's (by far more than the rounding)
    difference = torch.log_softmax(first.attention_map, -1) - torch.log_softmax(last.attention_map, -1)
    assert difference.abs().max() > 1000 * map_error
    for wrong in (3, -4, 1.0, True):
        with pytest.raises(ValueError, match="not a layer of this 3-layer teacher"):
            compute_teacher_targets(teacher, x, map_layer=wrong)

    model = build(make_teacher(), map_layer=0).eval()
    assert model.config.pretrain_map_layer == 0
    images = blob_images(2, np.random.default_rng(0))
    with torch.no_grad():
        out = model(images, k=8)
    assert torch.equal(out.teacher_map, compute_teacher_targets(model.teacher, images, map_layer=0).attention_map)
    model.save_pretrained(tmp_path)
    assert LookWhereForPreTraining.from_pretrained(tmp_path).config.pretrain_map_layer == 0
    assert build(make_teacher()).config.pretrain_map_layer == -1  # LookWhere's target by default
    with pytest.raises(ValueError, match="pretrain_map_layer"):
        build(make_teacher(), map_layer=0.5)


def test_each_loss_component_equals_its_definition():
    teacher = make_teacher()
    model = build(teacher, cls_loss_weight=0.7, dense_loss_weight=1.3, map_loss_weight=0.1).eval()
    x = torch.randn(3, 3, 112, 112)
    k = 10
    with torch.no_grad():
        out = model(x, k=k)
        ref_student = model.lookwhere(x, k=k, output_dense_features=True)

    # Teacher targets (equal to the teacher's own forward: test_teacher_targets_equal_direct_computation) and the
    # student's outputs are the very tensors the loss sees (same kernels on the same inputs: bit-identical).
    targets = compute_teacher_targets(teacher, x)
    t_cls, t_patches = targets.cls_token.double(), targets.patch_tokens.double()
    s_cls = ref_student.pooler_output.double()
    s_dense = ref_student.dense_features.flatten(2).transpose(1, 2).double()  # (B, G*G, D) row-major
    assert ref_student.selected_indices.shape == (3, k)
    assert torch.equal(out.selected_indices, ref_student.selected_indices)
    assert torch.equal(out.selector_map, ref_student.selector_map)
    assert torch.equal(out.teacher_map, targets.attention_map)

    # float64 definitions vs the float32 losses: means of n squares, relative error <= sum_rtol(n).
    loss_cls = ((s_cls - t_cls) ** 2).sum() / s_cls.numel()
    loss_dense = torch.stack([((s_dense[b] - t_patches[b]) ** 2).mean(-1).mean() for b in range(3)]).mean()
    torch.testing.assert_close(out.loss_cls.double(), loss_cls, atol=0, rtol=sum_rtol(s_cls.numel()))
    torch.testing.assert_close(out.loss_dense.double(), loss_dense, atol=0, rtol=sum_rtol(s_dense.numel()))
    # The map loss is the KL of the model's own maps (same function, same inputs: bit-identical); the formula is
    # checked against float64 below, on logits spread enough that the KL is not a near-zero difference of logs.
    assert torch.equal(out.loss_map, map_distillation_loss(out.selector_map, out.teacher_map))
    weighted = 0.7 * out.loss_cls + 1.3 * out.loss_dense + 0.1 * out.loss_map  # 3 products + 2 sums, positive terms
    torch.testing.assert_close(out.loss, weighted, atol=0, rtol=6 * EPS32)
    assert loss_cls > 1e-4 and loss_dense > 1e-3 and out.loss_map > 1e-7  # non-trivial values

    gen = torch.Generator().manual_seed(0)
    teacher_logits, student_logits = 3 * torch.randn(2, 3, 64, generator=gen)
    log_t, log_s = torch.log_softmax(teacher_logits.double(), -1), torch.log_softmax(student_logits.double(), -1)
    kl = (log_t.exp() * (log_t - log_s)).sum(-1).mean()
    # float32 log-softmax over n logits is off by <= u (n + 4 A) (A = max |log p|); the KL's terms p (log p - log q)
    # add that twice per unit of p plus D = max |log p - log q| times it, and the n-term sum (n + 2) u D.
    n, A, D = 64, max(log_t.abs().max(), log_s.abs().max()).item(), (log_t - log_s).abs().max().item()
    bound = EPS32 / 2 * ((n + 4 * A) * (2 + D) + (n + 2) * D)
    torch.testing.assert_close(map_distillation_loss(student_logits, teacher_logits).double(), kl, atol=bound, rtol=0)
    assert kl > 1000 * bound

    # Top-k agreement: fraction of the teacher's top-k inside the selector's top-k (the model's own maps, so the
    # same top-k kernel on the same inputs: no near-tie can differ between the two sides).
    top = {name: torch.topk(getattr(out, name), k).indices.tolist() for name in ("teacher_map", "selector_map")}
    expected = np.mean([len(set(top["teacher_map"][b]) & set(top["selector_map"][b])) / k for b in range(3)])
    # float32 mean of 3 fractions: a few roundings of EPS32 / 2 each, far below 1e-6 relative
    assert out.top_k_agreement.item() == pytest.approx(expected, rel=1e-6)
    assert top_k_agreement(out.teacher_map, out.teacher_map, k).item() == 1.0  # exact: k / k


def test_extractor_sees_full_image_equals_teacher_at_init():
    """Student initialized from the teacher, k = all patches: the extractor reproduces the teacher's tokens (so the
    CLS/dense losses vanish up to the selector-prefix difference; with the teacher's own prefix they are exact)."""
    teacher = make_teacher()
    model = build(teacher).eval().double()
    teacher.double()  # float64 on both sides: two operation orders agree to FLOAT64_TOLERANCE
    x = torch.randn(2, 3, 112, 112, dtype=torch.float64)
    with torch.no_grad():
        ref = teacher(x).last_hidden_state
        emb = model.lookwhere.extractor.embeddings
        indices = torch.arange(64).expand(2, -1)
        # The student's CLS is the teacher's CLS + CLS position embedding, added once in float32 when it was built
        # (one correctly rounded sum: equal to the float64 sum rounded); the extractor gets the unrounded prefix.
        t_emb = teacher.embeddings
        prefix = torch.cat((t_emb.cls_token + t_emb.position_embeddings[:, :1], t_emb.register_tokens), 1)
        prefix = prefix.expand(2, -1, -1)
        assert torch.equal(emb.prefix_tokens(2).float(), prefix.float())
        tokens, _ = model.lookwhere.extractor(x, indices, prefix)
    torch.testing.assert_close(tokens[:, 0], ref[:, 0], **FLOAT64_TOLERANCE)
    torch.testing.assert_close(tokens[:, 5:], ref[:, 5:], **FLOAT64_TOLERANCE)


# ----------------------------------------------------------------------------------------------------- gradients
def _grad_norm(module):
    grads = [p.grad.abs().sum() for p in module.parameters() if p.grad is not None]
    return float(sum(grads)) if grads else 0.0


@pytest.mark.parametrize(
    "weights, head, selector_body, extractor",
    [
        ((1.0, 1.0, 0.0), False, True, True),  # no map loss: head untouched, selector body still trained via prefix
        ((0.0, 0.0, 1.0), True, True, False),  # map loss only: extractor untouched
    ],
)
def test_gradient_paths(weights, head, selector_body, extractor):
    cls_w, dense_w, map_w = weights
    model = build(cls_loss_weight=cls_w, dense_loss_weight=dense_w, map_loss_weight=map_w).train()
    model(blob_images(2, np.random.default_rng(0)), k=8).loss.backward()
    selector = model.lookwhere.selector
    assert (_grad_norm(selector.head) > 0) == head
    assert (_grad_norm(selector.encoder) > 0) == selector_body
    assert (_grad_norm(model.lookwhere.extractor) > 0) == extractor
    assert all(p.grad is None and not p.requires_grad for p in model.teacher.parameters())
    # the extractor's own CLS/register tokens are unused (the selector's prefix replaces them) and frozen
    emb = model.lookwhere.extractor.embeddings
    assert not emb.cls_token.requires_grad and not emb.register_tokens.requires_grad


# ----------------------------------------------------------------------------------------------------- k
def test_k_sampling_is_deterministic_in_range_and_clipped():
    model = build(k_min=4, k_max=128)  # 64 patches: k_max clips to 64
    ks = [model.sample_k(step, 64) for step in range(200)]
    assert min(ks) >= 4 and max(ks) <= 64 and len(set(ks)) > 20
    other = build(k_min=4, k_max=128)  # another instance (another process / rank) draws the same sequence
    assert ks == [other.sample_k(step, 64) for step in range(200)]
    assert model.k_range(64) == (4, 64)
    model.train()
    out = model(torch.randn(1, 3, 112, 112), step=17)
    assert out.selected_indices.shape[1] == model.sample_k(17, 64)
    assert model.eval()(torch.randn(1, 3, 112, 112)).selected_indices.shape[1] == 64  # eval: k_max (clipped)
    with pytest.raises(ValueError, match="k_min <= k_max"):
        build(k_min=30, k_max=20)
    with pytest.raises(ValueError, match="k_min <= k_max"):
        build(k_min=0, k_max=20)


# ----------------------------------------------------------------------------------------------------- teacher
def test_teacher_moves_but_is_not_saved(tmp_path):
    teacher = make_teacher()
    model = build(teacher, teacher_dtype="bfloat16")
    assert model.teacher.dtype == torch.bfloat16 and not model.teacher.training
    assert not any(k.startswith("teacher") for k in model.state_dict())
    assert all(k.startswith("lookwhere.") for k in model.state_dict())
    teacher_ids = {id(p) for p in model.teacher.parameters()}
    assert not teacher_ids & {id(p) for p in model.parameters()}
    model.train()
    assert model.lookwhere.training and not model.teacher.training
    model.to(torch.float64)
    assert model.teacher.dtype == torch.float64 and next(model.parameters()).dtype == torch.float64
    model.to(torch.float32)
    out = model(torch.randn(1, 3, 112, 112), k=8)
    assert torch.isfinite(out.loss)

    model.save_pretrained(tmp_path / "ckpt")
    from safetensors.torch import load_file

    saved = load_file(tmp_path / "ckpt" / "model.safetensors")
    assert set(saved) == set(model.state_dict())
    n_student = sum(t.numel() for t in saved.values())
    assert n_student == sum(p.numel() for p in model.state_dict().values())

    # Downstream classes load the student directly.
    base = LookWhereModel.from_pretrained(tmp_path / "ckpt")
    for name, tensor in model.lookwhere.state_dict().items():
        torch.testing.assert_close(base.state_dict()[name], tensor, atol=0, rtol=0)
    clf = LookWhereForImageClassification.from_pretrained(tmp_path / "ckpt", num_labels=3)
    for name, tensor in model.lookwhere.state_dict().items():
        torch.testing.assert_close(clf.lookwhere.state_dict()[name], tensor, atol=0, rtol=0)
    x = torch.randn(1, 3, 112, 112)
    with torch.no_grad():
        # same weights, same kernels, same input: bit-identical
        torch.testing.assert_close(base(x, k=8).pooler_output, model.lookwhere(x, k=8).pooler_output, atol=0, rtol=0)

    # The pretraining class reloads with a teacher path (settings come back from config.json).
    teacher.save_pretrained(tmp_path / "teacher")
    again = LookWhereForPreTraining.from_pretrained(tmp_path / "ckpt", teacher=str(tmp_path / "teacher"))
    assert again.config.pretrain_k_max == 24 and again.teacher is not None
    torch.testing.assert_close(again.teacher.embeddings.cls_token, teacher.embeddings.cls_token, atol=0, rtol=0)
    with torch.no_grad():
        torch.testing.assert_close(again.eval()(x, k=8).loss, model.eval()(x, k=8).loss, atol=0, rtol=0)  # as above
    with pytest.raises(ValueError, match="needs a teacher"):
        LookWhereForPreTraining(again.config)(x)


def test_bfloat16_teacher_gives_close_float32_targets():
    teacher = make_teacher(attn="sdpa")
    x = torch.randn(2, 3, 112, 112)
    reference = compute_teacher_targets(teacher, x)
    with torch.no_grad():
        hidden = teacher(x, output_hidden_states=True).hidden_states[-2]
        absolute_logits = _absolute_attention_logits(teacher, hidden, 5)
    model = build(teacher, teacher_dtype=torch.bfloat16)  # casts this teacher in place
    targets = compute_teacher_targets(model.teacher, x)
    assert targets.patch_tokens.dtype == torch.float32  # targets always come back in float32
    # bfloat16 keeps 8 significant bits (u = 2**-9). A value on the teacher's path is rounded ~8 times per layer (norm,
    # q/k/v, attention, projection, norm, 2 MLP layers) x 3 layers: relative error <= rho = 24 u ~= 4.7% of the
    # magnitude involved; a map logit (q . k) carries it from both q and k.
    rho = 24 * 2**-9
    atol = rho * reference.patch_tokens.abs().max().item()
    torch.testing.assert_close(targets.patch_tokens, reference.patch_tokens, atol=atol, rtol=0)
    map_error = 2 * rho * absolute_logits
    assert ((targets.attention_map - reference.attention_map).abs() <= map_error).all()
    spread = reference.attention_map.max(-1, keepdim=True).values - reference.attention_map.min(-1, keepdim=True).values
    assert (map_error < spread).all()
    out = model.train()(x, step=0)
    out.loss.backward()
    assert torch.isfinite(out.loss) and model.lookwhere.selector.head.fc2.weight.grad.dtype == torch.float32


def test_teacher_that_does_not_fit_is_rejected():
    model = build()
    with pytest.raises(ValueError, match="hidden size"):
        model.set_teacher(make_teacher(hidden_size=48))
    with pytest.raises(ValueError, match="patch size"):
        model.set_teacher(make_teacher(patch_size=16, image_size=112))
    with pytest.raises(ValueError, match="DINOv2"):
        model.set_teacher(torch.nn.Linear(2, 2))


# ----------------------------------------------------------------------------------------------------- training
def test_short_run_lowers_every_component_and_selector_learns_where_to_look():
    # A teacher with larger random weights has a structured (non-uniform) last-layer attention on blob images.
    teacher = make_teacher(num_layers=2, initializer_range=0.2, attn="sdpa")
    torch.manual_seed(0)
    # Random student (same architecture): every component starts far from the teacher. (A student initialized from
    # the teacher starts with a small dense error that first rises while the CLS loss dominates, then falls below
    # its initial value after ~100 steps; measured 0.184 -> 0.226 at 30 steps -> 0.163 at 100 steps.)
    model = build(teacher, k_min=8, k_max=24, init_from_teacher=False).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    val = blob_images(16, np.random.default_rng(123))

    def evaluate():
        model.eval()
        with torch.no_grad():
            out = model(val, k=16)
        model.train()
        agreement = top_k_agreement(out.selector_map, out.teacher_map, 8).item()
        return out.loss_cls.item(), out.loss_dense.item(), out.loss_map.item(), agreement

    before = evaluate()
    rng = np.random.default_rng(0)
    for step in range(30):
        out = model(blob_images(8, rng), step=step)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    after = evaluate()
    # measured (3 seeds): cls ~1.9 -> 0.011, dense ~2.0 -> 0.31, map 0.030 -> 0.018, top-8 agreement ~0.1 -> ~0.65
    assert after[0] < 0.1 * before[0], (before, after)
    assert after[1] < 0.3 * before[1], (before, after)
    assert after[2] < 0.75 * before[2], (before, after)
    assert after[3] > before[3] + 0.3 and after[3] > 0.5, (before, after)
