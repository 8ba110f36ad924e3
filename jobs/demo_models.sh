#!/usr/bin/env bash
# Train every model of the `demo` preset on synthetic cities and install it into vprlib/models/demo/ (package data):
# the extractors (small SegFormer, DPT-Hybrid, Big-LaMa generator), the two refiners, and one CosPlace per strategy.
# Seeded throughout; on this 2-core CPU it takes about an hour. `make demo-models` runs it (PY=.venv/bin/python).
#
#   1. city A (96 places, 128 px, with each capture's static RGB): jobs/train_demo.py trains the extractors on its
#      train split, picks epochs on val, measures them on database+query, and installs them.
#   2. city B (the same city with 6 visits per train place: CosPlace's classes need several images each; its
#      database and query captures are city A's) is extracted with the demo extractors at 64 px, strategy none; the
#      demo refiners learn from those maps to city B's ground-truth maps, and are installed.
#   3. for each strategy, city B is extracted with the finished preset and a CosPlace ResNet-18 is trained on the
#      train split (validated on val); its best checkpoint ships with float16 weights.
#
# The shipped retrievers were trained on maps of the installed extractors: retraining any extractor means running
# the later steps again (the index job refuses maps whose models differ from the retriever's training maps).
set -euo pipefail
PY=${PY:-python}
WORK=${WORK:-out/demo-models}
SIDE=${SIDE:-64}
DEMO=vprlib/models/demo
export PYTHONPATH=${PYTHONPATH:-.}

step() { echo "== demo-models: $*"; }

step "city A and the extractors"
[ -f "$WORK/city/manifest.parquet" ] || $PY jobs/synthcity.py --output "$WORK/city" --static-rgb
# Each family's default epochs (segmenter 50, depth 40), the inpainter 20 (40 would double the hour).
$PY jobs/train_demo.py --city "$WORK/city" --output "$WORK/extractors" --roles segmenter,depth --install
$PY jobs/train_demo.py --city "$WORK/city" --output "$WORK/extractors" --roles inpainter --epochs 20 --install
$PY jobs/train_demo.py --city "$WORK/city" --output "$WORK/extractors" --evaluate-only --models demo

step "city B and the refiners"
$PY -c "import sys; from vprlib.data.synthcity import demo_city; demo_city(sys.argv[1])" "$WORK/dense"
# Only the training area (train and val) is extracted: the demo evaluates on the east half, which it extracts itself.
$PY -c "import sys; from vprlib.data.manifest import read_manifest, write_manifest
t = read_manifest(sys.argv[1]); write_manifest(t.filter([s in ('train', 'val') for s in t['split'].to_pylist()]), sys.argv[2])" \
    "$WORK/dense/manifest.parquet" "$WORK/dense-train.parquet"
$PY jobs/extract.py --input "$WORK/dense-train.parquet" --output "$WORK/maps-none" --strategy none --models demo \
    --side "$SIDE"
$PY jobs/train.py refiner --maps "$WORK/maps-none" --targets "$WORK/dense/gt_maps" --output "$WORK/refiner" \
    --arch demo --side "$SIDE" --epochs 5 --batch-size 16
$PY -c "import sys, torch
for name in ('refiner_depth.pt', 'refiner_seg.pt'):  # float16: half the bytes; load_refiner reads them into float32
    state = torch.load(f'{sys.argv[1]}/{name}', weights_only=True)
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in state.items()}, f'{sys.argv[2]}/{name}')" \
    "$WORK/refiner" "$DEMO"

for strategy in synthetic inpaint; do
    step "the $strategy retriever"
    $PY jobs/extract.py --input "$WORK/dense-train.parquet" --output "$WORK/maps-$strategy" --strategy "$strategy" \
        --models demo --side "$SIDE"
    $PY jobs/train.py cosplace --maps "$WORK/maps-$strategy" --output "$WORK/cosplace-$strategy" \
        --backbone resnet18 --descriptor-size 128 --lr 3e-4 --epochs 40 --batch-size 32 --groups 8 --group-cells 2 \
        --group-bins 2 --min-images-per-class 6 --iterations-per-epoch 0
    $PY -c "import sys; from vprlib.models.retriever import save_half; save_half(sys.argv[1], sys.argv[2])" \
        "$WORK/cosplace-$strategy/best.pt" "$DEMO/cosplace-$strategy.pt"
done
step "done: $(ls $DEMO)"
