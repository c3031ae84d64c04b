"""A tiny random-initialised Llama with the embedded default's tokenizer (seconds to quantize), and the variant spec
the tests run on it."""
from __future__ import annotations

from pathlib import Path


def save_embedded_tokenizer(out: Path) -> Path:
    """The embedded default's tokenizer saved to `out` as components.models.convert_gguf saves it (loaded from the
    GGUF, <|im_end|> as eos), without dequantizing 135M weights: what the tiny model and the tokenizer tests need."""
    from transformers import AutoTokenizer

    from components.models import EMBEDDED_DEFAULT, gguf_path

    if (out / "tokenizer_config.json").exists():
        return out
    gguf = gguf_path(EMBEDDED_DEFAULT)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if "<|im_end|>" in tokenizer.get_vocab():
        tokenizer.eos_token = "<|im_end|>"
    tokenizer.save_pretrained(out)
    return out


def config_only_base(out: Path, config: dict) -> Path:
    """A base as preflight reads it: `config` as config.json and a word-level tokenizer of its vocabulary, no weights
    (a 70B's shapes in milliseconds)."""
    import json

    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    out.mkdir(parents=True)
    (out / "config.json").write_text(json.dumps(config))
    vocab = {f"t{i}": i for i in range(config["vocab_size"])}
    PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="t0")), unk_token="t0",
                            eos_token="t1", bos_token="t2").save_pretrained(out)
    return out


def make_embedded_shaped(out: Path, tokenizer_dir: Path) -> Path:
    """A model of the embedded default's architecture and shapes (its config, read from the GGUF) with random bf16
    weights: for checks that read configs and weight-file headers only, without dequantizing the GGUF (~40 s)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from components.models import EMBEDDED_DEFAULT, gguf_path

    if (out / "config.json").exists():
        return out
    gguf = gguf_path(EMBEDDED_DEFAULT)
    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config.dtype = torch.bfloat16
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    config.architectures = [type(model).__name__]
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(out)
    return out


def make_tiny_llama(out: Path, tokenizer_dir: str, seed: int = 0) -> Path:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    if (out / "config.json").exists():
        return out
    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=64, max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True,
    )
    config.architectures = ["LlamaForCausalLM"]
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def tiny_spec(model: Path, **over) -> dict:
    """The tests' variant of the tiny model: w8a8-int8, 8 x 64 calibration, hf on 2 documents a task. `over` sets a
    field by its path, `__` between levels (`evaluation__seed=7`, `stores=[...]`)."""
    spec = {"base": {"source": str(model)}, "scheme": "w8a8-int8",
            "calibration": {"num_samples": 8, "max_seq_length": 64},
            "evaluation": {"engine": "hf", "limit": 2, "suite": "smoke"}}
    for dotted, value in over.items():
        node = spec
        *parents, leaf = dotted.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return spec


def tiny_sweep(model: Path, schemes: list[str], **over) -> dict:
    """The same tiny spec as a sweep over `schemes` (a SweepSpec's data); `over` as in tiny_spec."""
    spec = tiny_spec(model, **over)
    del spec["scheme"]
    return {**spec, "schemes": schemes}
