"""Class-incremental protocols: class order, explicit classes per step, memory budget.

A protocol never drops a remainder: the classes per step are an explicit list whose sum
must equal the number of classes in the order. `Protocol.uniform` builds the common
`T x k` case and refuses a non-divisible count unless told to put the remainder in an
explicit last step.
"""

from __future__ import annotations

from dataclasses import dataclass

from datasets.base import ProtocolSpec, step_sizes
from datasets.errors import DatasetError


@dataclass(frozen=True)
class Protocol:
    name: str
    class_order: tuple[int, ...]  # dataset class indices; position p is the model's class p
    classes_per_step: tuple[int, ...]
    memory: int = 0  # exemplar budget M (total, over all old classes)

    def __post_init__(self) -> None:
        if any(k <= 0 for k in self.classes_per_step):
            raise DatasetError(
                f"protocol {self.name}: every step needs at least one class, got {list(self.classes_per_step)}"
            )
        if sum(self.classes_per_step) != len(self.class_order):
            raise DatasetError(
                f"protocol {self.name}: steps {list(self.classes_per_step)} cover {sum(self.classes_per_step)} classes "
                f"but the class order has {len(self.class_order)}; list every step explicitly (no class is dropped)"
            )
        if len(set(self.class_order)) != len(self.class_order):
            raise DatasetError(f"protocol {self.name}: the class order repeats a class")
        if self.memory < 0:
            raise DatasetError(f"protocol {self.name}: memory must be >= 0")

    @property
    def num_steps(self) -> int:
        return len(self.classes_per_step)

    @property
    def num_classes(self) -> int:
        return len(self.class_order)

    def step_bounds(self, t: int) -> tuple[int, int]:
        """[start, end) of step t's classes, in class-order positions."""
        start = sum(self.classes_per_step[:t])
        return start, start + self.classes_per_step[t]

    def seen_classes(self, t: int) -> int:
        return self.step_bounds(t)[1]

    def step_of_position(self):
        """List mapping class-order position -> step index."""
        return [t for t, k in enumerate(self.classes_per_step) for _ in range(k)]

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "class_order": list(self.class_order),
            "classes_per_step": list(self.classes_per_step),
            "memory": self.memory,
        }

    @classmethod
    def uniform(
        cls, name: str, num_classes: int, per_step: int, memory: int = 0, class_order=None, remainder: str = "error"
    ) -> Protocol:
        """`num_classes // per_step` steps of `per_step`; a remainder is an error or (remainder='last-step') its own
        last step (datasets.base.step_sizes, the rule the paired folders' protocol.yaml uses too)."""
        sizes = step_sizes(num_classes, per_step, source=f"protocol {name}", last_step=remainder == "last-step")
        order = tuple(range(num_classes)) if class_order is None else tuple(class_order)
        return cls(name, order, sizes, memory)

    @classmethod
    def from_spec(cls, spec: ProtocolSpec, num_classes: int) -> Protocol:
        order = spec.class_order if spec.class_order is not None else tuple(range(num_classes))
        return cls(spec.name, tuple(order), tuple(spec.classes_per_step), spec.memory)
