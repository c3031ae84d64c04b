"""The memory plan's activation figure against what llm-compressor's sequential pipeline really keeps between layers.

llm-compressor 0.14 runs here on the CPU as it does on a GPU (same pipeline, same IntermediatesCache, eager attention
forced during calibration): a random-init two-layer Llama is calibrated at three (samples, seq length, batch) points
and the bytes held by its IntermediatesCache are read after every update, by kind. The plan (memory_plan.cache_parts)
must be within 5% of each kind and of the total at its peak.
"""
from __future__ import annotations

from collections import defaultdict

import pytest

from components.memory_plan import Calibration, ModelShape, cache_parts

HIDDEN, HEADS, KV_HEADS, HEAD_DIM, VOCAB = 96, 4, 2, 16, 256  # no two alike, so a tensor's kind shows in its shape


def tiny_llama(tmp_path):
    import torch
    from tokenizers import Tokenizer, models
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=160, num_hidden_layers=2,
                         num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, head_dim=HEAD_DIM,
                         max_position_embeddings=1024, tie_word_embeddings=False)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    config.save_pretrained(tmp_path)  # oneshot reads the config back from the model's name_or_path
    model.config._name_or_path = str(tmp_path)
    vocab = {f"t{i}": i for i in range(VOCAB)}
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="t0")),
                                        unk_token="t0", pad_token="t0")
    return model, tokenizer


def kind(value, seq_len: int) -> str:
    """What a cached tensor is, from its dtype and shape."""
    if not value.is_floating_point():
        return "positions"
    if tuple(value.shape[-2:]) == (seq_len, seq_len):
        return "mask"
    return {HIDDEN: "hidden", HEAD_DIM: "rotary"}[value.shape[-1]]


def measure(monkeypatch, tmp_path, samples: int, seq_len: int, batch_size: int) -> dict[str, int]:
    """Run llm-compressor's sequential pipeline (W8A8 GPTQ, as the project's default scheme) and return the bytes its
    IntermediatesCache held, by kind, at the moment it held the most."""
    import torch
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import GPTQModifier
    from llmcompressor.pipelines.cache import IntermediatesCache

    peak: dict[str, int] = {}
    update = IntermediatesCache.update

    def held(cache: IntermediatesCache) -> dict[str, int]:
        by: dict[str, int] = defaultdict(int)
        seen: set[int] = set()

        def walk(node):
            value = node.value
            if isinstance(value, torch.Tensor):
                if id(value) not in seen:
                    seen.add(id(value))
                    by[kind(value, seq_len)] += value.nbytes
            elif isinstance(value, (list, tuple)):
                for v in value:
                    walk(v)
            elif isinstance(value, dict):
                for v in value.values():
                    walk(v)
        for batch in cache.batch_intermediates:
            for node in batch.values():
                walk(node)
        return by

    def counted_update(self, batch_index, values):
        update(self, batch_index, values)
        now = held(self)
        if sum(now.values()) > sum(peak.values()):
            peak.clear()
            peak.update(now)

    monkeypatch.setattr(IntermediatesCache, "update", counted_update)
    model, tokenizer = tiny_llama(tmp_path)
    ids = torch.randint(0, VOCAB, (samples, seq_len), generator=torch.Generator().manual_seed(0)).tolist()
    dataset = Dataset.from_dict({"input_ids": ids, "attention_mask": [[1] * seq_len] * samples})
    oneshot(model=model, processor=tokenizer, dataset=dataset, pipeline="sequential",
            recipe=GPTQModifier(targets="Linear", scheme="W8A8", ignore=["lm_head"]),
            num_calibration_samples=samples, max_seq_length=seq_len, batch_size=batch_size)
    return peak


@pytest.mark.parametrize("samples,seq_len,batch_size", [(4, 64, 1), (6, 200, 1), (8, 128, 2)])
def test_the_plan_counts_what_the_sequential_pipeline_caches(monkeypatch, tmp_path, samples, seq_len, batch_size):
    measured = measure(monkeypatch, tmp_path, samples, seq_len, batch_size)
    shape = ModelShape(hidden=HIDDEN, intermediate=160, layers=2, heads=HEADS, kv_heads=KV_HEADS, head_dim=HEAD_DIM,
                       vocab=VOCAB, tied_embeddings=False)
    parts = cache_parts(shape, Calibration(num_samples=samples, seq_len=seq_len, batch_size=batch_size))
    planned = {"hidden": parts["hidden"] + parts["in_flight"], "mask": parts["mask"], "rotary": parts["rotary"],
               "positions": parts["positions"]}
    print(f"\n{samples} x {seq_len} (batch {batch_size}): measured {dict(measured)}, planned {planned}")
    assert set(measured) == set(planned), measured  # eager attention: the mask is cached beside the hidden states
    for k in planned:
        assert planned[k] == pytest.approx(measured[k], rel=0.05), (k, measured, planned)
    assert sum(planned.values()) == pytest.approx(sum(measured.values()), rel=0.05)
