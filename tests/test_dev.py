"""dev.py (the README's commands) stays standard-library only and knows its commands."""

import ast
import subprocess
import sys

from tests.conftest import REPO

DEV = REPO / "dev.py"


def test_dev_script_imports_only_the_standard_library():
    tree = ast.parse(DEV.read_text())
    modules = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            modules.add(node.module.split(".")[0])
    assert modules and modules <= set(sys.stdlib_module_names), modules - set(
        sys.stdlib_module_names)


def test_dev_script_lists_its_commands_and_rejects_others():
    run = subprocess.run([sys.executable, str(DEV), "nonsense"], capture_output=True,
                         text=True, timeout=30)
    assert run.returncode == 2
    for command in ("dev.py app", "dev.py test", "dev.py package"):
        assert command in run.stdout
