"""The protocol of a paired image + audio folder: `protocol.yaml`, or the same keys as a mapping.

    name: 4+3x5            optional; default `<initial>+<per_step>x<later steps>`
    initial: 4             classes in step 0
    per_step: 3            classes in each later step; a partial last step is an error
    class_order: [...]     optional: class names or indices; or `class_order_file: f.yaml` (a YAML list)
    memory: 300            optional exemplar budget (methods with memory); default 15 per class
    prompt_template: "a photo of a {}."   optional (one `{}`)

The step sizes follow the one "initial + per step" rule of `datasets.base.step_sizes` (also behind
`benchmarks.core.protocols.Protocol.uniform`). Every problem is a DatasetError naming the file (or the
command-line option) and the fix.
"""

from __future__ import annotations

import re
from pathlib import Path

from datasets.base import ProtocolSpec, step_sizes
from datasets.errors import DatasetError
from datasets.io import read_yaml

DEFAULT_TEMPLATE = "a photo of a {}."
MEMORY_PER_CLASS = 15
PROTOCOL_KEYS = {"name", "initial", "per_step", "class_order", "class_order_file", "memory", "prompt_template"}


def protocol_name(sizes: tuple[int, ...]) -> str:
    """`<initial>+<per_step>x<n>` (n later steps), e.g. (4, 3, 3, 3, 3, 3) -> '4+3x5'."""
    return f"{sizes[0]}+{sizes[1]}x{len(sizes) - 1}" if len(sizes) > 1 else f"{sizes[0]}x1"


def parse_class_order(order, class_names: list[str], source: str) -> tuple[int, ...]:
    """A YAML list of class names or of class indices -> the tuple of class indices (a permutation)."""
    n = len(class_names)
    if not isinstance(order, list) or not order:
        raise DatasetError(f"{source}: `class_order` must be a non-empty list of class names or indices")
    if all(isinstance(x, int) and not isinstance(x, bool) for x in order):
        bad = [x for x in order if not 0 <= x < n]
        if bad:
            raise DatasetError(f"{source}: class_order index(es) {bad[:5]} outside [0, {n})")
        idx = list(order)
    elif all(isinstance(x, str) for x in order):
        index = {c: i for i, c in enumerate(class_names)}
        bad = [x for x in order if x not in index]
        if bad:
            raise DatasetError(
                f"{source}: class_order names {bad[:5]} are not class folders; the classes are "
                f"{class_names[:8]}{'...' if n > 8 else ''}"
            )
        idx = [index[x] for x in order]
    else:
        raise DatasetError(f"{source}: class_order mixes names and indices; use one kind")
    dup = sorted({class_names[i] for i in idx if idx.count(i) > 1})
    if dup:
        raise DatasetError(f"{source}: class_order lists {dup[:5]} more than once")
    if len(idx) != n:
        missing = [class_names[i] for i in range(n) if i not in set(idx)]
        raise DatasetError(
            f"{source}: class_order has {len(idx)} classes, the dataset {n}; missing "
            f"{missing[:5]}{'...' if len(missing) > 5 else ''}"
        )
    return tuple(idx)


def _class_order_file(spec: dict, class_names: list[str], source: str, base_dir: Path | None) -> tuple[int, ...]:

    path = Path(spec["class_order_file"])
    path = path if path.is_absolute() or base_dir is None else Path(base_dir) / path
    if not path.is_file():
        raise DatasetError(
            f"{source}: class_order_file {path} does not exist; create it (a YAML list of class names or indices)"
        )
    loaded = read_yaml(path, "it must be a list of class names or indices")
    return parse_class_order(loaded, class_names, str(path))


def parse_protocol(
    spec: dict, class_names: list[str], source: str, base_dir: Path | None = None
) -> tuple[ProtocolSpec, str]:
    """A protocol mapping (protocol.yaml or --paired-protocol) -> (ProtocolSpec, prompt template)."""
    if not isinstance(spec, dict):
        raise DatasetError(f"{source}: expected a mapping with `initial` and `per_step`, got {type(spec).__name__}")
    unknown = sorted(set(spec) - PROTOCOL_KEYS)
    if unknown:
        raise DatasetError(f"{source}: unknown key(s) {unknown}; allowed: {sorted(PROTOCOL_KEYS)}")
    missing = [k for k in ("initial", "per_step") if k not in spec]
    if missing:
        raise DatasetError(
            f"{source}: missing {missing}; e.g. `initial: 4` and `per_step: 3` (classes in step 0 / in each later step)"
        )
    sizes = step_sizes(len(class_names), spec["per_step"], spec["initial"], source=source)
    if "class_order" in spec and "class_order_file" in spec:
        raise DatasetError(f"{source}: give `class_order` or `class_order_file`, not both")
    order = tuple(range(len(class_names)))
    if "class_order" in spec:
        order = parse_class_order(spec["class_order"], class_names, source)
    elif "class_order_file" in spec:
        order = _class_order_file(spec, class_names, source, base_dir)
    memory = spec.get("memory", MEMORY_PER_CLASS * len(class_names))
    if isinstance(memory, bool) or not isinstance(memory, int) or memory < 0:
        raise DatasetError(f"{source}: `memory` must be an integer >= 0 (total exemplars), got {memory!r}")
    template = spec.get("prompt_template", DEFAULT_TEMPLATE)
    if not isinstance(template, str) or template.count("{}") != 1:
        raise DatasetError(f"{source}: `prompt_template` must be a string with exactly one {{}}, got {template!r}")
    name = spec.get("name") or protocol_name(sizes)
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.+-]+", name):
        raise DatasetError(f"{source}: `name` must be a short word (letters, digits, _ . + -), got {name!r}")
    return ProtocolSpec(name, sizes, memory, order), template
