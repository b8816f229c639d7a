"""The README's Python snippets, run as written against the tour's own
service (tests/peers/rep_service.py, tag `pc2`) and a pair on the tour's
default ports (5600, 5601), as a newcomer following the tour would."""
from __future__ import annotations

import ast
import re
import subprocess
import sys

from conftest import HERE, Process, Bridge, status, wait_until

README = (HERE.parent.parent / "README.md").read_text()
SERVICE = HERE.parent.parent / "tests" / "peers" / "rep_service.py"


def python_block(first_line: str) -> str:
    """The README's ```python block that starts with `first_line`."""
    for block in re.findall(r"```python\n(.*?)```", README, re.S):
        if block.startswith(first_line):
            return block
    raise AssertionError(f"no python block starting {first_line!r} in README.md")


def run(code: str) -> list:
    """Run `code` in a fresh interpreter (this venv's: zbridge installed);
    what it printed, each line a Python literal."""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=20)
    assert out.returncode == 0, out.stderr
    return [ast.literal_eval(line) for line in out.stdout.splitlines()]


def test_the_readme_python_snippets_run_as_written_against_the_tours_service(lab):
    service = lab.keep(Process([sys.executable, str(SERVICE), "--port=0", "--tag=pc2"], lambda l: l.startswith("ready ")))
    port = int(service.ready_line.split()[1])
    # The tour's pair: default ports, the service as pc2.
    flags = ["--main-pc-addr=", f"--pc2-addr=tcp://127.0.0.1:{port}"]
    lab.keep(Bridge(["--mode=active", *flags]))
    lab.keep(Bridge(["--mode=passive", *flags]))
    assert wait_until(lambda: status("tcp://127.0.0.1:5600").get("peer", {}).get("alive"), 10)

    printed = run(python_block("import json, zmq"))
    assert printed == [[b"pc2", b'{"target": "pc2", "text": "hello"}']], printed

    printed = run(python_block("import zbridge"))
    assert printed == [[b"pc2", b"hello"]], printed
