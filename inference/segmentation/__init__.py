"""Automatic pancreas and tumour segmentation with nnU-Net v2: a pure library (no Django).

``nnunet_core`` writes nnU-Net's raw dataset, runs planning, preprocessing and training (in a
child process, ``nnunet_worker``, because nnU-Net reads its folders from the environment when
imported), predicts masks with their uncertainty, and reads imported results folders.
"""
