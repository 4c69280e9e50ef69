"""`make audit`: pip-audit over the installed environment; fails only on a known vulnerability.

pip-audit asks a vulnerability service (PyPI's JSON API by default) about every installed
distribution. Where that service cannot be reached (an offline CI, a mirror without the JSON
API), pip-audit audits nothing; then this says so in one line and does not fail the run, since
no finding is not the same as no vulnerability, and a closed network is not a defect of voxgate.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

TIMEOUT_S = 300


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        report_path = Path(tmp) / "audit.json"
        try:
            run = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pip_audit",
                    "--skip-editable",
                    "--progress-spinner=off",
                    "--format=json",
                    f"--output={report_path}",
                ],
                capture_output=True,
                text=True,
                timeout=TIMEOUT_S,
            )
        except subprocess.TimeoutExpired:
            print(f"pip-audit: no answer from the vulnerability service in {TIMEOUT_S}s; skipped")
            return 0
        report = json.loads(report_path.read_text()) if report_path.is_file() else {}
    dependencies = report.get("dependencies", [])
    vulnerable = [dep for dep in dependencies if dep.get("vulns")]
    for dep in vulnerable:
        for vuln in dep["vulns"]:
            fixes = ", ".join(vuln.get("fix_versions", [])) or "none yet"
            print(f"pip-audit: {dep['name']} {dep['version']}: {vuln['id']} (fixed in {fixes})")
    if vulnerable:
        return 1
    audited = [dep for dep in dependencies if "skip_reason" not in dep]
    if not audited:
        skipped = [str(dep["skip_reason"]) for dep in dependencies if "skip_reason" in dep]
        reason = (skipped or run.stderr.strip().splitlines() or ["no report"])[-1]
        print(
            f"pip-audit: vulnerability service not reachable from here, 0 of {len(dependencies)} "
            f"packages audited (last: {reason[:100]}); skipped"
        )
        return 0
    if run.returncode != 0:
        print(run.stderr, file=sys.stderr)
        return run.returncode
    print(f"pip-audit: no known vulnerabilities in {len(audited)} packages")
    return 0


if __name__ == "__main__":
    sys.exit(main())
