"""Read a Terraform folder into plain Python for offline checks (python-hcl2).

Values are what python-hcl2 gives with quotes stripped: literals as Python values,
expressions as ``"${...}"`` strings. Nothing is evaluated, except the few references
:func:`resolve` follows (``${local.NAME}``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hcl2

_OPTIONS = hcl2.SerializationOptions(
    strip_string_quotes=True, explicit_blocks=False, with_comments=False
)


def _load(path: Path) -> dict[str, Any]:
    with path.open(encoding="utf-8") as f:
        data: dict[str, Any] = hcl2.load(f, serialization_options=_OPTIONS)
    return data


@dataclass
class Module:
    """The blocks of every ``*.tf`` file of one folder, merged."""

    files: dict[str, str] = field(default_factory=dict)
    """File name -> raw text."""
    resources: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    """Resource type -> name -> body."""
    data: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    """Data source type -> name -> body."""
    locals: dict[str, Any] = field(default_factory=dict)
    variables: dict[str, dict[str, Any]] = field(default_factory=dict)
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def text(self) -> str:
        """All the files' text, concatenated."""
        return "\n".join(self.files.values())

    def resource(self, kind: str, name: str) -> dict[str, Any]:
        """The body of ``resource "kind" "name"`` (KeyError naming it if absent)."""
        try:
            return self.resources[kind][name]
        except KeyError:
            raise KeyError(f'resource "{kind}" "{name}" not found in infra') from None

    def resolve(self, value: Any) -> Any:
        """``value``, or the local it names when it is exactly ``${local.NAME}``."""
        if isinstance(value, str) and value.startswith("${local.") and value.endswith("}"):
            name = value[len("${local.") : -1]
            if name.isidentifier() and name in self.locals:
                return self.resolve(self.locals[name])
        return value


def load_module(folder: Path) -> Module:
    """Parse every ``*.tf`` in ``folder`` (not recursive)."""
    module = Module()
    for path in sorted(folder.glob("*.tf")):
        module.files[path.name] = path.read_text(encoding="utf-8")
        parsed = _load(path)
        for block in parsed.get("resource", []):
            for kind, named in block.items():
                module.resources.setdefault(kind, {}).update(named)
        for block in parsed.get("data", []):
            for kind, named in block.items():
                module.data.setdefault(kind, {}).update(named)
        for block in parsed.get("locals", []):
            module.locals.update(block)
        for block in parsed.get("variable", []):
            module.variables.update(block)
        for block in parsed.get("output", []):
            module.outputs.update(block)
    return module


def single(blocks: Any, what: str) -> dict[str, Any]:
    """The one block of a nested-block list (python-hcl2 gives lists of dicts)."""
    assert isinstance(blocks, list), f"{what}: expected a block, got {blocks!r}"
    assert len(blocks) == 1, f"{what}: expected one block, got {len(blocks)}"
    block = blocks[0]
    assert isinstance(block, dict), f"{what}: expected a block, got {block!r}"
    return block
