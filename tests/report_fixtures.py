"""Rows' fixed environments and seed variants shared by the report tests."""

H200 = "NVIDIA H200"
A100 = "NVIDIA A100-SXM4-80GB"
SEED_COMMAND = "python -m runner sweep=seed"
H200_ENVIRONMENT = dict(
    device="cuda",
    gpu_index="0",
    gpu_name=H200,
    gpu_driver="570.86.15",
    cuda_version="12.4",
    cudnn_version="90100",
    torch_version="2.5.1+cu124",
    backend_version="torch 2.5.1+cu124",
    torchvision_version="0.20.1+cu124",
    detectron2_version="0.6",
    python_version="3.11.2",
    cpu_model="Intel(R) Xeon(R) Platinum 8468",
    hostname="bench-01",
    git_sha="0123456789abcdef0123456789abcdef01234567",
    timestamp="2026-11-28T12:00:00+00:00",
    command=SEED_COMMAND,
    warmup=100,
    iters=200,
    image_hw="800x1333",
    shapes="static",
)
VARIANTS = {
    "RetinaNet": dict(model="retinanet", export="trace", batch=1, postprocess=True),
    "RetinaNet_scripted": dict(model="retinanet", export="script", batch=1, postprocess=True),
    "MaskRCNNFPN": dict(model="mask_rcnn_fpn", export="trace", batch=1, postprocess=False),
    "CascadeRCNN": dict(model="cascade_rcnn", export="trace", batch=1, postprocess=False),
    "": dict(model="mask_rcnn_fpn", export="trace", batch=2, postprocess=True),
}
