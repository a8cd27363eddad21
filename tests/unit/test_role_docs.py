"""docs/variables.md is generated from the roles' argument specs and must be in step with them."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_variables_doc_is_current():
    spec = importlib.util.spec_from_file_location("role_docs", ROOT / "tests" / "role_docs.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert (ROOT / "docs" / "variables.md").read_text() == mod.render(), "run: python tests/role_docs.py"
