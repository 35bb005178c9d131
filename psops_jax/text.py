"""Text for the language-model task: documents from a source, a fixed validation split, windows.

data.name = "text", data.source:
  fortunes   Debian's `fortunes` package (BSD licence): about 2.5 MB of English quotations, jokes
             and definitions in /usr/share/games/fortunes, one document per fortune. No download
             once installed (`apt-get install fortunes`; .ci/run installs it). The default.
  files      a UTF-8 text file, or a directory of them (data.dir): one document per file.
  tfds       the `text` feature of a TFDS data set's train split (data.tfds_name, e.g.
             tiny_shakespeare or lm1b): one document per example.
  synthetic  sentences drawn from a small vocabulary of words (seeded): for smoke tests and
             benchmarks without any text.

The documents keep their source order (files sorted by name). The validation split is fixed, the
same for every seed: an evenly spread `validation_fraction` of the documents (document i is held
out when floor((i + 1) f) > floor(i f)); a source of fewer than 1 / f documents holds out the last
f of its bytes instead. Each split is the UTF-8 bytes of its documents joined by a blank line, cut
into windows of `context` + 1 bytes with stride `context`: a window's first `context` bytes are the
inputs, its last `context` the targets (the next byte of each). Training windows keep text order
(the "contiguous" partition gives each particle a run of consecutive documents; "iid" shuffles the
windows between particles); the evaluation uses the first `eval_windows` validation windows.
"""

import os

import numpy as np

from psops_jax import errors

SOURCES = ("fortunes", "files", "tfds", "synthetic")
FORTUNES_DIR = "/usr/share/games/fortunes"
SEPARATOR = b"\n\n"
HOW_TO_GET_FORTUNES = (
  "on Debian/Ubuntu: apt-get install fortunes (puts the texts in /usr/share/games/fortunes), or "
  "use --config.data.source=files --config.data.dir=PATH with any UTF-8 text"
)
SYNTHETIC_WORDS = (
  "the a swarm of particles moves toward its best point and every worker sends what it learned "
  "to the others while the link is slow so they wait less and train more"
).split()


class TextError(errors.BadInput, ValueError):
  """Text that cannot be found, read or used; the message names the file and the fix."""


def read_document_file(path: str) -> str:
  """A UTF-8 file's text; TextError naming the file when it cannot be read or decoded."""
  try:
    with open(path, "rb") as f:
      raw = f.read()
  except OSError as e:
    raise TextError(f"cannot read text file {path}: {e.strerror or e}") from e
  try:
    return raw.decode("utf-8")
  except UnicodeDecodeError as e:
    raise TextError(f"{path} is not UTF-8 text (byte {e.start}: {e.reason})") from e


def fortune_documents(directory: str) -> list[str]:
  """The fortunes of a fortune directory: every file without an extension (the .dat indices and
  .u8 links are skipped), split on lines holding only '%'."""
  if not os.path.isdir(directory):
    raise TextError(
      f"data.source='fortunes': no directory {directory!r}. To get it: {HOW_TO_GET_FORTUNES}."
    )
  names = sorted(
    n for n in os.listdir(directory) if "." not in n and os.path.isfile(os.path.join(directory, n))
  )
  documents = []
  for name in names:
    text = read_document_file(os.path.join(directory, name))
    documents += [d.strip("\n") for d in text.split("\n%\n") if d.strip()]
  if not documents:
    raise TextError(f"data.source='fortunes': no fortune in {directory!r}. {HOW_TO_GET_FORTUNES}.")
  return documents


def file_documents(path: str) -> list[str]:
  """One document per UTF-8 file: `path` itself, or every file under the directory `path`
  (sorted, hidden files skipped)."""
  if not path:
    raise TextError("data.source='files' needs data.dir: a UTF-8 text file or a directory of them")
  if os.path.isfile(path):
    return [read_document_file(path)]
  if not os.path.isdir(path):
    raise TextError(f"data.dir={path!r}: no such file or directory (a UTF-8 text file or a folder)")
  paths = sorted(
    os.path.join(root, n)
    for root, _, names in os.walk(path)
    for n in names
    if not n.startswith(".")
  )
  if not paths:
    raise TextError(f"data.dir={path!r} holds no file")
  return [read_document_file(p) for p in paths]


def tfds_documents(name: str, directory: str | None) -> list[str]:
  """The `text` feature of every example of TFDS data set `name`'s train split."""
  try:
    import tensorflow_datasets as tfds
  except ImportError:
    raise TextError("data.source='tfds' needs tensorflow-datasets: pip install tensorflow-datasets")
  try:
    source = tfds.data_source(name, split="train", data_dir=directory, download=True)
    documents = [source[i]["text"] for i in range(len(source))]
  except Exception as e:
    raise TextError(f"data.tfds_name={name!r}: tfds could not load it ({e})") from e
  return [d.decode("utf-8", "replace") if isinstance(d, bytes) else str(d) for d in documents]


def synthetic_documents(seed: int, count: int = 400, words: int = 40) -> list[str]:
  """`count` documents of `words` words each from SYNTHETIC_WORDS, each word followed by one of
  its three successors in the list (so a model can learn the text)."""
  rng = np.random.RandomState(seed)
  documents = []
  for _ in range(count):
    i = rng.randint(len(SYNTHETIC_WORDS))
    chosen = []
    for _ in range(words):
      chosen.append(SYNTHETIC_WORDS[i])
      i = (i + 1 + rng.randint(3)) % len(SYNTHETIC_WORDS)
    documents.append(" ".join(chosen) + ".")
  return documents


def read_documents(source: str, directory: str, tfds_name: str, seed: int) -> list[str]:
  """The documents of `source` (see the module docstring)."""
  if source == "fortunes":
    return fortune_documents(os.path.expanduser(directory or FORTUNES_DIR))
  if source == "files":
    return file_documents(os.path.expanduser(directory))
  if source == "tfds":
    return tfds_documents(tfds_name, directory or None)
  if source == "synthetic":
    return synthetic_documents(seed)
  raise TextError(f"data.source={source!r}: accepted values for data.name='text' are {SOURCES}")


def held_out(count: int, fraction: float) -> np.ndarray:
  """Which of `count` documents the validation split holds: an evenly spread `fraction`."""
  i = np.arange(count)
  return np.floor((i + 1) * fraction) > np.floor(i * fraction)


def split_bytes(documents: list[str], fraction: float) -> tuple[bytes, bytes]:
  """(training bytes, validation bytes): the documents of each split joined by SEPARATOR, or, for
  fewer than 1 / fraction documents, the last `fraction` of all the bytes held out."""
  if len(documents) * fraction >= 1:
    held = held_out(len(documents), fraction)
    encoded = [d.encode("utf-8") for d in documents]
    join = lambda keep: SEPARATOR.join(d for d, h in zip(encoded, held) if h == keep)
    return join(False), join(True)
  raw = SEPARATOR.join(d.encode("utf-8") for d in documents)
  cut = len(raw) - int(round(fraction * len(raw)))
  return raw[:cut], raw[cut:]


def windows(raw: bytes, context: int) -> tuple[np.ndarray, np.ndarray]:
  """(inputs, targets), uint8 (n, context) each: n = (len(raw) - 1) // context windows of
  context + 1 bytes with stride `context`; targets are the inputs shifted by one byte."""
  data = np.frombuffer(raw, np.uint8)
  n = (len(data) - 1) // context
  starts = np.arange(n)[:, None] * context + np.arange(context + 1)[None, :]
  w = data[starts] if n else np.zeros((0, context + 1), np.uint8)
  return np.ascontiguousarray(w[:, :-1]), np.ascontiguousarray(w[:, 1:])


def unigram_bits_per_byte(raw: bytes) -> float:
  """The entropy of the byte frequencies of `raw` in bits per byte, H = -sum_b p_b log2 p_b: what
  a model that ignores context achieves at best (on the same text)."""
  counts = np.bincount(np.frombuffer(raw, np.uint8), minlength=256).astype(np.float64)
  p = counts[counts > 0] / counts.sum()
  return float(-(p * np.log2(p)).sum())


def check_text_fields(context: int, fraction: float, eval_windows: int) -> None:
  """ConfigError naming data.context, data.validation_fraction or data.eval_windows when out of
  range."""
  if not (errors.is_integer(context) and context >= 1):
    raise errors.ConfigError(f"data.context={context!r}: accepted values are integers >= 1")
  if not (errors.is_number(fraction) and 0 < fraction < 1):
    raise errors.ConfigError(
      f"data.validation_fraction={fraction!r}: accepted values are numbers in (0, 1)"
    )
  if not (errors.is_integer(eval_windows) and eval_windows >= 1):
    raise errors.ConfigError(
      f"data.eval_windows={eval_windows!r}: accepted values are integers >= 1"
    )


def load_text(
  source: str,
  directory: str,
  tfds_name: str,
  context: int,
  fraction: float,
  eval_windows: int,
  seed: int = 0,
):
  """(train inputs, train targets, validation inputs, validation targets, unigram bits per byte of
  the training bytes) of a text source: see the module docstring."""
  check_text_fields(context, fraction, eval_windows)
  documents = read_documents(source, directory, tfds_name, seed)
  train_raw, validation_raw = split_bytes(documents, fraction)
  train_x, train_y = windows(train_raw, context)
  val_x, val_y = windows(validation_raw, context)
  where = f"data.source={source!r}" + (f", data.dir={directory!r}" if directory else "")
  if len(val_x) == 0 or len(train_x) == 0:
    raise TextError(
      f"{where}: {len(train_raw)} training and {len(validation_raw)} validation bytes give no "
      f"window of data.context + 1 = {context + 1} bytes in one of them; use more text or a "
      "shorter data.context"
    )
  bits = unigram_bits_per_byte(train_raw)
  return train_x, train_y, val_x[:eval_windows], val_y[:eval_windows], bits
