"""Declarative, versioned rules from a YAML file, reloadable without a restart; a bad file leaves the old in force.

A rule names the events it listens to (`events`), conditions on the event's data (`when`, all must hold), and its
effects (`alert` for now). Conditions and templates only read the event's fields: no code runs from the file.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from jinshui.contracts.events import EVENT_TYPES
from jinshui.contracts.risk import AlertLevel

log = logging.getLogger(__name__)
DEFAULT_RULES = Path(__file__).parent / "rules.yaml"
_PATH = re.compile(r"^[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*)*$")
_PLACEHOLDER = re.compile(r"\{([a-z_][a-z0-9_.]*)\}")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_path(value: str) -> str:
    if not _PATH.match(value):
        raise ValueError(f"{value!r} is not a field path like `household_code` or `data.grid`")
    return value


FieldPath = Annotated[str, Field(min_length=1, max_length=100)]


class Repeated(_Strict):
    """The event is at least the `at_least`-th with the same `key` within `within_days` (its own time counts)."""

    key: FieldPath
    within_days: float = Field(gt=0, le=366)
    at_least: int = Field(ge=2, le=1000)

    _path = field_validator("key")(_check_path)


class InvolvesTagged(_Strict):
    """One of the persons the event names (a list of keyed ID hashes at `persons`) carries one of `tags`."""

    persons: FieldPath
    tags: list[str] = Field(min_length=1)

    _path = field_validator("persons")(_check_path)


class Condition(_Strict):
    """One of: `field` compared with exactly one of equals / in / contains / present / at_least; `repeated`;
    `involves_tagged`."""

    field: FieldPath | None = None
    equals: Any = None
    in_: list[Any] | None = Field(default=None, alias="in")
    contains: Any = None
    present: bool | None = None
    at_least: float | None = None  # a number at `field` is at least this
    repeated: Repeated | None = None
    involves_tagged: InvolvesTagged | None = None

    @field_validator("field")
    @classmethod
    def _path(cls, value: str | None) -> str | None:
        return None if value is None else _check_path(value)

    @model_validator(mode="after")
    def _one_test(self) -> Condition:
        kinds = [k for k in ("field", "repeated", "involves_tagged") if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError("a condition is one of: field (with a test), repeated, involves_tagged")
        if self.field is not None:
            tests = [t for t in ("equals", "in_", "contains", "present", "at_least") if getattr(self, t) is not None]
            if len(tests) != 1:
                raise ValueError("a field condition takes exactly one of equals, in, contains, present, at_least")
        return self

    @property
    def needs_store(self) -> bool:
        return self.field is None

    def holds(self, data: dict[str, Any]) -> bool:
        value = lookup(data, self.field)
        if self.present is not None:
            return (value is not None) == self.present
        if self.equals is not None:
            return value == self.equals
        if self.in_ is not None:
            return value in self.in_
        if self.at_least is not None:
            return isinstance(value, int | float) and not isinstance(value, bool) and value >= self.at_least
        return isinstance(value, list | tuple | str) and self.contains in value


class AlertEffect(_Strict):
    level: AlertLevel
    subject: FieldPath  # what "one open alert per rule and subject" means for this rule
    explanation: str = Field(min_length=1, max_length=500)
    grid: FieldPath = "grid"
    beat: FieldPath = "beat"
    household: FieldPath | None = "household_code"

    _paths = field_validator("subject", "grid", "beat")(_check_path)


class TaskEffect(_Strict):
    """A follow-up task for the grid worker of the household's grid, closed by their next visit there."""

    title: str = Field(min_length=1, max_length=200)
    due_in_days: float = Field(gt=0, le=366)
    household: FieldPath = "household_code"
    grid: FieldPath = "grid"
    beat: FieldPath = "beat"
    resolves_alert: bool = False  # the visit that closes the task also resolves this rule's alert


class LedgerEffect(_Strict):
    """Open a close-out ledger entry (销号式管理台账) for the person at `person` (a keyed hash), reviewed every
    `interval_days`: a visit to their household is a follow-up; none within the interval is rule 6's window."""

    person: FieldPath = "id_hash"
    interval_days: float = Field(gt=0, le=366)
    reason: str = Field(min_length=1, max_length=500)
    household: FieldPath = "household_code"
    grid: FieldPath = "grid"
    beat: FieldPath = "beat"

    _paths = field_validator("person", "household", "grid", "beat")(_check_path)


class ScoreEffect(_Strict):
    """Raise the risk score of the persons at `persons` (a hash or a list of hashes) and/or the household at
    `household` by `points`, decaying by half every `half_life_days`."""

    points: float = Field(gt=0, le=1000)
    half_life_days: float = Field(gt=0, le=3650)
    persons: FieldPath | None = None
    household: FieldPath | None = None
    grid: FieldPath = "grid"
    beat: FieldPath = "beat"

    _paths = field_validator("persons", "household", "grid", "beat")(_check_path)

    @model_validator(mode="after")
    def _someone(self) -> ScoreEffect:
        if self.persons is None and self.household is None:
            raise ValueError("a score names `persons`, `household`, or both")
        return self


class Effect(_Strict):
    """Exactly one of: an alert for the desk, a task for a grid worker, a ledger entry, a change of score."""

    alert: AlertEffect | None = None
    task: TaskEffect | None = None
    ledger: LedgerEffect | None = None
    score: ScoreEffect | None = None

    @model_validator(mode="after")
    def _one(self) -> Effect:
        if sum(e is not None for e in (self.alert, self.task, self.ledger, self.score)) != 1:
            raise ValueError("an effect is exactly one of `alert`, `task`, `ledger` or `score`")
        return self


class Rule(_Strict):
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$", max_length=64)
    description: str = ""
    events: list[str] = Field(min_length=1)
    when: list[Condition] = Field(default_factory=list)
    effects: list[Effect] = Field(min_length=1)

    @field_validator("events")
    @classmethod
    def _known_types(cls, types: list[str]) -> list[str]:
        unknown = [t for t in types if t not in EVENT_TYPES]
        if unknown:
            raise ValueError(f"unknown event types {unknown}")
        return types


class RuleFile(_Strict):
    version: int = Field(ge=1)
    rules: list[Rule]

    @model_validator(mode="after")
    def _unique_ids(self) -> RuleFile:
        ids = [r.id for r in self.rules]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"rule ids must be unique: {dupes}")
        return self


class RuleFileError(Exception):
    """The file was refused; the message says where."""


def lookup(data: dict[str, Any], path: str) -> Any:
    value: Any = data
    for part in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def render(template: str, data: dict[str, Any]) -> str:
    """Fill `{field.path}` placeholders from the event's data; nothing else is evaluated."""
    return _PLACEHOLDER.sub(lambda m: str(lookup(data, m.group(1))), template)


def parse(text: str, *, source: str = "rules") -> RuleFile:
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise RuleFileError(f"{source}: not YAML: {e}") from e
    try:
        return RuleFile.model_validate(raw)
    except ValidationError as e:
        where = "; ".join(f"{'.'.join(str(p) for p in err['loc']) or '(top)'}: {err['msg']}" for err in e.errors()[:5])
        raise RuleFileError(f"{source}: {where}") from e


@dataclass
class RuleBook:
    """The rules in force, from `path`; `reload()` swaps them only when the new file is valid."""

    path: Path
    file: RuleFile | None = None
    loaded_at: datetime | None = None
    last_error: str | None = None
    _mtime: float | None = None
    _by_type: dict[str, list[Rule]] = field(default_factory=dict)

    def reload(self) -> bool:
        """Load the file if it changed; True when new rules are in force. Raises RuleFileError if refused."""
        stat = os.stat(self.path)
        try:
            new = parse(self.path.read_text(encoding="utf-8"), source=str(self.path))
        except RuleFileError as e:
            self._mtime = stat.st_mtime_ns
            self.last_error = str(e)
            log.error("rules refused; the rules in force stay", extra={"error": str(e)})
            raise
        if self.file is not None and new.version <= self.file.version and new != self.file:
            self._mtime = stat.st_mtime_ns
            self.last_error = f"{self.path}: version must grow (in force: {self.file.version}, file: {new.version})"
            raise RuleFileError(self.last_error)
        self._mtime = stat.st_mtime_ns
        self.file, self.loaded_at, self.last_error = new, datetime.now(UTC), None
        by_type: dict[str, list[Rule]] = {}
        for rule in new.rules:
            for t in rule.events:
                by_type.setdefault(t, []).append(rule)
        self._by_type = by_type
        log.info("rules in force", extra={"version": new.version, "rules": [r.id for r in new.rules]})
        return True

    def reload_if_changed(self) -> None:
        try:
            if os.stat(self.path).st_mtime_ns != self._mtime:
                self.reload()
        except (RuleFileError, OSError):
            pass  # recorded in last_error (or the file is being replaced); the old rules stay

    @property
    def version(self) -> int:
        return self.file.version if self.file else 0

    def rules_for(self, event_type: str) -> list[Rule]:
        return self._by_type.get(event_type, [])

    def matching(self, event_type: str, data: dict[str, Any]) -> list[Rule]:
        """Rules whose field conditions hold; conditions that need risk's own data are checked by the caller."""
        return [r for r in self.rules_for(event_type) if all(c.holds(data) for c in r.when if not c.needs_store)]

    def describe(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "path": str(self.path),
            "loaded_at": self.loaded_at,
            "last_error": self.last_error,
            "rules": [r.model_dump(by_alias=True, exclude_none=True) for r in (self.file.rules if self.file else [])],
        }
