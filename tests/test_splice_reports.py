"""studies/splice_reports.py: the docs' tables are the reports their commands wrote."""

import os
import subprocess
import sys

from studies import splice_reports

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPORT = (
  "# Report\n\nintro\n\n## Time to 0.85\n\n| a | 1 |\n\n### detail\n\nx\n\n## Time to 0.87\n\ny\n"
)


def test_docs_hold_the_reports_their_studies_wrote():
  texts = {}
  for doc in ("docs/RESULTS.md", "README.md"):
    with open(os.path.join(REPO, doc)) as f:
      texts[doc] = f.read()
    assert splice_reports.spliced(texts[doc]) == texts[doc], f"run splice_reports.py on {doc}"
  named = [block[1] for block in splice_reports.BLOCK.findall(texts["docs/RESULTS.md"])]
  assert "studies/results/study_outer/results.md" in named


def test_blocks_take_a_whole_report_or_one_section(tmp_path, monkeypatch):
  (tmp_path / "r.md").write_text(REPORT)
  monkeypatch.setattr(splice_reports, "REPO", str(tmp_path))
  doc = (
    "top\n<!-- report: r.md#Time to 0.85 -->\nold\n<!-- end report -->\nmiddle\n"
    "<!-- report: r.md -->\n<!-- end report -->\nend\n"
  )
  assert splice_reports.spliced(doc) == (
    "top\n<!-- report: r.md#Time to 0.85 -->\n| a | 1 |\n<!-- end report -->\n"
    f"middle\n<!-- report: r.md -->\n{REPORT}<!-- end report -->\nend\n"
  )
  assert splice_reports.section(REPORT, "Time to 0.87") == "\ny"
  assert splice_reports.section(REPORT, "Report") == "\nintro\n"  # down to the next heading


def test_stale_blocks_fail_check_and_bad_names_exit_2(tmp_path):
  def run(*args):
    command = [sys.executable, "studies/splice_reports.py", *args]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True)

  doc = tmp_path / "doc.md"
  doc.write_text("<!-- report: README.md#Documentation -->\nstale\n<!-- end report -->\n")
  assert run("--check", str(doc)).returncode == 1 and "stale" in doc.read_text()
  assert run(str(doc)).returncode == 0 and run("--check", str(doc)).returncode == 0
  assert "docs/RESULTS.md" in doc.read_text()  # README's Documentation section, copied
  for text, message in [("no/such.md", "no/such.md: no such file"), ("README.md#Nope", "'Nope'")]:
    doc.write_text(f"<!-- report: {text} -->\n<!-- end report -->\n")
    done = run(str(doc))
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr
