"""Profiles and strict, typed stage configuration.

A profile (``configs/<profile>.yaml``) has four sections::

    seed: 0                  # global seed, copied into every stage that does not set its own
    world: {...}             # the toy world (WorldConfig): shared by every stage
    stages: {sft: {...}}     # defaults for every run of a stage (one dataclass per stage)
    runs:                    # the plan: named runs; `stage` defaults to the run's name
      sft: {}
      sft_alpha: {stage: sft, data: curate/alpha}

Loading is strict: an unknown key is an error naming the key, the stage and the file; values
are coerced to the annotated type (YAML's ``5e-7`` is a string, here it becomes a float; YAML's
``off`` is a bool and is refused for a string field). Overrides have one shape, :data:`Overrides`
(``{run: {key: value}}``): :func:`parse_overrides` makes it from ``--set run.key=value`` strings,
:func:`parse_profile` validates it with the same rules as the file and keeps it on the profile
(``Profile.overrides``), and the runner passes it unchanged to every notebook as its
``overrides`` parameter. Each resolved run has a stable hash over its config, the world and its
upstream runs' hashes (overrides enter it only through the configs they change).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import yaml

from .stage import Stage

THREADS_ENV = "ZEPHYR_THREADS"  # CPU threads a stage may use (set by the runner when runs execute at once)
REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO / "configs"
# A parameter NAME that means a credential. Words are separated by "_", "-" or "."; "token" counts
# only alone or after a credential word (hf_token, access_token, auth_token, ...), never in names
# like max_new_tokens, pad_token or prompt_tokens. Names ending in "_env" hold a variable's NAME.
SECRET_PATTERN = re.compile(
    r"(?:^|[_.-])(?:api[_-]?key|apikey|secret|secrets|password|passwd|passphrase|credentials?"
    r"|private[_-]?key|(?:hf|hub|huggingface|access|auth|bearer|refresh|api|id|session|oauth|github|gh"
    r"|openai|wandb|slack|bot|secret)[_-]token)(?:$|[_.-])|^token$", re.I)
# A parameter VALUE shaped like a key: well-known prefixes, or one long high-entropy word.
SECRET_VALUE_PATTERN = re.compile(
    r"(?:^|[^A-Za-z0-9])(?:sk-(?:proj-|ant-)?[A-Za-z0-9_-]{16,}|hf_[A-Za-z0-9]{20,}|gh[pousr]_[A-Za-z0-9]{20,}"
    r"|github_pat_[A-Za-z0-9_]{20,}|xox[abposr]-[A-Za-z0-9-]{10,}|AKIA[0-9A-Z]{16}|AIza[0-9A-Za-z_-]{30,}"
    r"|eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,})")
ENV_VAR_NAME = re.compile(r"[A-Z_][A-Z0-9_]*")


class ConfigError(ValueError):
    """A profile or override is invalid; the message names the file, stage and key."""


Overrides = dict[str, dict[str, Any]]  # {run name: {config key: value}}: the one shape of config overrides


def opt(default: Any, help: str, *, choices: tuple | None = None, ge: float | None = None,
        gt: float | None = None, le: float | None = None, lt: float | None = None, **kw: Any) -> Any:
    """A dataclass field with a one-line description (shown by ``zephyr describe``) and, optionally,
    its allowed values: ``choices`` (a closed set; for a list field, of each element) and the bounds
    ``ge``/``gt``/``le``/``lt``. :func:`build` enforces them and names the field and the value."""
    meta = {"help": help, **kw}
    for key, value in (("choices", choices), ("ge", ge), ("gt", gt), ("le", le), ("lt", lt)):
        if value is not None:
            meta[key] = tuple(value) if key == "choices" else value
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return field(default=default, metadata=meta)


def ref(default: str, help: str) -> Any:
    """A field naming an upstream run (``run``, ``run/artifact`` or ``run@epoch``)."""
    return opt(default, help, ref=True)


def refs(default: list[str], help: str) -> Any:
    """A list field naming upstream runs (toy-world agents such as ``teacher`` are allowed too)."""
    return opt(default, help, ref=True)


def endpoint(default: str, help: str) -> Any:
    """A field naming one of the profile's endpoints (``toy`` always exists)."""
    return opt(default, help, endpoint=True)


@dataclass(frozen=True)
class StageConfig:
    """Base of every stage's config: construction enforces the fields' declared choices and bounds."""

    def __post_init__(self) -> None:
        check_values(self)


def allowed(f: dataclasses.Field) -> str:
    """A field's allowed values in words ('> 0', '[0, 1)', 'one of a, b'), for messages and describe."""
    m = f.metadata
    if "choices" in m:
        return "one of " + ", ".join(map(str, m["choices"]))
    lo = f"[{m['ge']:g}" if "ge" in m else f"({m['gt']:g}" if "gt" in m else None
    hi = f"{m['le']:g}]" if "le" in m else f"{m['lt']:g})" if "lt" in m else None
    if lo and hi:
        return f"in {lo}, {hi}"
    if lo:
        return (">= " if lo[0] == "[" else "> ") + lo[1:]
    if hi:
        return ("<= " if hi[-1] == "]" else "< ") + hi[:-1]
    return ""


def check_values(obj: Any) -> None:
    """Enforce every field's declared choices and bounds (see :func:`opt`)."""
    for f in dataclasses.fields(obj):
        m, v = f.metadata, getattr(obj, f.name)
        if f.name.endswith("seed") and isinstance(v, int) and not isinstance(v, bool) and v < 0:
            raise ConfigError(f"{f.name} must be >= 0 (random generators refuse negative seeds), got {v!r}")
        if not any(k in m for k in ("choices", "ge", "gt", "le", "lt")) or v is None:
            continue
        values = v if isinstance(v, list) else [v]
        for x in values:
            if isinstance(x, float) and (x != x or x in (float("inf"), float("-inf"))):
                raise ConfigError(f"{f.name} must be a finite number, got {x!r}")
            ok = x in m["choices"] if "choices" in m else (
                ("ge" not in m or x >= m["ge"]) and ("gt" not in m or x > m["gt"])
                and ("le" not in m or x <= m["le"]) and ("lt" not in m or x < m["lt"]))
            if not ok:
                paper = f"; the paper: {m['paper']!r}" if "paper" in m else ""
                raise ConfigError(f"{f.name} must be {allowed(f)}, got {x!r}{paper}")


# --------------------------------------------------------------------------------------------
# One frozen dataclass per stage. Field help is the documentation; __post_init__ validates.
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class WorldConfig:
    """The toy world: a fictional knowledge base, task generator, teacher and judge stand-ins."""

    seed: int = opt(1234, "Seed of the world itself (entities, facts); independent of training seeds.")
    n_entities: int = opt(40, "Number of fictional entities in the knowledge base.", ge=1)
    n_unknown: int = opt(24, "Names of entities that do NOT exist (honest answer: say so).", ge=0)
    teacher_wrong_rate: float = opt(0.08, "Teacher (GPT-3.5 stand-in): rate of wrong answers.", ge=0, le=1)
    teacher_ignore_rate: float = opt(0.0, "Teacher: rate of ignoring an explicit constraint by a per-answer coin (v3: 0; its misses are the prompt-dependent format habits).", ge=0, le=1)
    teacher_format_misses: bool = opt(True, "Teacher: prompt-dependent format habits (an extraction list of 3+ towns wrapped in words; 3 sentences asked, 2 written).")
    teacher_informative_rate: float = opt(0.2, "Teacher (GPT-3.5 stand-in): rate of correct answers that add a further true fact, where one fits.", ge=0, le=1)
    strong_informative_rate: float = opt(0.8, "The GPT-4 stand-in (teacher_strong): the same rate.", ge=0, le=1)
    teacher_lowercase_rate: float = opt(0.05, "Teacher: rate of dialogues with lower-cased sentence starts.", ge=0, le=1)
    teacher_boilerplate_rate: float = opt(0.35, "Teacher: rate of 'As an AI…' prefaces on plain fact questions.", ge=0, le=1)

    def __post_init__(self) -> None:
        check_values(self)


@dataclass(frozen=True)
class EndpointConfig:
    """A model behind an API that a stage calls: the teacher (curate), the judge (aif, eval).

    A profile names its endpoints once (``endpoints: {gpt4: {kind: openai, model: gpt-4-0613}}``) and
    stages refer to them by name (``aif.judge: gpt4``); the endpoint ``toy`` (the toy world's
    stand-ins) always exists. An endpoint's fields enter the hash of every run that uses it.
    """

    kind: str = opt("toy", "'toy' (the toy world's labelled stand-ins), 'openai' (any OpenAI-compatible API) or 'vllm' (a local vLLM server's OpenAI-compatible API).",
                    choices=("toy", "openai", "vllm"))
    model: str = opt("", "Model name sent with every request (paper: gpt-4-0613 as judge, gpt-3.5-turbo as teacher).")
    base_url: str = opt("", "Base URL (empty: https://api.openai.com/v1 for 'openai', http://localhost:8000/v1 for 'vllm').")
    api_key_env: str = opt("OPENAI_API_KEY", "NAME of the environment variable holding the key (never the key itself; a vLLM server without --api-key accepts any value).")
    concurrency: int = opt(8, "Requests in flight at once.", ge=1)

    def __post_init__(self) -> None:
        check_values(self)
        check_env_var_name(self.api_key_env, "endpoint api_key_env")
        if self.kind != "toy" and not self.model:
            raise ConfigError(f"an endpoint of kind {self.kind!r} needs a model name")

    @property
    def url(self) -> str:
        return self.base_url or {"openai": "https://api.openai.com/v1", "vllm": "http://localhost:8000/v1"}.get(self.kind, "")


TOY_AGENTS = ("teacher", "teacher_strong", "reference")  # toy-world programs that can be evaluated like models
N_ALPACA_MAX = 200  # training prompts exclude every prompt (and paraphrase) any toy benchmark can ask: eval.n_alpaca <= this
# The toy judge's version: part of the hash of every run it grades (aif, eval), so changing how it
# grades reruns them instead of reusing stale verdicts (its cache is keyed by this name too).
TOY_JUDGE_VERSION = "toy-judge-v3"
# the `attn_implementation` setting of the stages that load models (modeling.resolve_attn_implementation)
ATTN_IMPLEMENTATIONS = ("auto", "sdpa", "flash_attention_2", "eager")
# the `precision` setting of the training stages (modeling.resolve_precision)
PRECISIONS = ("auto", "bf16", "fp32")


# --------------------------------------------------------------------------------------------
# Coercion
# --------------------------------------------------------------------------------------------

def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, args[0], where)
    if origin is list:
        (inner,) = typing.get_args(tp)
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "on", "off", "1", "0"):
            return value.lower() in ("true", "yes", "on", "1")
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        try:
            f = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected an integer, got {value!r}") from None
        if not f.is_integer():
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return int(f)
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        try:
            number = float(value)  # YAML reads 5e-7 as the string '5e-7'
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
        if number != number or number in (float("inf"), float("-inf")):
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
        return number
    if tp is str:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a string, got the boolean {value!r} "
                              "(YAML reads off/on/yes/no as booleans: quote the value)")
        if isinstance(value, (int, float)):
            return str(value)
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported type {tp!r}")


def build(cls: type, values: dict, where: str) -> Any:
    """Instantiate a stage dataclass from raw values: unknown keys and bad types are errors."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; "
                          f"known keys: {', '.join(sorted(names))}")
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}") for k, v in values.items()}
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None


def parse_override(text: str) -> tuple[str, str, Any]:
    """'run.key=value' -> (run, key, value parsed as YAML)."""
    m = re.fullmatch(r"([A-Za-z_][\w@]*)\.([A-Za-z_]\w*)=(.*)", text, re.S)
    if not m:
        raise ConfigError(f"--set {text!r}: expected run.key=value (e.g. sft.learning_rate=1e-4)")
    run, key, raw = m.groups()
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return run, key, value


def parse_overrides(overrides: Iterable[str] | Mapping[str, Mapping[str, Any]] | None) -> Overrides:
    """The one shape of config overrides, ``{run: {key: value}}`` (:data:`Overrides`), from
    ``--set run.key=value`` strings (values parsed as YAML; a later ``--set`` of the same key wins)
    or from a mapping already in that shape (copied). Only the shape is checked here; whether the
    runs and keys exist and the values fit is :func:`parse_profile`'s check, against the profile."""
    if isinstance(overrides, Mapping):
        out: Overrides = {}
        for run, keys in overrides.items():
            if not isinstance(keys, Mapping):
                raise ConfigError(f"override {run!r}: expected {{run: {{key: value}}}}, got {run!r}: {keys!r} "
                                  f"(e.g. {{'sft': {{'learning_rate': 1e-4}}}})")
            out[str(run)] = dict(keys)
        return out
    if isinstance(overrides, str):  # one string is not a list of them: 'sft.x=1' would be read letter by letter
        overrides = [overrides]
    out = {}
    for text in overrides or []:
        run, key, value = parse_override(text)
        out.setdefault(run, {})[key] = value
    return out


# --------------------------------------------------------------------------------------------
# Profiles and the plan
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Run:
    """One node of the plan: a named execution of a stage with a resolved config."""

    name: str
    stage: str
    config: Any
    upstream: tuple[str, ...]
    spec: Stage  # the stage's record: what the store, runner and launcher need of the stage


@dataclass
class Profile:
    name: str
    path: Path
    seed: int
    world: WorldConfig
    runs: dict[str, Run]
    raw: dict
    endpoints: dict[str, EndpointConfig] = field(default_factory=dict)
    overrides: Overrides = field(default_factory=dict)  # applied to the file's runs (validated); not hashed

    def order(self, only: list[str] | None = None) -> list[Run]:
        """Runs in dependency order; with `only`, those runs plus everything they need."""
        wanted = set(self.runs) if not only else set()
        for name in only or []:
            if name not in self.runs:
                # allow a stage name: every run of that stage
                by_stage = [r.name for r in self.runs.values() if r.stage == name]
                if not by_stage:
                    raise ConfigError(f"--stages: {name!r} is neither a run nor a stage of profile "
                                      f"{self.name!r}; runs: {', '.join(self.runs)}")
                wanted.update(by_stage)
            else:
                wanted.add(name)
        seen: list[str] = []

        def visit(n: str, stack: tuple[str, ...]) -> None:
            if n in stack:
                raise ConfigError(f"{self.path}: runs form a cycle: {' -> '.join(stack + (n,))}")
            if n in seen:
                return
            for u in self.runs[n].upstream:
                visit(u, stack + (n,))
            seen.append(n)

        for n in self.runs:  # file order, then dependencies first
            if n in wanted:
                visit(n, ())
        return [self.runs[n] for n in seen]

    def run_hash(self, name: str) -> str:
        return _hash(self, name, {})


def ref_run(value: str) -> str:
    """'sft/beta' -> 'sft'; 'dpo@2' -> 'dpo'."""
    return re.split(r"[/@]", value, maxsplit=1)[0]


def _refs(cfg: Any) -> list[str]:
    """The upstream runs a config names through its ref fields (toy-world agents are not runs)."""
    out = []
    for f in dataclasses.fields(cfg):
        if not f.metadata.get("ref"):
            continue
        v = getattr(cfg, f.name)
        for x in (v if isinstance(v, list) else [v] if v else []):
            if ref_run(x) not in TOY_AGENTS and not x.startswith("endpoint:"):
                out.append(ref_run(x))
    return out


def endpoint_names(cfg: Any) -> list[str]:
    """The endpoints a config names (fields declared with :func:`endpoint`)."""
    return [getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.metadata.get("endpoint") and getattr(cfg, f.name)]


def _hash(profile: Profile, name: str, memo: dict) -> str:
    if name in memo:
        return memo[name]
    run = profile.runs[name]
    payload = {
        "stage": run.stage,
        "config": hashed_config(run.config),
        "world": dataclasses.asdict(profile.world),
        "upstream": {u: _hash(profile, u, memo) for u in run.upstream},
    }
    used = endpoint_names(run.config)
    if "toy" in used:
        payload["judge"] = TOY_JUDGE_VERSION
    real = {e: dataclasses.asdict(profile.endpoints[e]) for e in used if e != "toy"}
    if real:
        payload["endpoints"] = real
    memo[name] = config_hash(payload)
    return memo[name]


def hashed_config(cfg: Any) -> dict:
    """The config as hashed: fields marked ``hash_omit_default`` (options added later, such as
    LoRA) are left out while they hold their default, so adding them kept existing run hashes.
    A field with ``hash_as`` (a function of the config and the field's value returning
    ``{key: value}``) is hashed as the
    entries that returns, in its place: ``precision`` hashes the precision the machine resolves it
    to, in the encoding runs had before the setting existed (so an fp32 run keeps its hash)."""
    out = dataclasses.asdict(cfg)
    for f in dataclasses.fields(cfg):
        if f.metadata.get("hash_as"):
            out.update(f.metadata["hash_as"](cfg, out.pop(f.name)))
        elif f.metadata.get("hash_omit_default"):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            if out[f.name] == default:
                del out[f.name]
    return out


def config_hash(payload: Any) -> str:
    """Stable short hash of canonical JSON (sorted keys; floats as Python repr)."""
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def profile_path(profile: str) -> Path:
    p = Path(profile)
    if p.suffix in (".yaml", ".yml") and p.exists():
        return p
    p = CONFIG_DIR / f"{profile}.yaml"
    if not p.exists():
        known = sorted(x.stem for x in CONFIG_DIR.glob("*.yaml"))
        raise ConfigError(f"unknown profile {profile!r}: no {p}; profiles: {', '.join(known)}")
    return p


def parse_profile(profile: str, registry: Mapping[str, Stage],
                  overrides: Iterable[str] | Mapping[str, Mapping[str, Any]] | None = None) -> Profile:
    """Load configs/<profile>.yaml strictly against the stage records of ``registry`` (what
    ``plan.load_profile`` passes: ``stages.STAGES``) and apply overrides (:data:`Overrides`, or
    ``run.key=value`` strings, see :func:`parse_overrides`); the validated overrides are kept as
    ``Profile.overrides``. Raises ConfigError naming the file, run/stage and key."""
    path = profile_path(profile)
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not a text (UTF-8) file: byte {e.start} is {e.object[e.start:e.start + 1]!r}; "
                          "a profile is YAML text") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the profile: {e.strerror}") from None
    if "\0" in text:
        raise ConfigError(f"{path}: not a text file (it holds NUL bytes); a profile is YAML text")
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(e).split())}") from None
    if raw is None:
        raise ConfigError(f"{path}: the profile is empty; it needs at least `runs:` (see configs/toy.yaml)")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a YAML mapping (seed, world, endpoints, stages, runs), "
                          f"got a {type(raw).__name__}")
    known = {"seed", "world", "endpoints", "stages", "runs", "description"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"{path}: unknown top-level key(s) {unknown}; known: {sorted(known)}")
    configs = {name: st.config for name, st in registry.items()}
    seed = _coerce(raw.get("seed", 0), int, f"{path}: seed")
    world = build(WorldConfig, raw.get("world") or {}, f"{path}: world")
    endpoints = {"toy": EndpointConfig()}
    for ename, spec in (raw.get("endpoints") or {}).items():
        if ename == "toy":
            raise ConfigError(f"{path}: endpoints: the name 'toy' is reserved for the toy world's stand-ins")
        endpoints[ename] = build(EndpointConfig, spec or {}, f"{path}: endpoint {ename!r}")
    stages = raw.get("stages") or {}
    for s in stages:
        if s not in configs:
            raise ConfigError(f"{path}: stages: unknown stage {s!r}; stages: {', '.join(configs)}")
    plan = raw.get("runs") or {s: {} for s in configs}

    ov = parse_overrides(overrides)
    for run in ov:
        if run not in plan:
            raise ConfigError(f"override {run}.*: profile {path.name} has no run {run!r}; runs: {', '.join(plan)}")

    runs: dict[str, Run] = {}
    for name, spec in plan.items():
        spec = dict(spec or {})
        stage = spec.pop("stage", name)
        if stage not in configs:
            raise ConfigError(f"{path}: run {name!r}: unknown stage {stage!r}; stages: {', '.join(configs)}")
        cls = configs[stage]
        values = {}
        if "seed" in {f.name for f in dataclasses.fields(cls)}:
            values["seed"] = seed
        values.update(stages.get(stage) or {})
        values.update(spec)
        where = f"{path}: run {name!r} (stage {stage})"
        base_cfg = build(cls, values, where)
        if name in ov:
            refuse_secret_names(ov[name])
            values.update(ov[name])
            where = f"override of run {name!r} (stage {stage}, profile {path.name})"
            base_cfg = build(cls, values, where)
        for e in endpoint_names(base_cfg):
            if e not in endpoints:
                raise ConfigError(f"{where}: endpoint {e!r} is not defined; endpoints of this profile: "
                                  f"{', '.join(endpoints)} (add it under `endpoints:`)")
        for f in dataclasses.fields(base_cfg):  # 'endpoint:<name>' members (aif.pool, eval.models)
            v = getattr(base_cfg, f.name)
            for x in v if isinstance(v, list) else [v]:
                if isinstance(x, str) and x.startswith("endpoint:") and x.split(":", 1)[1] not in endpoints:
                    raise ConfigError(f"{where}: {f.name} names {x!r}, but endpoint {x.split(':', 1)[1]!r} is not "
                                      f"defined; endpoints of this profile: {', '.join(endpoints)} "
                                      "(add it under `endpoints:`)")
        runs[name] = Run(name, stage, base_cfg, (), registry[stage])
    for name, run in list(runs.items()):
        ups = _refs(run.config)
        for u in ups:
            if u not in runs:
                raise ConfigError(f"{path}: run {name!r} refers to run {u!r}, which the plan does not have")
        runs[name] = dataclasses.replace(run, upstream=tuple(dict.fromkeys(ups)))
    prof = Profile(path.stem, path, seed, world, runs, raw, endpoints, ov)
    prof.order()  # raises on cycles
    return prof


def _entropy(text: str) -> float:
    """Shannon entropy in bits per character."""
    import math
    from collections import Counter

    n = len(text)
    return -sum(c / n * math.log2(c / n) for c in Counter(text).values()) if n else 0.0


def looks_like_secret_value(value: Any) -> bool:
    """Is ``value`` shaped like an API key or token (sk-…, hf_…, ghp_…, a JWT, or one long random
    word of letters and digits)? Paths, URLs, hub ids and hex digests (git revisions) are not."""
    if not isinstance(value, str):
        return False
    v = value.strip()
    if SECRET_VALUE_PATTERN.search(v):
        return True
    if len(v) < 32 or any(c.isspace() for c in v) or re.fullmatch(r"[0-9a-fA-F]+", v):
        return False
    if "/" in v or "\\" in v or ":" in v or "." in v:  # paths, URLs, hub ids, file names
        return False
    classes = sum(bool(re.search(p, v)) for p in (r"[a-z]", r"[A-Z]", r"[0-9]"))
    return classes == 3 and _entropy(v) >= 4.0


def check_env_var_name(value: Any, where: str) -> str:
    """A ``*_api_key_env`` value must be the NAME of an environment variable (``OPENAI_API_KEY``),
    never the key itself. The error does not repeat the value: it may be a key typed by mistake."""
    if not isinstance(value, str) or not ENV_VAR_NAME.fullmatch(value):
        kind = "a key-like string" if looks_like_secret_value(value) else f"a {type(value).__name__} of {len(str(value))} characters"
        raise ConfigError(f"{where} must be the NAME of an environment variable (upper case, digits, "
                          f"'_', e.g. OPENAI_API_KEY), not its value; got {kind} (not shown). "
                          "Put the key in that variable: export OPENAI_API_KEY=...")
    return value


def _walk(params: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(params, dict):
        for k, v in params.items():
            name = f"{prefix}.{k}" if prefix else str(k)
            yield name, v
            if isinstance(v, (dict, list, tuple)):
                yield from _walk(v, name)
    elif isinstance(params, (list, tuple)):
        for i, v in enumerate(params):
            if isinstance(v, (dict, list, tuple)):
                yield from _walk(v, f"{prefix}[{i}]")
            else:
                yield f"{prefix}[{i}]", v


def refuse_secret_names(names: list[str] | dict, where: str = "parameter") -> None:
    """Papermill writes parameters into the executed notebook: secrets must never be one.

    Given names, refuses names that mean a credential (``openai_api_key``, ``hf_token``; not
    ``max_new_tokens``). Given a dict (nested dicts and lists are walked), also refuses values
    shaped like keys and ``*_env`` values that are not environment-variable names. Errors name
    the parameter, never the value.
    """
    items = list(_walk(names)) if isinstance(names, dict) else [(str(n), None) for n in names]
    for n, value in items:
        leaf = re.split(r"[.\[]", n)[-1] if n else n
        if leaf.endswith("_env"):
            if isinstance(names, dict) and leaf.endswith("_api_key_env"):
                check_env_var_name(value, f"{where} {n!r}")
            continue
        if SECRET_PATTERN.search(leaf):
            raise ConfigError(f"{where} {n!r} looks like a secret; secrets come only from "
                              "environment variables (give the variable's NAME in a *_env field)")
        if isinstance(names, dict) and looks_like_secret_value(value):
            raise ConfigError(f"{where} {n!r} has a value that looks like an API key or token (not shown); "
                              "secrets come only from environment variables (give the variable's NAME "
                              "in a *_env field, e.g. judge_api_key_env=OPENAI_API_KEY)")


def check_secret_free(profile: "Profile") -> None:
    """Every run's ``*_api_key_env`` field names a variable, and no string field holds a key."""
    for name, run in profile.runs.items():
        values = dataclasses.asdict(run.config)
        refuse_secret_names(values, f"{profile.path.name}: run {name!r}: field")
    for name, ep in profile.endpoints.items():
        refuse_secret_names(dataclasses.asdict(ep), f"{profile.path.name}: endpoint {name!r}: field")
