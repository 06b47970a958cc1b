"""`dvc plots show/diff` that render offline: a DVC HTML template with Vega inlined.

DVC's own page loads vega, vega-lite and vega-embed from a CDN, so offline a
user sees blank charts. The same releases DVC uses come from the npm registry
(`npm pack`, cached like the demo set) and are written into the template.
"""

from __future__ import annotations

import tarfile
from pathlib import Path

from tasks.files import write_bytes_atomic
from tasks.npm import cache_dir, npm_pack

# the versions dvc-render's page loads from its CDN
PACKAGES = {
    "vega": ("5.20.2", "build/vega.min.js"),
    "vega-lite": ("5.2.0", "build/vega-lite.min.js"),
    "vega-embed": ("6.18.2", "build/vega-embed.min.js"),
}
TEMPLATE = "plots/offline.html"  # under .dvc/, next to DVC's config

PAGE = """<!DOCTYPE html>
<html>
<head>
    {refresh_tag}
    <meta charset="utf-8">
    <title>DVC Plot</title>
    <!-- vega, vega-lite and vega-embed inlined from their npm packages: renders offline -->
    %s
    <style>
        table {
            border-spacing: 15px;
        }
    </style>
</head>
<body>
    {plot_divs}
</body>
</html>
"""


def _script(package: str) -> str:
    version, member = PACKAGES[package]
    tarball = npm_pack(package, version, cache_dir() / "npm")
    with tarfile.open(tarball) as tar:
        extracted = tar.extractfile(f"package/{member}")
        if extracted is None:
            raise RuntimeError(f"{tarball} has no {member}")
        code = extracted.read().decode("utf-8")
    # a literal "</script" inside the code would end the inline element early
    return "<script>" + code.replace("</script", "<\\/script") + "</script>"


def write_template(path: Path) -> Path:
    """The HTML template (dvc-render's placeholders) with the three libraries inlined."""
    scripts = "\n    ".join(_script(name) for name in PACKAGES)
    write_bytes_atomic(path, (PAGE % scripts).encode("utf-8"))
    return path


def install_template(root: Path) -> Path:
    """Write the template under .dvc/ and make it this clone's default (config.local)."""
    from dvc.repo import Repo

    path = write_template(root / ".dvc" / TEMPLATE)
    with Repo(str(root)) as repo, repo.config.edit("local") as conf:
        conf["plots"]["html_template"] = TEMPLATE  # relative paths resolve against .dvc/
    return path
