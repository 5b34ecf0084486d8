"""The README's Python example runs as written (in a scratch folder)."""
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_readme_python_example_runs(tmp_path):
    text = (REPO / "README.md").read_text().split("## Python", 1)[1]
    code = re.findall(r"```python\n(.*?)```", text, flags=re.S)[0]
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0].strip() == "223"
    assert (tmp_path / "si.json").is_file()
