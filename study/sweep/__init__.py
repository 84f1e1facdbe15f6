"""``python -m study.sweep SEARCH_SPACE.yaml [--out DIR] [--set k=v] [--address ADDR] [--resume]``: a study.

Ray Tune spreads the trials over the CPUs and GPUs of a Ray cluster, Optuna's TPE proposes the
configurations (or ``tune.sampler: grid`` lists them), and every trial trains one schedule with the
shared trainer and reports each epoch.

The search-space file format is described in ``study/search_space.py``. Each trial's sampled dict
(flat dotted keys plus ``train.seed``) is what W&B logs as its config.

How the pieces fit:
- The plan: ``StudySearcher`` asks Optuna for ``num_samples`` configurations and runs each once
  per seed; configuration c compares schedule c mod k, so every schedule gets its share, and TPE
  samples the other values (a grid's configuration c is its point c, every value given). optuna.db
  holds one trial per configuration: the mean over its seeds of the last reported metric, FAIL when
  any seed diverged or failed, PRUNED (with its per-period means) when ASHA stopped a seed. A kill
  at any moment loses no planned configuration or seed.
- Early stopping: ASHA measures time in completed periods (``periods_done``, +1 on the last epoch
  of each period), so its rungs fall on period ends, never in the dip right after a rollback.
- Every epoch is reported and carries the metric: epochs without validation repeat the last
  validated value (0 before the first), ``validated`` says which epochs computed it.
- A trial whose loss becomes NaN/inf reports a last result flagged ``diverged`` (metric 0, for Tune and
  ASHA only) and ends; the study goes on and Optuna records its configuration as FAIL.
- A trial that fails (its node lost) restarts from its last checkpoint, up to TRIAL_RETRIES times.
- Each trial's newest checkpoint is kept once, in Tune's folder (``tune/<trial id>/checkpoint_*/``):
  the trainer's file leaves the run folder once Tune holds its copy, and comes back from Tune when
  the trial is restored. A resumed trial continues from the newest checkpoint, Tune's or one a kill
  left in its run folder before Tune took it, and first reports again the epochs that a kill left
  out of Tune's last snapshot, so neither ASHA nor the tables miss an epoch.

Results in DIR (default ``runs/<search-space name>``): ``study.yaml`` (the resolved search space),
``.lock`` (held while a sweep runs there), ``tune/`` (Ray's experiment, for ``--resume``),
``trials/<trial id>/`` (each trial's run folder), ``wandb/``, ``optuna.db`` (one Optuna trial per
configuration), ``results.csv`` (one row per trial) and ``epochs.csv`` (one row per trial and epoch).

Modules, one concern each: ``cli`` (the command), ``preflight`` (checks before Ray starts, the folder
lock), ``tuner`` (Ray start-up and the Tuner), ``searcher`` (Optuna), ``trial`` (one trial and its
checkpoints with Tune), ``tables`` (results.csv, epochs.csv), ``wandb_mode`` and ``wandb_runs`` (W&B),
``ray_private`` (every use of Ray's private API). Only ``cli``, ``preflight`` and ``wandb_mode`` import
without Ray, so that a machine without the sweep extra is told what to install.
"""
