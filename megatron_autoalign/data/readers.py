"""Streaming input readers: a JSON array, JSONL, or Parquet (through the optional ``pyarrow``).

A reader yields ``(record_number, record, reason)``: ``reason`` is None for a record to parse, else why the
record is already known to be bad (e.g. "malformed_json"). Record numbers are 1-based: the position in
the JSON array or the Parquet file, or the line number in a JSONL file. The file is never loaded whole;
``bytes_read`` and ``size`` drive the progress display and ``sha256`` hashes the input as it streams.

What is fatal and what is skipped:
- JSONL: a line that is not JSON or not UTF-8 is one bad record (skipped, counted).
- JSON array: a syntax error cannot be resynchronized, so it is fatal, with the record number, line and
  column. A file that ENDS inside the array (a cut download) is fatal too, unless ``keep_truncated`` is set:
  then the complete records before the cut are kept and the cut one is counted as "truncated_record".
"""
from __future__ import annotations

import codecs
import hashlib
import json
import os
from typing import Iterator

from .conversations import DataError

PARQUET_MAGIC = b"PAR1"
TRUNCATED_FLAG = "--keep-truncated"


def load_record(raw):
    """(record, None) or (None, "malformed_json") for a record from a raw reader (JSON text, or an
    already-decoded object from Parquet). Workers call this, so parsing runs in parallel."""
    if not isinstance(raw, str):
        return raw, None
    try:
        return json.loads(raw), None
    except json.JSONDecodeError:
        return None, "malformed_json"


def open_reader(path: str, raw: bool = False, keep_truncated: bool = False, chunk_size: int = 1 << 20):
    """The reader for ``path``: Parquet by its magic bytes, otherwise JSON array or JSONL."""
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from None
    if magic == PARQUET_MAGIC:
        return ParquetReader(path)
    return InputReader(path, chunk_size=chunk_size, raw=raw, keep_truncated=keep_truncated)


class _Position:
    """Line and column of a character offset, across buffer refills (only the discarded text is scanned)."""

    def __init__(self):
        self.lines, self.col = 0, 0  # newlines before the buffer start; characters since the last one

    def discard(self, text: str) -> None:
        n = text.count("\n")
        self.lines += n
        self.col = len(text) - text.rfind("\n") - 1 if n else self.col + len(text)

    def at(self, buf: str, pos: int) -> str:
        head = buf[:pos]
        n = head.count("\n")
        col = pos - head.rfind("\n") if n else self.col + pos + 1
        return f"line {self.lines + n + 1}, column {col}"


class InputReader:
    """A JSON array (parsed incrementally with JSONDecoder.raw_decode over a buffered read) or JSONL.
    raw=True yields each record's JSON text instead of the object: cheaper to ship to worker processes."""

    def __init__(self, path: str, chunk_size: int = 1 << 20, raw: bool = False, keep_truncated: bool = False):
        self.path, self.chunk_size, self.raw, self.keep_truncated = path, chunk_size, raw, keep_truncated
        self.sha256 = hashlib.sha256()
        self.size = os.path.getsize(path)
        self.bytes_read = 0
        self.truncated = False  # set when keep_truncated kept the records before a cut

    def _byte_chunks(self) -> Iterator[bytes]:
        try:
            with open(self.path, "rb") as f:
                while raw := f.read(self.chunk_size):
                    self.sha256.update(raw)
                    self.bytes_read += len(raw)
                    yield raw
        except OSError as e:
            raise DataError(f"{self.path}: cannot read ({e.strerror})") from None

    def _text_chunks(self, byte_chunks) -> Iterator[str]:
        dec = codecs.getincrementaldecoder("utf-8")()
        newlines = 0
        for raw in byte_chunks:
            try:
                text = dec.decode(raw)
            except UnicodeDecodeError as e:
                line = newlines + e.object[:e.start].count(b"\n") + 1
                raise DataError(f"{self.path}: line {line}: not valid UTF-8 ({e.reason}, byte "
                                f"{self.bytes_read - len(raw) + e.start - (len(e.object) - len(raw))}); "
                                f"re-save the file as UTF-8") from None
            newlines += raw.count(b"\n")
            if text:
                yield text
        try:
            dec.decode(b"", final=True)
        except UnicodeDecodeError:
            raise DataError(f"{self.path}: line {newlines + 1}: not valid UTF-8 (the file ends inside a "
                            f"multi-byte character); re-save the file as UTF-8") from None

    def __iter__(self):
        self.sha256, self.bytes_read = hashlib.sha256(), 0
        chunks = self._byte_chunks()
        first = b""
        for first in chunks:
            if first.strip():
                break
        head = first.lstrip()
        if head.startswith(codecs.BOM_UTF8):
            head = head[len(codecs.BOM_UTF8):].lstrip()
            first = first[first.index(codecs.BOM_UTF8) + len(codecs.BOM_UTF8):]
        if head.startswith(b"["):
            yield from self._json_array(self._text_chunks(_prepend(first, chunks)))
        else:
            yield from self._jsonl(_prepend(first, chunks))

    # --- JSONL: one record per line; a bad line is one skipped record -------------------------------
    def _jsonl(self, chunks) -> Iterator:
        lineno, rest = 0, b""
        for chunk in chunks:
            *lines, rest = (rest + chunk).split(b"\n")
            for line in lines:
                lineno += 1
                if line.strip():  # blank lines are not records
                    yield self._line(lineno, line)
        if rest.strip():
            yield self._line(lineno + 1, rest)

    def _line(self, lineno: int, line: bytes):
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            return lineno, None, "not_utf8"
        if self.raw:
            return lineno, text, None
        record, reason = load_record(text)
        return lineno, record, reason

    # --- JSON array ------------------------------------------------------------------------------------
    def _json_array(self, chunks) -> Iterator:
        decoder, where = json.JSONDecoder(), _Position()
        buf = next(chunks)
        pos = buf.index("[") + 1
        recno, need_comma = 0, False
        while True:
            while pos < len(buf) and buf[pos] in " \t\r\n":  # whitespace and one separating comma
                pos += 1
            if pos < len(buf) and buf[pos] == "," and need_comma:
                pos, need_comma = pos + 1, False
                continue
            if pos >= len(buf):
                more = next(chunks, None)
                if more is None:
                    yield from self._cut(recno, where.at(buf, pos), inside=False)
                    return
                where.discard(buf[:pos])
                buf, pos = buf[pos:] + more, 0
                continue
            if buf[pos] == "]":
                break
            if need_comma:
                raise DataError(f"{self.path}: record {recno + 1}: malformed JSON at {where.at(buf, pos)} "
                                f"(expected ',' or ']' after record {recno})")
            try:
                obj, end = decoder.raw_decode(buf, pos)
            except json.JSONDecodeError as e:
                # A value cut at the end of the buffer may continue in the next chunk; an error earlier is a
                # syntax error, reported without reading the rest of the file.
                cut = e.msg.startswith("Unterminated string") or e.pos >= len(buf.rstrip()) - 64
                more = next(chunks, None) if cut else None
                if more is not None:
                    where.discard(buf[:pos])
                    buf, pos = buf[pos:] + more, 0
                    continue
                if cut and (e.msg.startswith("Unterminated string") or e.pos >= len(buf.rstrip())):
                    yield from self._cut(recno, where.at(buf, pos), inside=True)
                    return
                raise DataError(f"{self.path}: record {recno + 1}: malformed JSON at {where.at(buf, e.pos)} "
                                f"({e.msg})") from None
            # A bare number may be cut at a chunk border ("2." of "2.5"): accept it only when followed by , or ]
            if not isinstance(obj, (dict, list, str)) and buf[end:].lstrip()[:1] not in (",", "]"):
                more = next(chunks, None)
                if more is not None:
                    where.discard(buf[:pos])
                    buf, pos = buf[pos:] + more, 0
                    continue
            recno += 1
            start, pos, need_comma = pos, end, True
            record = buf[start:end] if self.raw else obj
            if pos > self.chunk_size:
                where.discard(buf[:pos])
                buf, pos = buf[pos:], 0
            yield recno, record, None
        tail = buf[pos + 1:] + "".join(chunks)
        if tail.strip():
            raise DataError(f"{self.path}: trailing data after the JSON array (at {where.at(buf, pos + 1)})")

    def _cut(self, recno: int, at: str, inside: bool):
        """The file ended before the closing "]": fatal, or (keep_truncated) keep what came before."""
        what = (f"the file ends inside record {recno + 1} (it starts at {at})" if inside
                else f"the file ends after record {recno} without the closing ']'")
        if not self.keep_truncated:
            raise DataError(f"{self.path}: {what}: the JSON array is cut off; pass {TRUNCATED_FLAG} to keep "
                            f"the {recno} complete records before the cut")
        self.truncated = True
        if inside:
            yield recno + 1, None, "truncated_record"


def _prepend(first: bytes, chunks) -> Iterator[bytes]:
    if first:
        yield first
    yield from chunks


class ParquetReader:
    """Parquet, one row group in memory at a time; each row is a record (nested columns become lists and
    dicts, so a `conversations` column of {from, value} structs reads like sharegpt JSON)."""

    raw = False
    truncated = False

    def __init__(self, path: str):
        self.path = path
        self.size = os.path.getsize(path)
        self.bytes_read = 0
        self.sha256 = hashlib.sha256()

    def __iter__(self):
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise DataError(f"{self.path}: a Parquet file; reading it needs pyarrow "
                            f"(pip install pyarrow, or the project's [parquet] extra)") from None
        try:
            pf = pq.ParquetFile(self.path)
        except Exception as e:  # pyarrow raises ArrowInvalid and friends for a damaged file
            raise DataError(f"{self.path}: not a readable Parquet file ({str(e).splitlines()[0][:200]})") from None
        meta, recno = pf.metadata, 0
        for g in range(pf.num_row_groups):
            rows = pf.read_row_group(g).to_pylist()
            group = meta.row_group(g)
            self.bytes_read += sum(group.column(c).total_compressed_size for c in range(group.num_columns))
            for rec in rows:
                recno += 1
                yield recno, rec, None
        self.bytes_read = self.size
        with open(self.path, "rb") as f:  # the manifest's input hash covers the file's bytes, as for JSON
            while block := f.read(1 << 20):
                self.sha256.update(block)
