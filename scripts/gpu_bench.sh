#!/usr/bin/env bash
# The GPU measurements of the speed issue as one prepared run that fits a 10-minute call of the
# device tool, each part under its own time limit so a slow part still leaves the others' results:
#
#   bash scripts/gpu_bench.sh OUTDIR [PARTS]      PARTS: comma-separated, from ops,infer,train,compile,distill,det
#                                                 (default ops,infer,train: about 9 minutes at most)
#   device tool: run(command="bash scripts/gpu_bench.sh $OUT", timeout_s=600)
#
#   ops      scripts/bench_ops.py: each depthwise / SKA shape of LSNet-T, the package's form against
#            XLA's grouped convolution and patches (choose the formulation per backend from this)
#   infer    folded inference of T, S and B at batch 2048 (the paper's setting), float32 and
#            bfloat16, JAX against the PyTorch reference in the same process
#   train    the full training step of T and B at 256 images (the recipe's per-GPU batch: 2048
#            over 8 GPUs), float32 and bfloat16 (autocast for PyTorch)
#   compile  LSNet-T under torch.compile as well (TorchInductor writes SKA as one Triton kernel)
#   distill  LSNet-T's hard-distillation step at 256 with the RegNetY-160 teacher, and the teacher's
#            forward alone: the teacher's share of a distillation step
#   det      LSNet-T + RetinaNet at 800x1216 (a 3:2 COCO image resized to 1333x800, padded to 32):
#            the folded forward and the official inference with post-processing at batch 8, the
#            post-processing's share, the training step at 2 images (one official GPU's), float32,
#            JAX against the PyTorch reference detector
#
# Needs python3 with jax (CUDA), flax, optax and torch; grain, TFDS and ml_collections are not
# used. At most 8 files come back from the device tool, so the default parts write exactly 8.
# INFER_BATCH, TRAIN_BATCH, IMG, DET_BATCH, DET_TRAIN_BATCH, DET_IMG and MIN_TIME override the
# sizes (a smoke run on CPU: small ones). The det part is not in the default set (its 4 files would
# pass the 8 the device tool returns): run it as its own call, bash scripts/gpu_bench.sh $OUT det.
set -u
out=${1:?usage: gpu_bench.sh OUTDIR [ops,infer,train,compile]}
parts=",${2:-ops,infer,train},"
py=${PYTHON:-python3}
infer_batch=${INFER_BATCH:-2048}
train_batch=${TRAIN_BATCH:-256}
img=${IMG:-224}
min_time=${MIN_TIME:-2}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false

log() { echo "== $(date +%T) $*" | tee -a "$out/log.txt"; }

part() {  # part NAME SECONDS SCRIPT ARGS...: output to NAME.txt, its last lines to the terminal
    local name=$1 limit=$2
    shift 2
    log "$name (at most ${limit} s): $*"
    timeout "$limit" "$py" "$@" >"$out/$name.txt" 2>&1
    local rc=$?
    tail -n 30 "$out/$name.txt"
    log "$name: exit $rc$([ $rc = 124 ] && echo ' (time limit)')"
}

{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 || echo "no nvidia-smi"
    "$py" -c "import jax, flax, optax, torch; print('jax', jax.__version__, jax.devices(), '| flax', flax.__version__,
'| optax', optax.__version__, '| torch', torch.__version__, 'cuda', torch.cuda.is_available())" 2>&1
} >"$out/env.txt"
cat "$out/env.txt"

case $parts in *,ops,*)
    part ops 60 scripts/bench_ops.py --model lsnet_t --batch "$train_batch" --img-size "$img" \
        --min-time 0.3 --json "$out/ops.json" ;;
esac
case $parts in *,infer,*)
    part infer 240 scripts/benchmark.py --model lsnet_t lsnet_s lsnet_b --batch "$infer_batch" \
        --img-size "$img" --dtype float32 bfloat16 --deploy --torch --min-time "$min_time" \
        --json "$out/infer.json" ;;
esac
case $parts in *,train,*)
    part train 240 scripts/benchmark.py --model lsnet_t lsnet_b --batch "$train_batch" --img-size "$img" \
        --dtype float32 bfloat16 --train --torch --min-time "$min_time" --json "$out/train.json" ;;
esac
case $parts in *,compile,*)
    part compile 240 scripts/benchmark.py --model lsnet_t --batch "$infer_batch" --img-size "$img" \
        --dtype float32 bfloat16 --deploy --torch-compile --min-time "$min_time" --json "$out/compile.json" ;;
esac
case $parts in *,det,*)
    part det 240 scripts/benchmark.py --model lsnet_t_retinanet --batch "${DET_BATCH:-8}" \
        --img-size "${DET_IMG:-800x1216}" --deploy --torch --min-time "$min_time" --json "$out/det_infer.json"
    part det_train 180 scripts/benchmark.py --model lsnet_t_retinanet --batch "${DET_TRAIN_BATCH:-2}" \
        --img-size "${DET_IMG:-800x1216}" --train --torch --min-time "$min_time" --json "$out/det_train.json" ;;
esac
case $parts in *,distill,*)
    part distill 240 scripts/benchmark.py --model lsnet_t --batch "$train_batch" --img-size "$img" \
        --dtype float32 bfloat16 --train --distill --min-time "$min_time" --json "$out/distill.json" ;;
esac
log done
