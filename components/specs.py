"""Typed specs of one variant: these models are the Prefect UI form."""
from __future__ import annotations

import difflib
import re
from enum import Enum
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from components.models import EMBEDDED_DEFAULT

CALIBRATION_DATA = Path(__file__).parent / "calibration_data"
SERVING_PROMPTS = Path(__file__).parent / "evaluation" / "serving_prompts.jsonl"


class Scheme(str, Enum):
    """Named quantization schemes; each is a file in components/recipes/."""

    fp8_static = "fp8-static"
    w8a8_int8 = "w8a8-int8"
    fp8_dynamic = "fp8-dynamic"
    w4a16 = "w4a16"


def closest(value: str, choices: list[str]) -> list[str]:
    """The choices a misspelling most likely meant ('w8a8_int8' -> ['w8a8-int8'], 'fp8' -> both fp8 schemes)."""
    norm = lambda x: re.sub(r"[^a-z0-9]", "", x.lower())  # noqa: E731
    same = [c for c in choices if norm(c) == norm(value)]
    if same:
        return same
    prefixed = [c for c in choices if norm(value) and norm(c).startswith(norm(value))]
    return prefixed or difflib.get_close_matches(value.lower(), choices, n=2, cutoff=0.5)


def did_you_mean(value: str, choices: list[str]) -> str:
    """': did you mean 'x'?' (or 'one of ...'), or '' when nothing is close."""
    hint = closest(value, choices)
    if not hint:
        return ""
    return f": did you mean {hint[0]!r}?" if len(hint) == 1 else f": did you mean one of {', '.join(map(repr, hint))}?"


# A published name must be valid everywhere a variant goes: a folder name, an S3 key segment, a Hub repo name.
VARIANT_NAME_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?$")


def check_variant_name(name: str) -> str:
    """`name` if it is one plain name (letters, digits, '-', '_', '.'; at most 96), else ValueError saying why."""
    if not VARIANT_NAME_RE.fullmatch(name) or ".." in name or "--" in name:
        raise ValueError(f"variant name {name!r} must be one plain name: letters, digits, '-', '_', '.', at most 96, "
                         "starting and ending with a letter or digit, no '..' or '--' (no '/', spaces or other "
                         "characters: it becomes a folder, an S3 key segment and a Hub repo name)")
    return name


class Engine(str, Enum):
    """Evaluation engine. `auto` picks vLLM where this platform's vLLM runs the scheme, else hf."""

    auto = "auto"
    vllm = "vllm"
    hf = "hf"


class BaseModelSpec(BaseModel):
    source: str = Field(EMBEDDED_DEFAULT, description="Hub id, local HF directory, GGUF file, or pkg:<package>/<file.gguf>.")
    revision: str | None = Field(None, description="Hub revision (Hub ids only).")


class CalibrationSpec(BaseModel):
    """Where calibration samples come from and how they are prepared."""

    source: Literal["dataset", "random"] = Field("dataset", description="An HF dataset (Hub id or local file/dir), or random token ids.")
    dataset: str = Field(str(CALIBRATION_DATA / "chat.jsonl"), description="Hub dataset id, or a local JSON/JSONL/parquet file or directory.")
    config_name: str | None = None
    split: str = Field("train", description="Dataset split, e.g. train_sft for UltraChat.")
    column: str = Field("messages", description="Column holding chat messages (chat template applied) or plain text.")
    apply_chat_template: bool = True
    num_samples: int = Field(16, ge=1, le=65536)
    max_seq_length: int = Field(512, ge=8, le=131072)
    seed: int = 42

    @model_validator(mode="after")
    def _dataset_needed(self) -> "CalibrationSpec":
        if self.source == "dataset" and not self.dataset:
            raise ValueError("calibration.dataset is required when calibration.source is 'dataset'")
        return self


class ServingSpec(BaseModel):
    """Serving speed beside accuracy: `vllm bench serve` on a fixed prompt set, base and variant alike."""

    enabled: bool = Field(True, description="Measure output tokens/s, time to first token and engine memory "
                                            "(vLLM only: skipped, with a note, where the scheme evaluates on hf).")
    prompts: str = Field(str(SERVING_PROMPTS), description="JSONL file with a `prompt` field per line (vLLM's custom dataset).")
    num_prompts: int = Field(16, ge=1, le=100000)
    max_concurrency: int = Field(4, ge=1, le=4096, description="Requests in flight at once.")
    output_len: int = Field(64, ge=1, le=131072, description="Output tokens per request (EOS ignored, so every variant writes as many).")
    max_model_len: int = Field(2048, ge=16)
    seed: int = 0


class EvalSpec(BaseModel):
    suite: str = Field("smoke", description="Suite name: a YAML file in components/evaluation/suites/ (see `quantflow suites`).")
    engine: Engine = Engine.auto
    tensor_parallel_size: int = Field(1, ge=1)
    gpu_memory_utilization: float | None = Field(None, gt=0, le=1, description="vLLM's share of GPU memory (default: vLLM's own).")
    batch_size: str = "auto"
    limit: int | None = Field(None, ge=1, description="Evaluate only the first N docs of each task (smoke runs).")
    seed: int = 1234
    require_gpu: bool = Field(False, description="Fail at preflight unless a CUDA GPU is visible (e.g. a GPU work pool "
                                                 "that came up without one), instead of running for hours on CPU.")
    rtol: float = Field(0.08, ge=0, le=1, description="Gate: per-task relative tolerance (vLLM's lm-eval CI uses 0.08).")
    min_average_recovery: float = Field(0.95, ge=0, le=1.5, description="Gate: floor on the average recovery (llm-compressor's e2e tests use 0.95).")
    reference_baseline: str | None = Field(None, description="Published baseline scores standing in for evaluating the "
                                                             "base model (e.g. Meta-Llama-3.1-70B-Instruct.openllm-v1, a "
                                                             "seed card's baseline column; or a YAML path): marked as such "
                                                             "in the card and MLflow.")
    serving: ServingSpec = ServingSpec()


class StoreSpec(BaseModel):
    """One place to publish to: a local folder, an S3-compatible bucket, or a Hugging Face Hub repo."""

    kind: Literal["local", "s3", "hub"] = "local"
    uri: str | None = Field(None, description="Where to publish. local: a folder (default <home>/published); "
                                              "s3: s3://bucket/prefix; hub: a repo id namespace/name, or a namespace "
                                              "alone to publish each variant as namespace/<variant name>.")
    endpoint_url: str | None = Field(None, description="s3: endpoint of an S3-compatible server (MinIO, SeaweedFS...); "
                                                       "hub: Hub endpoint (default HF_ENDPOINT or huggingface.co).")
    region: str | None = Field(None, description="s3: bucket region (default: from the AWS config/environment).")
    create_bucket: bool = Field(False, description="s3: create the bucket if it does not exist (else fail).")
    private: bool = Field(True, description="hub: create the repo private (an existing repo keeps its visibility).")
    credentials: str | None = Field(None, description="Name of a Prefect block holding credentials: AwsCredentials "
                                                      "for s3, Secret (the token) for hub. Default: AWS chain / HF_TOKEN.")

    @model_validator(mode="after")
    def _uri_fits_kind(self) -> "StoreSpec":
        if self.kind == "s3" and not (self.uri or "").startswith("s3://"):
            raise ValueError("an s3 store needs uri: s3://bucket/prefix")
        if self.kind == "hub" and not self.uri:
            raise ValueError("a hub store needs uri: a repo id (namespace/name) or a namespace")
        return self


class VariantSpec(BaseModel):
    """One quantized variant of one base model: everything the flow needs."""

    base: BaseModelSpec = BaseModelSpec()
    scheme: Scheme = Scheme.w8a8_int8
    calibration: CalibrationSpec = CalibrationSpec()
    evaluation: EvalSpec = EvalSpec()
    stores: list[StoreSpec] = Field(default_factory=lambda: [StoreSpec()])
    variant_name: str | None = Field(None, description="Published name; default <base>-<scheme suffix>. One plain name: "
                                                       "letters, digits, '-', '_', '.' (at most 96).")

    @field_validator("scheme", mode="before")
    @classmethod
    def _known_scheme(cls, value):
        if isinstance(value, str) and not isinstance(value, Scheme) and value not in {s.value for s in Scheme}:
            choices = [s.value for s in Scheme]
            raise ValueError(f"unknown scheme {value!r}{did_you_mean(value, choices)} (choose one of {', '.join(choices)})")
        return value

    @field_validator("variant_name")
    @classmethod
    def _plain_name(cls, value: str | None) -> str | None:
        return None if value is None else check_variant_name(value)
