"""The README's two set-up commands are the ones CI runs, and its examples name real things."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _bash_blocks(text: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", text, flags=re.S)


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    blocks = _bash_blocks(readme)
    setup_main, setup_tests = blocks[0].strip(), blocks[1].strip()
    assert "pytest" in setup_tests and ".venv/bin/hvit train" in setup_main
    assert "-c constraints-cpu.txt" in setup_main and "-c constraints-cpu.txt" in setup_tests
    ci = (ROOT / ".ci" / "run").read_text()
    assert setup_tests in ci.splitlines()


def test_readme_configs_exist():
    readme = (ROOT / "README.md").read_text()
    for path in set(re.findall(r"configs/[\w.-]+\.yaml", readme)):
        assert (ROOT / path).is_file(), path


def test_readme_shows_every_hvit_command():
    from modeling_hvit.cli import COMMANDS

    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Command line", 1)[1].split("\n## ", 1)[0]
    for name in COMMANDS:
        assert f"hvit {name}" in section or f"-m modeling_hvit {name}" in section, name
