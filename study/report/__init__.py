"""``python -m study.report DIR [DIR ...] [--final [--seeds N ...] [--jobs N]] [--out FILE]``: study reports.

The report compares the schedules (each schedule's best configuration, mean ± std over its
seeds), names the best configuration, ranks the tuned parameters by importance (Optuna's
PED-ANOVA on DIR/optuna.db), tabulates each block's gradient norm against fine-tuning's, and plots
validation mAP, training loss and gradient norms against the epoch (like the paper's Figures 4
and 5) and each tuned parameter against mAP.
``--final`` retrains the best configuration and the fine-tuning baseline (the best ``finetune``
configuration, or ``finetune`` for the same number of epochs when the study has none) on every
training identity with ``data.evaluate_on=test``, once per seed of the study or of ``--seeds``
(into DIR/final/), and adds their test mAP and rank-1; ``--jobs N`` trains N of those runs at once.
By default the report is DIR/report.md with plots in DIR/plots/; ``--out FILE`` writes it (of one
or several studies) to FILE, with plots in a folder named after FILE beside it. Folders of the same
study name are the pieces of one study (run on several machines or days, each with some of its
schedules or seeds: ``merge_pieces``) and are reported as one; ``--final`` then trains into the first.

Modules, one concern each, each importing only those before it: ``formatting`` (markdown tables,
``mean ± std``), ``loading`` (the study as read from disk: ``Study``, ``load_study``,
``merge_pieces``), ``chance`` (the chance level of the evaluation split, results near it),
``statistics`` (paired comparisons and their intervals, pairs, runs still training, caveats),
``tables`` and ``curves`` (the report's sections, as markdown), ``plots``, ``document`` (the
sections in order, written to report.md), ``final`` (the ``--final`` retraining, the only module
that trains) and ``cli`` (the command).
"""
