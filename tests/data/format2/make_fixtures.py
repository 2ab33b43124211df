"""Format-2 checkpoints written by main@71f8a94, for the one-engine change's compatibility tests."""
import os, shutil, subprocess, sys, json
from pathlib import Path
sys.path.insert(0, "/work/main")
from tests.cli_helpers import write_idx_folder

ENV = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "OPENBLAS_CORETYPE": "Haswell",
       "NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR", "XPGRAD_OFFLINE": "1", "PYTHONPATH": "/work/old"}
base = Path("/tmp/fix"); shutil.rmtree(base, ignore_errors=True)
data = write_idx_folder(base / "data")
dest = Path("/work/main/tests/data/format2"); shutil.rmtree(dest, ignore_errors=True); dest.mkdir(parents=True)
RUNS = {
    "default": ["--hidden", "8", "--batch-size", "32"],
    "notebook": ["--recipe", "notebook", "--hidden", "8"],
    "momentum": ["--optimizer", "momentum", "--lr", "0.05", "--hidden", "8,6", "--batch-size", "50", "--dtype", "float64"],
}
for name, args in RUNS.items():
    for epochs, fault in ((1, "epoch:saved#1=kill"), (2, "")):
        out = base / f"{name}-{epochs}"
        cmd = [sys.executable, "-m", "xpgrad.cli", "train", "--dataset", "idx", "--data-dir", str(data), "--epochs", "2",
               "--device", "cpu", "--quiet", "--out", str(out), *args]
        p = subprocess.run(cmd, env={**ENV, "XPGRAD_FAULT": fault} if fault else ENV, capture_output=True, text=True, cwd="/work/old")
        assert p.returncode == (-9 if fault else 0), (p.returncode, p.stderr)
        shutil.copy(out / "checkpoint.npz", dest / f"{name}-epoch{epochs}.npz")
    print(name, p.stdout.strip().splitlines()[-1])
json.dump({"commit": "71f8a94", "data": "tests.cli_helpers.write_idx_folder() defaults", "env": {k: ENV[k] for k in ("OPENBLAS_NUM_THREADS","OPENBLAS_CORETYPE","NPY_DISABLE_CPU_FEATURES")}, "runs": RUNS, "epochs": 2, "epoch1": "the same run killed (XPGRAD_FAULT=epoch:saved#1=kill) after its first checkpoint"},
          open(dest / "README.json", "w"), indent=1)
