#!/usr/bin/env bash
# Start vLLM for the caption stage (`gadms caption` with backend "openai") on a GPU host.
#
#   scripts/serve_vllm.sh                 # one server, data parallel over all GPUs, http://127.0.0.1:8000/v1
#   MODE=per-gpu scripts/serve_vllm.sh    # one server per GPU on ports 8000, 8001, ...; list them all as
#                                         # `endpoints:` in the caption config, the client load-balances them
#   MODEL=Qwen/Qwen2.5-VL-32B-Instruct TP=2 scripts/serve_vllm.sh    # the paper's second captioner
#
# Needs `pip install vllm` (a recent release: requests use `structured_outputs: {"json": schema}`; set
# `structured_outputs: guided_json` in the caption config for vLLM older than 0.12) and the model in the HF cache
# or downloadable (HF_HUB_OFFLINE=0). Then, from the project:
#   gadms caption --crops crops.parquet --out captions/ --endpoint http://127.0.0.1:8000/v1 \
#       --model Qwen/Qwen2.5-VL-7B-Instruct
set -euo pipefail

MODEL=${MODEL:-Qwen/Qwen2.5-VL-7B-Instruct}
HOST=${HOST:-127.0.0.1}          # loopback by default; 0.0.0.0 only behind a firewall (add --api-key then)
PORT=${PORT:-8000}
MODE=${MODE:-dp}                 # dp: one server, --data-parallel-size GPUS; per-gpu: one server per GPU
TP=${TP:-1}                      # tensor parallel size per replica (1 for 7B on a 24 GB+ GPU)
GPUS=${GPUS:-$(nvidia-smi --list-gpus | wc -l)}
# A crop is at most 384×128 px (image_max_side 384) = 49,152 px; Qwen2.5-VL works in 28×28 px patches, so
# 64 patches (50,176 px) keep a crop at its own size (~64 image tokens) instead of upscaling it.
MIN_PIXELS=${MIN_PIXELS:-3136}   # 4 patches
MAX_PIXELS=${MAX_PIXELS:-50176}  # 64 patches
# ~450 prompt tokens + ~64 image tokens + at most 160 generated tokens: 2048 leaves room; a small max length
# lets the KV cache hold many more concurrent sequences.
MAX_MODEL_LEN=${MAX_MODEL_LEN:-2048}
MAX_NUM_SEQS=${MAX_NUM_SEQS:-256}  # match in_flight_per_endpoint in the caption config

common_args=(
  --dtype bfloat16
  --max-model-len "$MAX_MODEL_LEN"
  --max-num-seqs "$MAX_NUM_SEQS"
  --limit-mm-per-prompt '{"image": 1, "video": 0}'
  --mm-processor-kwargs "{\"min_pixels\": $MIN_PIXELS, \"max_pixels\": $MAX_PIXELS}"
  --gpu-memory-utilization 0.90
  --tensor-parallel-size "$TP"
  --enable-prefix-caching
  --seed 0
)

if [[ "$MODE" == "dp" ]]; then
  exec vllm serve "$MODEL" --host "$HOST" --port "$PORT" \
    --data-parallel-size $(( GPUS / TP )) "${common_args[@]}"
elif [[ "$MODE" == "per-gpu" ]]; then
  pids=()
  for (( replica = 0; replica < GPUS / TP; replica++ )); do
    devices=$(seq -s, $(( replica * TP )) $(( replica * TP + TP - 1 )))
    CUDA_VISIBLE_DEVICES=$devices vllm serve "$MODEL" --host "$HOST" --port $(( PORT + replica )) \
      "${common_args[@]}" &
    pids+=($!)
    echo "replica $replica on GPU(s) $devices: http://$HOST:$(( PORT + replica ))/v1" >&2
  done
  trap 'kill "${pids[@]}" 2>/dev/null' INT TERM
  wait
else
  echo "MODE must be dp or per-gpu, got $MODE" >&2
  exit 2
fi
