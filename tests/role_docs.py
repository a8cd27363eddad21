"""Write docs/variables.md from every role's meta/argument_specs.yml (the one source of the variables).

Usage: python tests/role_docs.py [--check]   (--check exits 1 when docs/variables.md is out of date)
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "variables.md"


def _cell(value: object) -> str:
    text = " ".join(str(value).split())
    return text.replace("|", "\\|")


def render() -> str:
    lines = [
        "# Role variables",
        "",
        "Generated from each role's `meta/argument_specs.yml` by `python tests/role_docs.py`; do not edit.",
        "",
    ]
    for spec_file in sorted(ROOT.glob("roles/*/meta/argument_specs.yml")):
        role = spec_file.parent.parent.name
        specs = yaml.safe_load(spec_file.read_text())["argument_specs"]
        for entry, spec in specs.items():
            title = f"selfhost.textgen.{role}" + ("" if entry == "main" else f" (entry point `{entry}`)")
            lines += [f"## {title}", "", _cell(spec.get("short_description", "")), ""]
            options = spec.get("options") or {}
            if not options:
                lines += ["No variables.", ""]
                continue
            lines += ["| variable | type | default | description |", "| --- | --- | --- | --- |"]
            for name in sorted(options):
                opt = options[name] or {}
                desc = opt.get("description", "")
                if isinstance(desc, list):
                    desc = " ".join(desc)
                default = opt.get("default", "required" if opt.get("required") else "")
                lines.append(
                    f"| `{name}` | {opt.get('type', 'str')} | `{_cell(default)}` | {_cell(desc)} |"
                    if default != ""
                    else f"| `{name}` | {opt.get('type', 'str')} | | {_cell(desc)} |"
                )
            lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    text = render()
    if "--check" in sys.argv:
        if not OUT.exists() or OUT.read_text() != text:
            sys.exit("docs/variables.md is out of date: run python tests/role_docs.py")
        sys.exit(0)
    OUT.write_text(text)
    print(f"wrote {OUT.relative_to(ROOT)}")
