"""The repository's promises about itself: CI runs the README's test command, as written."""

from __future__ import annotations

import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def readme_commands() -> list[str]:
    """The commands of the README's "Two commands on a fresh machine" block, comments stripped."""
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    block = re.search(r"## Two commands on a fresh machine\s+```bash\n(.*?)```", text, re.S)
    assert block, "README lacks the two-commands block"
    return [line.split("#", 1)[0].strip() for line in block.group(1).splitlines() if line.strip()]


def test_ci_runs_the_readme_test_command():
    demo, test = readme_commands()
    assert demo == "bash scripts/demo.sh" and test == "bash scripts/test.sh"
    with open(os.path.join(ROOT, ".ci", "run")) as f:
        commands = [line.strip() for line in f if line.strip() and not line.lstrip().startswith("#")]
    assert test in commands  # the README's command line itself, not an equivalent
    assert os.access(os.path.join(ROOT, ".ci", "run"), os.X_OK)
