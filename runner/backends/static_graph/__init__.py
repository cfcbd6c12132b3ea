"""static_graph: the detector rewritten into fixed-shape, sync-free tensor code (proposals, NMS,
ROI pooling, heads, post-processing) and replayed as one CUDA graph per input size and batch.

Parts: nms (sync-free batched NMS), proposals, pooling, heads, capture.
"""
