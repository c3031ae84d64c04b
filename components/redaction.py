"""Secrets never printed or recorded: credentials in URLs (user info, secret-named query or fragment parameters)
found and masked, and the values of the environment's secrets masked in any text. One place for every component that
prints, logs or records (specs' refusals, tracking, the local stack, the CLI)."""
from __future__ import annotations

import os
import re


# Credentials travel in a URL as user info (`scheme://user:secret@host`) or as query/fragment parameters (presigned
# S3/GCS URLs: X-Amz-Security-Token, X-Amz-Signature, X-Amz-Credential; SAS `sig`; OAuth `access_token`; `key`, ...).
# A parameter is one when a word of its name (split at non-alphanumerics, any case) is one of these.
SECRET_PARAM_WORDS = ("token", "sig", "signature", "key", "apikey", "secret", "password", "passwd", "pwd", "credential",
                      "credentials", "auth", "authorization", "accesstoken", "accesskey", "secretkey", "sessiontoken",
                      "securitytoken", "clientsecret", "privatekey", "idtoken", "refreshtoken")


def _any_case(word: str) -> str:
    return "".join(f"[{c.upper()}{c}]" if c.isalpha() else re.escape(c) for c in word)


_WORD = "(?:" + "|".join(_any_case(w) for w in sorted(SECRET_PARAM_WORDS, key=len, reverse=True)) + ")"
_PARAM = rf"(?:[^=&#;\s]*[^A-Za-z0-9=&#;\s])?{_WORD}(?:[^A-Za-z0-9=&#;\s][^=&#;\s]*)?"  # a parameter name holding one
_USERINFO = r"[A-Za-z][A-Za-z0-9+.-]*://[^/?#]*@"
SECRET_PARAM_RE = re.compile(rf"([?&#;]{_PARAM}=)[^&#;\s'\"]*")
# JSON-schema twin of `credentials_in_url` for the Prefect form and API (the server enforces it before storing a run):
# the same expressions, in the syntax JSON schema (ECMA-262) and Python share.
NO_URL_CREDENTIALS = rf"^(?!{_USERINFO})(?![\s\S]*[?&#;]{_PARAM}=)"


def credentials_in_url(value: str) -> bool:
    """Whether `value` carries credentials as a URL does (user info, or a secret-named query or fragment parameter):
    specs are stored and published."""
    return re.fullmatch(NO_URL_CREDENTIALS + r"[\s\S]*", value.strip()) is None


def redact_url(value: str) -> str:
    """`value` (a URL, or text holding URLs) with user info replaced by '***@' and secret parameters' values by '***',
    safe to print."""
    return SECRET_PARAM_RE.sub(r"\1***", re.sub(r"(?<=://)[^/?#\s]*@", "***@", value))


SECRET_ENV = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "PREFECT_API_KEY",
              "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")
_SECRET_ENV_RE = re.compile(r"(TOKEN|SECRET|PASSWORD|PASSWD|API_?KEY|PRIVATE_?KEY|SECRET_ACCESS_KEY)(_|$)", re.I)


def safe_uri(uri: str) -> str:
    """A URI without user:password@ and without query parameters (tokens travel there)."""
    return re.sub(r"(?<=://)[^/@?#]*@", "", uri).split("?", 1)[0].split("#", 1)[0]


def _secret_values() -> list[str]:
    names = set(SECRET_ENV) | {k for k in os.environ if _SECRET_ENV_RE.search(k)}
    return sorted({v for k in names if len(v := os.environ.get(k, "").strip()) >= 8}, key=len, reverse=True)


# Secrets recognisable by their shape wherever they come from: Hugging Face tokens, HTTP bearer credentials.
TOKEN_SHAPES = re.compile(r"(hf_[A-Za-z0-9]{8,}|Bearer\s+\S+)")


def scrub(text: str, *known: str | None) -> str:
    """`text` with every secret held in the environment and every `known` one (a token a store was given) replaced by
    '***', secrets of a known shape too, and the credentials in its URLs (user info, secret query parameters)."""
    for value in sorted({v for v in (*_secret_values(), *known) if v}, key=len, reverse=True):
        text = text.replace(value, "***")
    return redact_url(TOKEN_SHAPES.sub("***", text))
