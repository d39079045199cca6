"""histodrl: Deformation Representation Learning (Xu, Hou et al., BIBM 2020) for histopathology.

Self-supervised pretraining of a VGG-19(-BN) encoder on unlabeled H&E images by telling an image from
its elastically deformed copy, the paper's pretext baselines, and the downstream evaluations (GLaS
gland segmentation, PCam patch classification, linear probes).
"""

__version__ = "0.1.0"
