"""Secrets never leave the process: one place that redacts what is logged or written.

Three rules, applied by `redact` to any string, and through dicts and lists by
`redact_value` (`redact_mapping` also redacts by key name):

- a value whose key looks like a secret (`is_secret_name`: words such as `password`,
  `secret`, `token`, `api_key`, `access_key`, `credential`, `signature`) is replaced whole,
  in mappings and in `KEY=value` / `key: value` text;
- the userinfo of a URL (`s3://user:pass@bucket/x`, `https://tok@host`) and secret-named
  query parameters (`?token=...`, `X-Amz-Signature=...`) are replaced;
- the values of secret-named environment variables (AWS_SECRET_ACCESS_KEY, HF_TOKEN,
  MLFLOW_TRACKING_PASSWORD, ... of at least `MIN_SECRET_CHARS` characters) are replaced
  wherever they appear, even inside unrelated text.

Used by `components.tracking` for every MLflow param, tag, dataset input and logged
manifest, by the stage manifests (`components.manifest`), by input displays
(`components.ingest`) and, through the logging record factory (`install_log_redaction`,
installed by the flows and by every tracked run), by every log line: the console and the
logs Prefect ships to its API.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from typing import Any

MASK = "***"
MIN_SECRET_CHARS = 8

# Whole words of a key name that mark it secret (`max_new_tokens` is not: "tokens").
_SECRET_WORDS = frozenset({
    "password", "passwd", "secret", "token", "apikey", "credential", "credentials",
    "signature", "privatekey", "passphrase", "sessiontoken", "authorization",
})
# Pairs of consecutive words that do (`api_key`, `AWS_ACCESS_KEY_ID`, `private-key`).
_SECRET_PAIRS = frozenset({("api", "key"), ("access", "key"), ("secret", "key"),
                           ("private", "key"), ("client", "secret"), ("account", "key"),
                           ("sas", "token"), ("auth", "token"), ("auth", "string")})

_WORD = re.compile(r"[A-Z]?[a-z0-9]+|[A-Z]+(?![a-z])")
# scheme://userinfo@host: userinfo is everything up to the last @ before the path
_URL_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<userinfo>[^/\s@?#]+)@")
# ?name=value / &name=value
_QUERY = re.compile(r"(?P<sep>[?&;])(?P<key>[A-Za-z0-9_.\-]+)=(?P<value>[^&#\s'\"]*)")
# NAME=value, "name": "value", name: value (in log lines and error messages)
_ASSIGN = re.compile(
    r"(?P<key>\b[A-Za-z_][A-Za-z0-9_.\-]*)(?P<quote>['\"]?)(?P<op>\s*[=:]\s*)"
    r"(?P<value>\"[^\"]*\"|'[^']*'|[^\s'\",;}&)\]]+)")


def _words(name: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(name)]


def is_secret_name(name: str) -> bool:
    """True for key names that hold secrets: `AWS_SECRET_ACCESS_KEY`, `HF_TOKEN`,
    `translate.api_key`, `MLFLOW_TRACKING_PASSWORD`, `X-Amz-Signature`, `apiKey`."""
    if not name:
        return False
    last = str(name).rsplit(".", 1)[-1]  # a dotted param: the leaf decides
    words = _words(last)
    if not words:
        return False
    if any(w in _SECRET_WORDS for w in words):
        return True
    return any(pair in _SECRET_PAIRS for pair in zip(words, words[1:], strict=False))


def env_secrets(environ: Mapping[str, str] | None = None) -> list[str]:
    """The values of secret-named environment variables, longest first (so that a secret
    containing another is masked whole)."""
    env = os.environ if environ is None else environ
    values = {v for k, v in env.items() if is_secret_name(k) and v and
              len(v) >= MIN_SECRET_CHARS}
    return sorted(values, key=len, reverse=True)


def redact(text: Any, environ: Mapping[str, str] | None = None) -> Any:
    """`text` with every secret masked (see the module docstring); non-strings unchanged."""
    if not isinstance(text, str) or not text:
        return text
    for value in env_secrets(environ):
        if value in text:
            text = text.replace(value, MASK)
    text = _URL_USERINFO.sub(lambda m: f"{m['scheme']}{MASK}@", text)
    text = _QUERY.sub(lambda m: f"{m['sep']}{m['key']}={MASK}" if is_secret_name(m["key"])
                      else m[0], text)

    def assign(m: re.Match) -> str:
        value = m["value"]
        if not is_secret_name(m["key"]) or value.strip("'\"") in (MASK, ""):
            return m[0]
        quote = value[0] if value[0] in "'\"" else ""
        return f"{m['key']}{m['quote']}{m['op']}{quote}{MASK}{quote}"

    return _ASSIGN.sub(assign, text)


def redact_value(value: Any, environ: Mapping[str, str] | None = None) -> Any:
    """`value` (a str, or dicts / lists / tuples of them) with secrets masked; a dict entry
    whose key is secret-named loses its value whole."""
    if isinstance(value, str):
        return redact(value, environ)
    if isinstance(value, Mapping):
        return redact_mapping(value, environ)
    if isinstance(value, list | tuple):
        return type(value)(redact_value(v, environ) for v in value)
    return value


def redact_mapping(mapping: Mapping[Any, Any],
                   environ: Mapping[str, str] | None = None) -> dict[Any, Any]:
    """A copy of `mapping`: secret-named keys masked whole, every other value redacted."""
    out: dict[Any, Any] = {}
    for key, value in mapping.items():
        if isinstance(key, str) and is_secret_name(key) and value not in (None, ""):
            out[key] = MASK
        else:
            out[key] = redact_value(value, environ)
    return out


def _redact_record(record: logging.LogRecord) -> None:
    """Mask secrets in `record`'s message (arguments merged in) and exception text."""
    try:
        message = record.getMessage()
    except Exception:  # a malformed record: leave it to the handler's own error path
        return
    clean = redact(message)
    if clean != message:
        record.msg, record.args = clean, ()
    if record.exc_info and record.exc_info[0] is not None and not record.exc_text:
        text = logging.Formatter().formatException(record.exc_info)
        clean = redact(text)
        if clean != text:
            record.exc_text = clean  # formatters use the cached text, not the exception
    if record.stack_info:
        record.stack_info = redact(record.stack_info)


class RedactingFilter(logging.Filter):
    """A handler or logger filter that masks secrets in each record it sees."""

    def filter(self, record: logging.LogRecord) -> bool:
        _redact_record(record)
        return True


_INSTALLED: list[Any] = []


def install_log_redaction() -> None:
    """Mask secrets in every log record this process creates, from now on (idempotent).

    Wraps the logging record factory rather than adding filters to handlers: Prefect (and
    its test harness) reconfigure logging and replace their handlers (the API log handler
    that ships flow and task run logs to the server, the console), a factory survives
    that, and it sees records of every logger, third-party ones included."""
    if _INSTALLED:
        return
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        _redact_record(record)
        return record

    logging.setLogRecordFactory(factory)
    _INSTALLED.append(factory)
