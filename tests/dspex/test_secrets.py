"""An LM's API key reaches every request of a distributed optimization, also after its
coordinator fails over to another worker, and is in no file the run wrote: checkpoint
files, the LM cache, a trace export, a saved program."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

import foundation_dask as fd
from foundation_dask import dspex, scope
from tests._helpers import Classify, make_examples, metric, needs_demos
from tests.support import ScriptedLMServer, wait_for, worker_names

KEY = "sk-live-4c9e1f0a7b3d2e6f8a1c"
HEADER = "hdr-5e8d2b7f1a9c"


@pytest.mark.timeout(420)
def test_the_key_is_sent_to_the_server_and_written_nowhere(subprocess_cluster, tmp_path):
    written = tmp_path / "written"
    subprocess_cluster.env.update({
        "DASK_FOUNDATION__PROCESSES__CHECKPOINT_DIR": str(written / "checkpoints"),
        "DASK_FOUNDATION__DSPEX__CACHE_DIR": str(written / "lm-cache"),
    })
    subprocess_cluster.env.pop("OPENAI_API_KEY", None)
    subprocess_cluster.start(3)
    client = fd.connect(subprocess_cluster.address)
    client.wait_for_workers(3, timeout=60)
    with ScriptedLMServer.running() as server:
        server.reply = lambda body, n: needs_demos(body["prompt"], delay=0.15)
        lm = dspex.OpenAICompatibleLM("test-model", api_base=server.api_base, api_key=KEY,
                                      headers={"X-Org-Token": HEADER}, model_type="text",
                                      max_retries=2, backoff_base=0.05)
        dspex.configure(lm=lm)
        try:
            box: dict = {}
            trace = scope.start_cluster_trace(trace_id="keyed")
            thread = threading.Thread(target=lambda: box.setdefault(
                "r", dspex.DistributedOptimizer.optimize_program_distributed(
                    dspex.Predict(Classify), make_examples(12), metric,
                    valset=make_examples(12, 40), num_candidate_programs=3,
                    max_bootstrapped_demos=2, max_labeled_demos=2, seed=1,
                    display_progress=False, optimization_id="keyed")))
            thread.start()
            coordinator = wait_for(
                lambda: fd.ProcessManager.lookup(("optimization_coordinator", "keyed")),
                timeout=60)
            wait_for(lambda: coordinator.get_progress().result()["evaluations_completed"] >= 8,
                     timeout=120)
            # the coordinator (and the spec it holds) fails over to another worker
            rows = fd.ProcessManager.list_processes()
            host = rows[rows["name"].astype(str).str.contains("keyed")]["worker"].iloc[0]
            victim = {a: n for n, a in worker_names(client).items()}[host]
            subprocess_cluster.kill(victim)
            assert coordinator.get_progress().result()["status"] == "running"
            thread.join(timeout=300)
            result = box["r"]
            assert result.status == "completed" and result.best_score == 100.0
            trace.stop()
            data = trace.collect(timeout=20)
            data.to_json(written / "trace.json")
            data.to_chrome_trace(written / "trace.perfetto.json")
            data.to_otlp_json(written / "trace.otlp.json")
            result.best_program.save(str(written / "program.json"))
        finally:
            dspex.settings.reset()
        requests = list(server.requests)
    assert len(requests) > 12  # the winner's 12 validation examples and teacher runs
    assert {r["headers"].get("Authorization") for r in requests} == {f"Bearer {KEY}"}
    assert {r["headers"].get("X-Org-Token") for r in requests} == {HEADER}
    files = [p for p in Path(written).rglob("*") if p.is_file()]
    # checkpoints, the LM cache, the trace, the program
    assert any(p.parent.name == "checkpoints" for p in files)
    assert any("lm-cache" in p.parts for p in files)
    for path in [*files, *Path(subprocess_cluster.tmp_path).glob("*.log")]:
        data = path.read_bytes()
        assert KEY.encode() not in data and HEADER.encode() not in data, path
