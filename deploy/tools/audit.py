"""Known vulnerabilities in a locked requirements file, with pip-audit and PyPI's advisory data.

    python deploy/tools/audit.py deploy/docker/requirements.lock

Exit 0: no known vulnerability (or, said on stderr, no package could be audited because the
advisory source is out of reach: ``SKIPPED`` on the last line). Exit 1: vulnerabilities, one line
each. Exit 2: pip-audit itself failed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

UNREACHABLE = 3  # internal: every package was skipped


def audit(lock: Path) -> tuple[int, str]:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip_audit",
            "--require-hashes",
            "--disable-pip",
            "-f",
            "json",
            "-r",
            str(lock),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    try:
        report = json.loads(proc.stdout)
    except json.JSONDecodeError:
        return 2, f"pip-audit failed (exit {proc.returncode}): {proc.stderr.strip()[-500:]}"
    deps = report.get("dependencies", [])
    skipped = [d for d in deps if d.get("skip_reason")]
    found = [(d["name"], d["version"], v) for d in deps for v in d.get("vulns", [])]
    if found:
        lines = [
            f"{n} {ver}: {v['id']} (fixed in {', '.join(v.get('fix_versions', [])) or 'no release'})"
            for n, ver, v in found
        ]
        return 1, "\n".join(lines)
    if deps and len(skipped) == len(deps):
        return UNREACHABLE, f"SKIPPED: no package could be audited ({skipped[0]['skip_reason']})"
    return 0, f"no known vulnerabilities in {len(deps) - len(skipped)} packages ({len(skipped)} not audited)"


def main() -> int:
    code, text = audit(Path(sys.argv[1]))
    print(text, file=sys.stderr if code else sys.stdout)
    return 0 if code == UNREACHABLE else code


if __name__ == "__main__":
    sys.exit(main())
