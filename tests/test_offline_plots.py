"""`dvc plots show` renders offline once the project's template is installed."""

from __future__ import annotations

import re

from tasks.offline_plots import install_template
from tests.project import sh


def _remote_refs(html: str) -> list[str]:
    return re.findall(r"""(?:src|href)\s*=\s*["'](?:https?:)?//[^"']*""", html)


def test_dvc_plots_show_loads_no_remote_script(tmp_path):
    sh("git", "init", "-q", cwd=tmp_path)
    sh("dvc", "init", "-q", cwd=tmp_path)
    (tmp_path / "curve.csv").write_text("step,loss\n0,1.0\n1,0.6\n2,0.4\n")
    (tmp_path / "dvc.yaml").write_text("plots:\n  - curve.csv:\n      x: step\n      y: loss\n")

    sh("dvc", "plots", "show", "-o", "online", cwd=tmp_path)
    assert _remote_refs((tmp_path / "online" / "index.html").read_text())  # DVC's CDN page

    template = install_template(tmp_path)
    assert template.is_file()
    sh("dvc", "plots", "show", "-o", "offline", cwd=tmp_path)
    html = (tmp_path / "offline" / "index.html").read_text()
    assert _remote_refs(html) == []
    assert "vegaEmbed(" in html and "curve.csv" in html
    assert html.count("<script>") >= 3  # vega, vega-lite, vega-embed inlined
