"""The documentation site builds without a warning, its generated pages come from the code, and
every command line it shows is accepted by the parser it names (a renamed flag breaks the build)."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

DOCS = [REPO / "README.md", REPO / "CONTRIBUTING.md", *sorted((REPO / "docs").rglob("*.md"))]


def _command_lines() -> list[tuple[str, str]]:
    """(file:line, command) for each `nas ...` or `python -m flows.X ...` line in a code block."""
    found = []
    for path in DOCS:
        in_code = False
        lines = path.read_text().splitlines()
        for i, line in enumerate(lines, 1):
            if line.lstrip().startswith("```"):
                in_code = not in_code
                continue
            if not in_code:
                continue
            text = line.split(" #")[0].strip()
            while text.endswith("\\") and i < len(lines):  # a continued line
                text = text[:-1] + " " + lines[i].split(" #")[0].strip()
                i += 1
            for part in re.split(r"\s(?:&&|\||;)\s", text):
                part = part.strip().rstrip("&").strip()
                if re.match(r"^(nas [a-z]|python -m flows\.(pipeline|sweep|benchmark)\b)", part) and "..." not in part:
                    found.append((f"{path.relative_to(REPO)}:{i}", part))
    return found


COMMANDS = _command_lines()


def _parser_for(argv: list[str]):
    from nas.reference import _flow_parser

    if argv[0] == "nas":
        from nas.cli import build_parser

        return build_parser(), argv[1:]
    return _flow_parser(argv[2]), argv[3:]


def test_the_docs_show_commands():
    assert len(COMMANDS) >= 25, COMMANDS


@pytest.mark.parametrize("where,line", COMMANDS, ids=[w for w, _ in COMMANDS])
def test_every_command_line_in_the_docs_parses(where, line, monkeypatch, capsys):
    argv = []
    for token in shlex.split(re.sub(r"\$\([^)]*\)|\$\{?\w+\}?", "X", line)):
        # synopsis notation: [--resume|--force] is one of the flags, magnitude|pt one of the values
        token = token[1:] if token.startswith("[-") else token
        token = token[:-1] if token.endswith("]") and not token.startswith("[") else token
        if "|" in token and not token.startswith("|"):
            token = token.split("|")[0]
        argv.append(token)
    parser, args = _parser_for(argv)
    with pytest.raises(SystemExit) as exc:
        parser.parse_args([*args, "--bogus-flag-for-the-test"])
    err = capsys.readouterr().err
    # the only complaint is the flag added here: every flag the docs show exists and takes its values
    assert exc.value.code == 2 and "unrecognized arguments: --bogus-flag-for-the-test" in err, f"{where}: {line}\n{err}"


def test_generated_pages_are_the_code():
    from nas import config as config_mod
    from nas import reference

    pages = reference.pages()
    for kind in config_mod.CONFIGS:
        for key in config_mod.config_fields(kind):
            assert f"| `{key}` |" in pages["reference/config.md"], (kind, key)
    assert "## nas search" in pages["reference/cli.md"] and "## python -m flows.sweep" in pages["reference/cli.md"]
    for protocol in reference.result_protocols():
        table = (REPO / "data" / "results" / protocol / "table.md").read_text().strip()
        assert table in pages[f"results/tables/{protocol}.md"]


@pytest.mark.slow
def test_the_site_builds_strict(tmp_path):
    mkdocs = Path(sys.executable).parent / "mkdocs"
    assert mkdocs.is_file(), "mkdocs is in the test extra"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    p = subprocess.run([str(mkdocs), "build", "--strict", "--site-dir", str(tmp_path / "site")], cwd=REPO,
                       capture_output=True, text=True, timeout=600, env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    site = tmp_path / "site"
    assert (site / "reference" / "cli" / "index.html").is_file()
    assert (site / "results" / "tables" / "cpu-proxy-c16" / "index.html").is_file()
    assert (site / "results" / "files" / "cpu-proxy-c16" / "figures" / "sharpness_over_epochs.png").is_file()
    shutil.rmtree(site)


def test_the_method_module_the_docs_show_is_the_real_one():
    import re as re_

    page = (REPO / "docs" / "architecture.md").read_text()
    shown = re_.search(r"```python\n# nas/methods/sdarts_adv.py\n(.*?)```", page, re_.S).group(1)
    source = (REPO / "nas" / "methods" / "sdarts_adv.py").read_text()
    code = source.split('"""', 2)[2].lstrip("\n")  # the module without its docstring
    assert shown == code
