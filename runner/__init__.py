"""d2bench: how much faster detectron2 models run after a backend optimizes them, and whether
the fast version still gives the same answers. `python -m runner` runs one benchmark."""

__version__ = "0.1.0"
