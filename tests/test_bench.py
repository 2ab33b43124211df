"""The GPU benchmarks' code, checked on the CPU: summary.json's schema, the in-turns runner,
and every implementation's training step against xpgrad's (no timing is asserted here)."""

import argparse
import collections
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from bench import e2e, gpu_epoch, scaling, softmax_log, steps, summary, tensor_epoch, torch_variants, turns
from xpgrad import Tensor, backend, functional, no_grad
from xpgrad.graphstep import GraphStep
from xpgrad.training import Config, Trainer

ROOT = Path(__file__).resolve().parent.parent
TORCH_IMPLS = "xpgrad_eager,torch_eager,torch_graph"


def fake_results():
    """What the benchmarks of one GPU check would have written, with made-up figures."""
    epoch_ms = dict(zip(summary.IMPLS, (31.0, 400.0, 550.0, 40.0, 45.0, 90.0, 30.0)))
    rows = [("lsm fwd", 2**20, 0.72), ("xent bwd", 2**22, 0.71), ("relu bwd", 2**20, 0.5), ("lsm fwd", 128, 0.1)]
    return {
        "steps": [{"step": "gpu_epoch", "status": "pass", "seconds": 90, "note": "exit=0"}],
        "gpu_epoch": {"machine": {"gpu": {"name": "NVIDIA H200"}}, "summary": {
            "epoch_ms": epoch_ms, "step_us": {k: v * 1e3 / 469 for k, v in epoch_ms.items()},
            "kernels_per_step": {"xpgrad_graph": 14, "torch_eager": 30},
            "graph_vs_eager_max_rel_param_diff": 0.0, "notes": []}},
        "gpu_kernels": {"results": [{"kernel": k, "rows": n, "copy_share": {"fused": s, "torch": 0.9}}
                                    for k, n, s in rows]},
        "e2e": {"xpgrad": {"seconds": 2.5, "test_accuracy": 0.8912}, "torch": {"seconds": 12.0, "test_accuracy": 0.89},
                "notes": []},
    }


# ---------------------------------------------------------------------------
# summary.json


def test_summary_from_results_keeps_the_schema():
    s = summary.build_summary(fake_results(), date="2026-11-27T00:00:00Z", commit="abc")
    assert summary.validate(s) == []
    assert list(s) == list(summary.SCHEMA)
    assert s["device"] == "NVIDIA H200" and s["commit"] == "abc"
    assert s["row_kernels_copy_share_min"] == 0.71  # row kernels at >= 1e6 rows only; ReLU is not one
    assert s["epoch_ms"]["jax_scan"] == 30.0 and s["kernels_per_step"] == {"xpgrad_graph": 14, "torch_eager": 30}
    assert s["e2e_test_accuracy"]["xpgrad"] == 0.8912


def test_summary_of_failed_steps_is_all_null_and_explained():
    results = {"steps": [{"step": "gpu_epoch", "status": "timeout", "seconds": 140, "note": "exit=124"}]}
    s = summary.build_summary(results, date="d", commit="c")
    assert summary.validate(s) == []
    assert set(s["epoch_ms"].values()) == {None} and s["e2e_seconds"] == {"xpgrad": None, "torch": None}
    assert any("gpu_epoch step ended timeout" in n for n in s["notes"])


@pytest.mark.parametrize("breakage, complaint", [
    (lambda s: s["epoch_ms"].update(jax_scan=None), "epoch_ms.jax_scan is null without a note"),
    (lambda s: s["epoch_ms"].pop("torch_graph"), "epoch_ms: keys"),
    (lambda s: s.update(extra=1), "summary: keys"),
    (lambda s: s["kernels_per_step"].update(xpgrad_graph=13.5), "kernels_per_step.xpgrad_graph: expected int"),
    (lambda s: s.update(commit=None), "commit: expected str"),
    (lambda s: s["notes"].append(3), "notes: 3 is not a string"),
    (lambda s: s["notes"].append("step_us is explained here: no, not by its path"), "step_us.torch_eager is null"),
])
def test_validate_names_each_break(breakage, complaint):
    s = summary.build_summary(fake_results(), date="d", commit="c")
    if "step_us.torch_eager" in complaint:
        s["step_us"]["torch_eager"] = None
    breakage(s)
    assert any(complaint in p for p in summary.validate(s)), summary.validate(s)


def test_summary_command_writes_both_files(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    results = fake_results()
    for label in ("gpu_epoch", "gpu_kernels", "e2e"):
        (work / f"{label}.json").write_text(json.dumps(results[label]))
    (work / "steps.txt").write_text("gpu_epoch pass 90 exit=0\ne2e fail 3 exit=1\n")
    out = tmp_path / "out"
    out.mkdir()
    code = summary.main(["--work", str(work), "--results", str(out / "results.json"),
                         "--summary", str(out / "summary.json")])
    assert code == 0
    written = json.loads((out / "summary.json").read_text())
    assert summary.validate(written) == [] and written["epoch_ms"]["xpgrad_graph"] == 31.0
    assert json.loads((out / "results.json").read_text())["steps"][1] == {
        "step": "e2e", "status": "fail", "seconds": 3, "note": "exit=1"}


@pytest.mark.parametrize("content, why", [('{"summary": {"epoch_ms": {"xpgrad_gr', "JSONDecodeError"),
                                           ("\x00\xff garbage", "Decode"), ("[1, 2]", "not an object"),
                                           ('{"summary": {"notes": []}}', "no 'epoch_ms' in it")])
def test_a_broken_step_json_loses_only_its_own_figures(tmp_path, content, why):
    """A gpu_epoch.json cut short by a kill (or not JSON, or not the JSON the summary reads): its figures are
    null with a note saying why, and the other steps' figures are kept."""
    work, results = tmp_path / "work", fake_results()
    work.mkdir()
    (work / "gpu_epoch.json").write_bytes(content.encode("latin-1"))
    for label in ("gpu_kernels", "e2e"):
        (work / f"{label}.json").write_text(json.dumps(results[label]))
    (work / "steps.txt").write_text("gpu_epoch timeout 130 exit=124\ngpu_kernels pass 20 exit=0\ne2e pass 30 exit=0\n")
    code = summary.main(["--work", str(work), "--results", str(tmp_path / "results.json"),
                         "--summary", str(tmp_path / "summary.json")])
    written = json.loads((tmp_path / "summary.json").read_text())
    assert code == 0 and summary.validate(written) == []
    assert set(written["epoch_ms"].values()) == {None} and written["kernels_per_step"]["xpgrad_graph"] is None
    assert written["row_kernels_copy_share_min"] == 0.71 and written["e2e_seconds"]["xpgrad"] == 2.5
    note = next(n for n in written["notes"] if n.startswith("epoch_ms"))
    assert "gpu_epoch step's JSON could not be read" in note and why in note
    assert why in json.loads((tmp_path / "results.json").read_text())["unreadable"]["gpu_epoch"]


def test_gpu_check_script_parses():
    assert subprocess.run(["bash", "-n", str(ROOT / "bench" / "gpu_check.sh")]).returncode == 0


def run_gpu_check(tmp_path, **env):
    """bench/gpu_check.sh as a GPU session runs it, its output folder as (tables.md sections, results, summary)."""
    out = tmp_path / "out"
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("GPU_CHECK_")}
    full_env.update({"OUT": str(out), "PYTHONPATH": str(ROOT), "XPGRAD_COMMIT": "test", "PYTHON": sys.executable,
                     "XPGRAD_GPU_DATA": str(tmp_path / "no-data"), **env})
    proc = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh")], cwd=ROOT, env=full_env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    sections = {}
    for part in (out / "tables.md").read_text().split("\n## ")[1:]:
        head, _, body = part.partition("\n")
        name, _, status = head.partition(": ")
        assert name not in sections, f"two headings for {name}"
        sections[name] = (status, [line for line in body.splitlines() if line.strip()])
    results = json.loads((out / "results.json").read_text())
    written = json.loads((out / "summary.json").read_text())
    assert summary.validate(written) == []
    assert [s["step"] for s in results["steps"]] == results["plan"]["order"] == [n for n in sections if n != "summary"]
    return sections, results, written


def test_the_gpu_checks_time_limits_fit_its_budget_with_the_summarys_inputs_first(tmp_path):
    _, results, _ = run_gpu_check(tmp_path, GPU_CHECK_DRY_RUN="1", GPU_CHECK_BUDGET="0")
    plan = results["plan"]
    assert plan["limits"] + plan["margin"] <= 450  # the default budget, of the caller's 480 s
    order = plan["order"]
    assert order.index("gpu_epoch") < order.index("e2e") < order.index("gpu_kernels") < order.index("pytest-gpu")
    assert order.index("pytest-gpu") < min(order.index("scaling"), order.index("tensor_epoch"))


@pytest.mark.skipif(backend.gpu_available(), reason="a dry run needs a machine without a usable GPU")
def test_the_gpu_check_dry_run_skips_every_gpu_step_with_its_reason(tmp_path):
    start = time.monotonic()
    sections, results, written = run_gpu_check(tmp_path, GPU_CHECK_DRY_RUN="1")
    assert time.monotonic() - start < 60
    assert results["plan"]["dry_run"] is True and results["plan"]["order"][2:4] == ["gpu_epoch", "e2e"]
    for step in results["steps"]:
        assert step["status"] == "skipped", step
        why = "no data at" if step["step"] == "e2e" else "dry run: "
        assert step["note"].startswith(why) and sections[step["step"]][0].startswith(f"skipped ({why}")
        assert len(sections[step["step"]][1]) == 1, sections[step["step"]]  # the command, no output
    assert set(written["epoch_ms"].values()) == {None} and written["commit"] == "test"
    assert any(n.startswith("epoch_ms") and "gpu_epoch step was skipped (dry run: no GPU" in n
               for n in written["notes"])


STAND_IN_PYTHON = """#!/bin/sh
# A stand-in interpreter for bench/gpu_check.sh: every module run with -m prints one table line that names it;
# gpu_epoch leaves a JSON cut short; bench.summary is the real one.
module=""; json=""; previous=""
for a in "$@"; do
    [ "$previous" = "-m" ] && module=$a
    [ "$previous" = "--json" ] && json=$a
    previous=$a
done
[ "$module" = bench.summary ] && exec {python} "$@"
echo "| $module | stand-in |"
[ "$module" = bench.gpu_epoch ] && printf '{{"summary": {{"epoch_ms": ' >"$json"
exit 0
"""


def test_gpu_check_puts_each_steps_tables_under_its_own_heading(tmp_path):
    """With stand-ins for the GPU's commands: a step skipped after one that printed tables gets none of them,
    and a step's cut-short JSON costs only its own figures."""
    bin_dir, data = tmp_path / "bin", tmp_path / "data"
    bin_dir.mkdir()
    data.mkdir()
    (bin_dir / "python").write_text(STAND_IN_PYTHON.format(python=sys.executable))
    (bin_dir / "nvidia-smi").write_text("#!/bin/sh\necho 'a stand-in GPU'\n")
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    sections, results, written = run_gpu_check(
        tmp_path, PYTHON=str(bin_dir / "python"), PATH=f"{bin_dir}:{os.environ['PATH']}",
        XPGRAD_GPU_DATA=str(data), GPU_CHECK_SKIP="gpu_kernels")
    ran = {"gpu_epoch", "e2e", "scaling", "tensor_epoch"}
    for name in ran:
        assert sections[name][0].startswith("pass") and f"| bench.{name} | stand-in |" in sections[name][1]
        assert [line for line in sections[name][1] if line.startswith("|")] == [f"| bench.{name} | stand-in |"]
    assert sections["gpu_kernels"] == ("skipped (named in GPU_CHECK_SKIP)", ["`bench.gpu_kernels`"])
    assert sections["pytest-gpu"][0].startswith("pass") and not any("|" in line for line in sections["pytest-gpu"][1])
    assert "JSONDecodeError" in results["unreadable"]["gpu_epoch"]
    assert any("gpu_epoch step's JSON could not be read" in n for n in written["notes"])


def test_gpu_check_skips_every_step_once_the_budget_is_spent(tmp_path):
    sections, results, written = run_gpu_check(tmp_path, GPU_CHECK_DRY_RUN="1", GPU_CHECK_BUDGET="24")
    timed = [s for s in results["steps"] if s["step"] != "e2e"]  # e2e: skipped for its data before its time
    assert {s["status"] for s in timed} == {"skipped"}
    assert all(s["note"].startswith("time budget spent") for s in timed)
    assert all(sections[s["step"]][0].startswith("skipped (time budget spent") for s in timed)
    assert any("gpu_epoch step was skipped (time budget spent" in n for n in written["notes"])


# ---------------------------------------------------------------------------
# The runner


class SlowWarmup:
    """An implementation whose warm-up never ends (a compile that hangs)."""

    name, steps_per_epoch, bounded = "slow", 1, True

    def warmup(self):
        end = time.monotonic() + 30
        while time.monotonic() < end:
            time.sleep(0.01)

    def sync(self):
        pass


def test_a_bounded_warmup_is_cut_and_the_others_go_on():
    class Quick(SlowWarmup):
        bounded = False

        def warmup(self):
            pass

        def epoch(self):
            return {"train_loss": 1.0, "train_accuracy": 0.5}

        def params(self):
            return {"W1": np.ones(2)}

    records = turns.run_in_turns({"slow": SlowWarmup(), "quick": Quick()}, repeats=2, compile_limit=0.3, reserve=0)
    assert records["slow"]["status"] == "failed" and "took longer than" in records["slow"]["note"]
    assert records["slow"]["warmup_seconds"] < 10
    assert records["quick"]["status"] == "ok" and len(records["quick"]["epochs"]) == 2


def test_a_timeout_swallowed_inside_the_warmup_still_ends_it():
    """A compiler that catches the TimeoutError and carries on must not pass for a finished warm-up."""
    with pytest.raises(TimeoutError, match="caught inside"):
        with turns.time_limit(0.1, "swallowing warm-up"):
            try:
                time.sleep(5)
            except TimeoutError:
                pass


def test_no_compile_starts_without_time_left():
    records = turns.run_in_turns({"slow": SlowWarmup()}, repeats=1, deadline=turns.Deadline(5), reserve=10)
    assert records["slow"]["status"] == "skipped" and "no time left" in records["slow"]["note"]


def test_max_relative_difference_is_per_array_scale():
    ref = {"W": np.array([10.0, -20.0]), "b": np.array([1e-3, 0.0])}
    assert turns.max_relative_difference(ref, ref) == 0.0
    assert turns.max_relative_difference({"W": np.array([10.0, -19.0]), "b": ref["b"]}, ref) == pytest.approx(0.05)
    assert turns.max_relative_difference({"W": ref["W"], "b": np.array([2e-3, 0.0])}, ref) == pytest.approx(1.0)


def test_kernel_nodes_are_counted_from_a_graph_dump():
    dot = """digraph dot {
subgraph cluster_1 {
label="graph_1" graph[style="dashed"];
"graph_1_node_0"[style="solid" shape="record" label="{KERNEL\\n| {ID | 0 | xpgrad_relu_bwd}}"];
"graph_1_node_1"[style="solid" shape="record" label="{MEMSET\\n| {ID | 1}}"];
"graph_1_node_2"[style="solid" shape="record" label="{KERNEL\\n| {ID | 2 | sgemm}}"];
"graph_1_node_0" -> "graph_1_node_2";
}
}"""
    counted = steps.count_nodes(dot)
    assert counted["kernels"] == 2 and counted["node_types"] == {"KERNEL": 2, "MEMSET": 1}
    assert counted["nodes"] == [["KERNEL", "xpgrad_relu_bwd"], ["MEMSET", ""], ["KERNEL", "sgemm"]]
    assert counted["by_owner"] == {"xpgrad": 1, "cublas": 1, "cublas_reduce": 0, "cupy": 0, "other": 0}


def test_the_nodes_of_a_real_graph_dump_are_read_with_their_names():
    """The head of the default step's graph as the H200 recorded it (turn 2): its nodes in the verbose format
    of CUDA 13 (the dump is cut inside the fourth node, which is not counted)."""
    recorded = json.loads((ROOT / "bench/results/gpu-h200-2026-11-27-graph/results.json").read_text())
    counted = steps.count_nodes(recorded["gpu_epoch"]["launches"]["fused (graph nodes)"]["dot_head"])
    assert counted["nodes"] == [["KERNEL", "cupy_take"], ["KERNEL", "cupy_take"], ["MEM_ALLOC", ""]]
    assert counted["by_owner"]["cupy"] == 2 and counted["node_types"] == {"KERNEL": 2, "MEM_ALLOC": 1}
    assert "2 kernel nodes (2 cupy); other nodes: MEM_ALLOC 1" in steps.describe_nodes(counted)


@pytest.mark.parametrize("name, owner", [
    ("xpgrad_softmax_xent_step_float32_int32", "xpgrad"), ("cupy_add", "cupy"), ("cupy_sum", "cupy"),
    ("_ZN7cutlass7Kernel2I42cutlass_80_simt_sgemm_128x32_8x5_nn_align1EEvNT_6ParamsE", "cublas"),
    ("_Z20splitKreduce_kernelILi32ELi16EiffffLb1ELb0ELb0EEv18cublasSplitKParamsIT4_EPKT2_S5_PS2_PKS3_S8_",
     "cublas_reduce"),
    ("nvjet_tst_64x8_64x16_4x1_v_bz_TNT", "cublas"), ("sm90_xmma_gemm_f32f32_tf32f32_f32_tn_n", "cublas"),
    ("some_other_kernel", "other")])
def test_kernels_are_put_down_to_their_owners(name, owner):
    assert steps.kernel_owner(name) == owner


def test_the_cpu_launch_count_speaks_the_same_words():
    """tests/launch_count.py's names of the default step: 5 xpgrad kernels, 5 cuBLAS gemms, 2 CuPy kernels."""
    from .test_graphstep import DEFAULT_STEP

    owners = collections.Counter(steps.kernel_owner(name) for name in DEFAULT_STEP)
    assert owners == {"xpgrad": 5, "cublas": 5, "cupy": 2}
    assert steps.xpgrad_kernel("xpgrad_gather_batch_float32_int64") == "xpgrad_gather_batch"


class RecordingTrainer:
    """What compare_gemm_settings needs of a Trainer, with a graph that says which environment it was made in."""

    batch_size, n_train = 2, 4

    def __init__(self, fail=False):
        self.seen = dict(os.environ)
        self.calls, self.fail = [], fail
        self.batches = type("B", (), {"begin_epoch": lambda self, order: None})()
        self.device = type("D", (), {"synchronize": lambda self: None})()

    def _training_steps(self):
        return [lambda: self.calls.append(1)]

    def captured_graphs(self):
        if self.fail:
            return []
        kernel = "splitKreduce_kernel" if "XPGRAD_CUBLAS_WORKSPACE" not in self.seen else "sgemm"
        dot = f'"n0"[shape="record" label="{{KERNEL\\n| {{ID | 0 | {kernel}}}}}"];'
        return [type("G", (), {"debug_dot_str": lambda self, flags: dot})()]


def test_the_gemm_settings_are_recorded_each_in_its_environment(monkeypatch, capsys):
    monkeypatch.delenv("XPGRAD_CUBLAS_WORKSPACE", raising=False)
    notes = []
    out = steps.compare_gemm_settings(RecordingTrainer, 1, notes)
    assert list(out) == list(steps.GEMM_SETTINGS) and notes == []
    assert out["default"]["nodes"]["by_owner"]["cublas_reduce"] == 1
    assert out["workspace 16 KiB"]["nodes"]["by_owner"] == {**dict.fromkeys(steps.OWNERS, 0), "cublas": 1}
    assert "XPGRAD_CUBLAS_WORKSPACE" not in os.environ and "XPGRAD_GEMM_ALGO" not in os.environ
    gpu_epoch.report_gemm_settings(json.loads(json.dumps(out)))  # as the GPU run prints it
    printed = capsys.readouterr().out
    assert "| workspace 16 KiB | XPGRAD_CUBLAS_WORKSPACE=16384 | 1 | cublas 1 | none |" in printed
    assert "note: graph nodes, default: 1 kernel nodes (1 cublas_reduce)" in printed
    out = steps.compare_gemm_settings(lambda: RecordingTrainer(fail=True), 1, notes)
    assert out == {} and len(notes) == len(steps.GEMM_SETTINGS) and "recorded no graph" in notes[0]


# ---------------------------------------------------------------------------
# Every implementation's step against xpgrad's, on the CPU


def run_smoke(tmp_path, monkeypatch, impls, trainer_class=Trainer):
    monkeypatch.delenv("OUT", raising=False)
    path = tmp_path / "gpu_epoch.json"
    code = gpu_epoch.main(["--device", "cpu", "--smoke", "--check", "--impls", impls, "--json", str(path)],
                          trainer_class=trainer_class)
    return code, json.loads(path.read_text())


@pytest.mark.slow
def test_torch_eager_and_device_resident_steps_match_xpgrad(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    code, result = run_smoke(tmp_path, monkeypatch, TORCH_IMPLS)
    assert code == 0
    diffs = result["param_diff_vs_xpgrad_eager"]
    assert set(diffs) == {"xpgrad_eager", "torch_eager", "torch_graph"} and max(diffs.values()) < 1e-4
    losses = {n: r["first"]["train_loss"] for n, r in result["records"].items() if "first" in r}
    assert max(losses.values()) - min(losses.values()) < 1e-5
    s = summary.build_summary({"gpu_epoch": result}, date="d", commit="c")
    assert summary.validate(s) == []
    assert s["epoch_ms"]["torch_graph"] is not None and s["epoch_ms"]["jax_scan"] is None
    assert any(n.startswith("epoch_ms.jax_scan") and "not selected" in n for n in s["notes"])


@pytest.mark.slow
def test_jax_steps_match_xpgrad(tmp_path, monkeypatch):
    pytest.importorskip("jax", reason="JAX is not installed (pip install jax) for the JAX benchmark's check")
    code, result = run_smoke(tmp_path, monkeypatch, "xpgrad_eager,jax_jit,jax_scan")
    assert code == 0
    assert set(result["param_diff_vs_xpgrad_eager"]) == {"xpgrad_eager", "jax_jit", "jax_scan"}
    assert max(result["param_diff_vs_xpgrad_eager"].values()) < 1e-4


class GraphTrainer(Trainer):
    """The real Trainer, whose ``graph="on"`` steps on the CPU are GraphSteps run as they are (nothing to
    record there); it reports ``graph_enabled`` as a GPU does once they are recorded."""

    @property
    def graph_enabled(self):
        steps = self._steps or ()
        return self.graph == "on" and bool(steps) and all(isinstance(s, GraphStep) for s in steps)


class FallbackTrainer(Trainer):
    """A Trainer whose capture failed: it trains eagerly and says so."""

    graph_enabled = False


def test_the_graph_trainer_is_measured_and_compared_with_eager(tmp_path, monkeypatch):
    code, result = run_smoke(tmp_path, monkeypatch, "xpgrad_graph,xpgrad_eager", GraphTrainer)
    assert code == 0
    assert result["summary"]["graph_vs_eager_max_rel_param_diff"] == 0.0
    assert result["summary"]["epoch_ms"]["xpgrad_graph"] is not None
    assert result["info"]["xpgrad_graph"]["graph_enabled"] is True


def test_a_graph_trainer_that_fell_back_is_not_counted(tmp_path, monkeypatch):
    code, result = run_smoke(tmp_path, monkeypatch, "xpgrad_graph,xpgrad_eager", FallbackTrainer)
    s = result["summary"]
    assert s["epoch_ms"]["xpgrad_graph"] is None and s["graph_vs_eager_max_rel_param_diff"] is None
    assert any(n.startswith("epoch_ms.xpgrad_graph") and "fell back to eager" in n for n in s["notes"])


def test_a_run_killed_after_its_epochs_leaves_their_figures(tmp_path, monkeypatch):
    class Killed(BaseException):
        pass

    def killed(*args):
        raise Killed

    monkeypatch.setattr(gpu_epoch, "fixed_steps", killed)
    with pytest.raises(Killed):
        run_smoke(tmp_path, monkeypatch, "xpgrad_eager")
    saved = json.loads((tmp_path / "gpu_epoch.json").read_text())["summary"]
    assert saved["epoch_ms"]["xpgrad_eager"] is not None
    assert summary.validate(summary.build_summary({"gpu_epoch": {"summary": saved}}, date="d", commit="c")) == []


class OldTrainer(Trainer):
    """A Trainer from before issue 10: no graph= option."""

    def __init__(self, config, dataset, device="cpu", progress=True, log_every=50):
        super().__init__(config, dataset, device=device, progress=progress, log_every=log_every)


def test_without_the_graph_option_the_graph_row_says_why(tmp_path, monkeypatch):
    code, result = run_smoke(tmp_path, monkeypatch, "xpgrad_graph,xpgrad_eager", OldTrainer)
    assert code == 0
    assert "no graph= option" in result["unavailable"]["xpgrad_graph"]
    assert result["summary"]["epoch_ms"]["xpgrad_graph"] is None


def small_trainer(n=1000, **overrides) -> Trainer:
    config = Config.from_recipe("default", dataset="idx", **overrides)
    return Trainer(config, gpu_epoch.smoke_dataset(n), progress=False)


def test_the_fixed_step_is_the_trainers_step_on_one_batch():
    trainer = small_trainer(300, optimizer="sgd", lr=0.01, schedule="constant")
    b = trainer.batch_size
    with no_grad():
        expected = functional.cross_entropy(trainer.model(Tensor(trainer.inputs.normalize(trainer.x_train[:b]))),
                                            trainer.t_train[:b])
    loss_sum, _ = trainer.batches.stats
    step = steps.xpgrad_fixed_step(trainer)
    step()
    assert float(loss_sum) == pytest.approx(float(expected.data) * b, rel=1e-6)  # rows 0..b-1, before the update
    for _ in range(4):  # past the end of its 2-batch order: the order starts again
        step()
    assert trainer.optimizer.step_count == 5


def test_pytorch_mirrors_the_xpgrad_model_by_name():
    torch = pytest.importorskip("torch")
    trainer = small_trainer()
    setup = turns.setup_from(trainer)
    assert setup.layers == ("Flatten", "Linear", "ReLU", "Linear")
    assert setup.linears() == [("1.weight", "1.bias"), ("3.weight", "3.bias")]
    model = torch_variants.torch_model(torch, setup.layers, setup.params, "cpu")
    assert list(model.state_dict()) == list(setup.params)
    back = torch_variants.xpgrad_layout(model)
    assert all(np.array_equal(back[k], v) for k, v in setup.params.items())
    x = trainer.inputs.normalize(trainer.x_train[:8])
    with no_grad():
        ours = trainer.model(Tensor(x)).data
    np.testing.assert_allclose(model(torch.from_numpy(x)).detach().numpy(), ours, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_a_loop_of_ones_own_trains_exactly_as_the_trainer(optimizer):
    trainer = tensor_epoch.make_trainer(gpu_epoch.smoke_dataset(), optimizer, "cpu")
    loop = tensor_epoch.LoopEpoch(trainer)
    for _ in range(2):
        a, b = trainer.train_epoch(), loop()
        assert (a["train_loss"], a["train_accuracy"]) == (b["train_loss"], b["train_accuracy"])
    theirs = loop.model.state_dict()
    assert all(np.array_equal(theirs[k], v) for k, v in trainer.model.state_dict().items())


@pytest.mark.parametrize("dtype", softmax_log.DTYPES)
def test_softmax_log_checks_every_backward_against_the_notebooks(dtype):
    calls = softmax_log.cases(128, dtype)  # raises if a gradient differs from the notebook's
    assert len(calls) == 4


# ---------------------------------------------------------------------------
# End to end and scaling: what needs no GPU


def test_e2e_reads_a_run_folder(tmp_path):
    assert e2e.run_metrics(str(tmp_path)) == (None, None)
    rows = [{"epoch": 1, "test_accuracy": 0.85, "seconds": 1.5}, {"epoch": 2, "test_accuracy": 0.87, "seconds": 0.5}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert e2e.run_metrics(str(tmp_path)) == (0.87, 2.0)
    ok = e2e.finish({"exit": 0, "seconds": 3.0, "tail": []}, 0.87, 2.0)
    assert ok["seconds"] == 3.0 and ok["test_accuracy"] == 0.87
    failed = e2e.finish({"exit": 1, "seconds": 3.0, "tail": ["boom"]}, None, None)
    assert failed["seconds"] is None and "exit 1: boom" in failed["note"]


def _train_parser(parser):
    import argparse

    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["train"]


def test_e2e_finds_the_graph_option(monkeypatch):
    from xpgrad import cli

    assert e2e.has_graph_option() is True  # this tree's `xpgrad train` takes --graph

    def before_issue_10():
        parser = argparse.ArgumentParser(prog="xpgrad")
        parser.add_subparsers(dest="command").add_parser("train").add_argument("--epochs")
        return parser

    monkeypatch.setattr(cli, "build_parser", before_issue_10)
    assert e2e.has_graph_option() is False


def test_the_committed_cpu_scaling_figures_cover_hidden_100():
    cpu = scaling.read_cpu(None)
    assert cpu is not None, "commit bench/results/scaling-cpu-*.json (python -m bench.scaling --device cpu)"
    for batch in scaling.BATCHES:
        assert "xpgrad_eager" in cpu["shapes"][scaling.key(batch, 100)]["epochs"]
