"""Scoring trained models: the evaluator (``evaluator``: FID in Inception or
classifier features, energy distance for 2-D data), sampling every sampler from
fixed noise and the table of scores with NFE per sampler (``evaluate``), FID itself
(``fid``), the paper's FID protocol (``paper_fid``), small classifiers' features for
the offline sets (``classifier_fid``), the Inception weights read as tensors only
(``weights``), and evaluation shared across Ray workers (``workers``).
"""
