#!/usr/bin/env bash
# The GPU checks of the speed work in one device call (see ../.library/device): the Triton kernels
# against the PyTorch path on CUDA, a profile of the hybrid's and sparsify's steps, then the
# train-step benchmark at the two GPU shapes. Each stage has its own time limit, and a failing stage
# does not stop the next. Run from the project root after `bash ../shared/tools/device-wheels.sh
# eai-sparsify==1.3.3 natsort schedulefree` here, with carry [".whl"]:
#     bash benchmarks/gpu_check.sh [STAGE ...]   # default: kernel_checks profile bench_32k bench_131k
# (stages: those, `selection` and `memory`); logs and result tables land in $OUT (else ./gpu-out).
set -u
out=${OUT:-gpu-out}
mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --target .site .whl/*.whl \
  && mkdir -p .site/wandb && touch .site/wandb/__init__.py || exit 1
export PYTHONPATH=$PWD/.site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"

stage() {  # stage NAME SECONDS COMMAND...: run with a time limit, log to $out/NAME.log, say how it ended
  local name=$1 limit=$2; shift 2
  local start=$SECONDS
  timeout "$limit" "$@" >"$out/$name.log" 2>&1
  echo "== $name: exit $? after $((SECONDS - start)) s"
  tail -n "${TAIL:-4}" "$out/$name.log"
}
export out shape_32k="--d-in 768 --d-sae 32768 --k 128 --batch 4096"
export shape_131k="--d-in 768 --d-sae 131072 --k 64 --batch 4096"
kernel_checks() { python3 -m pytest -q -p no:cacheprovider --noconftest tests/kernels/triton_kernel_checks.py; }
selection() {
  python3 benchmarks/bench_selection.py $shape_32k && python3 benchmarks/bench_selection.py $shape_131k
}
profile() {
  python3 benchmarks/profile_train_step.py $shape_32k --steps 5 \
    --only hybrid,sparsify \
  && python3 benchmarks/profile_train_step.py $shape_131k --steps 5 --only hybrid,sparsify \
  && python3 benchmarks/profile_train_step.py $shape_32k --steps 5 --only hybrid,sparsify --dead-fraction 0.5
}
memory() {  # without dead latents, then with AuxK active
  for dead in 0 0.5; do
    python3 benchmarks/profile_train_step.py $shape_32k --steps 2 --warmup 1 --rows 12 --memory-at-peak \
      --only hybrid,topk,sparsify --dead-fraction $dead || return
  done
}
bench_32k() { python3 benchmarks/bench_train_step.py $shape_32k --steps 20 --out "$out"; }
bench_131k() {
  python3 benchmarks/bench_train_step.py $shape_131k --steps 10 --out "$out" \
    --only hybrid,hybrid@sel-float32,hybrid@sel-bfloat16,topk,topk@bf16-autocast,sparsify,sparsify@bf16-autocast
}
export -f kernel_checks selection profile memory bench_32k bench_131k
declare -A limits=([kernel_checks]=150 [selection]=90 [profile]=120 [memory]=90 [bench_32k]=240 [bench_131k]=150)
declare -A tails=([memory]=120 [bench_32k]=30 [bench_131k]=16)
for name in "${@:-kernel_checks profile bench_32k bench_131k}"; do
  for one in $name; do TAIL=${tails[$one]:-4} stage "$one" "${limits[$one]}" bash -c "$one"; done
done
