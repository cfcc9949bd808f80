"""Read a Dockerfile and check it against the project's pins and rules (used by the infra tests).

Each `check_*` function returns a list of problems (empty when the Dockerfile is fine), so the
tests can show the checks catch broken Dockerfiles as well as pass the real one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fnmatch import fnmatch

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

SECRET_NAME = re.compile(
    r"(^|_)(PASSWORD|SECRET|TOKEN|API_KEY|ACCESS_KEY|CATALOG_URL|CREDENTIALS?)(_|$)", re.I
)
# Ways of putting model weights into an image layer.
WEIGHT_DOWNLOADS = re.compile(
    r"\bhf download\b|huggingface-cli|snapshot_download|from_pretrained|hf_hub_download"
)
RAY_IMAGE = re.compile(r"^rayproject/ray:(?P<ray>\d+\.\d+\.\d+)-py(?P<py>3\d+)-(?P<platform>\S+)$")
PIN = re.compile(r"([A-Za-z0-9][A-Za-z0-9_.\-]*)==([0-9][^\s\"']*)")


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case: FROM, RUN, ...
    text: str  # arguments with ARG defaults substituted


def parse(text: str) -> list[Instruction]:
    """Instructions with continuation lines joined, comments dropped, ARG defaults substituted."""
    logical, current = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
        else:
            logical.append(current + stripped)
            current = ""
    # Docker's ARG scoping: ARGs before FROM are visible in FROM only, unless a stage re-declares
    # them (`ARG NAME`, which takes the global default).
    global_args: dict[str, str] = {}
    args: dict[str, str] = {}
    instructions = []
    for line in logical:
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        rest = _substitute(rest.strip(), args)
        if keyword == "ARG":
            name, has_default, default = rest.partition("=")
            if has_default:
                args[name] = default.strip("\"'")
            elif name in global_args:
                args[name] = global_args[name]
        elif keyword == "FROM":
            global_args, args = args, {}
        instructions.append(Instruction(keyword, rest))
    return instructions


def _substitute(text: str, args: dict[str, str]) -> str:
    """`${NAME}` / `$NAME` -> the ARG's value; unknown names stay as written."""
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m[1] or m[2], m[0]), text)


def base_image(instructions: list[Instruction]) -> str:
    froms = [i.text.split()[0] for i in instructions if i.keyword == "FROM"]
    if len(froms) != 1:
        raise ValueError(f"expected a single-stage Dockerfile, found {len(froms)} FROM lines")
    return froms[0]


def check_base_image(instructions: list[Instruction], ray_pin: str, requires_python: str) -> list:
    match = RAY_IMAGE.match(base_image(instructions))
    if not match:
        return [f"base image {base_image(instructions)!r} is not rayproject/ray:X.Y.Z-pyXY-..."]
    problems = []
    if match["ray"] != ray_pin:
        problems.append(f"base image has Ray {match['ray']}, pyproject pins {ray_pin}")
    python = f"{match['py'][0]}.{match['py'][1:]}"
    if Version(python) not in SpecifierSet(requires_python):
        problems.append(f"base image Python {python} is outside requires-python {requires_python}")
    if not (match["platform"] in {"gpu", "cpu"} or match["platform"].startswith("cu")):
        problems.append(f"unknown platform tag {match['platform']!r}")
    return problems


def check_pins(instructions: list[Instruction], requirements: list[str]) -> list:
    """Every `name==version` the Dockerfile installs satisfies the project's own requirement."""
    declared = {}
    for line in requirements:
        requirement = Requirement(line)
        declared.setdefault(requirement.name.lower(), []).append(requirement.specifier)
    problems = []
    for instruction in instructions:
        if instruction.keyword != "RUN":
            continue
        for name, version in PIN.findall(instruction.text):
            for specifier in declared.get(name.lower(), []):
                if Version(version) not in specifier:
                    problems.append(f"Dockerfile pins {name}=={version}, project has {specifier}")
    return problems


def check_user(instructions: list[Instruction]) -> list:
    users = [i.text.split(":")[0] for i in instructions if i.keyword == "USER"]
    if not users:
        return ["no USER: the image would run as the base image's user, unchecked"]
    if users[-1] in {"0", "root"} or not users[-1].isdigit():
        return [f"final USER {users[-1]!r} must be a numeric non-root uid (runAsNonRoot)"]
    return []


def check_no_secrets(instructions: list[Instruction]) -> list:
    problems = []
    for instruction in instructions:
        if instruction.keyword in {"ARG", "ENV"}:
            names = re.findall(r"(?:^|\s)([A-Za-z_]\w*)(?==|\s|$)", instruction.text)
            problems += [
                f"{instruction.keyword} {n} looks like a secret"
                for n in names
                if SECRET_NAME.search(n)
            ]
        if instruction.keyword in {"COPY", "ADD"} and re.search(
            r"(^|\s|/)\.env\b|\.pem\b|\.key\b", instruction.text
        ):
            problems.append(f"{instruction.keyword} {instruction.text!r} copies a credentials file")
    return problems


def check_no_weights(instructions: list[Instruction]) -> list:
    return [
        f"{i.keyword} {i.text!r} would put model weights in the image"
        for i in instructions
        if i.keyword in {"RUN", "COPY", "ADD"} and WEIGHT_DOWNLOADS.search(i.text)
    ]


def copy_sources(instructions: list[Instruction]) -> list[str]:
    sources = []
    for instruction in instructions:
        if instruction.keyword == "COPY":
            words = [w for w in instruction.text.split() if not w.startswith("--")]
            sources += words[:-1]
    return sources


def dockerignore_allows(patterns: list[str], path: str) -> bool:
    """Whether a context path survives .dockerignore (last matching pattern wins; `!` re-includes;
    a pattern matching a parent directory matches everything below it)."""
    included = True
    parts = path.strip("/").split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for raw in patterns:
        negate = raw.startswith("!")
        pattern = raw[1:] if negate else raw
        pattern = pattern.strip("/")
        if pattern.startswith("**/"):
            hit = any(fnmatch(part, pattern[3:]) for part in parts)
        else:
            hit = any(fnmatch(prefix, pattern) for prefix in prefixes)
        if hit:
            included = negate
    return included


def read_dockerignore(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
