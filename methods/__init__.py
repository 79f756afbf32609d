"""Methods, discovered from the sub-packages of this package.

A method folder `methods/<name>/` holds `__init__.py` (defining `METHODS = [<spec>, ...]`, see
`benchmarks.core.method.MethodSpec`), its strategy, `config.yaml` and a README. Adding a method is
adding a folder. Folders whose name starts with `_` hold code shared by a family of methods
(`_avcil`: the AV-CIL network and losses; `_cnn14`: the multi-label CNN14) and are not methods.
"""

from __future__ import annotations

import sys

from benchmarks.core.method import MethodSpec
from datasets.base import discover


def registry(suite: str | None = None) -> dict[str, MethodSpec]:
    """Every registered spec by name (only those run by `suite`, when given)."""
    found = discover(sys.modules[__name__], "METHODS", "method", packages_only=True)
    return {k: s for k, s in found.items() if suite is None or suite in s.suites}
