"""segtune: fine-tune torchvision detection and instance-segmentation models on your own data."""

__version__ = "0.1.0"
