"""Accuracy: what a run's answers are worth on a labelled dataset, next to how fast they come.

A run with `dataset=...` makes, after its timed blocks, a pass of its own over a COCO-format
dataset (an annotation JSON and an image folder): every image letterboxed to the run's input
size, through the same callable the blocks timed, predictions mapped back to the image and
scored by pycocotools' COCOeval. Its figures are row columns, like parity's.

    dataset    a COCO-format dataset: its annotation file read and checked, images as RGB
    letterbox  an image into the run's input size and predictions back to the image
    coco       predictions as COCO results; COCOeval's AP figures for boxes, masks, keypoints
    evaluate   the pass: images -> a predict callable -> COCO results -> figures
    shapes     a dataset the project can make: shapes of several classes with masks, by seed

Takes images and callables, returns figures; imports nothing from runner.run (the measuring
child composes the pass from its own steps: runner.run.measurement).
"""
