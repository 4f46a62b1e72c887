"""Scoring trained models: the evaluator (``evaluate``: FID in Inception or
classifier features, energy distance for 2-D data, NFE per sampler), FID itself
(``fid``), the paper's FID protocol (``paper_fid``), small classifiers' features for
the offline sets (``classifier_fid``), the Inception weights read as tensors only
(``weights``), and evaluation shared across Ray workers (``workers``).
"""
