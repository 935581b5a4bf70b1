"""Production-log store: read JSONL / Parquet logs, map them onto LogRecord, quarantine bad rows.

Sources
    Local files, directories (every ``*.jsonl``, ``*.ndjson``, ``*.jsonl.gz`` and ``*.parquet`` below
    them) and glob patterns (``logs/2026-01-*.jsonl``, ``**`` allowed). Object storage goes through
    fsspec: ``s3://bucket/logs/*.parquet`` or ``gs://...`` work once the matching fsspec backend
    (s3fs, gcsfs) is installed and its credentials are in the environment; nothing else changes.
    DuckDB's httpfs extension is not used because installing it needs network access at run time.
    A file whose name does not say its format is sniffed (Parquet files start with ``PAR1``).

Column mapping (``logs.preset`` + ``logs.columns``)
    ``flywheel``: columns are named exactly as LogRecord's fields.
    ``openai_chat``: one row per chat completion, shaped like the OpenAI request and response merged::

        {"id": "chatcmpl-1", "created": 1767600000, "model": "qwen-0.5b+lora-3", "user": "u-42",
         "messages": [{"role": "system", "content": "..."}, {"role": "user", "content": "Hi"}],
         "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello!"}}],
         "usage": {"prompt_tokens": 9, "completion_tokens": 2},
         "session_id": "s-1", "latency_ms": 120.5, "feedback": 1, "correction": null, "metadata": {}}

    request_id <- id, ts <- created, user_id <- user, model_version <- model,
    prompt_tokens / completion_tokens <- usage.*, prompt <- the content of the *last* ``user``
    message in ``messages``, response <- the first of: ``choices[0].message.content``,
    ``response`` (a string, or a full response object with ``choices``), or the last message of
    ``messages`` when its role is ``assistant`` (transcripts logged with the reply appended).
    A content given as a list of parts (``[{"type": "text", "text": ...}]``) is joined with newlines.
    session_id, latency_ms, feedback, correction and metadata keep their own names.

    ``logs.columns`` overrides single fields on top of either preset: ``{user_id: customer,
    prompt_tokens: usage.input_tokens}``. Dotted paths reach into nested objects (JSON) or structs
    (Parquet); ``choices[0].message.content`` style indexes work too. The two special sources
    ``@last_user_message`` and ``@assistant_reply`` (the openai_chat rules above) can be named there
    as well. A column named in ``logs.columns`` that no row of a file has is an error that names the
    file; columns of the preset that are optional (session_id, latency_ms, ...) may simply be absent.
    Source columns that are not mapped are ignored.

Validation (one reason per rejected row, checked in this order)
    ``invalid_utf8``   the line (or a Parquet string value) is not valid UTF-8
    ``too_large``      the line is longer than ``logs.max_record_bytes`` (Parquet: its text and nested values)
    ``not_json``       the line is not JSON
    ``not_object``     JSON, but not an object
    ``missing_field``  a required field (request_id, ts, user_id, prompt, response, model_version)
                       is absent or null
    ``bad_timestamp``  ts is neither an ISO-8601 date/time (``Z`` or an offset; no offset means UTC)
                       nor an epoch number (seconds; values above 2e10 are milliseconds, as pydantic does),
                       or it falls outside 0001-01-01 .. 9999-12-31 UTC (what Python's datetime, and so
                       every consumer of the table, can hold). A leap second (``23:59:60``) is read as
                       the last microsecond of its minute (``23:59:59.999999``), keeping its day and week.
    ``wrong_type``     a field has the wrong JSON type: strings must be strings (an integer user id is
                       rejected, not converted), latency_ms a finite number (NaN, Infinity and numbers
                       beyond the double range such as 1e400 are rejected), token counts integers, metadata
                       an object (or a string holding one), feedback 1, -1, "up", "down" or null
                       (0 is rejected: on a 0/1 scale it would mean thumbs-down).
    Parquet columns are judged by their type the same way: text fields need text columns; ts takes a
    timestamp column (any unit; no time zone means UTC), a date, text or epoch numbers; metadata a
    struct/map or JSON text. A required column missing from a file's schema is an error naming the file.
    Rejected rows are written to a quarantine file (JSON Lines: ``source``, ``line`` (1-based line, or
    row number for Parquet), ``reason``, ``message``, ``bytes`` and ``raw``, the row's text truncated to
    ``logs.quarantine_raw_chars``). The raw text may hold PII, so it goes to that file only: exception
    messages never quote row content. Blank lines are skipped and not counted.
    Duplicate keys: a row that names a key twice (``{"prompt": "a", "prompt": "b"}``, also spelled with
    escapes) keeps the *first* value, for every field and in nested paths alike (DuckDB's reader; Python's
    json keeps the last). Rejecting such rows would cost a further parse of every line.
    Unreadable files: a file that raises while being read (a truncated Parquet file, a broken gzip
    stream, no permission) is set aside: ``LoadResult.unreadable_files`` names it with the error, a
    warning says so, the quarantine file gets one entry for it (``line`` null, reason
    ``unreadable_file``), and the other files load. Its rows are in none of the counts.

Late feedback
    Files named ``*.feedback.jsonl`` (FeedbackEvent lines: request_id, ts, feedback 1/-1, correction?,
    written by ``LogWriter.append_feedback`` for the model server's ``/feedback``) are not log rows: the
    loader joins them onto the loaded records by request_id (latest thumbs wins; a correction stays until
    a later one) and reports ``feedback`` {files, events, rejected, applied, unmatched} in the summary.

Counts
    ``read = accepted + quarantined`` always holds and is always reported. ``since``/``until``/
    ``model_version`` select which accepted rows land in ``LoadResult.table``; they do not change the
    three counts (``LoadResult.selected`` is the table's row count, ``filtered_out`` the rest).

Command line (flows/cli.py)
    ``flywheel logs validate PATH... [--quarantine FILE] [--strict]``: ``resolve_sources(paths,
    settings.logs, settings.workspace)``, then ``load_logs(files, settings.logs, quarantine=FILE or
    default_quarantine(settings, settings.workspace))``; print ``result.summary()`` (read, accepted,
    quarantined, reasons, ...); ``--strict`` exits 1 when anything was quarantined.
    ``flywheel logs stats PATH...``: the same load, then print ``log_stats(result)``.

Speed
    Nothing on the happy path loops over rows in Python. A JSONL file is read once into a numpy
    buffer and split into lines by numpy; the lines go to DuckDB as a zero-copy Arrow array; UTF-8
    is checked per file by Arrow (only a file that fails is searched, by halves, for its bad lines,
    which are then blanked in place). DuckDB's vectorised JSON functions read all mapped fields of a
    line in two passes (types, then text); a line shaped like an object (``{...}``) skips the separate
    validity pass, and if one turns out not to be JSON the query reruns with it. Parquet is read by
    pyarrow and validated by the same query levels. Accepted rows that are already in time order are
    returned as zero-copy slices. ``benchmarks/logs_throughput.py`` measures it.

Modules
    ``sources``   which files to read (files, folders, globs, URLs; format sniffing; the quarantine path)
    ``load``      ``load_logs`` / ``load_window`` / ``log_stats`` and the ``LoadResult`` they return
    ``spool``     ``spool_logs`` / ``spool_window``: the same load in bounded memory, file by file and chunk
                  by chunk, the window's rows spooled to Parquet and read back in window order
    ``writer``    ``LogWriter``, the append-only writer (one file per UTC day; feedback events beside it)
    ``feedback``  joining ``*.feedback.jsonl`` events onto the records at load time
    ``_mapping``  the column mapping as DuckDB SQL (presets, per-field plans, validation levels)
    ``_lines``    the numpy JSONL line splitter and the UTF-8 checks
    Time windows (``parse_time``, ``iso_week_window``, ``quarter_window``) are in ``tasks.windows``.
"""

from tasks.logs._mapping import FIELDS, PRESETS, REASONS, column_mapping
from tasks.logs.load import LoadResult, load_logs, load_window, log_stats
from tasks.logs.sources import default_quarantine, resolve_sources
from tasks.logs.writer import LogWriter

__all__ = [
    "FIELDS",
    "PRESETS",
    "REASONS",
    "LoadResult",
    "LogWriter",
    "column_mapping",
    "default_quarantine",
    "load_logs",
    "load_window",
    "log_stats",
    "resolve_sources",
]
