"""Copy the reports that the studies wrote (results.md, time_to_accuracy.md, sensitivity tables)
into the docs, so that every table on docs/RESULTS.md is the one its command made.

A marked block in a markdown file

  <!-- report: studies/results/study_outer/results.md -->
  ...
  <!-- end report -->

is replaced by the named file (a path from the repository root), or by one section of it with
`path#heading` (the lines under that heading, down to the next heading). `--check` changes
nothing and exits 1 where a block differs from its report:

  python studies/splice_reports.py docs/RESULTS.md
  python studies/splice_reports.py --check docs/RESULTS.md
"""

import argparse
import os
import re
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BLOCK = re.compile(r"(<!-- report: ([^#\s]+)(?:#(.+?))? -->\n)(.*?)(<!-- end report -->)", re.S)
HEADING = re.compile(r"(#+) (.*)")


def section(text: str, heading: str) -> str:
  """The lines under the markdown heading `heading` (its text, without the #s), down to the next
  heading."""
  lines = text.splitlines()
  for start, line in enumerate(lines):
    found = HEADING.fullmatch(line)
    if found and found[2].strip() == heading:
      body = []
      for line in lines[start + 1 :]:
        if HEADING.fullmatch(line):
          break
        body.append(line)
      return "\n".join(body)
  raise KeyError(heading)


def report(path: str, heading: str | None) -> str:
  with open(os.path.join(REPO, path)) as f:
    text = f.read()
  return (section(text, heading) if heading else text).strip("\n") + "\n"


def spliced(doc: str) -> str:
  """`doc` with every marked block replaced by its report's current text."""
  return BLOCK.sub(lambda m: m[1] + report(m[2], m[3]) + m[5], doc)


def main(argv=None):
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawTextHelpFormatter
  )
  parser.add_argument("docs", nargs="+", help="markdown files with marked blocks")
  parser.add_argument("--check", action="store_true", help="exit 1 where a block is stale")
  args = parser.parse_args(argv)
  stale = []
  for path in args.docs:
    try:
      with open(path) as f:
        doc = f.read()
      new = spliced(doc)
    except FileNotFoundError as error:
      parser.error(f"{error.filename}: no such file")
    except KeyError as error:
      parser.error(f"{path}: no heading {error.args[0]!r} in a report it names")
    if new != doc:
      stale.append(path)
      if not args.check:
        with open(path + ".tmp", "w") as f:
          f.write(new)
        os.replace(path + ".tmp", path)
  if args.check and stale:
    print(f"stale report blocks in {', '.join(stale)}: run studies/splice_reports.py on them")
    sys.exit(1)


if __name__ == "__main__":
  main()
