#!/usr/bin/env bash
# The GA-DMS effect with the paper's backbone (issue 15) on a GPU host where OpenAI's CLIP weights cannot be
# downloaded: align CLIP ViT-B/16 on coarse captions of synthetic identities (`gadms synthweb train-clip`, as the
# demo CLIP is made), then run benchmarks/gadms_effect.py's arms from it at 384×128.
#
#   scripts/gadms_effect_vitb16.sh                       # work in runs/gadms_effect_vitb16, result in benchmarks/results
#   WORK=/scratch/ge OUT=/tmp/ge.json EPOCHS=8 scripts/gadms_effect_vitb16.sh
#
# With OpenAI's weights as a state dict, skip the first step and pass
# --model '{"clip_model": "ViT-B-16", "pretrained": "ViT-B-16.pt"}' to gadms_effect.py instead.
# Disk: the aligned start keeps ~1.2 GB; the 18 runs keep best.pt + final.pt (1.2 GB each) and ~5.4 GB per run in
# flight (its per-epoch states until its GASS trace is read), so JOBS=4 needs ~50 GB free. --data synthetic imports
# no Prefect: the model's packages (torch, open_clip, pydantic, duckdb, imagehash) are enough.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
WORK=${WORK:-runs/gadms_effect_vitb16}
OUT=${OUT:-benchmarks/results/gadms_effect_vitb16.json}
JOBS=${JOBS:-4}                   # runs trained at once on the one GPU (each reads its batches on the CPU)
EPOCHS=${EPOCHS:-3}
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} YOLO_OFFLINE=${YOLO_OFFLINE:-1}

CLIP_DIR="$WORK/clip/$("$PYTHON" -c 'from flows.demo_clip import DemoClipConfig
print(DemoClipConfig(out="-", clip_model="ViT-B-16", image_size=(384, 128)).export_name)')"
if [ ! -f "$CLIP_DIR/open_clip_model.safetensors" ]; then
    "$PYTHON" -m flows.cli synthweb train-clip --out "$WORK/clip" --clip-model ViT-B-16 --image-size 384 128 \
        --identities "${IDENTITIES:-1500}" --images-per-identity 4 --val-identities 100 --steps "${STEPS:-500}" \
        --batch-size 128 --lr "${CLIP_LR:-1e-4}" --num-workers "${NUM_WORKERS:-8}"
    rm -rf "$WORK/clip/model"  # its training states (1.8 GB each); the exported folder is what the arms start from
fi
"$PYTHON" benchmarks/gadms_effect.py --work-dir "$WORK/arms" --out "$OUT" --device cuda --jobs "$JOBS" \
    --model "{\"clip_model\": \"ViT-B-16\", \"pretrained\": \"$CLIP_DIR/open_clip_model.safetensors\"}" \
    --image-size 384 128 --epochs "$EPOCHS" --lr "${LR:-1e-4}" "$@"
