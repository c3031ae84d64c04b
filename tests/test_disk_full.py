"""A full disk while the compressed checkpoint is written names the path and the free space (not a bare 'No space
left on device' from deep inside safetensors). The disk is a real one: a 256 KiB tmpfs, mounted in a private mount
namespace (`unshare`), so the test needs no privilege on the machine and leaves no mount behind."""
from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

CHILD = """
import sys
from pathlib import Path
from transformers import AutoModelForCausalLM, AutoTokenizer
from components.quantize import save
model_dir, out = sys.argv[1], Path(sys.argv[2])
model, tokenizer = AutoModelForCausalLM.from_pretrained(model_dir), AutoTokenizer.from_pretrained(model_dir)
try:
    save(model, tokenizer, out)
except OSError as e:
    print(type(e).__name__, e)
    sys.exit(3)
"""


def test_a_full_disk_while_saving_the_checkpoint_names_the_path_and_the_free_space(tiny_model, tmp_path):
    unshare = shutil.which("unshare")
    if unshare is None or subprocess.run([unshare, "-rm", "true"], capture_output=True).returncode != 0:
        pytest.skip("no private mount namespace here (unshare -rm): cannot make a small real disk")
    disk = tmp_path / "disk"
    disk.mkdir()
    out = disk / "tiny-w8a8.partial-0123"
    r = subprocess.run([unshare, "-rm", "sh", "-c", f'mount -t tmpfs -o size=256k tmpfs "{disk}" && '
                        f'exec "{sys.executable}" -c "$0" "{tiny_model}" "{out}"', CHILD],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 3, r.stdout + r.stderr
    assert (f"DiskFullError [Errno 28] no space left on device while writing the compressed checkpoint to {out} "
            f"(0.00 GiB free there now): free some space, or set QUANTFLOW_HOME to a larger disk") in r.stdout, r.stdout
