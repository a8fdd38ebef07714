#!/usr/bin/env python3
"""Writes the model-server expositions the scrape tests serve (tests/fixtures/scrape/).

The text comes from the Python `prometheus_client` library, which vLLM and SGLang use, with their
own metric definitions (names, types, label names, buckets) as in their source:
vLLM V1 `vllm/v1/metrics/loggers.py` (kv_cache_usage_perc, inter_token_latency_seconds, and the
deprecated gpu_cache_usage_perc / time_per_output_token_seconds it still writes), vLLM's older
engine (`vllm/engine/metrics.py`: gpu_cache_usage_perc, time_per_output_token_seconds only) and
SGLang `python/sglang/srt/metrics/collector.py`.

Each framework gets three steps the tests serve in turn: a baseline, a step with new requests,
and a restart (every counter back near zero). `expected.json` holds what the agent must publish
for step 1, computed here from the same bucket lists: each request's value is the midpoint of its
bucket (see src/scrape/frameworks.rs).

Run: python3 -m venv /tmp/v && /tmp/v/bin/pip install prometheus_client &&
     /tmp/v/bin/python scripts/scrape-fixtures.py
"""
import json
import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "scrape")

VLLM_TTFT = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
             7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0]
VLLM_ITL = [0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
            10.0, 20.0, 40.0, 80.0]
VLLM_V0_TTFT = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
                7.5, 10.0]
VLLM_V0_TPOT = [0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5]
SGLANG_TTFT = [0.1, 0.2, 0.4, 0.6, 0.8, 1, 2, 4, 6, 8, 10, 20, 40, 60, 80, 100, 200, 400]
SGLANG_ITL = [0.002, 0.004, 0.006, 0.008, 0.010, 0.015, 0.020, 0.025, 0.030, 0.035, 0.040,
              0.060, 0.080, 0.100, 0.200, 0.400, 0.600, 0.800, 1.000, 2.000, 4.000, 6.000, 8.000]

FRAMEWORKS = {
    # name: (prefix, gauges {role: name}, token counters, ttft, itl names with buckets, labels)
    "vllm-v1": dict(
        running="vllm:num_requests_running", waiting="vllm:num_requests_waiting",
        kv=["vllm:gpu_cache_usage_perc", "vllm:kv_cache_usage_perc"],
        prompt="vllm:prompt_tokens", generation="vllm:generation_tokens",
        ttft=("vllm:time_to_first_token_seconds", VLLM_TTFT),
        itl=[("vllm:time_per_output_token_seconds", VLLM_ITL),
             ("vllm:inter_token_latency_seconds", VLLM_ITL)],
        labels={"model_name": "meta-llama/Llama-3.1-8B-Instruct", "engine": "0"}),
    "vllm-v0": dict(
        running="vllm:num_requests_running", waiting="vllm:num_requests_waiting",
        kv=["vllm:gpu_cache_usage_perc"],
        prompt="vllm:prompt_tokens", generation="vllm:generation_tokens",
        ttft=("vllm:time_to_first_token_seconds", VLLM_V0_TTFT),
        itl=[("vllm:time_per_output_token_seconds", VLLM_V0_TPOT)],
        labels={"model_name": "meta-llama/Llama-2-7b-hf"}),
    "sglang": dict(
        running="sglang:num_running_reqs", waiting="sglang:num_queue_reqs",
        kv=["sglang:token_usage"],
        prompt="sglang:prompt_tokens", generation="sglang:generation_tokens",
        ttft=("sglang:time_to_first_token_seconds", SGLANG_TTFT),
        itl=[("sglang:inter_token_latency_seconds", SGLANG_ITL)],
        labels={"model_name": "qwen/qwen2.5-7b", "engine_type": "unified", "tp_rank": "0",
                "pp_rank": "0"}),
}

# Step 0: the baseline. Step 1: what happened since. Step 2: the server restarted.
STEPS = [
    dict(running=2, waiting=5, kv=0.25, prompt=1000, generation=500,
         ttft=[0.15] * 3, itl=[0.03] * 10),
    dict(running=4, waiting=1, kv=0.5, prompt=1600, generation=800,
         ttft=[0.15] * 3 + [0.3] * 4 + [1.5], itl=[0.03] * 10 + [0.03] * 20 + [0.09] * 5),
    dict(running=1, waiting=0, kv=0.125, prompt=40, generation=10, ttft=[0.15], itl=[0.03]),
]


def midpoint(buckets, value):
    lower = 0.0
    for upper in buckets:
        if value <= upper:
            return (lower + upper) / 2
        lower = upper
    return lower


def exposition(fw, step):
    reg = CollectorRegistry()
    names = list(fw["labels"])
    values = list(fw["labels"].values())
    Gauge(fw["running"], "running", names, registry=reg).labels(*values).set(step["running"])
    Gauge(fw["waiting"], "waiting", names, registry=reg).labels(*values).set(step["waiting"])
    for kv in fw["kv"]:
        Gauge(kv, "kv cache", names, registry=reg).labels(*values).set(step["kv"])
    Counter(fw["prompt"], "prompt", names, registry=reg).labels(*values).inc(step["prompt"])
    Counter(fw["generation"], "gen", names, registry=reg).labels(*values).inc(step["generation"])
    ttft = Histogram(fw["ttft"][0], "ttft", names, buckets=fw["ttft"][1], registry=reg)
    for v in step["ttft"]:
        ttft.labels(*values).observe(v)
    for name, buckets in fw["itl"]:
        itl = Histogram(name, "itl", names, buckets=buckets, registry=reg)
        for v in step["itl"]:
            itl.labels(*values).observe(v)
    return reg


def main():
    os.makedirs(OUT, exist_ok=True)
    expected = {}
    for key, fw in FRAMEWORKS.items():
        for i, step in enumerate(STEPS):
            reg = exposition(fw, step)
            with open(os.path.join(OUT, f"{key}-step{i}.txt"), "wb") as f:
                f.write(generate_latest(reg))
            if key == "vllm-v1" and i == 1:
                with open(os.path.join(OUT, f"{key}-step{i}.openmetrics.txt"), "wb") as f:
                    f.write(generate_openmetrics(reg))
        new_ttft = STEPS[1]["ttft"][len(STEPS[0]["ttft"]):]
        new_itl = STEPS[1]["itl"][len(STEPS[0]["itl"]):]
        itl_buckets = fw["itl"][-1][1]
        expected[key] = dict(
            ttft_us=sorted(round(midpoint(fw["ttft"][1], v) * 1e6, 3) for v in new_ttft),
            itl_us=sorted(round(midpoint(itl_buckets, v) * 1e6, 3) for v in new_itl),
            batch=STEPS[1]["running"], queue=STEPS[1]["waiting"], kv_percent=STEPS[1]["kv"] * 100,
            input_tokens=STEPS[1]["prompt"] - STEPS[0]["prompt"],
            output_tokens=STEPS[1]["generation"] - STEPS[0]["generation"])
    # The real-size exposition for the parser's benchmark: vLLM V1 with 8 engines (data parallel).
    reg = CollectorRegistry()
    fw = FRAMEWORKS["vllm-v1"]
    names = ["model_name", "engine"]
    hists = [Histogram(n, n, names, buckets=b, registry=reg) for n, b in
             [fw["ttft"]] + fw["itl"] + [("vllm:e2e_request_latency_seconds", VLLM_ITL),
                                          ("vllm:request_queue_time_seconds", VLLM_ITL),
                                          ("vllm:request_prompt_tokens", [1, 2, 5, 10, 20, 50, 100,
                                           200, 500, 1000, 2000, 5000, 10000, 20000, 50000,
                                           100000])]]
    gauges = [Gauge(n, n, names, registry=reg) for n in
              [fw["running"], fw["waiting"]] + fw["kv"]]
    counters = [Counter(n, n, names, registry=reg) for n in [fw["prompt"], fw["generation"]]]
    for engine in range(8):
        labels = ("meta-llama/Llama-3.1-70B-Instruct", str(engine))
        for h in hists:
            for v in (0.003, 0.07, 0.4, 3.0, 30.0):
                h.labels(*labels).observe(v * (engine + 1))
        for g in gauges:
            g.labels(*labels).set(engine)
        for c in counters:
            c.labels(*labels).inc(1000 * (engine + 1))
    with open(os.path.join(OUT, "vllm-v1-8-engines.txt"), "wb") as f:
        f.write(generate_latest(reg))
    with open(os.path.join(OUT, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1, sort_keys=True)
        f.write("\n")


if __name__ == "__main__":
    main()
