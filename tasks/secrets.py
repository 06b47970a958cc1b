"""Credentials never leave the process: masked wherever a URL is shown, `${VAR}` expanded late.

A URL may carry a password (`postgresql://user:pw@host/db`, `https://user:token@host/x.png`).
What is printed, logged, recorded in data/sources.csv or published as a Prefect artifact goes
through `mask_url`; a `${VAR}` reference in a params value is expanded only where the value
is used (`expand_env`), so the expanded text is in no params object, flow parameter or lock.
"""

from __future__ import annotations

import os
import re
from urllib.parse import urlsplit, urlunsplit

ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
MASK = "***"


class MissingVariable(ValueError):
    """A `${VAR}` reference to a variable that is not set."""


def mask_url(url: str) -> str:
    """`url` with the password of its user info replaced by ***; anything else unchanged."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:  # a malformed netloc (e.g. a bad port): show nothing of the user info
        return re.sub(r"//[^/@]*@", f"//{MASK}@", url)
    if password is None or not parts.netloc:
        return url
    user_info, _, host = parts.netloc.rpartition("@")
    user = user_info.partition(":")[0]
    return urlunsplit(parts._replace(netloc=f"{user}:{MASK}@{host}"))


def expand_env(text: str, what: str) -> str:
    """`text` with each `${VAR}` replaced by the variable's value; MissingVariable (one line,
    naming `what`) for one that is not set. Only the `${VAR}` form is expanded: a `$` elsewhere
    (e.g. inside a password that came from a variable) is left alone."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in os.environ:
            raise MissingVariable(f"{what}: ${{{name}}} is not set in the environment")
        return os.environ[name]

    return ENV_REFERENCE.sub(value, text)
