"""tests/gpu_smoke.sh is what a session lent a GPU runs first: its plumbing (building the model,
torchrun warmup and alive, eval, the summaries) must not fail there for a reason a CPU could
have shown. Here it runs with SMOKE_ON_CPU=1 and no GPU visible, on this interpreter.

Run: python -m pytest -q tests/test_gpu_smoke.py
"""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_gpu_smoke_script_runs_on_cpu(tmp_path):
    # the script calls `python` and `torchrun`: this interpreter's, with no GPU in view
    path = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
    env = dict(os.environ, SMOKE_ON_CPU="1", SMOKE_OUT=str(tmp_path / "smoke"),
               CUDA_VISIBLE_DEVICES="", PATH=path)
    result = subprocess.run(["bash", os.path.join(ROOT, "tests", "gpu_smoke.sh")], env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in result.stdout.splitlines() if line.startswith("SMOKE")]
    assert [line.split(":")[0] for line in lines] == [
        "SMOKE ranks=1 warmup", "SMOKE ranks=1 alive", "SMOKE eval", "SMOKE kernels"], lines
    assert "skipped 0" in lines[0] and "skipped 0" in lines[1]
