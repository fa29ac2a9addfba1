"""LESS: per-example LoRA gradients from one batched pass (split by example with hooks) equal
backward() ones; the projection keeps inner products within the Johnson-Lindenstrauss bound;
batched features equal the reference loop (all fp32 here; bf16: test_scoring_dtype.py)."""

import math

import numpy as np
import pytest
import torch

from curate.lib import less
from curate.stages.score.reference import less_features_one_at_a_time, less_grads_one_at_a_time
from tiny_llm import build_tiny_llama


pytestmark = [pytest.mark.model, pytest.mark.usefixtures("one_torch_thread")]

CONVS = [
    [{"role": "user", "content": "Add 2 and 3."}, {"role": "assistant", "content": "2 + 3 = 5."}],
    [{"role": "user", "content": "Write a short poem about the sea."}, {"role": "assistant", "content": "Waves fold, the gulls cry, salt on the wind."}],
    [{"role": "user", "content": "List three fruits."}, {"role": "assistant", "content": "apple, pear, plum"}],
    [{"role": "user", "content": "Explain why the sky is blue in one sentence."},
     {"role": "assistant", "content": "Air scatters short blue wavelengths of sunlight more than red ones."}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "def add(a, b)?"}, {"role": "assistant", "content": "return a + b"}],
    [{"role": "user", "content": "What is 7 times 6?"}, {"role": "assistant", "content": "42"}],
]


@pytest.fixture(scope="module")
def lora(tmp_path_factory):
    path = build_tiny_llama(tmp_path_factory.mktemp("tiny_llama_less"))
    model, tok, device = less.lora_model(str(path), r=4, alpha=16, dropout=0.1, modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                                         dtype="float32")  # exactness against the reference: the same dtype
    torch.manual_seed(1)
    with torch.no_grad():  # peft starts B at zero, which would make every gradient of A zero
        for p in less.lora_params(model).values():
            p.normal_(0, 0.05)
    model.eval()
    return model, tok, device


def test_batched_per_example_grads_equal_backward(lora):
    model, tok, device = lora
    examples = less.training_examples(tok, CONVS, max_length=64)
    ids, labels = less.padded(examples, less.L.pad_id(tok), device)
    batched = less.per_example_grads(model, ids, labels)
    reference = less_grads_one_at_a_time(model, examples)
    assert set(batched) == set(reference[0]) and len(batched) == 2 * 4 * 2  # layers × modules × (A, B)
    for i, ref in enumerate(reference):
        for name, g in ref.items():
            assert g.abs().max() > 0, name
            torch.testing.assert_close(batched[name][i], g, atol=1e-5, rtol=0)


def jl_bound(n: int, d: int, delta: float = 1e-3) -> float:
    """ε such that all pairwise inner products of n unit vectors are within ε after a scaled
    Rademacher projection to d dimensions with probability ≥ 1 - δ (Achlioptas 2003: each
    squared norm within (1 ± ε) w.p. ≥ 1 - 2 exp(-d (ε²/2 - ε³/3) / 2); by polarisation an
    inner product of unit vectors then errs by at most ε; union bound over n² norms)."""
    events = n * n
    need = 2 * math.log(2 * events / delta) / d
    return next(e / 1000 for e in range(1, 1000) if (e / 1000) ** 2 / 2 - (e / 1000) ** 3 / 3 >= need)


def test_projection_keeps_inner_products_within_the_jl_bound():
    shapes = {"a.lora_A": (8, 256), "a.lora_B": (512, 8)}  # 6,144 input dimensions over two blocks of parameters
    d, n = 8192, 24
    gen = torch.Generator().manual_seed(0)
    flat = torch.randn(n, 6144, generator=gen)
    flat[n // 2:] = flat[: n // 2] + 0.7 * torch.randn(n // 2, 6144, generator=gen)  # correlated pairs, not only near-orthogonal ones
    flat = flat / flat.norm(dim=1, keepdim=True)
    a, b = flat.split([8 * 256, 512 * 8], dim=1)
    x = {"a.lora_A": a.reshape(n, 8, 256), "a.lora_B": b.reshape(n, 512, 8)}
    proj = less.RademacherProjector(shapes, dim=d, seed=0)
    y = proj.project(x)
    err = (y @ y.T - flat @ flat.T).abs().max().item()
    eps = jl_bound(n, d)
    assert err <= eps, (err, eps)
    assert eps < 0.1
    again = less.RademacherProjector(shapes, dim=d, seed=0).project(x)
    torch.testing.assert_close(again, y)  # seeded: the same matrix for pool and targets
    other = less.RademacherProjector(shapes, dim=d, seed=1).project(x)
    assert (other * y).sum(1).abs().max() < 0.1  # another seed: an independent matrix


def test_batched_features_equal_the_reference_loop(lora):
    model, tok, device = lora
    examples = less.training_examples(tok, CONVS, max_length=64)
    params = less.lora_params(model)
    gen = torch.Generator().manual_seed(2)
    state = {"exp_avg": {n: 1e-3 * torch.randn(p.shape, generator=gen) for n, p in params.items()},
             "exp_avg_sq": {n: 1e-6 * torch.rand(p.shape, generator=gen) for n, p in params.items()}}
    proj = less.RademacherProjector({n: tuple(p.shape) for n, p in params.items()}, dim=512, seed=0)
    feats = less.GradientFeatures(model, tok, device, proj, max_batch_tokens=128, max_batch_rows=4)
    for st in (None, state):
        ours = feats(examples, st)
        ref = less_features_one_at_a_time(model, examples, proj, st, buffer=4)
        np.testing.assert_allclose(ours, ref, atol=1e-4)
        np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1, atol=1e-5)
    g = less_grads_one_at_a_time(model, examples[:1])[0]
    name = next(iter(g))
    m = 0.9 * state["exp_avg"][name] + 0.1 * g[name]
    v = 0.999 * state["exp_avg_sq"][name] + 0.001 * g[name] ** 2
    torch.testing.assert_close(less.adam_features({name: g[name][None]}, state)[name][0], m / torch.sqrt(v + 1e-8))


def test_matching_is_lr_weighted_mean_within_task_then_max():
    pool = [np.eye(3, dtype=np.float32), np.eye(3, dtype=np.float32)]
    targets = [np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1]], np.float32), np.array([[1, 0, 0], [1, 0, 0], [0, 0, 1]], np.float32)]
    task = np.array([0, 0, 1])
    w = less.checkpoint_weights([3e-5, 1e-5])
    scores = less.less_scores(pool, targets, w, task)
    # row 0: task 0 mean = 0.75*mean(1,0) + 0.25*mean(1,1) = 0.625; task 1 = 0 → 0.625
    np.testing.assert_allclose(scores, [0.625, 0.375, 1.0])
