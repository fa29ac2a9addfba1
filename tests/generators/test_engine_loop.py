"""The engine loop's own mechanics, with a stand-in for `vllm.LLM` (its two methods the loop
uses); the real engine behind it is tested in test_vllm.py."""

import threading
from types import SimpleNamespace

import pytest

from curate.generators.backends.engine_loop import EngineLoop


class RecordingEngine:
    """Finishes every request on the step after it was queued; records the threads it ran on."""

    def __init__(self):
        self.threads = {"build": threading.current_thread().name}
        self.queued, self.counter = [], 0
        self.llm_engine = SimpleNamespace(step=self.step)

    def enqueue(self, prompts, params, use_tqdm=False):
        self.threads["enqueue"] = threading.current_thread().name
        ids = []
        for p in prompts:
            ids.append(f"{self.counter}-abcdefgh")  # vLLM's internal id; outputs carry the counter alone
            self.queued.append((str(self.counter), p["prompt_token_ids"]))
            self.counter += 1
        return ids

    def step(self):
        self.threads["step"] = threading.current_thread().name
        done, self.queued = self.queued, []
        return [SimpleNamespace(request_id=rid, finished=True, prompt_token_ids=[1, 2],
                                outputs=[SimpleNamespace(token_ids=[3], text=str(sum(ids)))]) for rid, ids in done]


def test_the_engine_is_built_and_stepped_on_the_loop_thread():
    loop = EngineLoop(RecordingEngine)
    outs = loop.generate([[1, 2], [3, 4]], [None, None])
    assert [o.outputs[0].text for o in outs] == ["3", "7"]
    # One thread builds and steps: on CPU, torch's OpenMP pool belongs to the thread that ran
    # the warm-up, and a second thread stepping the engine made every step slower.
    assert set(loop.llm.threads.values()) == {"vllm-engine-loop"}
    assert loop.stats.requests == 2 and loop.stats.completion_tokens == 2


def test_an_engine_that_fails_to_build_raises_in_the_caller():
    def broken():
        raise RuntimeError("no such model")

    with pytest.raises(RuntimeError, match="no such model"):
        EngineLoop(broken)
