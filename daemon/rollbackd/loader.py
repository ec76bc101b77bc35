"""Reading the config file and every rule file it names, all problems at once.

Rule globs in ``[daemon] rules`` are relative to the config file. A glob that
matches nothing is an error (a typo would otherwise silently disable rules);
rule names must be unique across files; a probe rule whose probe no service
defines is a warning, since it simply applies to no service.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from rollbackd.config import Config, load_config
from rollbackd.core.rules import Rule, parse_rules
from rollbackd.errors import InvalidInput, Problem


@dataclass(frozen=True)
class Loaded:
    """A validated config with its rules, and warnings worth showing."""

    config: Config
    config_path: Path
    rules: tuple[Rule, ...]
    rule_files: tuple[Path, ...]
    warnings: tuple[str, ...] = ()


def shown(path: Path) -> str:
    """A path as a person would type it from here: relative if below the working dir."""
    try:
        relative = os.path.relpath(path)
    except ValueError:
        return str(path)
    return str(path) if relative.startswith("..") else relative


def rule_files(config: Config, config_path: Path) -> tuple[list[Path], list[Problem]]:
    """The rule files the config's globs name, in a stable order."""
    base = config_path.parent
    files: list[Path] = []
    problems: list[Problem] = []
    for index, pattern in enumerate(config.daemon.rules):
        full = pattern if Path(pattern).is_absolute() else str(base / pattern)
        found = glob.glob(full, recursive=True)  # noqa: PTH207 -- Path.glob takes no absolute patterns
        matches = sorted(Path(p) for p in found if Path(p).is_file())
        if not matches:
            problems.append(
                Problem(
                    shown(config_path), f"daemon.rules[{index}]", f"{pattern!r} matches no file"
                )
            )
        files.extend(m for m in matches if m not in files)
    return files, problems


def unverified_tls(config: Config) -> list[str]:
    """Where ``insecure_skip_verify = true`` is set (``prometheus``, ``alertmanager``,
    ``services[0].probes[1]``)."""
    found = [
        name
        for name, section in (
            ("prometheus", config.prometheus),
            ("alertmanager", config.alertmanager),
        )
        if section.tls is not None and section.tls.insecure_skip_verify
    ]
    for i, service in enumerate(config.services):
        found.extend(
            f"services[{i}].probes[{j}]"
            for j, probe in enumerate(service.probes)
            if probe.tls is not None and probe.tls.insecure_skip_verify
        )
    found.extend(
        f"notifiers[{i}]"
        for i, notifier in enumerate(config.notifiers)
        if notifier.tls is not None and notifier.tls.insecure_skip_verify
    )
    return found


def load(config_path: Path, env: Mapping[str, str] | None = None) -> Loaded:
    """Load config and rules; raise InvalidInput with every problem found."""
    config = load_config(config_path, env)
    files, problems = rule_files(config, config_path)
    rules: list[Rule] = []
    origin: dict[str, Path] = {}
    for path in files:
        name = shown(path)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(Problem(name, "", f"cannot read the rule file: {exc}"))
            continue
        try:
            parsed = parse_rules(text, name)
        except InvalidInput as exc:
            problems.extend(exc.problems)
            continue
        for rule in parsed:
            if rule.name in origin:
                problems.append(
                    Problem(
                        name,
                        f'rule "{rule.name}"',
                        f"name: already defined in {shown(origin[rule.name])}",
                    )
                )
                continue
            origin[rule.name] = path
            rules.append(rule)
    if problems:
        raise InvalidInput(problems)
    probes = {p for s in config.services for p in s.probe_names}
    warnings = [
        f'{shown(origin[r.name])}: rule "{r.name}": probe {r.probe!r} is defined by no service, '
        "so the rule applies to none"
        for r in rules
        if r.probe is not None and r.probe not in probes
    ]
    if not config.services:
        warnings.append(f"{shown(config_path)}: services: none configured, so nothing is watched")
    warnings.extend(
        f"{shown(config_path)}: {where}.tls.insecure_skip_verify: the server's certificate is "
        "not verified, so anyone in between can read and answer in its name"
        for where in unverified_tls(config)
    )
    return Loaded(config, config_path, tuple(rules), tuple(files), tuple(warnings))
