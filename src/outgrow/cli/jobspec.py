"""Pure helpers of ``outgrow submit``/``modify``: flag syntax (usage errors), YAML job files
(the seed's spellings too) and the JobSpec they make together. No I/O except reading the
files the user names; every error names the bad field or flag."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Any

import click
import yaml

from outgrow.domain.jobs import JobSpec, spec_from_mapping
from outgrow.domain.policy_parse import parse_duration
from outgrow.errors import ValidationError

ENV_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
PUBLISH_RE = re.compile(r"^(\d{1,5}):(\d{1,5})$")

# Every spelling a job file may use → the JobSpec field.
FILE_KEYS: dict[str, str] = {
    "name": "name",
    "image": "image",
    "script": "script",
    "cpu": "cpu",
    "mem": "mem",
    "instance_type": "instance_type",
    "instanceType": "instance_type",
    "migrate_policy": "migrate_policy",
    "migratePolicy": "migrate_policy",
    "vm_policy": "vm_policy",
    "vmPolicy": "vm_policy",
    "env": "env",
    "publish": "publish",
    "allow_cidr": "allow_cidr",
    "allowCidr": "allow_cidr",
    "idle_timeout_s": "idle_timeout_s",
    "idle_timeout": "idle_timeout_s",
    "idleTimeout": "idle_timeout_s",
    "jupyter": "jupyter",
    "script_file": "script_file",
    "scriptFile": "script_file",
}
KNOWN_FILE_KEYS = (
    "name, image, script, scriptFile, cpu, mem, instanceType, migratePolicy, vmPolicy, env, "
    "publish, allowCidr, idleTimeout, jupyter (or their snake_case spellings)"
)


class JobFileLoader(yaml.SafeLoader):
    """YAML 1.1 without base-60 numbers: ``mem: 4:16`` and ``publish: [8080:80]`` stay
    strings (SafeLoader would read them as 256 and 484880)."""


_INT, _FLOAT = "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"
JobFileLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in (_INT, _FLOAT)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
JobFileLoader.add_implicit_resolver(
    _INT,
    re.compile(r"^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+)$"),
    list("-+0123456789"),
)
JobFileLoader.add_implicit_resolver(
    _FLOAT,
    re.compile(
        r"^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?|[-+]?\.[0-9_]+(?:[eE][-+]?[0-9]+)?"
        r"|[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+0123456789."),
)


# ---- flag syntax: ValueError messages become click usage errors (exit 2) ------------------


def parse_env(items: tuple[str, ...] | list[str]) -> dict[str, str]:
    """``-e K=V`` (repeatable; V may be empty or contain '=')."""
    env: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"{item!r} is not KEY=VALUE")
        if not ENV_KEY_RE.match(key):
            raise ValueError(
                f"{key!r} in {item!r} is not a variable name (letters, digits, '_'; "
                "not starting with a digit)"
            )
        env[key] = value
    return env


def parse_publish(items: tuple[str, ...] | list[str]) -> list[str]:
    """``--publish HOSTPORT:JOBPORT`` (repeatable), ports 1-65535."""
    out = []
    for item in items:
        m = PUBLISH_RE.match(item.strip())
        if not m:
            raise ValueError(f"{item!r} is not HOSTPORT:JOBPORT (e.g. 8888:8888)")
        if not all(1 <= int(p) <= 65535 for p in m.groups()):
            raise ValueError(f"{item!r}: ports must be 1-65535")
        out.append(f"{int(m.group(1))}:{int(m.group(2))}")
    return out


def parse_cidrs(items: tuple[str, ...] | list[str]) -> list[str]:
    """``--allow-cidr CIDR`` (repeatable): an IPv4/IPv6 network or address."""
    out = []
    for item in items:
        try:
            out.append(str(ipaddress.ip_network(item.strip(), strict=False)))
        except ValueError:
            raise ValueError(f"{item!r} is not a CIDR range (e.g. 10.0.0.0/8)") from None
    return out


def parse_idle(value: str) -> float:
    """``--idle-timeout 2h|30m|90|0`` → seconds (0 turns auto-suspend off)."""
    try:
        return parse_duration(value, "idle timeout")
    except ValidationError as exc:
        raise ValueError(str(exc).removeprefix("idle timeout: ")) from None


def parse_checkpoint_interval(value: str) -> float:
    """``--checkpoint-interval 15m|1h|900|0|off`` → seconds (0 turns snapshots off)."""
    from outgrow.domain.snapshots import parse_interval

    try:
        seconds = parse_interval(value, "checkpoint interval")
    except ValidationError as exc:
        raise ValueError(str(exc).removeprefix("checkpoint interval: ")) from None
    if seconds is None:
        raise ValueError("give a duration (15m, 1h, 900) or off")
    return seconds


def click_callback(parse: Any) -> Any:
    """A click option callback running ``parse`` on the value (skipped when unset)."""

    def callback(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        if value is None or value == ():
            return None
        try:
            return parse(value)
        except ValueError as exc:
            raise click.BadParameter(str(exc), ctx=ctx, param=param) from None

    return callback


# ---- job files --------------------------------------------------------------------------------


def load_job_file(path: Path) -> dict[str, Any]:
    """A YAML job file → a mapping with JobSpec field names (a ``script_file``, relative to
    the YAML file, is read into ``script``; ``env`` may be a mapping or a ``K=V`` list;
    durations may be ``2h``; policies strings or mappings)."""
    try:
        data = yaml.load(path.read_text(), Loader=JobFileLoader)  # a SafeLoader subclass
    except OSError as exc:
        raise ValidationError(
            f"cannot read the job file {path}: {exc.strerror or exc}", field="file"
        ) from exc
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" (line {where.line + 1})" if where is not None else ""
        raise ValidationError(
            f"the job file {path} is not valid YAML{at}: {getattr(exc, 'problem', exc)}",
            field="file",
        ) from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ValidationError(f"the job file {path} must be a mapping of fields", field="file")
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = FILE_KEYS.get(str(key))
        if name is None:
            raise ValidationError(
                f"{path}: unknown field {key!r} (known: {KNOWN_FILE_KEYS})", field=str(key)
            )
        if name in out:
            raise ValidationError(f"{path}: {key!r} repeats {name!r}", field=name)
        out[name] = value
    if "script_file" in out:
        if "script" in out:
            raise ValidationError(f"{path}: give script or scriptFile, not both", field="script")
        script_path = path.parent / str(out.pop("script_file"))
        out["script"] = read_script(script_path)
    if isinstance(out.get("env"), list):
        try:
            out["env"] = parse_env([str(x) for x in out["env"]])
        except ValueError as exc:
            raise ValidationError(f"{path}: env: {exc}", field="env") from None
    if isinstance(out.get("publish"), str | int):
        out["publish"] = [out["publish"]]
    if isinstance(out.get("publish"), list):
        out["publish"] = [str(x) for x in out["publish"]]
    if isinstance(out.get("allow_cidr"), str):
        out["allow_cidr"] = [out["allow_cidr"]]
    if isinstance(out.get("env"), dict):
        out["env"] = {str(k): "" if v is None else str(v) for k, v in out["env"].items()}
    if isinstance(out.get("idle_timeout_s"), str):
        out["idle_timeout_s"] = parse_duration(out["idle_timeout_s"], "idle_timeout_s")
    return out


def read_script(path: Path) -> str:
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ValidationError(f"cannot read the script {path}: {why}", field="script") from exc
    if not text.strip():
        raise ValidationError(f"the job script {path} is empty", field="script")
    return text


# ---- flags + file → spec --------------------------------------------------------------------


def merge_fields(file_data: dict[str, Any], flags: dict[str, Any]) -> dict[str, Any]:
    """File values overridden by the flags that were given (``None`` = not given); ``env``
    merges key by key, lists given as flags replace the file's."""
    out = dict(file_data)
    for key, value in flags.items():
        if value is None:
            continue
        if key == "env" and isinstance(out.get("env"), dict):
            out["env"] = {**out["env"], **value}
        else:
            out[key] = value
    return out


def build_spec(data: dict[str, Any]) -> JobSpec:
    """Validate a submission: a ValidationError naming the field (``name``, ``mem``,
    ``migratePolicy.mem.step``...) when something is wrong."""
    for key, flag in (("name", "-n NAME"), ("image", "-i IMAGE")):
        if not data.get(key):
            raise ValidationError(
                f"a job needs {'a name' if key == 'name' else 'an image'}: give {flag} "
                f"(or {key}: in the job file)",
                field=key,
            )
    try:
        return spec_from_mapping(data)
    except ValidationError as exc:
        if exc.field is None:
            exc.field = pydantic_field(exc.__cause__)
        raise


def pydantic_field(exc: BaseException | None) -> str | None:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        errs = errors()
        if errs and errs[0].get("loc"):
            return ".".join(str(p) for p in errs[0]["loc"])
    return None


def template_overrides(data: dict[str, Any]) -> dict[str, Any]:
    """What ``submit --template`` sends with the template's name: the given fields only,
    policy mappings turned into their bracket strings (the server validates the rest)."""
    from outgrow.domain.policy import (
        MigratePolicy,
        VmPolicy,
        format_migrate_policy,
        format_vm_policy,
    )

    out = dict(data)
    if isinstance(out.get("migrate_policy"), dict):
        out["migrate_policy"] = format_migrate_policy(
            MigratePolicy.from_mapping(out["migrate_policy"])
        )
    if isinstance(out.get("vm_policy"), dict):
        out["vm_policy"] = format_vm_policy(VmPolicy.from_mapping(out["vm_policy"]))
    for k in ("cpu", "mem"):
        if isinstance(out.get(k), int | float) and not isinstance(out.get(k), bool):
            out[k] = f"{out[k]:g}"
    return out
