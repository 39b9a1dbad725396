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
