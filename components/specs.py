"""Typed specs of one variant: these models are the Prefect UI form."""
from __future__ import annotations

import functools
import re
from enum import Enum
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, StrictBool, ValidationError, WithJsonSchema,
                      field_validator, model_validator)
from pydantic_core import InitErrorDetails, PydanticCustomError

from components.messages import did_you_mean
from components.models import EMBEDDED_DEFAULT, package_path
from components.recipes import names as recipe_names
from components.redaction import NO_URL_CREDENTIALS, credentials_in_url, redact_url

# Shipped files as package paths: the same default on every machine, resolved where the run happens.
CALIBRATION_DATA = "pkg:components/calibration_data/chat.jsonl"
SERVING_PROMPTS = "pkg:components/evaluation/serving_prompts.jsonl"


# The named schemes are the recipe files: adding components/recipes/<name>.yaml adds a choice to the form.
Scheme = Enum("Scheme", {n.replace("-", "_"): n for n in recipe_names()}, type=str)
Scheme.__doc__ = "Named quantization schemes; each is a file in components/recipes/ (see `quantflow schemes`)."
SUITES = sorted(p.stem for p in (Path(__file__).parent / "evaluation" / "suites").glob("*.yaml"))
# The Prefect form offers the shipped suites as a choice, or a suite file of one's own.
SUITE_SCHEMA = {"anyOf": [{"type": "string", "enum": SUITES, "title": "Shipped suite"},
                          {"type": "string", "pattern": r"\.ya?ml$", "title": "Suite file (.yaml)"}]}


# A published name must be valid everywhere a variant goes: a folder name, an S3 key segment, a Hub repo name.
VARIANT_NAME_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?$")


def check_variant_name(name: str) -> str:
    """`name` if it is one plain name (letters, digits, '-', '_', '.'; at most 96), else ValueError saying why."""
    if not VARIANT_NAME_RE.fullmatch(name) or ".." in name or "--" in name:
        raise ValueError(f"variant name {name!r} must be one plain name: letters, digits, '-', '_', '.', at most 96, "
                         "starting and ending with a letter or digit, no '..' or '--' (no '/', spaces or other "
                         "characters: it becomes a folder, an S3 key segment and a Hub repo name)")
    return name


# Where each kind of secret belongs instead of a URL: named in the refusal.
CREDENTIALS_HINT = {
    "s3": "give S3 credentials through the AWS chain (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, a profile, a role) or "
          "a Prefect AwsCredentials block named in `credentials`",
    "hub": "give the token as HF_TOKEN or a Prefect Secret block named in `credentials`",
    None: "give credentials through the environment (AWS chain, HF_TOKEN) or a Prefect AwsCredentials/Secret block",
}
def _error(loc: tuple, msg: str) -> InitErrorDetails:
    return InitErrorDetails(type=PydanticCustomError("spec", "{msg}", {"msg": msg}), loc=loc, input=None)


def _optional_as_plain(prop: dict) -> None:
    """An optional field (`X | None = None`) as the plain `X` input in the Prefect form, without a default: its
    anyOf's null branch renders as a 'Property is type "None"' tab. Prefect's server adds the null back before it
    validates (schema_tools.validation: a property with a type and no default may be null), so null stays valid."""
    branches = prop.get("anyOf", [])
    rest = [b for b in branches if b != {"type": "null"}]
    if len(rest) == 1 and len(branches) == 2 and prop.get("default", ...) is None:
        del prop["anyOf"], prop["default"]
        prop.update(rest[0])


class StrictModel(BaseModel):
    """A spec section: unknown fields are errors (with a did-you-mean), no URL carries credentials, and no input value
    is echoed in errors (they reach logs and the Prefect database)."""

    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    @model_validator(mode="wrap")
    @classmethod
    def _known_fields_and_no_credentials(cls, data, handler):
        if not isinstance(data, dict):
            return handler(data)
        fields = list(cls.model_fields)
        for k, v in data.items():
            if isinstance(v, str) and credentials_in_url(v):
                kind = data.get("kind") if "kind" in cls.model_fields else None  # a store: its own mechanism
                raise ValueError(f"{k} {redact_url(v)!r} carries credentials in the URL, which would be stored "
                                 f"with the spec (Prefect database, manifest, MLflow): remove them and "
                                 f"{CREDENTIALS_HINT.get(kind, CREDENTIALS_HINT[None])}")
        unknown = [k for k in data if k not in cls.model_fields]
        if not unknown:
            return handler(data)
        # Each unknown field is one problem, and the known fields are still validated: every problem at once.
        errors = [_error((), f"unknown field {k!r}" + (did_you_mean(str(k), fields) or f" (fields: {', '.join(fields)})"))
                  for k in unknown]
        try:
            handler({k: v for k, v in data.items() if k in cls.model_fields})
        except ValidationError as e:
            errors += [_error(err["loc"], err["msg"].removeprefix("Value error, "))
                       for err in e.errors(include_input=False, include_url=False)]
        raise ValidationError.from_exception_data(cls.__name__, errors)

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema, handler):
        """The Prefect form and API refuse what validation refuses: unknown fields, credentials in string fields."""
        schema = handler(core_schema)
        target = handler.resolve_ref_schema(schema)
        for prop in target.get("properties", {}).values():
            _optional_as_plain(prop)
            if "enum" not in prop and (prop.get("type") == "string"
                                       or any(a.get("type") == "string" for a in prop.get("anyOf", []))):
                prop.setdefault("pattern", NO_URL_CREDENTIALS)
        return schema


class Engine(str, Enum):
    """Evaluation engine. `auto` picks vLLM where this platform's vLLM runs the scheme, else hf."""

    auto = "auto"
    vllm = "vllm"
    hf = "hf"


class BaseModelSpec(StrictModel):
    source: str = Field(EMBEDDED_DEFAULT, description="Hub id, local HF directory, GGUF file, or `pkg:<package>/<file.gguf>`.")
    revision: str | None = Field(None, description="Hub revision (Hub ids only).")

    @field_validator("source")
    @classmethod
    def _not_empty(cls, value: str) -> str:
        if not value.strip():  # else "" reads as the current directory
            raise ValueError("base.source is empty: give a Hub id (org/name), a local Hugging Face model directory, "
                             "a GGUF file, or pkg:<package>/<file.gguf> (or leave it out for the embedded default)")
        return value


class CalibrationSpec(StrictModel):
    """Where calibration samples come from and how they are prepared."""

    source: Literal["dataset", "random"] = Field(
        "dataset", description="An HF dataset (Hub id or local file/dir), or random token ids.")
    dataset: str = Field(CALIBRATION_DATA, description="Hub dataset id, a local JSON/JSONL/parquet file or directory, "
                                                      "or `pkg:<package>/<file>` (default: the chat set quantflow ships).")
    config_name: str | None = None
    split: str = Field("train", description="Dataset split, e.g. train_sft for UltraChat.")
    column: str = Field("messages", description="Column holding chat messages (chat template applied) or plain text.")
    apply_chat_template: bool = True
    num_samples: int = Field(16, ge=1, le=65536)
    max_seq_length: int = Field(512, ge=8, le=131072)
    seed: int = 42

    @property
    def dataset_path(self) -> Path:
        """The dataset as a local path (a `pkg:` path resolved here); a Hub id comes back as it is."""
        return package_path(self.dataset)

    @model_validator(mode="after")
    def _dataset_needed(self) -> "CalibrationSpec":
        if self.source == "dataset" and not self.dataset:
            raise ValueError("calibration.dataset is required when calibration.source is 'dataset'")
        return self


class QuantizationSpec(StrictModel):
    """How llm-compressor runs: where the model sits, where calibration activations wait between layers, and the
    calibration batch. `auto` takes the memory plan's choice (preflight: components/memory_plan.py), which fits the
    model to the machine's GPUs, host RAM and disk or refuses with the numbers."""

    placement: Literal["auto", "gpu", "sequential", "cpu"] = Field(
        "auto", description="gpu: the whole model on the GPU(s); sequential: the model in host RAM, one decoder layer "
                            "onloaded to the GPU at a time; cpu: no GPU.")
    activation_offload: Literal["auto", "cpu", "cuda", "cuda:1"] = Field(
        "auto", description="Where the calibration activations wait between layers (llm-compressor's "
                            "`sequential_offload_device`).")
    pipeline: Literal["auto", "independent", "sequential", "basic", "datafree"] = Field(
        "auto", description="llm-compressor's calibration pipeline (`auto`: its own default, `independent`).")
    batch_size: int = Field(1, ge=1, le=4096, title="Calibration Batch Size",
                            description="Calibration batch size (llm-compressor's `batch_size`).")


class ServingSpec(StrictModel):
    """Serving speed beside accuracy: `vllm bench serve` on a fixed prompt set, base and variant alike."""

    enabled: bool = Field(True, description="Measure output tokens/s, time to first token and engine memory "
                                            "(vLLM only: skipped, with a note, where the scheme evaluates on hf).")
    prompts: str = Field(SERVING_PROMPTS, description="JSONL file with a `prompt` field per line (vLLM's custom dataset), "
                                                     "or `pkg:<package>/<file>`.")

    @property
    def prompts_path(self) -> Path:
        return package_path(self.prompts)
    num_prompts: int = Field(16, ge=1, le=100000)
    max_concurrency: int = Field(4, ge=1, le=4096, description="Requests in flight at once.")
    output_len: int = Field(64, ge=1, le=131072,
                            description="Output tokens per request (EOS ignored, so every variant writes as many).")
    max_model_len: int = Field(2048, ge=16)
    seed: int = 0


class EvalSpec(StrictModel):
    suite: Annotated[str, WithJsonSchema(SUITE_SCHEMA)] = Field(
        "demo", description="A shipped suite (components/evaluation/suites/, see `quantflow suites`) or a suite YAML file.")
    engine: Engine = Engine.auto
    # "auto" or a number in the form: a one-value enum, not a const (Prefect's form draws a const as "cannot be changed")
    tensor_parallel_size: Annotated[Literal["auto"] | Annotated[int, Field(ge=1)], WithJsonSchema(
        {"anyOf": [{"type": "string", "enum": ["auto"], "title": "auto"}, {"type": "integer", "minimum": 1, "title": "GPUs"}]}
    )] = Field(
        "auto", title="Tensor Parallel Size",
        description="vLLM's tensor parallelism. auto: the smallest power of two at which base and variant fit "
                    "the visible GPUs (components/evaluation/fit.py; 1 on CPU); a number: checked the same way.")
    gpu_memory_utilization: float | None = Field(None, gt=0, le=1, title="GPU Memory Utilization",
                                                 description="vLLM's share of GPU memory (default: vLLM's own).")
    batch_size: str = Field("auto", title="Evaluation Batch Size", description="lm-eval's `batch_size`: a number, or `auto`.")
    limit: int | None = Field(None, ge=1, description="Evaluate only the first N docs of each task (smoke runs).")
    seed: int = 1234
    require_gpu: bool = Field(False, title="Require GPU",
                              description="Fail at preflight unless a CUDA GPU is visible (e.g. a GPU work pool "
                                          "that came up without one), instead of running for hours on CPU.")
    rtol: float = Field(0.08, ge=0, le=1, title="Relative Tolerance (rtol)",
                       description="Gate: per-task relative tolerance (vLLM's lm-eval CI uses 0.08).")
    min_average_recovery: float = Field(
        0.95, ge=0, le=1.5, description="Gate: floor on the average recovery (llm-compressor's e2e tests use 0.95).")
    reference_baseline: str | None = Field(None, description="Published baseline scores standing in for evaluating the "
                                                             "base model (e.g. Meta-Llama-3.1-70B-Instruct.openllm-v1-2024, a "
                                                             "seed card's baseline column; or a YAML path): marked as such "
                                                             "in the card and MLflow.")
    # a choice of three in the form (an enum without a type: Prefect's form draws a select, values keep their JSON type)
    overlap_base: Annotated[Literal["auto"] | StrictBool, WithJsonSchema({"enum": ["auto", True, False]})] = Field(
        "auto", description="Evaluate the base model while the variant is quantized. auto: when the GPUs both need fit "
                            "this machine (never on CPU only); true: always (on CPU they share the cores; on GPUs "
                            "preflight refuses it without room); false: one after the other.")
    serving: ServingSpec = ServingSpec()

    @field_validator("suite")
    @classmethod
    def _known_suite(cls, value: str) -> str:
        if value in SUITES or value.endswith((".yaml", ".yml")):
            return value  # a file's content is checked by preflight
        raise ValueError(f"unknown suite {value!r}{did_you_mean(value, SUITES)} (choose one of {', '.join(SUITES)}, "
                         "or give a suite YAML file)")


class StoreSpec(StrictModel):
    """One place to publish to: a local folder, an S3-compatible bucket, or a Hugging Face Hub repo."""

    kind: Literal["local", "s3", "hub"] = "local"
    uri: str | None = Field(None, title="URI", description="Where to publish. local: a folder (default `<home>/published`); "
                                              "s3: s3://bucket/prefix; hub: a repo id namespace/name, or a namespace "
                                              "alone to publish each variant as `namespace/<variant name>`.")
    endpoint_url: str | None = Field(None, title="Endpoint URL",
                                     description="s3: endpoint of an S3-compatible server (MinIO, SeaweedFS...); "
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


def _some_store(stores: list[StoreSpec]) -> list[StoreSpec]:
    if not stores:  # no silent "published nowhere" (and an MLflow run without a registered version)
        raise ValueError("stores is empty: the variant would be published nowhere; give at least one, e.g. "
                         "`stores: [{kind: local}]` (a folder under QUANTFLOW_HOME), or leave stores out for that default")
    return stores


# Where a variant goes: at least one store (the Prefect form says so too).
Stores = Annotated[list[StoreSpec], AfterValidator(_some_store), Field(json_schema_extra={"minItems": 1})]


class VariantSpec(StrictModel):
    """One quantized variant of one base model: everything the flow needs."""

    base: BaseModelSpec = BaseModelSpec()
    scheme: Scheme = Scheme.w8a8_int8
    calibration: CalibrationSpec = CalibrationSpec()
    quantization: QuantizationSpec = QuantizationSpec()
    evaluation: EvalSpec = EvalSpec()
    stores: Stores = Field(default_factory=lambda: [StoreSpec()])
    variant_name: str | None = Field(None, description="Published name; default `<base>-<scheme suffix>`. One plain name: "
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


class SpecFileError(ValueError):
    """A spec file that is not a mapping of spec fields: named, with the problem, in one line."""


class _DuplicateKey(Exception):
    def __init__(self, key, first: int, second: int):
        super().__init__(key)
        self.key, self.first, self.second = key, first, second


@functools.cache
def _unique_key_loader():
    """yaml's SafeLoader, refusing a key given twice in one mapping (it would silently keep the last)."""
    import yaml

    class Loader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            if isinstance(node, yaml.MappingNode):
                seen: dict = {}
                for key_node, _ in node.value:
                    if key_node.tag == "tag:yaml.org,2002:merge":
                        continue
                    key = self.construct_object(key_node, deep=True)
                    line = key_node.start_mark.line + 1
                    try:
                        if key in seen:
                            raise _DuplicateKey(key, seen[key], line)
                        seen[key] = line
                    except TypeError:  # an unhashable key: yaml names it below
                        pass
            return super().construct_mapping(node, deep)

    return Loader


def load_spec_file(path: Path) -> dict:
    """The mapping a YAML or JSON spec file holds (empty, a list, a scalar or broken YAML: SpecFileError)."""
    import yaml

    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise SpecFileError(f"spec file {path}: cannot be read ({getattr(e, 'strerror', None) or type(e).__name__})") from None
    try:
        data = yaml.load(text, Loader=_unique_key_loader())
    except _DuplicateKey as e:
        raise SpecFileError(f"spec file {path}: key {e.key!r} is given twice, at line {e.first} and line {e.second} "
                            "(YAML would keep only the last): merge them into one") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise SpecFileError(f"spec file {path}: not valid YAML or JSON{where} "
                            f"({getattr(e, 'problem', None) or type(e).__name__})") from None
    if data is None:
        raise SpecFileError(f"spec file {path}: empty: give a mapping of spec fields (`quantflow spec` prints one)")
    if not isinstance(data, dict):
        raise SpecFileError(f"spec file {path}: holds a {'list' if isinstance(data, list) else type(data).__name__}, "
                            "not a mapping of spec fields (`quantflow spec` prints one)")
    return data



