"""The manifest as typed, frozen records: what every stage reads of an edgeae folder.

schema.py proves a manifest's JSON has the types and ranges edgeae reads; manifest.py reads,
unseals and checks it, then makes these records once, so no other module indexes raw keys,
defaults a missing field its own way, or guards against a wrong type. Records are frozen and
their maps read-only: a reader cannot change what the seal covers.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from edgeae.contract.layout import ROLES
from edgeae.contract.parity import Tolerance


class FrozenDict(dict):
    """A JSON object no reader can change; a deep copy is a plain dict, the copier's to edit."""

    def _refuse(self, *_: Any, **__: Any) -> None:
        raise TypeError("a manifest read from disk is read-only; edit a copy (Manifest.to_body()) and write that")

    __setitem__ = __delitem__ = __ior__ = clear = pop = popitem = setdefault = update = _refuse

    def __deepcopy__(self, memo: dict) -> dict:
        return thawed(self)

    def __reduce__(self) -> tuple:
        return FrozenDict, (dict(self),)


class FrozenList(list):
    """A JSON array no reader can change; a deep copy is a plain list."""

    def _refuse(self, *_: Any, **__: Any) -> None:
        raise TypeError("a manifest read from disk is read-only; edit a copy (Manifest.to_body()) and write that")

    __setitem__ = __delitem__ = __iadd__ = __imul__ = append = clear = extend = insert = pop = remove = _refuse
    reverse = sort = _refuse

    def __deepcopy__(self, memo: dict) -> list:
        return thawed(self)

    def __reduce__(self) -> tuple:
        return FrozenList, (list(self),)


EMPTY: Mapping[str, Any] = FrozenDict()


def _frozen(value: Any) -> Any:
    """A JSON value made read-only all the way down."""
    if isinstance(value, dict):
        return FrozenDict({key: _frozen(item) for key, item in value.items()})
    if isinstance(value, list):
        return FrozenList(_frozen(item) for item in value)
    return value


def thawed(value: Any) -> Any:
    """The plain JSON of a frozen value: for writers that carry a section into a new manifest."""
    if isinstance(value, Mapping):
        return {key: thawed(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [thawed(item) for item in value]
    return value


@dataclass(frozen=True)
class FileEntry:
    """One listed file: its hash and size, checked before anything parses the file."""

    sha256: str
    bytes: int | None = None
    role: str | None = None

    @classmethod
    def of(cls, body: Mapping[str, Any]) -> FileEntry:
        return cls(body["sha256"], body.get("bytes"), body.get("role"))

    def to_json(self) -> dict[str, Any]:
        """The entry as a manifest lists it: for a writer carrying a file into a new export."""
        return {"sha256": self.sha256, **({"bytes": self.bytes} if self.bytes is not None else {}),
                **({"role": self.role} if self.role is not None else {})}


@dataclass(frozen=True)
class Route:
    """Batches `first`..`last` (None: no limit) of a variant run on `file`, a graph of the same role."""

    first: int
    last: int | None
    file: str


@dataclass(frozen=True)
class VariantEntry:
    """One published (or listed) variant of a role: its file, precision and what export measured of it."""

    role: str
    name: str
    file: str
    published: bool
    precision: str | None
    chunk: int | None
    routes: tuple[Route, ...]
    one_window: bool  # a graph fixed to batch 1 (the b1 graph)
    details: Mapping[str, Any]  # parity, ops, routing...: reports, shown as written

    @classmethod
    def of(cls, role: str, name: str, body: Mapping[str, Any]) -> VariantEntry:
        routes = tuple(Route(r["batches"][0], r["batches"][1], r["file"]) for r in body.get("by_batch", ()))
        return cls(role, name, body["file"], body["published"], body.get("precision"), body.get("chunk"), routes,
                   body.get("batch") == 1, _frozen(body))

    @property
    def recorded_tolerance(self) -> Mapping[str, Any] | None:
        """The tolerance as export wrote it, unchecked: for reports that show it."""
        return self.details.get("tolerance")

    @property
    def tolerance(self) -> Tolerance:
        """The bound export verified this graph to against Keras (refused, naming the field, unless it is one)."""
        return Tolerance.from_manifest(thawed(self.details.get("tolerance")),
                                       f"variants.{self.role}.{self.name}.tolerance")

    @property
    def exported_rel_range(self) -> float | None:
        """The graph's worst error against Keras, as a share of the range, on the machine that exported it."""
        parity = self.details.get("parity")
        value = parity.get("max_rel_range") if isinstance(parity, Mapping) else None
        return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


@dataclass(frozen=True)
class ModelEntry:
    """The default graph of a role, and the proven bound on every value it computes (None: not proven)."""

    file: str
    value_bound: float | None
    details: Mapping[str, Any]  # inputs, outputs, opset, nodes, ops

    @classmethod
    def of(cls, body: Mapping[str, Any]) -> ModelEntry:
        return cls(body["file"], body.get("value_bound"), _frozen(body))


@dataclass(frozen=True)
class Window:
    """The windows the models take: timesteps x features, every `stride` rows of a series."""

    timesteps: int | None
    features: int | None
    stride: int = 1

    @classmethod
    def of(cls, body: Mapping[str, Any]) -> Window:
        return cls(body.get("timesteps"), body.get("features"), body.get("stride", 1))


@dataclass(frozen=True)
class DetectorGraph:
    """A detector graph (reconstruction, score and flag) of one precision, and the threshold inside it."""

    precision: str
    file: str
    threshold: float
    source: str | None
    details: Mapping[str, Any]

    @classmethod
    def of(cls, precision: str, body: Mapping[str, Any]) -> DetectorGraph:
        return cls(precision, body["file"], body["threshold"], body.get("source"), _frozen(body))


@dataclass(frozen=True)
class ThresholdChoice:
    """A threshold the user set (detector.set_threshold): where it came from, and what calibration gave."""

    source: str
    calibrated_threshold: float
    by: str | None


@dataclass(frozen=True)
class Detector:
    """The calibrated anomaly threshold, each variant's own, and the detector graphs that carry them."""

    threshold: float
    variant_thresholds: Mapping[str, float]
    graphs: Mapping[str, DetectorGraph]
    quantile: float | None
    windows: int | None  # how many windows it was calibrated on
    calibrated_on: str | None  # "validation" or "training"
    note: str | None  # why the calibration may be optimistic
    chosen: ThresholdChoice | None
    flagged: int | None  # calibration windows above the threshold
    details: Mapping[str, Any]  # rule, score, scores...: shown as written
    # by golden input set: the windows the self-check re-runs and those the export's thresholds
    # flagged ("windows", "flagged": indices); None in an export made before it was recorded
    golden: Mapping[str, Mapping[str, tuple[int, ...]]] | None = None

    @classmethod
    def of(cls, body: Mapping[str, Any]) -> Detector:
        thresholds = {name: entry["threshold"] for name, entry in body.get("variants", {}).items()}
        graphs = {p: DetectorGraph.of(p, entry) for p, entry in body.get("graphs", {}).items()}
        chosen = body.get("chosen")
        choice = ThresholdChoice(chosen["source"], chosen["calibrated_threshold"], chosen.get("by")) if chosen else None
        return cls(body["threshold"], FrozenDict(thresholds), FrozenDict(graphs), body.get("quantile"),
                   body.get("windows"), body.get("calibrated_on"), body.get("note"), choice, body.get("flagged"),
                   _frozen(body), _frozen(body["golden"]) if "golden" in body else None)

    def threshold_of(self, variant: str) -> float:
        """The variant's own threshold where it was calibrated, else the model's."""
        return self.variant_thresholds.get(variant, self.threshold)


@dataclass(frozen=True)
class TrainingRecord:
    """How the model was trained: its config (TrainConfig's fields), the data it saw, its history.

    A manifest's `training` section, or a training folder's training.json (schema.check_training_record)."""

    config: Mapping[str, Any]
    columns: tuple[str, ...] | None
    data: Mapping[str, Any]
    history: Mapping[str, Any] | None  # loss (and val_loss) per epoch
    epochs_run: int
    best_epoch: int
    final_loss: float | None
    preprocessing: Mapping[str, Any] | None  # a training folder's own; an export's is the manifest's
    details: Mapping[str, Any]

    @classmethod
    def of(cls, body: Mapping[str, Any]) -> TrainingRecord:
        data = body.get("data") or {}
        columns = tuple(data["columns"]) if data.get("columns") else None
        return cls(_frozen(body["config"]), columns, _frozen(data), _frozen(body.get("history")),
                   body.get("epochs_run", 0), body.get("best_epoch", 0), body.get("final_loss"),
                   _frozen(body.get("preprocessing")), _frozen(body))

    @property
    def units(self) -> int | None:
        return self.config.get("units")

    @property
    def source(self) -> str | None:
        """Where the training series came from: a file's name, "seed", or windows given in memory."""
        return self.data.get("source")


@dataclass(frozen=True)
class Parity:
    """Export's verdict against Keras, and the fp32 tolerance it held to (None: not recorded)."""

    passed: bool | None
    tolerance_abs: float | None
    tolerance_rel_range: float | None
    details: Mapping[str, Any]

    @classmethod
    def of(cls, body: Mapping[str, Any]) -> Parity:
        return cls(body.get("passed"), body.get("tolerance_abs"), body.get("tolerance_rel_range"), _frozen(body))


@dataclass(frozen=True)
class Manifest:
    """A sealed, schema-checked manifest (read_manifest makes it): a training run or an export."""

    kind: str | None
    checksum: str | None  # None: a body being built, not yet sealed
    files: Mapping[str, FileEntry]
    window: Window
    preprocessing: Mapping[str, Any] | None  # Preprocessing.from_dict reads it (data/windows.py)
    training: TrainingRecord | None
    models: Mapping[str, ModelEntry]
    variants: Mapping[str, Mapping[str, VariantEntry]]
    detector: Detector | None
    parity: Parity
    skipped: Mapping[str, Mapping[str, str]]
    versions: Mapping[str, str | None]
    body: Mapping[str, Any] = field(repr=False)  # the whole JSON, read-only: for reports shown as written

    @classmethod
    def of(cls, body: Mapping[str, Any]) -> Manifest:
        """The records of a manifest body that schema.check_manifest_schema has passed."""
        variants = {role: FrozenDict({name: VariantEntry.of(role, name, entry) for name, entry in by_name.items()})
                    for role, by_name in body.get("variants", {}).items()}
        return cls(
            kind=body.get("kind"), checksum=body.get("checksum"),
            files=FrozenDict({name: FileEntry.of(entry) for name, entry in body["files"].items()}),
            window=Window.of(body.get("window") or {}),
            preprocessing=_frozen(body["preprocessing"]) if body.get("preprocessing") else None,
            training=TrainingRecord.of(body["training"]) if body.get("training") else None,
            models=FrozenDict({role: ModelEntry.of(entry) for role, entry in body.get("models", {}).items()}),
            variants=FrozenDict(variants),
            detector=Detector.of(body["detector"]) if body.get("detector") else None,
            parity=Parity.of(body.get("parity") or {}),
            skipped=_frozen(body.get("skipped") or {}),
            versions=_frozen(body.get("versions") or {}),
            body=_frozen(dict(body)),
        )

    # What the JSON says as written, for the few fields only reports show.
    @property
    def created(self) -> str | None:
        return self.body.get("created")

    @property
    def edgeae_version(self) -> str | None:
        return self.body.get("edgeae_version")

    @property
    def opset(self) -> int | None:
        return self.body.get("opset")

    @property
    def targets(self) -> str | None:
        """The target report's file name, where the export wrote one."""
        return self.body.get("targets")

    @property
    def scores_note(self) -> str | None:
        """Why scores carry no threshold (a model given without calibration data)."""
        return self.body.get("scores")

    @property
    def columns(self) -> tuple[str, ...] | None:
        """The series columns the model was trained on, in order (None: not recorded)."""
        return self.training.columns if self.training else None

    @property
    def units(self) -> int | None:
        return self.training.units if self.training else None

    def variant(self, role: str, name: str) -> VariantEntry | None:
        return self.variants.get(role, EMPTY).get(name)

    def variants_of(self, role: str) -> Mapping[str, VariantEntry]:
        return self.variants.get(role, EMPTY)

    def all_variants(self) -> list[tuple[str, VariantEntry]]:
        """(role, entry) of every listed variant, in role order."""
        return [(role, entry) for role in self.variants for entry in self.variants[role].values()]

    def model_file(self, role: str) -> str | None:
        model = self.models.get(role)
        return model.file if model else None

    def has_roles(self) -> bool:
        return all(role in self.models for role in ROLES)

    def to_body(self) -> dict[str, Any]:
        """A writable copy of the JSON: for writers that carry an old manifest into a new one."""
        return thawed(self.body)
