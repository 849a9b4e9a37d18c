"""The READMEs cannot rot: their links resolve and the commands they show exist.

Links: every relative Markdown link in the documentation files resolves to a file or folder
of the repository, and an `#anchor` to a heading of the target (GitHub's heading slugs).

Commands: every line of a ```bash block that runs `python -m MODULE ...` (also
`.venv/bin/python`, after leading `VAR=value` assignments such as `TF_CONFIG='...'`, up to
a trailing `&`, a pipe or a comment) must name a module whose `--help` exits 0 and lists
every `--flag` the line uses. `python SCRIPT.py ...` lines (the benchmarks) are checked
without importing TensorFlow again: the script exists and declares each flag in an
`add_argument` call. Every `make TARGET` must name a target of the Makefile. Nothing is
trained and no make target runs.
"""

import ast
import contextlib
import io
import re
import runpy
import shlex
import sys
import traceback
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = sorted(
    {
        ROOT / "README.md",
        *ROOT.glob("apps/*/README.md"),
        ROOT / "benchmarks" / "README.md",
        ROOT / "tfattn" / "training" / "README.md",
        ROOT / "data" / "SOURCES.md",
    }
)
PYTHONS = {"python", "python3", ".venv/bin/python", ".venv/bin/python3"}
SHELL_OPERATORS = {"&", "&&", "|", "||", ";", ">", ">>", "<", "2>", "2>&1"}
ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


def _rel(path):
    return path.relative_to(ROOT).as_posix()


# --------------------------------------------------------------------------- Markdown


def _fenced_blocks(text):
    """[(language, first line number, lines)] of the ``` blocks in a Markdown text."""
    blocks, current = [], None
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith("```"):
            if current is None:
                current = (stripped[3:].strip().lower(), number + 1, [])
            else:
                blocks.append(current)
                current = None
        elif current is not None:
            current[2].append(line)
    return blocks


def _prose_lines(text):
    """(line number, line) outside fenced blocks, inline code spans removed."""
    inside = False
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip().startswith("```"):
            inside = not inside
            continue
        if not inside:
            yield number, re.sub(r"`[^`]*`", "", line)


def slugify(heading):
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip()).lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path):
    """Every heading anchor of a Markdown file (repeated headings get -1, -2, ...)."""
    seen, result = {}, set()
    inside = False
    for line in path.read_text().splitlines():
        if line.strip().startswith("```"):
            inside = not inside
            continue
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if inside or not match:
            continue
        slug = slugify(match.group(1))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        result.add(slug if count == 0 else f"{slug}-{count}")
    return result


LINK = re.compile(r"(?<!!)\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def relative_links(path):
    """(line number, target) of the relative links in a Markdown file's prose."""
    links = []
    for number, line in _prose_lines(path.read_text()):
        for target in LINK.findall(line):
            if not re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):  # http:, mailto:
                links.append((number, target))
    return links


def broken_link(doc, target):
    """Why `target` (a link in `doc`) does not resolve, or None."""
    file_part, _, anchor = target.partition("#")
    resolved = (doc.parent / file_part).resolve() if file_part else doc
    if not resolved.exists():
        return f"{file_part} does not exist"
    if ROOT not in resolved.parents and resolved != ROOT:
        return f"{file_part} is outside the repository"
    if anchor:
        if resolved.suffix != ".md" or resolved.is_dir():
            return f"#{anchor} points into {file_part}, which is not a Markdown file"
        if anchor not in anchors(resolved):
            return f"no heading with anchor #{anchor} in {_rel(resolved)}"
    return None


# --------------------------------------------------------------------------- commands


def shell_lines(text):
    """(line number, logical line) of the ```bash blocks, `\\` continuations joined."""
    lines = []
    for language, start, block in _fenced_blocks(text):
        if language not in ("bash", "sh", "shell"):
            continue
        pending, pending_start = "", None
        for offset, line in enumerate(block):
            if pending_start is None:
                pending_start = start + offset
            if line.rstrip().endswith("\\"):
                pending += line.rstrip()[:-1] + " "
                continue
            lines.append((pending_start, pending + line))
            pending, pending_start = "", None
        if pending.strip():
            lines.append((pending_start, pending))
    return lines


def parse_command(line):
    """A shell line -> ("python", module or script, args), ("make", targets) or None.

    Leading `VAR=value` assignments are dropped; the command ends at the first shell
    operator (`&`, `|`, `;`, a redirection) or comment.
    """
    try:
        tokens = shlex.split(line, comments=True)
    except ValueError:
        if re.match(r"^\s*(\S+=\S*\s+)*(\S*python3?|make)\b", line):
            raise ValueError(f"cannot split shell line: {line}") from None
        return None
    while tokens and ENV_ASSIGNMENT.match(tokens[0]):
        tokens = tokens[1:]
    for index, token in enumerate(tokens):
        if token in SHELL_OPERATORS:
            tokens = tokens[:index]
            break
    if not tokens:
        return None
    if tokens[0] in PYTHONS and len(tokens) >= 3 and tokens[1] == "-m":
        return ("python", ("-m", tokens[2]), tokens[3:])
    if tokens[0] in PYTHONS and len(tokens) >= 2 and tokens[1].endswith(".py"):
        return ("python", (tokens[1],), tokens[2:])
    if tokens[0] == "make":
        targets = [t for t in tokens[1:] if not t.startswith("-") and "=" not in t]
        return ("make", targets)
    return None


def doc_commands():
    """[(where, parsed command)] for every command line in the documentation files."""
    found = []
    for doc in DOC_FILES:
        for number, line in shell_lines(doc.read_text()):
            parsed = parse_command(line)
            if parsed is not None:
                found.append((f"{_rel(doc)}:{number}", parsed))
    return found


def makefile_targets(path=ROOT / "Makefile"):
    targets = set()
    for line in path.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.\-/ ]+?)\s*:(?!=)", line)
        if match and not line.startswith("\t"):
            targets.update(match.group(1).split())
    return targets


def used_flags(args):
    return [a.split("=", 1)[0] for a in args if a.startswith("--") and len(a) > 2]


def missing_flags(flags, help_text):
    return [f for f in flags if not re.search(rf"(?<![\w-]){re.escape(f)}(?![\w-])", help_text)]


def script_flags(path):
    """The option strings a script declares with `add_argument(...)` (read, not imported)."""
    flags = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_argument":
            flags.update(
                a.value for a in node.args
                if isinstance(a, ast.Constant) and str(a.value).startswith("-")
            )
    return flags


def run_help(program):
    """`python -m <module> --help`, run in this process: (exit code, output).

    The module runs as `__main__` (its command-line entry point, as `python -m` would),
    with this process's imports, so each command costs no TensorFlow import of its own
    (16 subprocesses took ~60 s of a test run). The apps' command-line tests
    (tests/apps/*/test_cli.py, test_train.py, test_multi_worker.py) start them as
    subprocesses.
    """
    module = program[1]
    out = io.StringIO()
    argv, code = sys.argv, 0
    sys.argv = [module, "--help"]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out), \
                warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # "found in sys.modules" notice
            runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    except Exception:  # noqa: BLE001 - reported as the command's failure
        code = 1
        out.write(traceback.format_exc())
    finally:
        sys.argv = argv
    return code, out.getvalue()


# --------------------------------------------------------------------------- tests


def test_documentation_files_exist():
    for doc in DOC_FILES:
        assert doc.is_file(), f"{_rel(doc)} is missing"
    assert ROOT / "apps" / "vit" / "README.md" in DOC_FILES


@pytest.mark.parametrize("doc", DOC_FILES, ids=_rel)
def test_relative_links_resolve(doc):
    problems = [
        f"{_rel(doc)}:{number}: ({target}) {why}"
        for number, target in relative_links(doc)
        if (why := broken_link(doc, target))
    ]
    assert not problems, "broken links:\n" + "\n".join(problems)


def test_front_page_links_every_guide():
    targets = {t.partition("#")[0] for _, t in relative_links(ROOT / "README.md")}
    for guide in ("apps/vit/README.md", "benchmarks/README.md", "tfattn/training/README.md"):
        assert guide in targets, f"README.md does not link {guide}"


def test_link_checker_reports_missing_files_and_anchors():
    doc = ROOT / "README.md"
    assert broken_link(doc, "benchmarks/README.md") is None
    assert broken_link(doc, "benchmarks/README.md#machine-and-versions") is None
    assert "does not exist" in broken_link(doc, "apps/no_such_app/README.md")
    assert "no heading" in broken_link(doc, "benchmarks/README.md#no-such-heading")
    assert slugify("ViT image classification (`apps/vit`)") == "vit-image-classification-appsvit"
    assert slugify("How predict and evaluate run under multi-worker") == (
        "how-predict-and-evaluate-run-under-multi-worker"
    )


def test_command_extraction_strips_environment_and_background():
    text = (
        "```bash\n"
        "TF_CONFIG='{\"cluster\": {\"worker\": [\"127.0.0.1:1\"]}, \"task\": {\"index\": 0}}' \\\n"
        "  python -m apps.vit.train --preset test --workdir runs/mw &\n"
        "KERAS_BACKEND=jax .venv/bin/python benchmarks/attention_jax.py --quick  # note\n"
        "make demo   # trains\n"
        "curl -d '{\"a\": 1}' http://localhost:8501\n"
        "```\n"
        "```python\npython -m not.shell --x\n```\n"
    )
    parsed = [parse_command(line) for _, line in shell_lines(text)]
    assert parsed == [
        ("python", ("-m", "apps.vit.train"), ["--preset", "test", "--workdir", "runs/mw"]),
        ("python", ("benchmarks/attention_jax.py",), ["--quick"]),
        ("make", ["demo"]),
        None,
    ]


def test_documented_make_targets_exist():
    targets = makefile_targets()
    assert {"demo", "test", "lint", "bench"} <= targets
    commands = [(where, c[1]) for where, c in doc_commands() if c[0] == "make"]
    assert commands, "no `make` command found in the documentation"
    problems = [
        f"{where}: make {t}" for where, names in commands for t in names if t not in targets
    ]
    assert not problems, "make targets missing from the Makefile:\n" + "\n".join(problems)


def test_documented_scripts_declare_their_flags():
    commands = [(where, c[1][0], c[2]) for where, c in doc_commands()
                if c[0] == "python" and c[1][0] != "-m"]
    assert any(script == "benchmarks/vit.py" for _, script, _ in commands)
    problems = []
    for where, script, args in commands:
        path = ROOT / script
        if not path.is_file():
            problems.append(f"{where}: {script} does not exist")
            continue
        declared = script_flags(path) | {"--help"}
        missing = [f for f in used_flags(args) if f not in declared]
        if missing:
            problems.append(f"{where}: {script} declares no {', '.join(missing)}")
    assert not problems, "documented scripts that do not work:\n" + "\n".join(problems)
    assert "--no_such_flag" not in script_flags(ROOT / "benchmarks" / "vit.py")
    assert "--quality" in script_flags(ROOT / "benchmarks" / "vit.py")


def test_documented_python_commands_accept_their_flags():
    commands = [(where, c[1], c[2]) for where, c in doc_commands()
                if c[0] == "python" and c[1][0] == "-m"]
    modules = {program[1] for _, program, _ in commands}
    # The extraction must find the commands the front page and the guides promise.
    assert {"apps.vit.train", "apps.vit.evaluate", "apps.vit.predict", "apps.vit.export"} <= modules
    assert any("multi_worker" in args for _, _, args in commands), "multi-worker recipe not found"

    programs = sorted({program for _, program, _ in commands})
    helps = {program: run_help(program) for program in programs}
    problems = []
    for where, program, args in commands:
        code, text = helps[program]
        shown = " ".join(program)
        if code != 0:
            problems.append(f"{where}: `python {shown} --help` exited {code}: {text[-500:]}")
            continue
        missing = missing_flags(used_flags(args), text)
        if missing:
            problems.append(f"{where}: `python {shown}` has no flag {', '.join(missing)}")
    assert not problems, "documented commands that do not work:\n" + "\n".join(problems)

    # The check can fail: a flag the module does not have is reported.
    _, evaluate_help = helps[("-m", "apps.vit.evaluate")]
    assert missing_flags(["--workdir", "--no_such_flag"], evaluate_help) == ["--no_such_flag"]
