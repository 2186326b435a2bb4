"""The commands in README.md, docs/*.md, benchmarks/*.md and launch/*.sh stay true: every shell block's pipeline modules, benchmarks,
recipes, launch scripts and dotted config keys exist (parsed and checked, not run), and every recipe
loads."""

import importlib.util
import re
import shlex
from pathlib import Path

import pytest

from conftest import ROOT
from pipeline.config import Config, load_config, recipe_names
from pipeline.resume import flatten

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "benchmarks").glob("*.md"))]
SCRIPTS = sorted((ROOT / "launch").glob("*.sh"))
CONFIG_KEYS = set(flatten(Config().to_dict()))
BENCHMARKS = {p.stem for p in (ROOT / "pipeline" / "bench").glob("*.py") if not p.stem.startswith("_")}
OVERRIDE = re.compile(r"(?:--)?([a-z_]+\.[a-z_.]+)(?:=|$)")  # model.size=..., --train.lr 6e-4


def commands_in(shell: str) -> list[str]:
    """Each command of a shell text, continuation lines joined, comments dropped, `&&` chains split."""
    commands = []
    for line in shell.replace("\\\n", " ").splitlines():
        line = line.split(" #")[0].strip()
        if line and not line.startswith("#"):
            commands += [part.strip() for part in line.split("&&")]
    return commands


def shell_commands(page: Path) -> list[str]:
    """Each command of each ```bash block of a page."""
    return [command for block in re.findall(r"```bash\n(.*?)```", page.read_text(), flags=re.S)
            for command in commands_in(block)]


def problems(command: str) -> list[str]:
    words = shlex.split(command)
    found = []
    for i, word in enumerate(words):
        following = words[i + 1] if i + 1 < len(words) else ""
        if word in ("-m", "--module") and following.startswith("pipeline") and "$" not in following:
            if importlib.util.find_spec(following) is None:
                found.append(f"no module {following}")
            if following == "pipeline.bench" and words[i + 2] not in BENCHMARKS:
                found.append(f"no benchmark {words[i + 2]}")
        elif word == "--config" and not following.startswith("$"):
            if following not in recipe_names() and not (ROOT / following).exists():
                found.append(f"no recipe {following}")
        elif word == "bash" and following.endswith(".sh") and not (ROOT / following).exists():
            found.append(f"no script {following}")
        elif OVERRIDE.fullmatch(word.split("=")[0] + ("=" if "=" in word else "")) and not word.startswith("$"):
            key = OVERRIDE.match(word).group(1)
            if (words[i - 1] if i else "") in ("-m", "--module") or key.startswith(("pipeline.", "torch.")):
                continue
            if key not in CONFIG_KEYS:
                found.append(f"no config key {key}")
    return found


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_every_command_names_what_exists(page):
    commands = shell_commands(page)
    assert page != ROOT / "README.md" or len(commands) >= 5  # the parser finds the README's commands
    assert_commands_exist(commands)


def assert_commands_exist(commands: list[str]) -> None:
    bad = {command: found for command in commands if (found := problems(command))}
    assert not bad, bad


@pytest.mark.parametrize("script", SCRIPTS, ids=[p.name for p in SCRIPTS])
def test_every_launch_script_names_what_exists(script):
    commands = [command for command in commands_in(script.read_text()) if "pipeline." in command]
    assert script.name != "quickstart.sh" or len(commands) >= 5  # the parser finds the stages
    assert_commands_exist(commands)


def test_the_checker_catches_what_it_checks():
    assert problems("python -m pipeline.nosuchstage --config tiny") == ["no module pipeline.nosuchstage"]
    assert problems("python -m pipeline.bench nosuchbench --config tiny") == ["no benchmark nosuchbench"]
    assert problems("python -m pipeline.train --config no-such-recipe train.lr=1") == ["no recipe no-such-recipe"]
    assert problems("deepspeed --module pipeline.train --config tiny train.lrr=1 --model.sise x") == [
        "no config key train.lrr", "no config key model.sise"]
    assert problems("bash launch/nosuch.sh") == ["no script launch/nosuch.sh"]


@pytest.mark.parametrize("recipe", recipe_names())
def test_every_recipe_loads(recipe):
    load_config(recipe)
