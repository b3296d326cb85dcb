"""`sagaz init` writes deployments on a machine without a database driver: it shares names and
settings with the local cluster, never a connection."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

# psycopg and psycopg_pool made unimportable, as on `pip install sagaz` without the extra.
_WITHOUT_DRIVER = """
import sys
sys.modules["psycopg"] = None
sys.modules["psycopg_pool"] = None
from sagaz.cli.app import main
code = main(sys.argv[1:])
assert "psycopg" not in {name.split(".")[0] for name, m in sys.modules.items() if m}
sys.exit(code)
"""


def test_init_needs_no_database_driver(tmp_path: Path) -> None:
    for args in (["--with-ha"], ["--k8s", "--with-ha"]):
        result = subprocess.run(
            [sys.executable, "-c", _WITHOUT_DRIVER, "init", "--dir", str(tmp_path), *args],
            capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
    assert (tmp_path / "docker-compose.yaml").exists()
    assert (tmp_path / "k8s" / "kustomization.yaml").exists()
