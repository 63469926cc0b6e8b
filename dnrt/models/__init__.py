"""The PyTorch generators dnrt knows, shared by the exporter and the PyTorch backend.

- :mod:`dnrt.models.zoo`: the generator registry (official DN, CycleGAN/pix2pix, CUT, RegGAN,
  U-Net), one config reader and key filter per checkpoint layout;
- :mod:`dnrt.models.norm`: ``DenseNorm2d``, the layer that replaces ``nn.InstanceNorm2d``,
  and its shared ``NormContext``;
- :mod:`dnrt.models.normswap`: ``convert``, the norm swap that turns a generator into a
  two-pass ``DnrtModel`` -- what ``export/`` exports and what the PyTorch backend rebuilds
  from a bundle's manifest and weights.

The submodules import torch; importing this package does not.
"""
