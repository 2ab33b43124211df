"""Record what today's main computes for the recipes (run once, on main@71f8a94, before the one-engine change)."""
import hashlib, json, os, subprocess, sys, tempfile
import numpy as np

FASHION = "/usr/share/datasets/fashion-mnist"
ENV = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "OPENBLAS_CORETYPE": "Haswell",
       "NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR", "XPGRAD_OFFLINE": "1"}
CASES = {
    "default": ["--epochs", "2"],
    "notebook": ["--recipe", "notebook", "--epochs", "3"],
    "momentum-two-hidden-float64": ["--optimizer", "momentum", "--lr", "0.05", "--hidden", "64,32", "--dtype", "float64",
                                    "--batch-size", "500", "--epochs", "1", "--seed", "3"],
    "sgd-graph-on": ["--optimizer", "sgd", "--lr", "0.1", "--batch-size", "1000", "--epochs", "1", "--graph", "on"],
}

def digest(a):
    a = np.ascontiguousarray(a)
    return f"{a.dtype.str}{list(a.shape)}:" + hashlib.sha256(a.tobytes()).hexdigest()

out = {}
for name, args in CASES.items():
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "xpgrad.cli", "train", "--dataset", "fashion-mnist", "--data-dir", FASHION,
               "--device", "cpu", "--quiet", "--out", tmp, *args]
        proc = subprocess.run(cmd, env={**os.environ, **ENV}, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        with np.load(os.path.join(tmp, "checkpoint.npz")) as ck:
            params = {k[6:]: digest(ck[k]) for k in ck.files if k.startswith("param/")}
            optim = {k[6:]: digest(ck[k]) for k in ck.files if k.startswith("optim/")}
            metrics = json.loads(str(ck["metrics"]))
        for row in metrics:
            row.pop("seconds")
        out[name] = {"args": args, "params": params, "optimizer": optim, "metrics": metrics}
        print(name, metrics[-1])
json.dump({"commit": sys.argv[1], "env": ENV, "cases": out}, open(sys.argv[2], "w"), indent=1)
