"""An LLM task: summarise each row's instruction in five words; the summary is a new row (a
child of its row), and an answer that is not five words is a failed row carrying the raw text."""

from __future__ import annotations

from curate.generators.backends.base import ChatRequest, Sampling
from curate.generators.base import LLMTask, instruction
from curate.stages.base import Resources


class FiveWordSummary(LLMTask):
    name = generator = "five_word_summary"  # config key and meta's `generator`
    origin = "summary"  # the new rows' origin
    template_version = "five_word_summary/1"  # meta's `template`: change it when the prompt changes
    resources = Resources(num_cpus=0.05, actor=True)  # its calls mostly wait on the engine, as respond's do

    def __init__(self, backend: dict, cache: str | None = None, temperature: float = 0.0, max_tokens: int = 16):
        super().__init__(backend, cache)
        self.sampling = Sampling(temperature=temperature, max_tokens=max_tokens)

    def requests(self, batch):
        """Per row, the requests to send: here one."""
        prompt = "Summarise this instruction in exactly five words. Reply with the five words only.\n\n{}"
        return [[ChatRequest([{"role": "user", "content": prompt.format(instruction(m))}], self.sampling)]
                for m in batch["messages"].to_pylist()]

    def parse(self, row, completions):
        """completions[0]: the completions of the row's first request (one: sampling.n is 1)."""
        answer = completions[0][0]
        meta = self.meta(self.sampling, answer)
        words = answer.text.split()
        if len(words) != 5:
            return [self.failed(answer.text, "not_five_words", meta, parent_ids=[row["id"]])]
        summary = " ".join(words).rstrip(".")
        messages = [{"role": "user", "content": f"Summarise in five words: {instruction(row['messages'])}"},
                    {"role": "assistant", "content": summary}]
        return [self.child(messages, meta, parent_ids=[row["id"]])]
