"""The spec's JSON Schema (draft 2020-12) for editors and checkers (`ptst schema`), and what it knows about the field
at a path of a spec (`fields_at`: the names a "did you mean" picks from, and each field's description).

pydantic's schema of `Spec`, completed with what the models alone cannot say: a backend entry and a judge entry are
each a discriminated union on `kind` (one arm per registered kind, plugins included), every arm listing the kind's
own options as that kind's `Options` model declares them (so `download`, `base_url`, `device`, ... complete and
check in an editor); a dataset may be written as a bare name or path (`safety: [advbench]`); `none` stands for no
safety mix. Every property carries a description: the model's own where it has one, else the line below
(`DESCRIPTIONS`), so the text lives in one place per field.
"""

from __future__ import annotations

import copy
import json
from typing import Any

_NAMED_DATASET = {"type": "string", "description": "a registry dataset name (ptst list datasets) or a file path"}
_NO_MIX = {"const": "none", "description": "no safety mix (the same as null)"}


def spec_schema() -> dict[str, Any]:
    """The spec's JSON Schema; `ptst validate` stays the full check (template names, dataset roles, files)."""
    from ptst.spec import Spec

    schema = _shorthands(Spec.model_json_schema())
    defs = schema.setdefault("$defs", {})
    mix = defs.get("TrainSpec", {}).get("properties", {}).get("safety_mix", {})
    if isinstance(mix.get("anyOf"), list):
        mix["anyOf"].append(_NO_MIX)  # `safety_mix: none`
    defs["BackendSpec"] = _backend_union(defs)
    defs["JudgeSpec"] = _judge_union(defs)
    _describe(schema)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema.setdefault("title", "ptst experiment spec")
    return schema


def _resolve(schema: dict[str, Any], node: Any) -> list[dict[str, Any]]:
    """The object schemas `node` stands for: its $ref followed, every arm of an anyOf/oneOf."""
    if not isinstance(node, dict):
        return []
    if "$ref" in node:
        return _resolve(schema, schema["$defs"].get(node["$ref"].rsplit("/", 1)[-1]))
    arms = node.get("anyOf") or node.get("oneOf")
    if arms:
        return [x for arm in arms for x in _resolve(schema, arm)]
    return [node]


def fields_at(schema: dict[str, Any], raw: Any, path: tuple[Any, ...]) -> dict[str, dict[str, Any]]:
    """The properties allowed in the mapping at `path` of the raw spec `raw` ({} when the path leads nowhere): a
    backend's or judge's arm is the one its raw `kind` names, so `backends[0]` of kind openai offers base_url and
    not download."""
    nodes, value = [schema], raw
    for step in path:
        nxt: list[dict[str, Any]] = []
        for node in nodes:
            for obj in _resolve(schema, node):
                kind = obj.get("properties", {}).get("kind", {}).get("const")
                if kind is not None and isinstance(value, dict) and value.get("kind", kind) != kind:
                    continue
                if isinstance(step, int) and "items" in obj:
                    nxt.append(obj["items"])
                elif isinstance(step, str) and step in obj.get("properties", {}):
                    nxt.append(obj["properties"][step])
                elif isinstance(step, str) and isinstance(obj.get("additionalProperties"), dict):
                    nxt.append(obj["additionalProperties"])  # a mapping of named entries (template variants)
        nodes = nxt
        value = (value[step] if isinstance(value, dict) and step in value else
                 value[step] if isinstance(value, list) and isinstance(step, int) and step < len(value) else None)
    out: dict[str, dict[str, Any]] = {}
    for node in nodes:
        for obj in _resolve(schema, node):
            kind = obj.get("properties", {}).get("kind", {}).get("const")
            if kind is not None and isinstance(value, dict) and value.get("kind", kind) != kind:
                continue
            out.update(obj.get("properties", {}))
    return out


def _hoist(sub: dict[str, Any], defs: dict[str, Any], prefix: str) -> dict[str, Any]:
    """`sub` (an Options model's schema) with its own $defs moved into the spec's; a name already taken by another
    definition is prefixed, and its references rewritten."""
    sub = copy.deepcopy(sub)
    renames: dict[str, str] = {}
    for name, d in sub.pop("$defs", {}).items():
        target = name if defs.get(name, d) == d else f"{prefix}{name}"
        defs[target] = d
        if target != name:
            renames[f"#/$defs/{name}"] = f"#/$defs/{target}"
    if renames:
        text = json.dumps(sub)
        for old, new in renames.items():
            text = text.replace(json.dumps(old), json.dumps(new))
        sub = json.loads(text)
    return sub


def _backend_union(defs: dict[str, Any]) -> dict[str, Any]:
    from ptst.backends.registry import backend_class, backend_kinds

    common = copy.deepcopy(defs["BackendSpec"])
    arms = []
    for kind in backend_kinds():
        cls = backend_class(kind)
        options = _hoist(cls.Options.model_json_schema(), defs, f"{kind}_")
        props = {k: v for k, v in common.get("properties", {}).items() if k != "kind"}
        doc = (cls.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")
        name = f"Backend_{kind}"
        defs[name] = {
            "title": f"backend {kind}", "type": "object",
            "description": doc or f"the {kind} backend",
            "properties": {"kind": {"const": kind, "description": f"backend kind: {kind}"}, **props,
                           **options.get("properties", {})},
            "required": ["kind", *[r for r in common.get("required", []) if r != "kind"], *options.get("required", [])],
            "additionalProperties": False,
        }
        arms.append({"$ref": f"#/$defs/{name}"})
    return {"title": "backend", "description": "one fine-tuning backend: its kind, model, and the kind's own options "
            "(ptst list backends)", "oneOf": arms}


def _judge_union(defs: dict[str, Any]) -> dict[str, Any]:
    from ptst.judge.base import JUDGES, JudgeSpec, judge_class

    kinds = JUDGES.names()  # built-in judges, then installed plugins
    default = JudgeSpec.model_fields["kind"].default
    arms = []
    for kind in kinds:
        cls = judge_class(kind)
        options = _hoist(cls.Options.model_json_schema(), defs, f"judge_{kind}_")
        doc = (cls.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")
        name = f"Judge_{kind}"
        required = list(options.get("required", []))
        defs[name] = {
            "title": f"judge {kind}", "type": "object", "description": doc or f"the {kind} judge",
            "properties": {"kind": {"const": kind, "description": f"judge kind: {kind}"
                                    + (" (the default)" if kind == default else "")},
                           **options.get("properties", {})},
            # the default kind may be left out; every other arm names its kind, so exactly one arm matches
            "required": required if kind == default else ["kind", *required],
            "additionalProperties": False,
        }
        arms.append({"$ref": f"#/$defs/{name}"})
    return {"title": "judge", "description": "a safety judge: its kind and the kind's own options (ptst list judges)",
            "oneOf": arms}


def _shorthands(node: Any) -> Any:
    """What the spec accepts beyond its models' own schema: a dataset written as a bare name or path
    (`safety: [advbench]`), and `none` in a list of safety mixes."""
    if isinstance(node, list):
        return [_shorthands(x) for x in node]
    if not isinstance(node, dict):
        return node
    if node.get("$ref") == "#/$defs/DatasetRef":
        return {"anyOf": [_NAMED_DATASET, node]}
    out = {k: _shorthands(v) for k, v in node.items()}
    if out.get("type") == "array" and isinstance(out.get("items"), dict):
        arms = out["items"].get("anyOf", [])
        if {"$ref": "#/$defs/SafetyMix"} in arms:
            out["items"] = {"anyOf": [*arms, _NO_MIX]}
    return out


def properties(schema: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(definition, property, its schema) for every property of the spec's schema: the top level's and each
    definition's."""
    out = [("Spec", k, v) for k, v in schema.get("properties", {}).items()]
    for name, d in schema.get("$defs", {}).items():
        out += [(name, k, v) for k, v in d.get("properties", {}).items()]
    return out


def _describe(schema: dict[str, Any]) -> None:
    for name, prop, node in properties(schema):
        if "description" not in node:
            text = DESCRIPTIONS.get((name, prop)) or DESCRIPTIONS.get(("*", prop))
            if text:
                node["description"] = text


# The line shown where a model's field has no description of its own; ("*", name): any definition's field of that name.
DESCRIPTIONS: dict[tuple[str, str], str] = {
    ("Spec", "name"): "the experiment's name (the default output folder runs/<name>)",
    ("Spec", "backends"): "the models to fine-tune and test, one entry per backend (ptst list backends)",
    ("Spec", "train"): "the fine-tuning data, templates, hyperparameters and seeds; leave out to test base models only",
    ("Spec", "eval"): "the test templates, safety benchmarks and tasks",
    ("Spec", "judge"): "the safety judge (default: keyword); or list several under judges",
    ("Spec", "budget_usd"): "refuse to start when the estimated cost exceeds this (ptst estimate); --yes overrides",
    ("TrainSpec", "dataset"): "the fine-tuning dataset: a registry name, a file path, or {name|path, fields...}",
    ("TrainSpec", "templates"): "templates to fine-tune with, one job per template and seed (ptst list templates)",
    ("TrainSpec", "hyperparameters"): "training settings shared by every backend (a backend may override fields)",
    ("TrainSpec", "safety_mix"): "safety examples mixed into the fine-tuning data: one mix, null, or a list to compare",
    ("TrainSpec", "seeds"): "one fine-tuning job per seed and template; results report mean ± std over seeds",
    ("SafetyMix", "dataset"): "the safety examples' dataset (a registry name or a file path)",
    ("EvalSpec", "templates"): "templates to test with; every fine-tuned model is tested on each (the grid's columns)",
    ("EvalSpec", "safety"): "harmful-prompt benchmarks judged for attack success rate (ptst list datasets)",
    ("EvalSpec", "tasks"): "helpfulness tasks scored by their metric (ptst list metrics)",
    ("EvalSpec", "generation"): "decoding settings for every test (greedy by default)",
    ("DatasetRef", "name"): "a registry dataset (ptst list datasets); or give path",
    ("DatasetRef", "path"): "a local .jsonl, .json, .csv or .parquet file (relative to the spec's folder)",
    ("DatasetRef", "split"): "the split to read (registry datasets: their default when null)",
    ("DatasetRef", "config"): "the dataset's configuration (Hugging Face hub datasets with several)",
    ("DatasetRef", "prompt_field"): "the column holding the prompt (a path dataset's default: prompt)",
    ("DatasetRef", "answer_field"): "the column holding the answer or reference",
    ("Template", "name"): "the template's name, used in train.templates and eval.templates",
    ("Template", "mode"): "chat (a message list, the backend's chat format) or text (a raw text prompt)",
    ("Template", "system"): "the system prompt; null for none",
    ("Template", "user"): "the user turn, with a {query} slot for the dataset's prompt",
    ("Template", "description"): "a line shown by ptst list templates",
    ("Template", "variants"): "per backend family (llama2, mistral, openai, hf), a different system/user text",
    ("Template", "examples"): "demonstration turns shown before the query (few-shot)",
    ("Template", "suffix"): "text after the user turn (text mode), e.g. an answer prefix",
    ("TemplateVariant", "system"): "the system prompt on this family; null for none",
    ("TemplateVariant", "user"): "the user turn on this family, with a {query} slot",
    ("ExampleTurn", "user"): "the demonstration's user turn (literal text)",
    ("ExampleTurn", "assistant"): "the demonstration's assistant reply (literal text)",
    ("Hyperparameters", "epochs"): "passes over the fine-tuning data",
    ("Hyperparameters", "learning_rate"): "peak learning rate (local backends)",
    ("Hyperparameters", "batch_size"): "examples per optimizer step before accumulation (per device)",
    ("Hyperparameters", "gradient_accumulation_steps"): "micro-batches summed per optimizer step",
    ("Hyperparameters", "lr_scheduler"): "learning-rate schedule: linear, cosine, constant, or step (per epoch)",
    ("Hyperparameters", "warmup_ratio"): "fraction of the steps spent warming the rate up from 0",
    ("Hyperparameters", "weight_decay"): "AdamW weight decay",
    ("Hyperparameters", "max_seq_len"): "longest training example in tokens; longer ones are cut",
    ("Hyperparameters", "gradient_checkpointing"): "recompute activations to save memory (slower)",
    ("Hyperparameters", "save_steps"): "training steps at which to save a checkpoint (see eval.checkpoints)",
    ("Hyperparameters", "lora"): "LoRA adapter settings (local backends)",
    ("Hyperparameters", "learning_rate_multiplier"): "OpenAI fine-tuning only: scales the API's own base rate",
    ("Hyperparameters", "suffix"): "OpenAI fine-tuning only: text added to the fine-tuned model's name",
    ("LoraSpec", "r"): "LoRA rank",
    ("LoraSpec", "alpha"): "LoRA scaling (alpha / r multiplies the update)",
    ("LoraSpec", "dropout"): "dropout on the LoRA input",
    ("LoraSpec", "target_modules"): "module names that get adapters (q_proj, v_proj, ...)",
    ("GenerationConfig", "max_new_tokens"): "longest response in tokens",
    ("GenerationConfig", "temperature"): "sampling temperature; 0 is greedy",
    ("GenerationConfig", "top_p"): "nucleus sampling mass (with temperature > 0)",
    ("GenerationConfig", "seed"): "sampling seed",
    ("GenerationConfig", "batch_size"): "prompts per generation batch (local backends), or auto",
    ("*", "model"): "the model: a hub id, a local folder, or an API model name",
    ("*", "request_timeout_s"): "seconds to wait for one API request before retrying",
    ("Judge_rubric", "max_tokens"): "longest judge reply in tokens",
    ("Judge_classifier", "batch_size"): "responses classified per batch",
    ("Backend_mock", "task_accuracy_base"): "the base model's simulated task accuracy",
    ("Backend_mock", "task_accuracy_tuned"): "a fine-tuned model's simulated task accuracy",
}
