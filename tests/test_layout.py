"""The README's Layout section names every module of src/t3track where it is, so a newcomer's map
never lies (a module added, moved or removed without the README fails here)."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src" / "t3track"


def layout_sections() -> dict[str, str]:
    """folder ("cli", ..., "(base)") -> the text the README's Layout block gives it."""
    text = (REPO / "README.md").read_text()
    block = text.split("## Layout", 1)[1].split("```", 2)[1]
    sections: dict[str, str] = {}
    current = None
    for line in block.splitlines():
        found = re.match(r"^  (\(base\)|[a-z]+/)\s+(.*)$", line)
        if found:
            current = found.group(1).rstrip("/")
            sections[current] = found.group(2)
        elif current is not None and line.startswith("     "):
            sections[current] += " " + line.strip()
        else:
            current = None
    return sections


def test_the_readme_layout_names_every_module_in_its_folder():
    sections = layout_sections()
    missing = []
    for path in sorted(SRC.rglob("*.py")):
        relative = path.relative_to(SRC)
        folder = relative.parts[0] if len(relative.parts) > 1 else "(base)"
        name = path.stem
        if name == "__init__" and folder != "cli" and folder != "(base)":
            continue  # a package's own __init__ holds nothing a reader looks for
        if name == "__init__" and folder == "(base)":
            continue
        if not re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", sections.get(folder, "")):
            missing.append(str(relative))
    assert missing == [], f"README.md's Layout does not name: {missing}"



def test_the_readme_maps_every_test_file():
    text = (REPO / "README.md").read_text()
    tests_map = text.split("## Where the tests are", 1)[1].split("\n## ", 1)[0]
    missing = [path.stem for path in sorted((REPO / "tests").glob("test_*.py"))
               if not re.search(rf"`{path.stem}`", tests_map)]
    assert missing == [], f"README.md's test map does not name: {missing}"
