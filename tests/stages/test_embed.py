"""Embed stage: the offline MiniLM model on Alpaca instructions, the stage's output columns,
what is embedded, and where the actor runs."""

import os

import numpy as np
import pyarrow as pa
import pytest

pytest.importorskip("sentence_transformers")

pytestmark = [pytest.mark.model]

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from curate.stages.embed import DEFAULT_MODEL, Embed, texts_to_embed  # noqa: E402
from curate.storage import schema as S  # noqa: E402

# Alpaca instructions (in ../shared/data/alpaca_ifd_5pct.json) and paraphrases written for this test.
PARAPHRASES = {
    "Explain the concept of absolute advantage.": "What does it mean in economics for a country to have an absolute advantage?",
    "Create a list of tips for passive income ideas.": "Give me some advice on ways to earn money passively.",
    "Describe the cultural differences between Granada and Madrid.": "How do the cultures of Madrid and Granada differ?",
    "Explain the fundamentals of healthcare informatics.": "What are the basics of health informatics?",
    "Describe the concept of Operant Conditioning": "What is operant conditioning in psychology?",
    "Create an animal-themed creative story": "Write an imaginative tale about animals.",
}
POOL_ROWS = 300


@pytest.fixture(scope="module")
def embedder():
    return Embed()


def _batch(conversations):
    return pa.table({"messages": S.messages_array(conversations)})


def test_paraphrases_are_closer_than_unrelated_pairs(embedder, alpaca_rows):
    pool = [r["instruction"] for r in alpaca_rows[:POOL_ROWS]]
    assert set(PARAPHRASES) <= set(pool)
    pool_vecs = embedder.encode(pool)
    para_vecs = embedder.encode(list(PARAPHRASES.values()))
    sims = para_vecs @ pool_vecs.T
    originals = [pool.index(o) for o in PARAPHRASES]
    # Each paraphrase finds its original as the nearest of the 300 instructions.
    assert sims.argmax(axis=1).tolist() == originals
    paired = sims[np.arange(len(originals)), originals]
    unrelated = np.delete(sims, originals, axis=1)
    assert paired.min() > 0.6 > np.percentile(unrelated, 99)
    assert paired.mean() - unrelated.mean() > 0.5


def test_vectors_are_normalised_and_in_input_order(embedder):
    texts = ["short", "a much longer text about the rules of chess and how the pieces move", "mid length text"]
    together = embedder.encode(texts)
    one_by_one = np.concatenate([embedder.encode([t]) for t in texts])
    assert together.dtype == np.float32 and together.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(together, axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(together, one_by_one, atol=1e-5)  # length sorting is undone
    assert embedder.encode([]).shape == (0, 384)


def test_stage_returns_vectors_and_their_model(embedder):
    conv = [[{"role": "user", "content": f"Question {i}?"}, {"role": "assistant", "content": f"Answer {i}."}] for i in range(5)]
    result = embedder(_batch(conv))
    assert result.kept.num_rows == 5
    vec, model = result.vectors["embed"]
    assert vec.type == pa.list_(pa.float32()) and len(vec) == 5
    assert model == DEFAULT_MODEL
    assert np.allclose(np.array(vec.to_pylist()), embedder.encode([f"Question {i}?" for i in range(5)]), atol=1e-5)


def test_what_is_embedded_is_configurable():
    conv = [[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."},
             {"role": "assistant", "content": "Blue."}]]
    batch = _batch(conv)
    assert texts_to_embed(batch, "instruction", None) == ["Name a colour."]
    assert texts_to_embed(batch, ["instruction", "response"], None) == ["Name a colour.\n\nBlue."]
    assert texts_to_embed(batch, "conversation", None) == ["system: Be brief.\nuser: Name a colour.\nassistant: Blue."]
    assert texts_to_embed(batch, "instruction", "Q: {instruction} A: {response}") == ["Q: Name a colour. A: Blue."]
    with pytest.raises(ValueError, match="template may use"):
        Embed(template="{question}")


def test_actor_takes_a_gpu_only_where_the_cluster_has_one(monkeypatch):
    """Decided from the cluster the run joined (Embed.resources_for, asked after ray.init), not
    from this machine's devices when the class attribute is read."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    assert Embed.resources.num_gpus == 0 and Embed.resources.actor  # before any cluster: a CPU actor
    cpu = Embed.resources_for({}, {"CPU": 2.0})
    assert cpu.num_gpus == 0 and cpu.actor and cpu.concurrency == 1
    gpu = Embed.resources_for({}, {"CPU": 16.0, "GPU": 2.0})
    assert (gpu.num_gpus, gpu.concurrency, gpu.actor) == (1, 2, True)
    fixed = Embed.with_(resources={"num_gpus": 0})
    assert fixed.resources_for({}, {"GPU": 2.0}).num_gpus == 0  # resources set by hand stay


def test_a_cpu_actor_encodes_with_every_core_not_the_one_ray_reserves(ray_local):
    """Ray sets OMP_NUM_THREADS to an actor's num_cpus (1): torch would encode on one thread where a
    bare encode uses every core. The stage's model sets its own thread count; `threads` caps it."""
    import ray

    @ray.remote(num_cpus=Embed.resources.num_cpus)
    def threads_in_actor(threads):
        import torch

        Embed(cache=False, threads=threads).setup(None)
        return os.environ.get("OMP_NUM_THREADS"), torch.get_num_threads()

    omp, threads = ray.get(threads_in_actor.remote(None))
    assert omp == "1" and threads == len(os.sched_getaffinity(0))
    assert ray.get(threads_in_actor.remote(1))[1] == 1


def test_cpu_batches_encoders_match_one_intra_op_encode(alpaca_rows):
    """On a CPU the stage shares mini-batches out among one single-threaded encoder per thread
    (MiniBatchEncoders): the vectors are those of one `encode` on torch's threads, in input order,
    and the caller's torch thread count is what it was."""
    import torch

    from curate.stages.embed import MiniBatchEncoders

    texts = [r["instruction"] + (" " + r["input"] if r.get("input") else "") for r in alpaca_rows[:150]]
    threads_before = torch.get_num_threads()
    intra_op = Embed(cache=False, cpu_parallel="intra_op", threads=2, encode_batch_size=8)
    batches = Embed(cache=False, cpu_parallel="batches", threads=2, encode_batch_size=8)
    expected = intra_op.encode(texts)
    got = batches.encode(texts)
    assert isinstance(batches._encoders, MiniBatchEncoders) and intra_op._encoders is None
    assert torch.get_num_threads() == threads_before
    np.testing.assert_allclose(got, expected, atol=1e-5)
    # many small calls, two encoders at once: no tokenizer shared between threads
    again = np.concatenate([batches.encode(texts[i:i + 7]) for i in range(0, len(texts), 7)])
    np.testing.assert_allclose(again, expected, atol=1e-5)


def test_batches_encoders_share_weights_and_own_their_tokenizers(embedder):
    from curate.stages.embed import MiniBatchEncoders

    encoders = MiniBatchEncoders(embedder.model, 3)
    models = [encoders.free.get() for _ in range(3)]
    weights = {next(m.parameters()).data_ptr() for m in models}
    tokenizers = {id(m.tokenizer) for m in models}
    assert len(weights) == 1 and len(tokenizers) == 3
    with pytest.raises(ValueError, match="cpu_parallel must be"):
        Embed(cpu_parallel="threads")


def test_bad_values_fail_before_ray_with_the_key_named(tmp_path):
    """A value the actor would reject fails in the driver's config check, not as an ActorDiedError."""
    from curate.errors import CurateError
    from curate.pipeline.config import load_config

    def config(params):
        return load_config(None, input=["rows.jsonl"], db=str(tmp_path / "x.duckdb"), stages=[{"embed": params}])

    with pytest.raises(CurateError, match=r"stages\.0\.embed: cpu_parallel: Input should be 'batches' or 'intra_op'"):
        config({"cpu_parallel": "threads"})
    with pytest.raises(CurateError, match=r"stages\.0\.embed: template: template may use"):
        config({"template": "{question}"})
    config({"cpu_parallel": "intra_op", "template": "{instruction}"})


def test_model_default_is_the_builtin_model():
    """`model: default` names the built-in model, as it does for the LM stages: it passed `curate
    plan` and then failed in the actor, looking for a hub model called "default"."""
    from curate.stages.embed import default_model_path

    assert Embed(model="default").model_path == Embed().model_path == default_model_path()
    Embed.preflight({"model": "default"})  # raised PreflightError: no model "default" in the cache
    model = Embed(model="default", cache=False)
    assert model.encode(["hello"]).shape == (1, 384)
