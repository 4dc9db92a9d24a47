"""Form bodies (``application/x-www-form-urlencoded`` and ``multipart/form-data``)
parsed into plain values (sans-IO: bytes in, values out).

``parse_form`` takes the whole body, already bounded by the server's
``max_body``; it adds the per-file and per-part limits, and reports every
problem as a :class:`FormError` value (never an exception) carrying the status
to answer: 413 for a limit, 400 for a malformed body.

Multipart is parsed with ``python_multipart``'s streaming ``MultipartParser``,
driven through its callbacks, so a part over the limit stops the parse at once
rather than after the whole body was copied into parts.

Names, values, file names and content types stay ``bytes`` (Lua strings are
bytes; no charset is guessed).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, TypedDict

from python_multipart.exceptions import FormParserError, MultipartParseError
from python_multipart.multipart import MultipartParser, MultipartState, parse_options_header

from eightys.codec import url_decode

__all__ = ["Form", "FormError", "UploadedFile", "parse_form"]

URLENCODED = b"application/x-www-form-urlencoded"
MULTIPART = b"multipart/form-data"

# python_multipart logs a warning for every malformed body; clients choose
# those, so its parsers log to a logger of ours that only lets errors through
# (the outcome is reported as a FormError instead).
_PARSER_LOGGER = logging.getLogger("eightys.forms.multipart")
_PARSER_LOGGER.setLevel(logging.ERROR)


class UploadedFile(TypedDict):
    """One uploaded file: what the client called it, its declared type, the bytes."""

    filename: bytes
    content_type: bytes
    data: bytes
    size: int


@dataclass(slots=True)
class Form:
    """A parsed form.

    ``fields[name]`` is the first value sent for ``name``; ``multi[name]`` all of
    them in order (checkbox groups, ``<select multiple>``). Likewise ``files`` and
    ``multi_files`` for ``<input type=file multiple>``.
    """

    fields: dict[bytes, bytes] = field(default_factory=dict)
    multi: dict[bytes, list[bytes]] = field(default_factory=dict)
    files: dict[bytes, UploadedFile] = field(default_factory=dict)
    multi_files: dict[bytes, list[UploadedFile]] = field(default_factory=dict)

    def add_field(self, name: bytes, value: bytes) -> None:
        """Record one ``name=value`` pair (the first one wins in ``fields``)."""
        values = self.multi.get(name)
        if values is None:
            self.multi[name] = [value]
            self.fields[name] = value
        else:
            values.append(value)

    def add_file(self, name: bytes, upload: UploadedFile) -> None:
        """Record one uploaded file (the first one wins in ``files``)."""
        uploads = self.multi_files.get(name)
        if uploads is None:
            self.multi_files[name] = [upload]
            self.files[name] = upload
        else:
            uploads.append(upload)

    def to_lua_data(self) -> dict[bytes, Any]:
        """Plain data with bytes keys for ``LuaRuntime.to_lua``::

            {b"fields": {name: value}, b"multi": {name: [values]},
             b"files": {name: {b"filename", b"content_type", b"data", b"size"}},
             b"multi_files": {name: [file, ...]}}

        (lists become Lua arrays)."""
        def lua_file(upload: UploadedFile) -> dict[bytes, Any]:
            return {b"filename": upload["filename"], b"content_type": upload["content_type"],
                    b"data": upload["data"], b"size": upload["size"]}

        return {
            b"fields": dict(self.fields),
            b"multi": {k: list(v) for k, v in self.multi.items()},
            b"files": {k: lua_file(v) for k, v in self.files.items()},
            b"multi_files": {k: [lua_file(u) for u in v] for k, v in self.multi_files.items()},
        }


@dataclass(slots=True, frozen=True)
class FormError:
    """Why a body was refused, and the status to answer with (413 or 400)."""

    status: int
    reason: str


class _Abort(Exception):
    """Raised inside a parser callback to stop at the first violation."""

    def __init__(self, error: FormError) -> None:
        self.error = error


def parse_form(content_type: bytes, body: bytes, *, max_file_size: int,
               max_parts: int = 1000) -> Form | FormError:
    """Parse a request body according to its ``Content-Type``.

    * urlencoded: ``&``-separated pairs, ``+`` and ``%XX`` decoded (malformed
      escapes kept literally, as ``codec.url_decode`` does); a key without ``=``
      has the value ``b""``;
    * multipart/form-data: fields and files; a file part larger than
      ``max_file_size`` -> 413; more than ``max_parts`` parts (or pairs, for
      urlencoded) -> 413; no boundary, a part without a name, or a body that is not
      a complete multipart message -> 400. A file input left empty (empty
      ``filename`` and no data, which browsers still send) is not recorded.
    * anything else: an empty Form (the body is the handler's business).
    """
    ctype, params = parse_options_header(content_type)
    if ctype == URLENCODED:
        return _parse_urlencoded(body, max_parts)
    if ctype == MULTIPART:
        boundary = params.get(b"boundary")
        if not boundary:
            return FormError(400, "multipart/form-data without a boundary")
        return _parse_multipart(boundary, body, max_file_size, max_parts)
    return Form()


def _parse_urlencoded(body: bytes, max_parts: int) -> Form | FormError:
    form = Form()
    count = 0
    for pair in body.split(b"&"):
        if not pair:
            continue  # "a=1&&b=2", a trailing "&"
        count += 1
        if count > max_parts:
            return FormError(413, f"more than {max_parts} form fields")
        name, _, value = pair.partition(b"=")
        form.add_field(url_decode(name), url_decode(value))
    return form


def _parse_multipart(boundary: bytes, body: bytes, max_file_size: int,
                     max_parts: int) -> Form | FormError:
    form = Form()
    # State of the part being read; the closures below update it.
    header_name: list[bytes] = []
    header_value: list[bytes] = []
    part_headers: dict[bytes, bytes] = {}
    chunks: list[bytes] = []
    part: dict[str, Any] = {}
    parts = 0
    ended = False

    def on_part_begin() -> None:
        nonlocal parts
        parts += 1
        if parts > max_parts:
            raise _Abort(FormError(413, f"more than {max_parts} multipart parts"))
        part_headers.clear()
        chunks.clear()
        part.clear()

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header_name.append(data[start:end])

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header_value.append(data[start:end])

    def on_header_end() -> None:
        part_headers[b"".join(header_name).strip().lower()] = b"".join(header_value).strip()
        header_name.clear()
        header_value.clear()

    def on_headers_finished() -> None:
        disposition, options = parse_options_header(part_headers.get(b"content-disposition"))
        name = options.get(b"name")
        if disposition != b"form-data" or name is None:
            raise _Abort(FormError(400, "multipart part without a form-data name"))
        part["name"] = name
        part["filename"] = options.get(b"filename")
        part["size"] = 0

    def on_part_data(data: bytes, start: int, end: int) -> None:
        size = part["size"] + end - start
        part["size"] = size
        # Fields are bounded by max_body alone; files by max_file_size too.
        if part["filename"] is not None and size > max_file_size:
            raise _Abort(FormError(
                413, f"file {part['filename'].decode('utf-8', 'replace')!r} is larger "
                     f"than {max_file_size} bytes"))
        chunks.append(data[start:end])

    def on_part_end() -> None:
        data = b"".join(chunks)
        chunks.clear()
        if part["filename"] is None:
            form.add_field(part["name"], data)
        elif part["filename"] or data:
            form.add_file(part["name"], UploadedFile(
                filename=part["filename"],
                content_type=part_headers.get(b"content-type", b"application/octet-stream"),
                data=data, size=len(data)))

    def on_end() -> None:
        nonlocal ended
        ended = True

    try:
        parser = MultipartParser(boundary, callbacks={  # type: ignore[arg-type]
            "on_part_begin": on_part_begin, "on_part_data": on_part_data,
            "on_part_end": on_part_end, "on_header_field": on_header_field,
            "on_header_value": on_header_value, "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished, "on_end": on_end,
        })
        parser.logger = _PARSER_LOGGER
        parser.write(body)
        parser.finalize()
    except _Abort as exc:
        return exc.error
    except (MultipartParseError, FormParserError) as exc:
        return FormError(400, f"malformed multipart body: {exc}")
    # The parser accepts a truncated body without complaint (finalize() does not
    # check yet): a message that never reached its closing boundary is malformed.
    if not ended or parser.state != MultipartState.END:
        return FormError(400, "malformed multipart body: no closing boundary")
    return form
