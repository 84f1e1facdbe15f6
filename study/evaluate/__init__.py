"""Evaluation on the Market-1501 protocol: a model's features, query-gallery distances and their
ranking metrics, and the command ``python -m study.evaluate`` that evaluates a checkpoint.

Modules, each importing only those before it: ``metrics`` (distances; mAP, CMC and mINP of a
distance matrix), ``reranking`` (k-reciprocal re-ranking), ``features`` (a model's features and
``evaluate``, which the trainer validates with), ``checkpoint`` (a training checkpoint as a model)
and ``cli`` (the command, and the picture of ranked lists of ``--show``).
"""
