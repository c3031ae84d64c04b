"""Build lm_eval command lines: the one a run executes is the one its card prints."""
from __future__ import annotations

from pydantic import BaseModel

from components.evaluation.suites import Suite, SuiteTask


class EngineSettings(BaseModel):
    """Everything about the engine that changes scores: base and variant must share it."""

    engine: str  # "vllm" | "hf"
    platform: str  # "cuda" | "cpu"
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float | None = None
    batch_size: str = "auto"
    limit: int | None = None
    seed: int | None = None


def _fmt(value) -> str:
    return str(value)


def model_args(pretrained: str, group: list[SuiteTask], suite: Suite, s: EngineSettings) -> str:
    """`--model_args` in the seed cards' order: pretrained, dtype, add_bos_token, lengths, parallelism."""
    head = group[0]
    args: list[tuple[str, object]] = [("pretrained", pretrained), ("dtype", "auto")]
    if head.add_bos_token is not None:
        args.append(("add_bos_token", head.add_bos_token))
    max_len = head.max_model_len or suite.max_model_len
    if s.engine == "vllm":
        args.append(("max_model_len", max_len))
        if head.max_gen_toks is not None:
            args.append(("max_gen_toks", head.max_gen_toks))
        args.append(("tensor_parallel_size", s.tensor_parallel_size))
        if s.gpu_memory_utilization is not None:
            args.append(("gpu_memory_utilization", s.gpu_memory_utilization))
        if s.platform == "cpu":
            args.append(("enforce_eager", True))  # CPU: compiling costs ~1 min a start
    else:
        args.append(("max_length", max_len))
    args.extend(sorted(head.extra_model_args.items()))
    return ",".join(f"{k}={_fmt(v)}" for k, v in args)


def build_command(pretrained: str, group: list[SuiteTask], suite: Suite, s: EngineSettings,
                  include_path: str | None = None) -> list[str]:
    """argv of one `lm_eval` run over tasks that share their settings."""
    head = group[0]
    argv = ["lm_eval", "--model", s.engine, "--model_args", model_args(pretrained, group, suite, s),
            "--tasks", ",".join(t.task for t in group)]
    if include_path:
        argv += ["--include_path", include_path]
    if head.apply_chat_template:
        argv.append("--apply_chat_template")
    if head.fewshot_as_multiturn:
        argv.append("--fewshot_as_multiturn")
    if head.num_fewshot is not None:
        argv += ["--num_fewshot", str(head.num_fewshot)]
    if s.engine == "hf":
        argv += ["--device", "cuda" if s.platform == "cuda" else "cpu"]
        if head.max_gen_toks is not None:
            argv += ["--gen_kwargs", f"max_gen_toks={head.max_gen_toks}"]
    argv += ["--batch_size", s.batch_size]
    # Always: per-document scores pair base and variant (the recovery interval); a scorer reads the completions.
    argv.append("--log_samples")
    if s.limit is not None:
        argv += ["--limit", str(s.limit)]
    if s.seed is not None:
        argv += ["--seed", str(s.seed)]
    return argv


def build_commands(pretrained: str, suite: Suite, s: EngineSettings, include_path: str | None = None) -> list[list[str]]:
    return [build_command(pretrained, g, suite, s, include_path) for g in suite.groups()]


def render(argv: list[str]) -> str:
    """Multi-line shell form, as in the cards' Reproduction sections (pretrained in double quotes)."""
    lines, i = [argv[0]], 1
    while i < len(argv):
        if i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            value = argv[i + 1]
            if argv[i] == "--model_args":
                head, _, rest = value.partition(",")
                value = f'pretrained="{head.removeprefix("pretrained=")}",{rest}'
            lines.append(f"  {argv[i]} {value}")
            i += 2
        else:
            lines.append(f"  {argv[i]}")
            i += 1
    return " \\\n".join(lines)
