#!/usr/bin/env bash
# Write .dvc/plots/offline.html: the page `dvc plots show` fills (plots.html_template in
# .dvc/config), with vega, vega-lite and vega-embed inlined instead of loaded from a CDN, so that
# every plot renders without a network.  The versions are those DVC's own page loads.  Needs npm
# (the packages come from the npm registry); the result is committed, so users never run this.
set -euo pipefail
cd "$(dirname "$0")/.."
VERSIONS=(vega@5.20.2 vega-lite@5.2.0 vega-embed@6.18.2)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent "${VERSIONS[@]}" >/dev/null)
for t in "$tmp"/*.tgz; do mkdir -p "${t%.tgz}" && tar xzf "$t" -C "${t%.tgz}"; done
python3 - "$tmp" "${VERSIONS[@]}" <<'PY'
import sys
from pathlib import Path

tmp, versions = Path(sys.argv[1]), sys.argv[2:]
scripts = []
for spec in versions:
    name, version = spec.rsplit("@", 1)
    pkg = tmp / f"{name}-{version}" / "package"
    js = (pkg / "build" / f"{name}.min.js").read_text(encoding="utf8")
    assert "</script" not in js.lower(), name
    licence = (pkg / "LICENSE").read_text(encoding="utf8").strip().replace("*/", "* /")
    scripts.append(f"<script>\n/* {name} {version}, from the npm registry; its licence:\n{licence}\n*/\n{js}\n</script>")
page = """<!DOCTYPE html>
<html>
<head>
    {refresh_tag}
    <meta charset="utf-8">
    <title>DVC plots (offline)</title>
""" + "\n".join(scripts) + """
    <style>
        table { border-spacing: 15px; }
    </style>
</head>
<body>
    {plot_divs}
</body>
</html>
"""
out = Path(".dvc/plots/offline.html")
out.parent.mkdir(parents=True, exist_ok=True)
out.write_text(page, encoding="utf8")
print(f"{out}: {out.stat().st_size // 1024} KiB")
PY
