# Issue 13 point 3: Inductor at fp32 against the strict (TF32-off) reference, with PyTorch's
# defaults (precision=fp32: TF32 convolutions; its floor is eager with those defaults) and strict
# fp32 end to end (precision=fp32_strict), on the two variants whose fp32 Inductor rows failed
# parity before (results/h200x2_all_backends.csv). The four sessions run at once, each in its
# own GPU lock folder, in the background of the shell that sources this file (which waits for
# them): their rows are for parity only, their latencies were measured on a shared GPU.
for p in fp32 fp32_strict; do
  for v in MaskRCNNFPN MaskRCNNC4; do
    D2BENCH_LOCK_DIR=/tmp/locks-ind-$p-$v python -m runner sweep=seed variant=$v precision=$p \
      backend=eager,inductor bench.warmup=5 bench.iters=20 bench.repeats=1 bench.rewarm=0 \
      hydra.sweep.dir=outputs/sweeps/inductor_fp32/$p-$v > /dev/null 2>&1 &
  done
done
